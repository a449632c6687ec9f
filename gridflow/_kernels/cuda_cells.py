"""CUDA kernels of binning and prediction: count points into a grid, find the
cell of query points, read a grid's values at those cells.

They mirror the CPU kernels bit for bit: :func:`count` is the ``"dense"``
kernel of :mod:`gridflow._kernels.binning` (the same label, non-finite and
range checks in the same order, the same float64 operations in the same
order for the cell, the same stats) and :func:`cells` is
:func:`gridflow._kernels.cells.flat_index`. Where the CPU kernels loop over
rows, one thread here takes one point (a grid-stride loop over 1-D launches
of 256-thread blocks) and adds it into the grid with ``cuda.atomic.add``;
a block sums its stats in shared memory, then adds them once. The one
difference is noted at ``_COUNT_CELL``.

Arrays are CuPy arrays on a GPU (numba.cuda reads their
``__cuda_array_interface__``; outputs are CuPy too) or NumPy arrays under
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how
``tests/engine/test_cuda_cells.py`` runs them on a machine without a GPU;
with a device it runs the same checks on CuPy arrays. Every result is
compared with the CPU kernels' with ``assert_array_equal``. The loop over
dims is unrolled in generated source, one kernel per number of dims (1 to
:data:`MAX_DIMS`). Neither numba.cuda nor CuPy is imported before a kernel
is first used.

``bin_points(backend="cupy")`` counts with :func:`count` (the tree
strategy's chains, ``gridflow.binning._count_into``) and prediction on
device chunks finds cells with :func:`cells` and reads them with
:func:`gather` (``gridflow.predict._cell_index``, ``_gather``); both take
their device arrays from :func:`array_module`, so the simulator checks run
those stage paths on NumPy arrays too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

# Positions in the stats array, as in gridflow._kernels.binning: rows binned,
# non-finite, out of range, bad label, then one count per class.
BINNED, NONFINITE, OUT_OF_RANGE, BAD_LABEL = range(4)

#: Dims the kernels are generated and tested for; binning counts grids of
#: more dims on the host.
MAX_DIMS = 6
#: Threads per block (1-D launches).
THREADS = 256
#: Most blocks of one launch; the kernels loop over the points beyond.
MAX_BLOCKS = 8192
#: Classes whose per-class counts a block sums in shared memory before one
#: atomic add per block (8 KiB of int64 with the four counters): a single
#: global counter hit by every thread would serialize them. Classes past it
#: (more than binning's default ``max_classes``) add to the stats directly.
CLASS_SLOTS = 1024

_COUNT = """
def kernel({cols}, codes, nclasses, lo, hi, width, nbins, periodic, grid, stats):
{geometry}
    part = cuda.shared.array(SLOTS, numba.int64)
    tid = cuda.threadIdx.x
    for s in range(tid, SLOTS, cuda.blockDim.x):
        part[s] = 0
    cuda.syncthreads()
    n = codes.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        code = codes[i]
        if code < 0 or code >= nclasses:
            cuda.atomic.add(part, BAD_LABEL, 1)
            continue
        k = np.int64(code)
{loads}
        if not ({finite}):
            cuda.atomic.add(part, NONFINITE, 1)
            continue
{cells}
        cuda.atomic.add(grid, {flat}, 1)
        cuda.atomic.add(part, BINNED, 1)
        if k < CLASS_SLOTS:
            cuda.atomic.add(part, 4 + k, 1)
        else:
            cuda.atomic.add(stats, 4 + k, 1)
    cuda.syncthreads()
    used = 4 + nclasses
    if used > SLOTS:  # not min(): numba.cuda's overload of min(a, b) fails to compile
        used = SLOTS
    for s in range(tid, used, cuda.blockDim.x):
        if part[s] != 0:
            cuda.atomic.add(stats, s, part[s])
"""

# The CPU kernel's cell arithmetic, line for line. One addition: a periodic
# dim whose ``v - lo`` overflows to +-inf (finite v and lo, both near the
# float64 limit) has no cell here, as in prediction; the CPU kernel turns the
# NaN of fmod(inf) into an integer, which is undefined.
_COUNT_CELL = """\
        t{j} = v{j} - lo{j}
        if p{j}:
            if not math.isfinite(t{j}):
                cuda.atomic.add(part, OUT_OF_RANGE, 1)
                continue
            t{j} = math.fmod(t{j}, w{j})
            if t{j} < 0:
                t{j} += w{j}
        elif not (v{j} >= lo{j} and v{j} <= hi{j}):
            cuda.atomic.add(part, OUT_OF_RANGE, 1)
            continue
        i{j} = int(math.floor(t{j} / w{j} * nb{j}))
        if i{j} >= nb{j}:
            i{j} = nb{j} - 1
