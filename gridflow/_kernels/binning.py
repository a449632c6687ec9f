"""Compiled binning kernels, generated per number of dims.

One pass over the rows of a block: check the label code, check the
coordinates are finite and in range, compute the cell with the same float64
operations in the same order as :meth:`gridflow.grid.GridSpec.cell_index`,
and either count the row into a dense grid (``mode="dense"``) or emit its
chunk-major key (``mode="keys"``). The loop over dims is unrolled in
generated source (numba makes it about three times faster than a loop over a
tuple of columns). Numba is imported on first use only.
"""

from __future__ import annotations

from typing import Any

from gridflow._kernels import codegen as _codegen

# Positions in the stats array: rows binned, non-finite, out of range, bad
# label, then one count per class.
BINNED, NONFINITE, OUT_OF_RANGE, BAD_LABEL = range(4)

_HEAD = """
def kernel(cols, codes, nclasses, lo, hi, width, nbins, periodic, {extra}stats):
    {cols} = cols
{geometry}
    n = codes.shape[0]
    nonfinite = 0
    outside = 0
    badlabel = 0
    per_class = np.zeros(nclasses, np.int64)
{setup}
    m = 0
    for start in range(0, n, BATCH):
{batch}
        for i in range(start, min(n, start + BATCH)):
            k = codes[i]
            if k < 0 or k >= nclasses:
                badlabel += 1
                continue
{loads}
            if not ({finite}):
                nonfinite += 1
                continue
{cells}
{store}
            m += 1
            per_class[k] += 1
{flush}
    stats[1] += nonfinite
    stats[2] += outside
    stats[3] += badlabel
    for c in range(nclasses):
        stats[0] += per_class[c]
        stats[4 + c] += per_class[c]
{ret}
"""

# Rows per batch of the dense kernel: computing the cells of a batch first and
# counting them in a second tight loop lets the CPU overlap the random writes
# into the grid, about 2x faster than counting each row as it is read.
BATCH = 8192

_CELL = """\
            t{j} = v{j} - lo{j}
            if p{j}:
                if not math.isfinite(t{j}):  # v - lo overflowed: no cell (as prediction)
                    outside += 1
                    continue
                t{j} = np.fmod(t{j}, w{j})
                if t{j} < 0:
                    t{j} += w{j}
            elif not (v{j} >= lo{j} and v{j} <= hi{j}):
                outside += 1
                continue
            i{j} = int(math.floor(t{j} / w{j} * nb{j}))
            if i{j} >= nb{j}:
                i{j} = nb{j} - 1
"""


def _source(ndim: int, mode: str) -> str:
    dims = range(ndim)
    geometry = "\n".join(
        f"    lo{j} = lo[{j}]\n    hi{j} = hi[{j}]\n    w{j} = width[{j}]\n"
        f"    nb{j} = nbins[{j}]\n    p{j} = periodic[{j}]"
        for j in dims
    )
    if mode == "dense":
        extra = "out, "
        setup = "    buf = np.empty(BATCH, np.int64)"
        batch = "        m = 0"
        flat = "k"
        for j in dims:
            flat = f"({flat}) * nb{j} + i{j}"
        store = f"            buf[m] = {flat}"
        flush = "        for b in range(m):\n            out[buf[b]] += 1"
        ret = "    return 0"
    else:
        extra = "csize, nblocks, "
        setup = "\n".join(f"    cs{j} = csize[{j}]\n    nk{j} = nblocks[{j}]" for j in dims)
        setup += "\n    block_cells = 1\n    for c in csize:\n        block_cells *= c"
        setup += "\n    keys = np.empty(n, np.int64)"
        batch, flush = "        pass", ""
        block, local = "0", "0"
        for j in dims:
            block = f"({block}) * nk{j} + i{j} // cs{j}"
            local = f"({local}) * cs{j} + i{j} % cs{j}"
        store = f"            keys[m] = (({block}) * nclasses + k) * block_cells + {local}"
        ret = "    return keys[:m]"
    return _HEAD.format(
        extra=extra,
        cols=", ".join(f"c{j}" for j in dims) + ("," if ndim == 1 else ""),
        geometry=geometry,
        setup=setup,
        batch=batch,
        loads="\n".join(f"            v{j} = float(c{j}[i])" for j in dims),
        finite=" and ".join(f"math.isfinite(v{j})" for j in dims),
        cells="".join(_CELL.format(j=j) for j in dims),
        store=store,
        flush=flush,
        ret=ret,
    )


def kernel(ndim: int, mode: str) -> Any:
    """The compiled kernel for ``ndim`` dims; ``mode`` is "dense" or "keys".

    Generated once per process (and cached on disk, see
    :mod:`gridflow._kernels.codegen`).
    """
    body = f"BATCH = {BATCH}\n{_source(ndim, mode)}\nkernel = numba.njit(nogil=True, cache=CACHE)(kernel)\n"
    return _codegen.load(body, f"bin_{ndim}d_{mode}", "gridflow._kernels.binning").kernel
