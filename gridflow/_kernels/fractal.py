"""Compiled steps of the fractal classifier, generated per number of dims.

Each step, every cell of a block draws one of its ``2·d`` face neighbours
with the counter-based hash of :mod:`gridflow.counter_rng`, computed inline:
``c = integers(seed, t, index, 2·d)`` for iteration ``t`` and the cell's
global C-order flat ``index``, bit for bit. Choice ``c`` means axis
``c // 2``, towards lower indices when ``c`` is even. The cell then copies
the neighbour's label by the rule of :func:`gridflow.fractal.fractal`.

A step runs row by row over the last axis on views whose index starts at 0
(numba can then drop its negative-index checks), loading all ``2·d``
neighbours and selecting one, so LLVM vectorises the hash and the select:
about 1.2 ns per cell and step on one x86 core, against 16-21 ns for the
same step in NumPy (BENCHMARKS.md). Blocks are either haloed (``shrink``: step ``s`` updates
the cells at least ``s + 1`` from the edge; the halo is as deep as the
steps) or whole grids padded by one cell whose periodic axes are refreshed
before every step (cells beyond an open edge hold -2 and never change).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gridflow._kernels import codegen as _codegen
from gridflow.counter_rng import _GOLDEN, _MIX1, _MIX2, stream_key

__all__ = ["choices", "global_hashes", "kernel", "keys", "run"]

_CONSTANTS = """
G = np.uint64({golden})
M1 = np.uint64({mix1})
M2 = np.uint64({mix2})
S27 = np.uint64(27)
S30 = np.uint64(30)
S31 = np.uint64(31)
S32 = np.uint64(32)
LOW = np.uint64(0xFFFFFFFF)
N = np.uint64({n})
SHIFT = np.uint64({shift})
"""


def _hash(indent: str, z: str) -> str:
    """Lines turning ``z`` (key + index * G) into the mixed bits ``z``."""
    lines = [
        f"z = {z}",
        "z = (z ^ (z >> S30)) * M1",
        "z = (z ^ (z >> S27)) * M2",
        "z = z ^ (z >> S31)",
    ]
    return "\n".join(indent + line for line in lines) + "\n"


def _choice(indent: str, n: int) -> str:
    # Same arithmetic as counter_rng.integers: the top bits for a power of
    # two, else the high half of the 128-bit product z * n.
    if n & (n - 1) == 0:
        return f"{indent}c = np.int64(z >> SHIFT)\n"
    return f"{indent}c = np.int64(((z >> S32) * N + (((z & LOW) * N) >> S32)) >> S32)\n"


def _select(lo: int, hi: int) -> str:
    """A balanced tree of selects picking ``v{c}`` for ``lo <= c < hi``."""
    if hi - lo == 1:
        return f"v{lo}"
    mid = (lo + hi) // 2
    return f"({_select(lo, mid)} if c < {mid} else {_select(mid, hi)})"


def _row_source(ndim: int, n: int) -> str:
    last = ndim - 1
    nb_names = [f"n{j}{side}" for j in range(last) for side in "mp"]
    args = ", ".join(["o", "mid", "lft", "rgt", *nb_names, "hh", "r", "notburn", "m"])
    loads = [f"        v{2 * j} = n{j}m[k]\n        v{2 * j + 1} = n{j}p[k]\n" for j in range(last)]
    loads.append(f"        v{2 * last} = lft[k]\n        v{2 * last + 1} = rgt[k]\n")
    return (
        "\n@numba.njit(nogil=True, cache=CACHE)\n"
        f"def row({args}):\n"
        "    for k in range(m):\n"
        + _hash("        ", "r + hh[k]")
        + _choice("        ", n)
        + "        cur = mid[k]\n"
        + "".join(loads)
        + f"        nb = {_select(0, n)}\n"
        # Copy a labeled neighbour; during burn-in only into unlabeled cells.
        # Cells beyond an open edge (-2) never change.
        "        take = (nb >= 0) & (cur >= -1) & ((cur < 0) | notburn)\n"
        "        o[k] = nb if take else cur\n"
    )


def _kernel_source(ndim: int) -> str:
    last = ndim - 1
    hs = "".join(f"h{j}, " for j in range(ndim))
    ps = "".join(f"P{j}, " for j in range(ndim))
    body = [
        "\n@numba.njit(nogil=True, cache=CACHE)\n",
        "def kernel(a, b, keys, burn, h, shrink, start):\n",
        f"    ({hs}) = h\n",
        f"    ({ps}) = a.shape\n",
        "    src = a\n",
        "    dst = b\n",
        "    for s in range(keys.shape[0]):\n",
        "        key = keys[s]\n",
        "        notburn = not burn[s]\n",
        "        lo = start + s + 1 if shrink else 1\n",
        f"        m = P{last} - 2 * lo\n",
        f"        hh = h{last}[lo : lo + m]\n",
    ]
    indent = "        "
    r = "key"
    for j in range(last):
        body.append(f"{indent}for i{j} in range(lo, P{j} - lo):\n")
        indent += "    "
        body.append(f"{indent}r{j} = {r} + h{j}[i{j}]\n")
        r = f"r{j}"
    lead = "".join(f"i{j}, " for j in range(last))
    views = [
        f"dst[{lead}lo : lo + m]",
        f"src[{lead}lo : lo + m]",
        f"src[{lead}lo - 1 : lo - 1 + m]",
        f"src[{lead}lo + 1 : lo + 1 + m]",
    ]
    for j in range(last):
        for delta in ("- 1", "+ 1"):
            idx = "".join(f"i{i}{' ' + delta if i == j else ''}, " for i in range(last))
            views.append(f"src[{idx}lo : lo + m]")
    body.append(f"{indent}row({', '.join(views)}, hh, {r}, notburn, m)\n")
    body.append("        src, dst = dst, src\n")
    return "".join(body)


def _choices_source(ndim: int, n: int) -> str:
    last = ndim - 1
    hs = "".join(f"h{j}, " for j in range(ndim))
    body = [
        "\n@numba.njit(nogil=True, cache=CACHE)\n",
        "def choices(h, key, out):\n",
        f"    ({hs}) = h\n",
    ]
    indent = "    "
    r = "key"
    for j in range(ndim):
        body.append(f"{indent}for i{j} in range(out.shape[{j}]):\n")
        indent += "    "
        if j < last:
            body.append(f"{indent}r{j} = {r} + h{j}[i{j}]\n")
            r = f"r{j}"
    body.append(_hash(indent, f"{r} + h{last}[i{last}]"))
    body.append(_choice(indent, n))
    body.append(f"{indent}out[{', '.join(f'i{j}' for j in range(ndim))}] = c\n")
    return "".join(body)


def _source(ndim: int) -> str:
    n = 2 * ndim
    constants = _CONSTANTS.format(
        golden=_GOLDEN, mix1=_MIX1, mix2=_MIX2, n=n, shift=64 - (n.bit_length() - 1)
    )
    return constants + _row_source(ndim, n) + _kernel_source(ndim) + _choices_source(ndim, n)


def kernel(ndim: int) -> Any:
    """The compiled module for ``ndim`` dims (functions ``kernel``, ``choices``)."""
    return _codegen.load(_source(ndim), f"fractal_{ndim}d", "gridflow._kernels.fractal")


def global_hashes(
    shape: tuple[int, ...], origin: tuple[int, ...], size: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Per axis, ``(global index along it) * stride * G`` (mod 2**64) of each local cell.

    Local cell ``i`` of axis ``k`` is global cell ``(origin[k] + i) mod
    shape[k]``; summing one entry per axis and a stream key gives the
    hash input ``key + flat_index * G`` of that cell.
    """
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    out = []
    for n, o, p, stride in zip(shape, origin, size, strides, strict=True):
        g = (np.arange(o, o + p) % n).astype(np.uint64)
        out.append(g * np.uint64(stride) * np.uint64(_GOLDEN))
    return tuple(out)


