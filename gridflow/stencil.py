"""The filter engine: vote steps on blocks, fused into ``map_overlap`` rounds.

One vote step turns labels into per-class votes and new labels (DESIGN §3.1):

    V[k] = kernel ⊛ onehot(L)[k]     (correlation over the window, centre included)
    L'   = argmax_k V[k] where Σ_k V[k] > 0, else -1   (ties: lowest class)

The votes are exact: weights are dyadic (see :mod:`gridflow.kernels`), so the
method that computes the correlation (direct sums, separable passes, running
sums for box windows, FFT rounded back to the weights' quantum) never changes
a single bit, and neither do the chunking or the number of steps fused into
one round. Within a round, a step after the first updates the previous
votes in place when few cells changed label (moving each change's weights
from its old class to its new one: exact, so again the same bits), which
is much cheaper than a new correlation once the labels settle. A round of ``f`` fused steps needs a halo of ``f * w`` cells; cells
outside an ``"open"`` grid carry the sentinel :data:`OUTSIDE` and never vote.

This module works on NumPy arrays and dask arrays; it knows nothing of
xarray or Zarr.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import scipy.fft
import scipy.ndimage as ndi
from dask.array.overlap import ensure_minimum_chunksize

from gridflow.errors import ParameterError
from gridflow.kernels import Kernel

__all__ = [
    "OUTSIDE",
    "UNLABELED",
    "choose_method",
    "correlate",
    "fused_steps",
    "history_entries",
    "run_numpy",
    "vote",
]

Method = Literal["auto", "direct", "separable", "box", "fft"]
Boundary = Literal["periodic", "open"]

UNLABELED = -1
#: Label of cells beyond an open boundary: they do not exist and never vote.
OUTSIDE = -2

_EPS = np.finfo(np.float64).eps


# --- correlation methods ------------------------------------------------------


# Each method correlates every plane with the kernel. ``wrap=False``: zero
# outside the block (callers read only cells whose window lies inside it);
# ``wrap=True``: the block is a whole periodic grid and wraps around.


def _direct(planes: np.ndarray, kernel: Kernel, wrap: bool) -> np.ndarray:
    out = np.empty_like(planes)
    mode = "wrap" if wrap else "constant"
    for k in range(planes.shape[0]):
        ndi.correlate(planes[k], kernel.weights, output=out[k], mode=mode, cval=0.0)
    return out


def _separable(planes: np.ndarray, kernel: Kernel, wrap: bool) -> np.ndarray:
    out = planes
    mode = "wrap" if wrap else "constant"
    for axis, f in enumerate(kernel.factors):
        out = ndi.correlate1d(out, f, axis=axis + 1, mode=mode, cval=0.0)
    return out


def _box(planes: np.ndarray, kernel: Kernel, wrap: bool) -> np.ndarray:
    # Running sums of 0/1 (or integer) values are exact in float64.
    out = planes
    for axis, w in enumerate(kernel.radius):
        ax = axis + 1
        pad = [(0, 0)] * out.ndim
        pad[ax] = (w + 1, w)
        c = np.cumsum(np.pad(out, pad, mode="wrap" if wrap else "constant"), axis=ax)
        n = out.shape[ax]
        hi = np.take(c, np.arange(2 * w + 1, 2 * w + 1 + n), axis=ax)
        lo = np.take(c, np.arange(0, n), axis=ax)
        out = hi - lo
    return out


def _fft(planes: np.ndarray, kernel: Kernel, wrap: bool) -> np.ndarray:
    shape = planes.shape[1:]
    # A whole periodic grid is exactly the circular correlation. Otherwise
    # zero-padding to a fast size changes nothing: the correlation is only
    # read at cells whose window lies inside the block.
    fast = shape if wrap else tuple(scipy.fft.next_fast_len(n, real=True) for n in shape)
    spectrum = _kernel_spectrum(kernel, fast)
    inside = tuple(slice(0, n) for n in shape)
    out = np.empty(planes.shape)
    # Small blocks: every plane in one call (threads get enough work); large
    # ones a plane at a time (the spectra of all planes at once cost memory
    # and no time).
    batch = planes.shape[0] if planes[0].size <= _FFT_BATCH_CELLS else 1
    axes = tuple(range(1, planes.ndim))
    for k in range(0, planes.shape[0], batch):
        a = _rfftn(planes[k : k + batch], fast, axes)
        a *= spectrum
        part = _irfftn(a, fast, axes)[(slice(None), *inside)]
        # Exact votes are multiples of the quantum (a power of two, so
        # scaling by it is exact); the FFT error is far below half a quantum.
        part *= 1.0 / kernel.quantum
        np.rint(part, out=part)
        np.multiply(part, kernel.quantum, out=out[k : k + batch])
    return out


# scipy.fft.rfftn/irfftn one axis at a time: the same transforms, and the
# inverse runs about 1.6x faster than irfftn's (which copies the spectrum
# before its complex passes; here they overwrite it).


def _rfftn(x: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    a = scipy.fft.rfft(x, n=shape[-1], axis=axes[-1], workers=-1)
    for n, ax in zip(shape[:-1], axes[:-1], strict=True):
        a = scipy.fft.fft(a, n=n, axis=ax, workers=-1, overwrite_x=True)
    return a


def _irfftn(a: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    for ax in axes[:-1]:
        a = scipy.fft.ifft(a, axis=ax, workers=-1, overwrite_x=True)
    return scipy.fft.irfft(a, n=shape[-1], axis=axes[-1], workers=-1, overwrite_x=True)


#: Blocks of at most this many cells per plane are transformed all planes at once.
_FFT_BATCH_CELLS = 2**18


@functools.lru_cache(maxsize=32)
def _kernel_spectrum(kernel: Kernel, shape: tuple[int, ...]) -> np.ndarray:
    """Conjugate spectrum of the kernel embedded for circular correlation."""
    emb = np.zeros(shape)
    # Weight of offset u goes to index u mod shape.
    idx = np.ix_(*[np.arange(-r, r + 1) % n for r, n in zip(kernel.radius, shape, strict=True)])
    emb[idx] = kernel.weights
    return np.conj(scipy.fft.rfftn(emb, workers=-1))


_METHODS: dict[str, Callable[[np.ndarray, Kernel, bool], np.ndarray]] = {
    "direct": _direct,
    "separable": _separable,
    "box": _box,
    "fft": _fft,
}


def _fft_exact(kernel: Kernel, shape: tuple[int, ...], scale: float = 1.0) -> bool:
    """Whether FFT round-off stays well under half a quantum on this block."""
    n = math.prod(shape)
    error = 64 * _EPS * kernel.weights.sum() * scale * max(1.0, math.log2(n))
    return error < kernel.quantum / 4


def choose_method(kernel: Kernel, shape: tuple[int, ...], scale: float = 1.0) -> str:
    """The fastest exact correlation method for ``kernel`` on a block of ``shape``.

    Cost per cell and plane: direct ``prod(2w+1)``, separable ``sum(2w+1)``,
    box about ``3 * ndim``, FFT about ``6 log2(cells)`` (only when its
    round-off cannot reach half a quantum).
    """
    if kernel.is_box:
        return "box"
    taps = float(kernel.weights.size)
    costs = {"direct": taps}
    if kernel.separable:
        costs["separable"] = float(sum(kernel.weights.shape))
    if _fft_exact(kernel, shape, scale):
        costs["fft"] = 6.0 * math.log2(max(2, math.prod(shape)))
    return min(costs, key=costs.get)


def correlate(
    planes: np.ndarray, kernel: Kernel, method: str = "auto", wrap: bool = False
) -> np.ndarray:
    """Correlate each plane ``planes[k]`` with the kernel (zero outside the block).

    Values within the window radius of the block's edge see only the block
    (or, for FFT, wrap around it): callers pad blocks with a halo.
    """
    if method == "auto":
        method = choose_method(kernel, planes.shape[1:], float(planes.max(initial=1.0)))
    return _METHODS[method](planes.astype(np.float64, copy=False), kernel, wrap)


# --- one step, and fused steps ------------------------------------------------------


def vote(
    labels: np.ndarray,
    nclasses: int,
    kernel: Kernel,
    method: str = "auto",
    planes: np.ndarray | None = None,
    wrap: bool = False,
) -> np.ndarray:
    """Votes ``V`` (nclasses, *labels.shape) of one step; ``planes`` replaces the one-hot.

    Cells within the window radius of the block's edge (unless ``wrap``)
    get unspecified votes: callers read only cells whose window lies inside.
    """
    if planes is not None:
        return correlate(planes, kernel, method, wrap)
    # When every cell is labeled, the class votes of a cell add up to the
    # kernel's sum (exactly: they are multiples of its quantum), so the last
    # class needs no correlation of its own.
    full = nclasses > 1 and labels.size > 0 and int(labels.min()) >= 0
    nplanes = nclasses - 1 if full else nclasses
    votes = np.empty((nclasses, *labels.shape))
    votes[:nplanes] = correlate(_votekernel().onehot(labels, nplanes), kernel, method, wrap)
    if full:
        _votekernel().complete_last_plane(votes, kernel.weights.sum())
    return votes


def decide(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New labels and total vote: argmax (lowest class on ties) where the total is > 0."""
    return _votekernel().decide(votes)


