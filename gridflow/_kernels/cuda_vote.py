"""CUDA kernels of the vote step, for CuPy chunks (numba.cuda).

The functions of :mod:`gridflow._kernels.vote` (one-hot planes, decisions,
the last plane, summaries, box sums, sparse updates), with the same
signatures and the same results bit for bit, on device arrays; plus
:func:`window_votes`, one fused kernel for the votes of a step straight
from the labels, and :func:`window_votes_planes` for given planes
(``seed="counts"``).

Votes are exact multiples of the kernel's quantum (see
:mod:`gridflow.kernels`), so the order in which threads add them never
changes a bit: the sparse update adds with atomics (float64 atomics: compute
capability 6.0 or later), and a window's taps are summed in whatever order
suits a thread. Where the CPU kernels sum values that need not be exact
(box sums of float planes, the decision's total) these sum in the same
order. Box sums run every pass in float64, where the CPU sums small counts
in float32: the same bits, as both are exact.

Each kernel covers the cells with a 1-D grid of 256-thread blocks, on
CuPy's current stream. Arrays are CuPy arrays on a device (numba reads
their ``__cuda_array_interface__``) or NumPy arrays under numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how
``tests/engine/test_cuda_vote.py`` checks every function against the CPU
kernels without a GPU. Outputs are allocated with the input's array
module. Neither numba.cuda nor CuPy is imported before the first call.
"""

from __future__ import annotations

import functools
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

#: Threads per block.
_THREADS = 256

#: ``numba.cuda``, bound on first use. The kernels must name it as a module
#: global: the simulator swaps such globals for its fake module while a
#: kernel runs.
cuda: Any = None