def keys(seed: int, first: int, steps: int) -> np.ndarray:
    """Stream keys of iterations ``first .. first + steps - 1``."""
    return np.array([stream_key(seed, t) for t in range(first, first + steps)], dtype=np.uint64)


def run(
    block: np.ndarray,
    *,
    seed: int,
    first: int,
    marks: tuple[int, ...],
    burn_in: int,
    hashes: tuple[np.ndarray, ...],
    wrap: tuple[bool, ...] | None,
) -> np.ndarray:
    """Run iterations ``first ..`` on one block; the labels after ``marks`` steps.

    ``marks`` are increasing step counts, the last one all the steps of the
    round. ``wrap=None``: ``block`` is haloed ``marks[-1]`` deep on every
    side and each mark gives the interior. Otherwise ``block`` is a whole
    grid padded by one cell (wrapped where ``wrap`` is true, else -2) and
    each mark gives the unpadded grid. ``hashes`` are the
    :func:`global_hashes` of the block. Returns ``(len(marks), *interior)``.
    """
    mod = kernel(block.ndim)
    shrink = wrap is None
    depth = marks[-1] if shrink else 1
    interior = tuple(slice(depth, s - depth) for s in block.shape)
    a = block.copy()
    b = np.empty_like(a) if shrink else a.copy()
    out = np.empty((len(marks), *a[interior].shape), a.dtype)
    done = 0
    for i, mark in enumerate(marks):
        if mark > done:
            burn = np.arange(first + done, first + mark) <= burn_in
            stream = keys(seed, first + done, mark - done)
            if shrink:
                mod.kernel(a, b, stream, burn, hashes, True, done)
                if (mark - done) % 2:  # every step swaps the two buffers
                    a, b = b, a
            else:
                # One step per call, the pad refreshed in between (NumPy does
                # it as fast, and numba compiles N-D slice copies slowly).
                for s in range(mark - done):
                    _refresh(a, wrap)
                    mod.kernel(a, b, stream[s : s + 1], burn[s : s + 1], hashes, False, 0)
                    a, b = b, a
        done = mark
        out[i] = a[interior]
    return out


def _refresh(a: np.ndarray, wrap: tuple[bool, ...]) -> None:
    """Copy opposite edges into the one-cell pad of the wrapped axes."""
    for axis, w in enumerate(wrap):
        if w:
            lead = (slice(None),) * axis
            a[(*lead, 0)] = a[(*lead, -2)]
            a[(*lead, -1)] = a[(*lead, 1)]


def choices(
    seed: int, t: int, shape: tuple[int, ...], origin: tuple[int, ...], size: tuple[int, ...]
) -> np.ndarray:
    """The compiled kernel's neighbour choices of a block at iteration ``t``."""
    out = np.empty(size, np.int64)
    kernel(len(shape)).choices(
        global_hashes(shape, origin, size), np.uint64(stream_key(seed, t)), out
    )
    return out
