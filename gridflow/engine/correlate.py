"""Window correlation of planes, by the fastest exact method.

``correlate(planes, kernel)`` correlates every plane ``planes[k]`` with a
window kernel (centre included). Kernel weights are dyadic (see
:mod:`gridflow.kernels`), so on values that are integers or multiples of
the quantum every method — direct sums, separable passes, running sums
for box windows, an FFT rounded back to the weights' quantum — gives the
same bits. The array functions come from the chunk's backend
(:func:`gridflow.backend.ops`), so one body serves NumPy and CuPy chunks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gridflow.backend import Backend, ops
from gridflow.kernels import Kernel

__all__ = ["choose_method", "correlate", "fft_exact", "has_lines", "method_cost", "wrap_flags"]

_EPS = np.finfo(np.float64).eps


# --- correlation methods ------------------------------------------------------


# Each method correlates every plane with the kernel. ``wrap`` holds one
# flag per grid dim: True, the block holds that dim whole on a periodic grid
# and wraps around along it; False, zero beyond the block along it. Direct
# sums, separable passes and running sums see those zeros exactly; the FFT
# only with ``exact`` (it then pads by the radius): without, it may wrap
# within the radius of the block's edge, where callers that carry a halo
# never read.

Wrap = tuple[bool, ...]


def _mode(wrap: bool) -> str:
    return "wrap" if wrap else "constant"


def _direct(planes: Any, kernel: Kernel, wrap: Wrap, exact: bool = False) -> Any:
    b = ops(planes)
    # A backend with a fused window kernel (CuPy: one thread a cell, every tap)
    # runs it: the same sums, so the same bits.
    fused = getattr(b.kernel("vote"), "window_votes_planes", None)
    if fused is not None:
        return fused(planes, kernel.weights, wrap, exact)
    weights = b.xp.asarray(kernel.weights)
    if len(set(wrap)) > 1:
        # Some dims wrap and some do not: wrap those by padding, then zeros beyond.
        pairs = list(zip(kernel.radius, wrap, strict=True))
        width = [(0, 0), *((r, r) if w else (0, 0) for r, w in pairs)]
        inner = (slice(None), *(slice(r, -r) if w and r else slice(None) for r, w in pairs))
        padded = b.xp.pad(planes, width, mode="wrap")
        return _direct(padded, kernel, (False,) * len(wrap))[inner]
    out = b.xp.empty_like(planes)
    mode = _mode(bool(wrap and wrap[0]))
    for k in range(planes.shape[0]):
        b.ndimage.correlate(planes[k], weights, output=out[k], mode=mode, cval=0.0)
    return out


def _separable(planes: Any, kernel: Kernel, wrap: Wrap, exact: bool = False) -> Any:
    b = ops(planes)
    out = planes
    for axis, f in enumerate(kernel.factors):
        mode = _mode(wrap[axis])
        out = b.ndimage.correlate1d(out, b.xp.asarray(f), axis=axis + 1, mode=mode, cval=0.0)
    return out


def _box(planes: Any, kernel: Kernel, wrap: Wrap, exact: bool = False, out: Any = None) -> Any:
    # Sums of 0/1 (or integer) values are exact in float64, in any order.
    compiled = ops(planes).kernel("vote")
    if compiled is not None:
        return compiled.box_sums(planes, kernel.radius, wrap, out)
    xp = ops(planes).xp
    out = planes
    for axis, w in enumerate(kernel.radius):
        ax = axis + 1
        pad = [(0, 0)] * out.ndim
        pad[ax] = (w + 1, w)
        c = xp.cumsum(xp.pad(out, pad, mode=_mode(wrap[axis])), axis=ax)
        n = out.shape[ax]
        hi = xp.take(c, xp.arange(2 * w + 1, 2 * w + 1 + n), axis=ax)
        lo = xp.take(c, xp.arange(0, n), axis=ax)
        out = hi - lo
    return out


def _fft(planes: Any, kernel: Kernel, wrap: Wrap, exact: bool = False) -> Any:
    b = ops(planes)
    xp = b.xp
    shape = planes.shape[1:]
    # Along a dim that wraps, the circular correlation is exact. Along the
    # others, zero-padding to a fast size changes nothing the caller reads
    # (the cells whose window lies inside the block), or, ``exact``,
    # padding by the radius leaves exact zeros beyond the block.
    fast = tuple(
        n if w else b.fft.next_fast_len(n + r * exact, real=True)
        for n, r, w in zip(shape, kernel.radius, wrap, strict=True)
    )
    spectrum = _kernel_spectrum(b, kernel, fast)
    inside = tuple(slice(0, n) for n in shape)
    out = xp.empty(planes.shape)
    # Small blocks: every plane in one call (threads get enough work); large
    # ones a plane at a time (the spectra of all planes at once cost memory
    # and no time).
    batch = planes.shape[0] if planes[0].size <= _FFT_BATCH_CELLS else 1
    axes = tuple(range(1, planes.ndim))
    for k in range(0, planes.shape[0], batch):
        a = _rfftn(b, planes[k : k + batch], fast, axes)
        a *= spectrum
        part = _irfftn(b, a, fast, axes)[(slice(None), *inside)]
        # Exact votes are multiples of the quantum (a power of two, so
        # scaling by it is exact); the FFT error is far below half a quantum.
        part *= 1.0 / kernel.quantum
        xp.rint(part, out=part)
        xp.multiply(part, kernel.quantum, out=out[k : k + batch])
    return out


# rfftn/irfftn one axis at a time: the same transforms, and scipy's inverse
# runs about 1.6x faster than its irfftn (which copies the spectrum before
# its complex passes; here they overwrite it).


def _rfftn(b: Backend, x: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> Any:
    opts = b.fft_kwargs()
    a = b.fft.rfft(x, n=shape[-1], axis=axes[-1], **opts)
    for n, ax in zip(shape[:-1], axes[:-1], strict=True):
        a = b.fft.fft(a, n=n, axis=ax, overwrite_x=True, **opts)
    return a


def _irfftn(b: Backend, a: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> Any:
    opts = b.fft_kwargs()
    for ax in axes[:-1]:
        a = b.fft.ifft(a, axis=ax, overwrite_x=True, **opts)
    return b.fft.irfft(a, n=shape[-1], axis=axes[-1], overwrite_x=True, **opts)


#: Blocks of at most this many cells per plane are transformed all planes at once.
_FFT_BATCH_CELLS = 2**18


@functools.lru_cache(maxsize=32)
def _kernel_spectrum(b: Backend, kernel: Kernel, shape: tuple[int, ...]) -> Any:
    """Conjugate spectrum of the kernel embedded for circular correlation."""
    emb = np.zeros(shape)
    # Weight of offset u goes to index u mod shape.
    idx = np.ix_(*[np.arange(-r, r + 1) % n for r, n in zip(kernel.radius, shape, strict=True)])
    emb[idx] = kernel.weights
    return b.xp.conj(b.fft.rfftn(b.xp.asarray(emb), **b.fft_kwargs()))


def _lines(planes: Any, kernel: Kernel, wrap: Wrap, exact: bool = False) -> Any:
    # The compiled direct sum along contiguous lines (NumPy backend): zeros
    # beyond an edge that does not wrap, as `exact` asks.
    return ops(planes).kernel("vote").line_sums(planes, kernel.weights, wrap)


def has_lines(b: Backend) -> bool:
    """Whether backend ``b`` has the compiled line sums (:func:`_lines`)."""
    return hasattr(b.kernel("vote"), "line_sums")


#: Cost of one operation of the line sums (a line addition or a multiply-add),
#: in the units of :func:`choose_method`: 0.15 ns (2-D, long lines) to 0.34 ns
#: (3-D lines of 165 cells) measured per operation on a 2-core EPYC VM.
_LINE_COST = 0.7

_METHODS: dict[str, Callable[[Any, Kernel, Wrap, bool], Any]] = {
    "lines": _lines,
    "direct": _direct,
    "separable": _separable,
    "box": _box,
    "fft": _fft,
}


def fft_exact(kernel: Kernel, shape: tuple[int, ...], scale: float = 1.0) -> bool:
    """Whether FFT round-off stays well under half a quantum on this block."""
    n = math.prod(shape)
    error = 64 * _EPS * kernel.weights.sum() * scale * max(1.0, math.log2(n))
    return error < kernel.quantum / 4


def choose_method(
    kernel: Kernel, shape: tuple[int, ...], scale: float = 1.0, lines: bool = True
) -> str:
    """The fastest exact correlation method for ``kernel`` on a block of ``shape``.

    Cost per cell and plane: direct ``prod(2w+1)``, separable ``sum(2w+1)``,
    box about ``3 * ndim``, FFT about ``6 log2(cells)`` (only when its
    round-off cannot reach half a quantum), and, where the backend has them
    (``lines``: NumPy's compiled kernels), the line sums' operations
    (:func:`gridflow._kernels.vote.line_cost`) while their sums stay exact.
    """
    if kernel.is_box:
        return "box"
    taps = float(kernel.weights.size)
    costs = {"direct": taps}
    if kernel.separable:
        costs["separable"] = float(sum(kernel.weights.shape))
    if fft_exact(kernel, shape, scale):
        costs["fft"] = 6.0 * math.log2(max(2, math.prod(shape)))
    if lines and _lines_exact(kernel, scale):
        costs["lines"] = _LINE_COST * _line_ops(kernel)
    return min(costs, key=costs.get)


def _lines_exact(kernel: Kernel, scale: float) -> bool:
    """Whether every partial sum of the line sums is a multiple of the quantum below 2**53."""
    return float(kernel.weights.sum()) * scale / kernel.quantum < 2.0**53


def _line_ops(kernel: Kernel) -> float:
    from gridflow._kernels.vote import line_cost

    return float(line_cost(kernel.weights))


def correlate(
    planes: Any,
    kernel: Kernel,
    method: str = "auto",
    wrap: bool | Sequence[bool] = False,
    exact: bool = False,
    out: Any = None,
) -> Any:
    """Correlate each plane ``planes[k]`` with the kernel (into ``out`` when given).

    ``wrap``: one flag per grid dim (or one for all). Along a dim that
    wraps, the block is the whole periodic grid. Along the others, cells
    within the window radius of the block's edge are unspecified (callers
    pad blocks with a halo), or, with ``exact``, see zeros beyond the edge
    (a dim held whole on an open grid).
    """
    wrap = wrap_flags(wrap, planes.ndim - 1)
    if method == "auto":
        # (CuPy's max takes no `initial`.)
        top = max(1.0, float(planes.max())) if planes.size else 1.0
        method = choose_method(kernel, planes.shape[1:], top, has_lines(ops(planes)))
    if method == "box" and ops(planes).kernel("vote") is not None:
        # The compiled box sums take integer counts as they are, and write `out`.
        return _box(planes, kernel, wrap, exact, out)
    result = _METHODS[method](planes.astype(np.float64, copy=False), kernel, wrap, exact)
    if out is None:
        return result
    out[...] = result
    return out


def wrap_flags(wrap: bool | Sequence[bool], ndim: int) -> Wrap:
    """One wrap flag per dim, from one flag or a sequence of them."""
    if isinstance(wrap, (bool, np.bool_)):
        return (bool(wrap),) * ndim
    flags = tuple(bool(w) for w in wrap)
    if len(flags) != ndim:
        raise ValueError(f"wrap: expected {ndim} flags, got {len(flags)}")
    return flags


def method_cost(kernel: Kernel, shape: tuple[int, ...], method: str) -> float:
    """Cost of correlating one plane of ``shape`` with ``method`` (``"auto"``: the chosen one)."""
    if method == "auto":
        method = choose_method(kernel, shape)
    n = math.prod(shape)
    per_cell = {
        "lines": _LINE_COST * _line_ops(kernel) if method == "lines" else 0.0,
        "direct": float(kernel.weights.size),
        "separable": float(sum(kernel.weights.shape)),
        "box": 3.0 * len(shape),
        "fft": 6.0 * math.log2(max(2, n)),
    }[method]
    return n * per_cell