def _xp(a: Any) -> ModuleType:
    """The array module of ``a``: CuPy for a CuPy array, else NumPy."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _host(a: Any) -> np.ndarray:
    return a.get() if _xp(a) is not np else np.asarray(a)


def _launch(kernel: Any, nthreads: int, xp: ModuleType, *args: Any) -> None:
    """Run ``kernel`` on ``nthreads`` threads; CuPy arrays: on CuPy's current stream,
    ordered with the CuPy work before and after it."""
    if nthreads <= 0:
        return
    blocks = (nthreads + _THREADS - 1) // _THREADS
    if xp is np:
        kernel[blocks, _THREADS](*args)
    else:
        stream = cuda.external_stream(xp.cuda.get_current_stream().ptr)
        kernel[blocks, _THREADS, stream](*args)


@functools.cache
def _compiled() -> SimpleNamespace:
    global cuda
    from numba import config, cuda, float64

    # Under the simulator a device function is a plain Python call: its
    # device-call wrapper swaps module globals on every call, which costs
    # far more than the kernels' own work.
    device = (lambda f: f) if config.ENABLE_CUDASIM else cuda.jit(device=True)

    @cuda.jit
    def onehot(labels, out):  # pragma: no cover - compiled
        i = cuda.grid(1)
        nplanes, n = out.shape
        if i < n:
            label = labels[i]
            for k in range(nplanes):
                out[k, i] = 1.0 if label == k else 0.0

    @cuda.jit
    def decide(votes, labels, total):  # pragma: no cover - compiled
        # The CPU kernel's loop for one cell: the same types, the same order.
        i = cuda.grid(1)
        nclasses, n = votes.shape
        if i < n:
            best = votes[0, i]
            arg = 0
            tot = best
            for k in range(1, nclasses):
                v = votes[k, i]
                tot += v
                if v > best:
                    best = v
                    arg = k
            total[i] = tot
            labels[i] = arg if tot > 0 else -1

    @cuda.jit
    def last_plane(votes, full):  # pragma: no cover - compiled
        i = cuda.grid(1)
        nclasses, n = votes.shape
        if i < n:
            s = 0.0
            for k in range(nclasses - 1):
                s += votes[k, i]
            votes[nclasses - 1, i] = full - s

    @cuda.jit
    def summarise(votes, out, probabilities):  # pragma: no cover - compiled
        i = cuda.grid(1)
        nclasses, n = votes.shape
        if i < n:
            tot = 0.0
            top = votes[0, i]
            for k in range(nclasses):
                v = votes[k, i]
                tot += v
                if v > top:
                    top = v
            safe = tot if tot > 0 else 1.0
            out[0, i] = top / safe if tot > 0 else 0.0
            out[1, i] = tot
            if probabilities:
                for k in range(nclasses):
                    out[2 + k, i] = votes[k, i] / safe

    @device
    def shift(c, u, n, wrap):  # pragma: no cover - compiled
        # Coordinate c + u along an axis of n cells, wrapped, or -1 beyond
        # its ends. A true modulo (any window width), whatever the sign
        # convention of the target's integer remainder.
        t = c + u
        if t < 0 or t >= n:
            if not wrap:
                return -1
            t %= n
            if t < 0:
                t += n
        return t

    @cuda.jit
    def box_axis(a, out, radius, wrap):  # pragma: no cover - compiled
        # out[o, i, j] = a[o, i, j] + the a[o, i + u, j] for u = -radius ..
        # radius (u != 0) inside the axis or wrapped: the CPU kernel's order.
        g = cuda.grid(1)
        nouter, n, ninner = a.shape
        if g < nouter * n * ninner:
            o = g // (n * ninner)
            rem = g - o * (n * ninner)
            i = rem // ninner
            j = rem - i * ninner
            acc = float64(a[o, i, j])
            for u in range(-radius, radius + 1):
                t = shift(i, u, n, wrap)
                if u != 0 and t >= 0:
                    acc += a[o, t, j]
            out[o, i, j] = acc

    @cuda.jit
    def scatter(votes, geometry, cells, old, new, offsets, weights):  # pragma: no cover - compiled
        # One thread per (changed cell, tap): the change at p moves the tap's
        # weight w(u) at target p - u from class old to class new. Targets
        # are shared between changes: atomic adds, exact in any order.
        g = cuda.grid(1)
        ntaps = weights.shape[0]
        if g < cells.shape[0] * ntaps:
            c = g // ntaps
            tap = g - c * ntaps
            a = old[c]
            b = new[c]
            if a < 0 and b < 0:
                return
            cell = cells[c]
            target = 0
            for d in range(geometry.shape[1]):
                n = geometry[0, d]
                stride = geometry[1, d]
                t = shift((cell // stride) % n, -offsets[tap, d], n, geometry[2, d])
                if t < 0:
                    return
                target += t * stride
            w = weights[tap]
            if a >= 0:
                cuda.atomic.add(votes, (a, target), -w)
            if b >= 0:
                cuda.atomic.add(votes, (b, target), w)

    return SimpleNamespace(
        device=device,
        shift=shift,
        onehot=onehot,
        decide=decide,
        last_plane=last_plane,
        summarise=summarise,
        box_axis=box_axis,
        scatter=scatter,
    )


# The window kernels are compiled per number of dims (their loops over the
# dims unrolled, the geometry in registers) and, for labels, per number of
# classes (one accumulator per class). `geometry` is the block's shape,
# C-order strides (in cells) and wrap flags: an int64 (3, ndim) array.


@functools.cache
def _window_kernels(ndim: int) -> SimpleNamespace:
    """The window kernels' device functions, and the planes kernel, for ``ndim`` dims."""
    from numba import float64, int64

    compiled = _compiled()
    shift = compiled.shift

    @compiled.device
    def prepare(i, geometry, coords, dims):  # pragma: no cover - compiled
        # The coordinates of cell i, and a local copy of the geometry.
        rem = i
        for d in range(ndim):
            for r in range(3):
                dims[r, d] = geometry[r, d]
            coords[d] = rem // dims[1, d]
            rem -= coords[d] * dims[1, d]

    @compiled.device
    def neighbour(coords, dims, offsets, tap):  # pragma: no cover - compiled
        # Flat index of the cell at coords + offsets[tap], or -1 outside.
        j = 0
        for d in range(ndim):
            t = shift(coords[d], offsets[tap, d], dims[0, d], dims[2, d])
            if t < 0:
                return -1
            j += t * dims[1, d]
        return j

    @cuda.jit
    def planes(values, geometry, offsets, weights, out):  # pragma: no cover - compiled
        # One thread per (plane, cell): the sum of w(u) * plane[p + u].
        g = cuda.grid(1)
        nplanes, n = values.shape
        if g < nplanes * n:
            k = g // n
            i = g - k * n
            coords = cuda.local.array(ndim, int64)
            dims = cuda.local.array((3, ndim), int64)
            prepare(i, geometry, coords, dims)
            acc = 0.0
            for tap in range(weights.shape[0]):
                j = neighbour(coords, dims, offsets, tap)
                if j >= 0:
                    acc += weights[tap] * float64(values[k, j])
            out[k, i] = acc

    return SimpleNamespace(prepare=prepare, neighbour=neighbour, planes=planes)