"""

_CELLS = """
def kernel({cols}, lo, hi, width, nbins, periodic, out):
{geometry}
    n = out.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
{loads}
{cells}
        out[i] = {flat}
"""

# gridflow._kernels.cells.flat_index, line for line.
_CELLS_CELL = """\
        t{j} = v{j} - lo{j}
        if p{j}:
            if not math.isfinite(t{j}):
                out[i] = -1
                continue
            t{j} = math.fmod(t{j}, w{j})
            if t{j} < 0:
                t{j} = t{j} + w{j}
            if not math.isfinite(t{j}):
                out[i] = -1
                continue
        elif not (v{j} >= lo{j} and v{j} <= hi{j}):
            out[i] = -1
            continue
        i{j} = int(math.floor(t{j} / w{j} * nb{j}))
        if i{j} >= nb{j}:
            i{j} = nb{j} - 1
"""


def _source(ndim: int, template: str, cell: str, first: str) -> str:
    dims = range(ndim)
    flat = first
    for j in dims:
        flat = f"({flat}) * nb{j} + i{j}"
    return template.format(
        cols=", ".join(f"c{j}" for j in dims),
        geometry="\n".join(
            f"    lo{j} = lo[{j}]\n    hi{j} = hi[{j}]\n    w{j} = width[{j}]\n"
            f"    nb{j} = nbins[{j}]\n    p{j} = periodic[{j}]"
            for j in dims
        ),
        # float(): float32 columns widen exactly, and the simulator computes
        # on Python floats (IEEE float64, no warnings on NaN/inf).
        loads="\n".join(f"        v{j} = float(c{j}[i])" for j in dims),
        finite=" and ".join(f"math.isfinite(v{j})" for j in dims),
        cells="".join(cell.format(j=j) for j in dims),
        flat=flat,
    )


def _jit(source: str, name: str) -> Any:
    """``cuda.jit`` of the function ``kernel`` defined by ``source``.

    Kernels are executed source, with ``cuda`` a global of their own: the
    simulator runs a kernel by swapping the ``cuda`` globals of its function
    (a ``cuda`` imported as a local would stay the real module).
    """
    import numba
    from numba import cuda

    namespace = {
        "math": math,
        "np": np,
        "numba": numba,
        "cuda": cuda,
        "SLOTS": 4 + CLASS_SLOTS,
        "CLASS_SLOTS": CLASS_SLOTS,
        "BINNED": BINNED,
        "NONFINITE": NONFINITE,
        "OUT_OF_RANGE": OUT_OF_RANGE,
        "BAD_LABEL": BAD_LABEL,
    }
    exec(compile(source, f"<gridflow {name}>", "exec"), namespace)
    return cuda.jit(namespace["kernel"])


@functools.cache
def _count_kernel(ndim: int) -> Any:
    return _jit(_source(ndim, _COUNT, _COUNT_CELL, "k"), f"cuda count {ndim}d")


@functools.cache
def _cells_kernel(ndim: int) -> Any:
    return _jit(_source(ndim, _CELLS, _CELLS_CELL, "0"), f"cuda cells {ndim}d")


_GATHER = """
def kernel(values, index, fill, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        c = index[i]
        if c < 0:
            out[i] = fill[0]
        else:
            out[i] = values[c]
"""


@functools.cache
def _gather_kernel() -> Any:
    return _jit(_GATHER, "cuda gather")


def array_module() -> Any:
    """The module of the kernels' device arrays: NumPy under numba's CUDA
    simulator (``NUMBA_ENABLE_CUDASIM=1``), else CuPy.

    What the stages allocate device arrays with and copy host arrays to the
    device with (``asarray``), so that the same code runs on a GPU and, on
    NumPy arrays, under the simulator. Imports numba's configuration, not
    numba.cuda.
    """
    from numba import config

    if config.ENABLE_CUDASIM:
        return np
    import cupy

    return cupy


def _xp(a: Any) -> Any:
    """The array module of ``a``: CuPy for CuPy arrays, else NumPy."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _host(a: Any) -> np.ndarray:
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def _stream(a: Any) -> Any:
    """The stream of a launch that writes ``a``: CuPy's current stream for a
    CuPy array (numba's default stream is not ordered after CuPy's work on a
    non-blocking or per-thread stream), else numba's default (0)."""
    if not type(a).__module__.startswith("cupy"):
        return 0
    import cupy
    from numba import cuda

    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def _readable(a: Any) -> Any:
    """An input array as a kernel argument: numba copies a host (NumPy) array
    to the device only when it is contiguous; device arrays go at any strides."""
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


def _geometry(lo: Any, hi: Any, width: Any, nbins: Any, periodic: Any) -> tuple:
    """Per-dim bounds as tuples of scalars: kernel arguments, no copies to the device."""
    return (
        tuple(float(v) for v in _host(lo)),
        tuple(float(v) for v in _host(hi)),
        tuple(float(v) for v in _host(width)),
        tuple(int(v) for v in _host(nbins)),
        tuple(bool(v) for v in _host(periodic)),
    )


def _blocks(n: int) -> int:
    return min(-(-n // THREADS), MAX_BLOCKS)


def count(
    cols: tuple[Any, ...],
    codes: Any,
    nclasses: int,
    lo: Any,
    hi: Any,
    width: Any,
    nbins: Any,
    periodic: Any,
    grid: Any,
    stats: Any,
) -> None:
    """Count points into ``grid`` and ``stats`` in place, as the CPU ``"dense"`` kernel.

    ``cols`` holds one coordinate column per dim (1 to :data:`MAX_DIMS`), ``codes`` the
    class code per point (any integer dtype; outside ``[0, nclasses)`` is a
    bad label); ``lo``, ``hi``, ``width`` (``hi - lo``), ``nbins`` and
    ``periodic`` are per dim, as ``gridflow.binning._kernel_args`` gives
    them. ``grid`` is the flat C-order ``(class, *dims)`` count grid,
    uint32 or uint64 (widening it before a count could wrap is the
    caller's rule, as in ``binning._count_into``); ``stats`` is int64 of
    ``4 + nclasses``. Counts and stats equal the CPU kernel's exactly.
    """
    n = int(codes.shape[0])
    if n == 0:
        return
    geometry = _geometry(lo, hi, width, nbins, periodic)
    cols = tuple(_readable(c) for c in cols)
    _count_kernel(len(cols))[_blocks(n), THREADS, _stream(grid)](
        *cols, _readable(codes), int(nclasses), *geometry, grid, stats
    )


def cells(cols: tuple[Any, ...], lo: Any, hi: Any, width: Any, nbins: Any, periodic: Any) -> Any:
    """C-order flat cell index (int64) of each query point, -1 where it has none.

    The rule of :func:`gridflow._kernels.cells.flat_index`: -1 for NaN or
    infinite coordinates and for points outside a non-periodic dim's
    ``[lo, hi]``; periodic dims wrap. ``cols`` and the geometry as for
    :func:`count`; the result is on the columns' device.
    """
    n = int(cols[0].shape[0])
    out = _xp(cols[0]).empty(n, dtype=np.int64)
    if n:
        geometry = _geometry(lo, hi, width, nbins, periodic)
        cols = tuple(_readable(c) for c in cols)
        _cells_kernel(len(cols))[_blocks(n), THREADS, _stream(out)](*cols, *geometry, out)
    return out


def gather(values_flat: Any, cell_index: Any, fill: Any) -> Any:
    """``values_flat[cell_index]`` per query, ``fill`` where the index is -1.

    The result has the dtype of ``values_flat`` (``fill`` converted as
    ``np.full`` converts it) and lives on its device.
    """
    xp = _xp(values_flat)
    n = int(cell_index.shape[0])
    out = xp.empty(n, dtype=values_flat.dtype)
    if n:
        filler = xp.asarray(np.full(1, fill, dtype=values_flat.dtype))
        _gather_kernel()[_blocks(n), THREADS, _stream(out)](
            _readable(values_flat), _readable(cell_index), filler, out
        )
    return out