def _votekernel() -> Any:
    from gridflow import _votekernel

    return _votekernel


# Cost of moving one tap of one changed cell (from its old class plane to its
# new one), in the units of the per-cell costs below (one unit is about
# 0.35 ns of CPU: a float64 FFT of a 4096 x 4096 plane there and back costs
# 6 * 24 units per cell, 0.85 s; a sparse update costs about 5 ns per tap,
# measured on the 4096 x 4096 window case of benchmarks/bench_classify.py).
_SCATTER_COST = 14.0


def _update_cost(nchanged: int, kernel: Kernel) -> float:
    """Cost of moving ``nchanged`` cells' weights between two class planes."""
    return _SCATTER_COST * nchanged * kernel.weights.size


def _vote_cost(nplanes: int, shape: tuple[int, ...], kernel: Kernel, method: str) -> float:
    if method == "auto":
        method = choose_method(kernel, shape)
    n = math.prod(shape)
    per_cell = {
        "direct": float(kernel.weights.size),
        "separable": float(sum(kernel.weights.shape)),
        "box": 3.0 * len(shape),
        "fft": 6.0 * math.log2(max(2, n)),
    }[method]
    return nplanes * n * per_cell


def fused_steps(
    labels: np.ndarray,
    density: np.ndarray | None,
    *,
    nclasses: int,
    kernel: Kernel,
    steps: int,
    first_step: int,
    method: str = "auto",
    clamp: np.ndarray | None = None,
    seed: np.ndarray | None = None,
    depth: tuple[int, ...] | None = None,
    final_votes: bool = False,
    wrap: bool = False,
) -> np.ndarray:
    """Run ``steps`` vote steps on one haloed block and return its interior.

    ``labels`` carries a halo of ``depth`` cells (default ``steps * w``) per
    side; cells equal to :data:`OUTSIDE` do not exist and never vote.
    ``density`` (interior only, or None) is the damped density so far:
    step ``t`` (global, from 1) adds ``total / 10**(t - 1)``, always in the
    same order, so fusion never changes a bit. ``clamp`` (same shape as
    ``labels``) holds labels to keep where >= 0; ``seed`` replaces the
    one-hot planes of the first step (``seed="counts"``). ``wrap=True``:
    the block is a whole periodic grid, needing no halo (``depth`` zeros).

    Returns a stacked float64 array: ``[labels, density, changed, labeled]``
    (the last two hold per-step counts in their first ``steps`` cells) plus,
    with ``final_votes``, the ``nclasses`` vote planes of the last step.
    """
    radius = kernel.radius
    depth = tuple(steps * r for r in radius) if depth is None else depth
    exists = labels != OUTSIDE
    cur = labels
    dens = density
    votes = None
    interior = tuple(slice(d, s - d) for d, s in zip(depth, labels.shape, strict=True))
    # Per step: cells of this block that changed label, and that are labeled,
    # kept in the first cells of two planes (a block has at least `steps` cells).
    changed = np.zeros(cur[interior].size)
    labeled = np.zeros(cur[interior].size)
    # Labels whose one-hot planes gave `votes` (None after counts planes):
    # later steps update those votes in place where few cells changed.
    basis = None
    for s in range(steps):
        if seed is not None and s == 0:
            votes = vote(cur, nclasses, kernel, method, seed, wrap)
        else:
            moved = None if basis is None else np.flatnonzero(cur != basis)
            if (
                moved is not None
                and method == "auto"
                and _update_cost(moved.size, kernel)
                < _vote_cost(nclasses, cur.shape, kernel, method)
            ):
                flat = basis.reshape(-1)
                _votekernel().scatter_changes(
                    votes, kernel.weights, moved, flat[moved], cur.reshape(-1)[moved], wrap
                )
            else:
                votes = vote(cur, nclasses, kernel, method, None, wrap)
            basis = cur
        new, total = decide(votes)
        if clamp is not None:
            new = np.where(clamp >= 0, clamp, new)
        new[~exists] = OUTSIDE
        changed[s] = np.count_nonzero(new[interior] != cur[interior])
        labeled[s] = np.count_nonzero(new[interior] >= 0)
        cur = new
        step_density = total[interior] / 10.0 ** (first_step + s - 1)
        dens = step_density if dens is None else dens + step_density
    shape = cur[interior].shape
    out = [
        cur[interior].astype(np.float64)[None],
        dens[None],
        changed.reshape(shape)[None],
        labeled.reshape(shape)[None],
    ]
    if final_votes:
        out.append(votes[(slice(None), *interior)])
    return np.concatenate(out, axis=0)