@functools.cache
def _window_kernel(ndim: int, nclasses: int) -> Any:
    """The fused label-window kernel for ``ndim`` dims and ``nclasses`` classes."""
    from numba import float64, int64

    kernels = _window_kernels(ndim)
    prepare, neighbour = kernels.prepare, kernels.neighbour

    @cuda.jit
    def window(labels, geometry, offsets, weights, out):  # pragma: no cover - compiled
        # One thread per cell: each tap's weight goes to the class of the
        # neighbour it reaches (labels < 0 or >= nclasses: none).
        i = cuda.grid(1)
        if i < labels.shape[0]:
            coords = cuda.local.array(ndim, int64)
            dims = cuda.local.array((3, ndim), int64)
            acc = cuda.local.array(nclasses, float64)
            prepare(i, geometry, coords, dims)
            for k in range(nclasses):
                acc[k] = 0.0
            for tap in range(weights.shape[0]):
                j = neighbour(coords, dims, offsets, tap)
                if j >= 0:
                    # A compare per class (unrolled) keeps `acc` in registers.
                    label = labels[j]
                    for k in range(nclasses):
                        if label == k:
                            acc[k] += weights[tap]
            for k in range(nclasses):
                out[k, i] = acc[k]

    return window


# --- the functions of gridflow._kernels.vote -----------------------------------------


def onehot(labels: Any, nplanes: int) -> Any:
    """``(nplanes, *labels.shape)`` float64 indicators of classes ``0..nplanes-1``."""
    xp = _xp(labels)
    flat = xp.ascontiguousarray(labels).reshape(-1)
    out = xp.empty((nplanes, flat.size))
    if nplanes > 0:
        _launch(_compiled().onehot, flat.size, xp, flat, out)
    return out.reshape((nplanes, *labels.shape))


def decide(votes: Any) -> tuple[Any, Any]:
    """Labels (int32) and total vote of ``votes`` (nclasses, *shape)."""
    xp = _xp(votes)
    shape = votes.shape[1:]
    flat = xp.ascontiguousarray(votes).reshape(votes.shape[0], -1)
    labels = xp.empty(flat.shape[1], np.int32)
    total = xp.empty(flat.shape[1])
    _launch(_compiled().decide, flat.shape[1], xp, flat, labels, total)
    return labels.reshape(shape), total.reshape(shape)


def summarise(votes: Any, probabilities: bool) -> Any:
    """float32 ``[confidence, total, *probability]`` planes of ``votes`` (nclasses, *shape)."""
    xp = _xp(votes)
    shape = votes.shape[1:]
    flat = xp.ascontiguousarray(votes, dtype=np.float64).reshape(votes.shape[0], -1)
    out = xp.empty((2 + votes.shape[0] * bool(probabilities), flat.shape[1]), np.float32)
    _launch(_compiled().summarise, flat.shape[1], xp, flat, out, bool(probabilities))
    return out.reshape((out.shape[0], *shape))


def complete_last_plane(votes: Any, full: float) -> None:
    """Fill ``votes[-1]`` in place as ``full`` minus the other planes."""
    with _in_place(votes) as flat:
        _launch(_compiled().last_plane, flat.shape[1], _xp(votes), flat, float(full))


class _in_place:
    """``votes`` as a C-contiguous ``(nplanes, ncells)`` array, written back on exit
    when that took a copy (the CPU kernels assume contiguous votes)."""

    def __init__(self, votes: Any) -> None:
        self.votes = votes
        self.copied = not votes.flags.c_contiguous
        flat = _xp(votes).ascontiguousarray(votes) if self.copied else votes
        self.flat = flat.reshape(votes.shape[0], -1)

    def __enter__(self) -> Any:
        return self.flat

    def __exit__(self, *exc: object) -> None:
        if self.copied:
            self.votes[...] = self.flat.reshape(self.votes.shape)


def scatter_changes(
    votes: Any,
    weights: np.ndarray,
    cells: Any,
    old: Any,
    new: Any,
    wrap: bool | tuple[bool, ...],
) -> None:
    """Update ``votes`` (nclasses, *shape) in place for label changes.

    ``cells`` are flat indices of the cells whose label went from ``old``
    to ``new`` (negative: no class). ``wrap``: per dim (or one flag for
    all), whether the block wraps around along it; along the others targets
    outside the block are dropped.
    """
    xp = _xp(votes)
    shape = votes.shape[1:]
    offsets, taps = _taps(weights)
    cells = xp.asarray(cells).astype(np.int64, copy=False).reshape(-1)
    with _in_place(votes) as flat:
        _launch(
            _compiled().scatter,
            cells.size * taps.size,
            xp,
            flat,
            _geometry(xp, shape, wrap),
            cells,
            xp.asarray(old).astype(np.int32, copy=False).reshape(-1),
            xp.asarray(new).astype(np.int32, copy=False).reshape(-1),
            xp.asarray(offsets),
            xp.asarray(taps),
        )


def box_sums(
    planes: Any,
    radius: tuple[int, ...],
    wrap: tuple[bool, ...],
    out: Any = None,
) -> Any:
    """Box sums of ``planes`` (nplanes, *shape), one axis at a time: along
    grid dim ``j`` the sum over ``|u| <= radius[j]``, wrapped where
    ``wrap[j]``, zeros beyond the block elsewhere. Exact on integer values;
    returns float64 (into ``out`` when given: C-contiguous float64).
    """
    xp = _xp(planes)
    box_axis = _compiled().box_axis
    if out is None or out.dtype != np.float64 or not out.flags.c_contiguous:
        out = xp.empty(planes.shape)
    axes = [j for j, r in enumerate(radius) if r > 0]
    if not axes:
        out[...] = planes
        return out
    # Every pass in float64 (the CPU's float32 passes on small counts are
    # exact, so the bits agree); the passes alternate between two buffers
    # and the last writes `out`.
    buffers = [xp.empty(planes.shape) for _ in range(min(2, len(axes) - 1))]
    cur = xp.ascontiguousarray(planes)
    for k, j in enumerate(axes):
        dst = out if k == len(axes) - 1 else buffers[k % 2]
        n = cur.shape[j + 1]
        outer = int(np.prod(cur.shape[: j + 1]))
        _launch(
            box_axis,
            cur.size,
            xp,
            cur.reshape(outer, n, -1),
            dst.reshape(outer, n, -1),
            int(radius[j]),
            bool(wrap[j]),
        )
        cur = dst
    return out


# --- fused window kernels -----------------------------------------------------------