# --- whole-grid drivers -------------------------------------------------------------


def _pad(a: np.ndarray, depth: tuple[int, ...], boundary: str) -> np.ndarray:
    pad = [(d, d) for d in depth]
    if boundary == "periodic":
        return np.pad(a, pad, mode="wrap")
    return np.pad(a, pad, mode="constant", constant_values=OUTSIDE)


def run_numpy(
    labels: np.ndarray,
    *,
    nclasses: int,
    kernel: Kernel,
    iterations: int,
    boundary: Boundary = "periodic",
    method: str = "auto",
    clamp: bool = False,
    seed_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-memory reference: one step at a time on a padded copy.

    Returns ``(labels, density, votes of the last step)``.
    """
    _check_window(kernel, labels.shape, boundary)
    depth = kernel.radius
    cur = labels.astype(np.int32)
    fixed = cur.copy() if clamp else None
    density = None
    votes = None
    for t in range(1, iterations + 1):
        seed = None
        if seed_counts is not None and t == 1:
            pad = [(0, 0)] + [(d, d) for d in depth]
            seed = np.pad(seed_counts, pad, mode="wrap" if boundary == "periodic" else "constant")
        out = fused_steps(
            _pad(cur, depth, boundary),
            density,
            nclasses=nclasses,
            kernel=kernel,
            steps=1,
            first_step=t,
            method=method,
            clamp=None if fixed is None else _pad(fixed, depth, boundary),
            seed=seed,
            final_votes=True,
        )
        cur = out[0].astype(np.int32)
        density = out[1]
        votes = out[4:]
    return cur, density, votes


def _check_window(kernel: Kernel, shape: tuple[int, ...], boundary: str) -> None:
    for r, n in zip(kernel.radius, shape, strict=True):
        if 2 * r + 1 > n:
            raise ParameterError(
                f"window: radius {r} spans {2 * r + 1} cells, larger than the grid's {n}; "
                "use a smaller window or more bins"
            )


def fusion_factor(kernel: Kernel, chunks: tuple[tuple[int, ...], ...], remaining: int) -> int:
    """Steps per round: as many as the smallest chunk can hold in its halo."""
    f = min(min(c) // r for c, r in zip(chunks, kernel.radius, strict=True))
    return max(1, min(f, remaining))


@dataclass
class RoundState:
    """Labels and density after ``step`` steps."""

    step: int
    labels: da.Array
    density: da.Array | None


@dataclass
class FinalRound:
    """The last round, lazy: labels, density and votes after ``step`` steps.

    ``stats`` is a lazy ``(2, n)`` dask array of the per-step (changed,
    labeled) counts of its ``n`` steps still to be recorded, or None.
    """

    step: int
    labels: da.Array
    density: da.Array
    votes: da.Array
    stats: Any = None
    first_step: int = 1


def _persist(state: RoundState, stats: Any) -> tuple[RoundState, np.ndarray]:
    labels, density, stats = dask.persist(state.labels, state.density, stats)
    return RoundState(state.step, labels, density), np.asarray(dask.compute(stats)[0])


def run_dask(
    labels: da.Array,
    *,
    nclasses: int,
    kernel: Kernel,
    iterations: int | None,
    boundary: Boundary = "periodic",
    method: str = "auto",
    clamp: bool = False,
    fuse: int | None = None,
    tol: float = 0.0,
    max_iter: int = 100,
    start: RoundState | None = None,
    materialise: Callable[[RoundState, Any], tuple[RoundState, np.ndarray]] | None = None,
    history: list[dict[str, float]] | None = None,
    seed_counts: da.Array | None = None,
) -> FinalRound:
    """Distributed driver: rounds of fused steps with ``map_overlap`` halos.

    ``iterations=None`` runs until a step labels no new cell and changes at
    most ``tol`` of the cells (at most ``max_iter`` steps); the result is the
    same as stepping one at a time. ``fuse`` caps the steps per round
    (default: as many as the chunks allow). Every round but the last is
    computed by ``materialise(state, stats)`` (default: persist), which
    returns the state to continue from and the per-step ``(changed,
    labeled)`` counts; ``start`` resumes from such a state. ``history``
    receives one dict per computed step (fractions changed and labeled).
    ``seed_counts`` (nclasses, *dims) replaces the one-hot labels in the
    first step (DESIGN's ``seed="counts"``).
    The last round is returned lazily, with the votes of its last step.
    """
    _check_window(kernel, labels.shape, boundary)
    # Every chunk must hold at least one step's halo: merge smaller ones.
    chunks = tuple(
        ensure_minimum_chunksize(max(r, 1), c)
        for r, c in zip(kernel.radius, labels.chunks, strict=True)
    )
    labels = labels.rechunk(chunks).astype(np.int32)
    materialise = materialise or _persist
    history = [] if history is None else history
    fixed = labels if clamp else None
    state = start or RoundState(0, labels, None)
    state = RoundState(
        state.step,
        state.labels.rechunk(chunks),
        None if state.density is None else state.density.rechunk(chunks),
    )
    limit = iterations if iterations is not None else max_iter
    if state.step >= limit:
        raise ParameterError(f"resume: the checkpoint is already at step {state.step} of {limit}")
    ncells = math.prod(labels.shape)
    prev_labeled = history[-1]["labeled"] * ncells if history else None
    if seed_counts is not None:
        seed_counts = seed_counts.rechunk(((seed_counts.shape[0],), *chunks))
    args = (fixed, nclasses, kernel, method, boundary, seed_counts)
    while True:
        steps = (
            limit - state.step
            if _whole_periodic(chunks, boundary)
            else fusion_factor(kernel, chunks, limit - state.step)
        )
        if fuse is not None:
            steps = min(steps, fuse)
        if iterations is not None and state.step + steps == limit:
            out = _round(state, *args, steps, final_votes=True)
            return _final(state, out, steps, _block_stats(out, steps))
        out = _round(state, *args, steps)
        new, counts = materialise(
            RoundState(state.step + steps, out[0].astype(np.int32), out[1]),
            _block_stats(out, steps),
        )
        for s, entry in enumerate(history_entries(state.step + 1, counts, ncells)):
            changed, labeled = float(counts[0][s]), float(counts[1][s])
            history.append(entry)
            newly = labeled > 0 if prev_labeled is None else labeled != prev_labeled
            prev_labeled = labeled
            last = state.step + s + 1 == limit
            if last or (iterations is None and not newly and changed <= tol * ncells):
                # Redo this round up to the stopping step, lazily with its votes.
                out = _round(state, *args, s + 1, final_votes=True)
                return _final(state, out, s + 1, None)
        state = new


def history_entries(first_step: int, counts: np.ndarray, ncells: int) -> list[dict[str, float]]:
    """One ``{"step", "changed", "labeled"}`` dict per step from per-step counts."""
    return [
        {"step": first_step + s, "changed": float(c) / ncells, "labeled": float(n) / ncells}
        for s, (c, n) in enumerate(zip(counts[0], counts[1], strict=True))
    ]


def _final(state: RoundState, out: da.Array, steps: int, stats: Any) -> FinalRound:
    return FinalRound(
        state.step + steps, out[0].astype(np.int32), out[1], out[4:], stats, state.step + 1
    )


def _round(
    state: RoundState,
    fixed: da.Array | None,
    nclasses: int,
    kernel: Kernel,
    method: str,
    boundary: str,
    seed_counts: da.Array | None,
    steps: int,
    final_votes: bool = False,
) -> da.Array:
    """One lazy round of ``steps`` fused steps from ``state``."""
    cur = state.labels
    wrap = _whole_periodic(cur.chunks, boundary)
    depth = tuple(0 if wrap else steps * r for r in kernel.radius)
    bnd = "periodic" if boundary == "periodic" else OUTSIDE
    arrays = [cur] + ([fixed] if fixed is not None else [])
    depths = [dict(enumerate(depth))] * len(arrays)
    bounds = [bnd] * len(arrays)
    seeded = seed_counts is not None and state.step == 0
    if seeded:
        arrays.append(seed_counts)
        depths.append({0: 0, **{i + 1: d for i, d in enumerate(depth)}})
        bounds.append("periodic" if boundary == "periodic" else 0)
    if state.density is not None:
        arrays.append(state.density)
        depths.append(dict.fromkeys(range(cur.ndim), 0))
        bounds.append("none")
    nplanes = 4 + (nclasses if final_votes else 0)
    return da.map_overlap(
        _round_block,
        *arrays,
        depth=depths,
        boundary=bounds,
        trim=False,
        align_arrays=False,
        dtype=np.float64,
        # The stacked output's first axis is new, unless the (class, *dims)
        # counts already lend it theirs.
        **({} if seeded else {"new_axis": 0}),
        chunks=((nplanes,), *cur.chunks),
        meta=np.empty((0,) * (cur.ndim + 1), np.float64),
        has_clamp=fixed is not None,
        has_seed=seeded,
        has_density=state.density is not None,
        nclasses=nclasses,
        kernel=kernel,
        steps=steps,
        first_step=state.step + 1,
        method=method,
        depth_=depth,
        final_votes=final_votes,
        wrap=wrap,
    )


def _whole_periodic(chunks: tuple[tuple[int, ...], ...], boundary: str) -> bool:
    """One chunk spanning a periodic grid: steps wrap inside it, with no halo."""
    return boundary == "periodic" and all(len(c) == 1 for c in chunks)


def _block_stats(out: da.Array, steps: int) -> da.Array:
    """``(2, steps)`` totals of the per-block step counts, as a dask array.

    An array, not a Delayed: computed together with the round's other
    outputs, it shares their (optimised) tasks instead of running the round
    a second time.
    """
    planes = out[2:4]
    nblocks = planes.numblocks[1:]
    # Each block gives (2, 1, ..., 1, steps): its counts in the last dim.
    chunks = ((2,), *(((1,) * n) for n in nblocks[:-1]), (steps,) * nblocks[-1])
    firsts = planes.map_blocks(_first_cells, steps, chunks=chunks, dtype=np.float64)
    per_last = firsts.sum(axis=tuple(range(1, planes.ndim - 1)))
    return per_last.reshape(2, nblocks[-1], steps).sum(axis=1)


def _first_cells(block: np.ndarray, steps: int) -> np.ndarray:
    first = block.reshape(2, -1)[:, :steps]
    return first.reshape((2,) + (1,) * (block.ndim - 2) + (steps,))


def _round_block(
    *blocks: np.ndarray,
    has_clamp: bool,
    has_seed: bool,
    has_density: bool,
    depth_: tuple,
    **kwargs: Any,
) -> np.ndarray:
    labels, rest = blocks[0], list(blocks[1:])
    clamp = rest.pop(0) if has_clamp else None
    seed = rest.pop(0) if has_seed else None
    density = rest.pop(0) if has_density else None
    return fused_steps(labels, density, clamp=clamp, seed=seed, depth=depth_, **kwargs)