def window_votes(
    labels: Any,
    weights: np.ndarray,
    nclasses: int,
    wrap: bool | tuple[bool, ...],
    exact: bool,
    out: Any = None,
) -> Any:
    """Votes ``(nclasses, *labels.shape)`` float64 of one step, straight from the labels.

    For each cell, the sum over the window offsets ``u`` of ``weights[r + u]``
    into the class of the neighbour at ``u`` (labels < 0 or >= ``nclasses``
    do not vote), wrapping along the dims where ``wrap`` (one flag, or one
    per dim). Beyond an edge that does not wrap nothing votes, with or
    without ``exact`` (without, the engine reads no cell within the radius
    of such an edge, so this is one of the allowed results). The bits of
    ``gridflow.engine.vote.vote(labels, nclasses, kernel, "direct", None,
    wrap, True)``. Written into ``out`` when given.
    """
    xp = _xp(labels)
    flat = xp.ascontiguousarray(labels).reshape(-1)
    offsets, taps = _taps(weights)
    result = _output(xp, (nclasses, *labels.shape), out)
    if nclasses > 0:
        _launch(
            _window_kernel(labels.ndim, int(nclasses)),
            flat.size,
            xp,
            flat,
            _geometry(xp, labels.shape, wrap),
            xp.asarray(offsets),
            xp.asarray(taps),
            result.reshape(nclasses, -1),
        )
    return _finish(result, out)


def window_votes_planes(
    planes: Any,
    weights: np.ndarray,
    wrap: bool | tuple[bool, ...],
    exact: bool,
    out: Any = None,
) -> Any:
    """Window correlation ``(nplanes, *shape)`` float64 of ``planes`` (nplanes, *shape).

    Each plane's cell gets the sum over the window offsets ``u`` of
    ``weights[r + u] * plane[p + u]``, wrapping and edges as in
    :func:`window_votes`: the bits of
    ``gridflow.engine.correlate.correlate(planes, kernel, "direct", wrap, True)``
    whenever the products are multiples of the quantum (integer planes such
    as class counts, or multiples of a power of two): then every sum is
    exact in any order. Written into ``out`` when given.
    """
    xp = _xp(planes)
    nplanes = planes.shape[0]
    flat = xp.ascontiguousarray(planes).reshape(nplanes, -1)
    offsets, taps = _taps(weights)
    result = _output(xp, planes.shape, out)
    _launch(
        _window_kernels(planes.ndim - 1).planes,
        flat.size,
        xp,
        flat,
        _geometry(xp, planes.shape[1:], wrap),
        xp.asarray(offsets),
        xp.asarray(taps),
        result.reshape(nplanes, -1),
    )
    return _finish(result, out)


@functools.lru_cache(maxsize=32)
def _taps_of(key: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    weights = np.frombuffer(key).reshape(shape)
    # Taps of weight zero add nothing (+0.0 stays +0.0): left out.
    where = np.argwhere(weights != 0)
    offsets = np.ascontiguousarray(where - np.asarray([s // 2 for s in shape]), np.int64)
    return offsets, np.ascontiguousarray(weights[tuple(where.T)], np.float64)


def _taps(weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``(T, ndim)`` from the window centre and weights ``(T,)`` of its nonzero taps."""
    w = np.ascontiguousarray(_host(weights), np.float64)
    return _taps_of(w.tobytes(), w.shape)


def _geometry(xp: ModuleType, shape: tuple[int, ...], wrap: Any) -> Any:
    """A block's shape, C-order strides (in cells) and wrap flags: (3, ndim) int64, on the device."""
    strides = [int(np.prod(shape[d + 1 :])) for d in range(len(shape))]
    flags = np.broadcast_to(np.asarray(wrap, np.bool_), (len(shape),))
    return xp.asarray(np.array([shape, strides, flags], np.int64).reshape(3, len(shape)))


def _output(xp: ModuleType, shape: tuple[int, ...], out: Any) -> Any:
    """``out`` when it is a C-contiguous float64 array of ``shape``, else a new one."""
    if out is not None and out.dtype == np.float64 and out.flags.c_contiguous:
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        return out
    return xp.empty(shape)


def _finish(result: Any, out: Any) -> Any:
    if out is None or result is out:
        return result
    out[...] = result
    return out
