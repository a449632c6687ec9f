"""One vote step, and fused steps on one haloed block (docs/design.md §3.1).

One vote step turns labels into per-class votes and new labels:

    V[k] = kernel ⊛ onehot(L)[k]     (correlation over the window, centre included)
    L'   = argmax_k V[k] where Σ_k V[k] > 0, else -1   (ties: lowest class)

The votes are exact: weights are dyadic (see :mod:`gridflow.kernels`), so the
correlation method (:mod:`gridflow.engine.correlate`) never changes a single
bit, and neither do the chunking or the number of steps fused into one
round (:mod:`gridflow.engine.rounds`). Within a round, a step after the
first updates the previous votes in place when few cells changed label
(moving each change's weights from its old class to its new one: exact, so
again the same bits), which is much cheaper than a new correlation once the
labels settle. A round of ``f`` fused steps needs a halo of ``f * w``
cells; cells outside an ``"open"`` grid carry the sentinel :data:`OUTSIDE`
and never vote.

The one-hot planes, the decision and the in-place update run the chunk
backend's compiled kernels (``backend.kernel("vote")``, NumPy:
:mod:`gridflow._kernels.vote`); a backend without them runs the array code
here, which gives the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

from gridflow._types import Boundary, CorrelationMethod
from gridflow.backend import meta_like, ops
from gridflow.engine.correlate import choose_method, correlate, has_lines, method_cost, wrap_flags
from gridflow.engine.rounds import StepCost, fusion_factor, halo_radius, overlap_round, run_rounds
from gridflow.errors import ParameterError
from gridflow.kernels import Kernel
from gridflow.sparse_grid import is_sparse

__all__ = [
    "OUTSIDE",
    "UNLABELED",
    "FinalRound",
    "RoundState",
    "check_window",
    "decide",
    "fused_steps",
    "history_entries",
    "label_dtype",
    "pad",
    "persist_round",
    "run_dask",
    "run_numpy",
    "step_cost",
    "vote",
]

UNLABELED = -1
#: Label of cells beyond an open boundary: they do not exist and never vote.
OUTSIDE = -2


# --- one step, and fused steps ------------------------------------------------------


def vote(
    labels: np.ndarray,
    nclasses: int,
    kernel: Kernel,
    method: str = "auto",
    planes: np.ndarray | None = None,
    wrap: bool | tuple[bool, ...] = False,
    exact: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Votes ``V`` (nclasses, *labels.shape) of one step, into ``out`` when given;
    ``planes`` replaces the one-hot.

    Along a dim that does not ``wrap``, cells within the window radius of
    the block's edge get unspecified votes (callers read only cells whose
    window lies inside), or, ``exact``, votes from nothing beyond the edge.
    """
    if planes is not None:
        return correlate(planes, kernel, method, wrap, exact, out)
    # When every cell is labeled, the class votes of a cell add up to the
    # kernel's sum (exactly: they are multiples of its quantum), so the last
    # class needs no correlation of its own; not where a window reaches past
    # an open edge of the block (``exact``), where nothing votes.
    full = nclasses > 1 and labels.size > 0 and not exact and int(labels.min()) >= 0
    nplanes = nclasses - 1 if full else nclasses
    b = ops(labels)
    votes = b.xp.empty((nclasses, *labels.shape)) if out is None else out
    lines = has_lines(b)
    if method == "lines" or (
        method == "auto" and lines and choose_method(kernel, labels.shape) == "lines"
    ):
        # The line sums pad the labels, not the planes: one-hot planes of the
        # padded block, summed straight into the votes.
        b.kernel("vote").window_votes(
            labels, kernel.weights, nplanes, wrap_flags(wrap, labels.ndim), exact, votes[:nplanes]
        )
    else:
        correlate(_onehot(labels, nplanes), kernel, method, wrap, exact, votes[:nplanes])
    if full:
        _complete_last_plane(votes, kernel.weights.sum())
    return votes


def decide(votes: Any) -> tuple[Any, Any]:
    """New labels and total vote: argmax (lowest class on ties) where the total is > 0."""
    compiled = ops(votes).kernel("vote")
    if compiled is not None:
        return compiled.decide(votes)
    xp = ops(votes).xp
    total = _plane_sum(votes, votes.shape[0])
    labels = xp.where(total > 0, votes.argmax(axis=0), -1).astype(np.int32)
    return labels, total


def _plane_sum(votes: Any, n: int) -> Any:
    """``votes[0] + ... + votes[n-1]``, in that order (the kernels' order)."""
    total = votes[0].copy()
    for k in range(1, n):
        total += votes[k]
    return total


def _onehot(labels: Any, nplanes: int) -> Any:
    compiled = ops(labels).kernel("vote")
    if compiled is not None:
        return compiled.onehot(labels, nplanes)
    xp = ops(labels).xp
    return xp.stack([labels == k for k in range(nplanes)]).astype(np.float64)


def _complete_last_plane(votes: Any, full: float) -> None:
    compiled = ops(votes).kernel("vote")
    if compiled is not None:
        compiled.complete_last_plane(votes, full)
    else:
        votes[-1] = full - _plane_sum(votes, votes.shape[0] - 1)


# Cost of moving one tap of one changed cell (from its old class plane to its
# new one), in the units of the per-cell costs below (one unit is about
# 0.35 ns of CPU: a float64 FFT of a 4096 x 4096 plane there and back costs
# 6 * 24 units per cell, 0.85 s; a sparse update costs about 5 ns per tap,
# measured on the 4096 x 4096 window case of benchmarks/bench_classify.py).
_SCATTER_COST = 14.0
#: Seconds of one unit of those costs.
_UNIT_SECONDS = 0.35e-9


def _update_cost(nchanged: int, kernel: Kernel) -> float:
    """Cost of moving ``nchanged`` cells' weights between two class planes."""
    return _SCATTER_COST * nchanged * kernel.weights.size


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
    wrap: bool | tuple[bool, ...] = False,
) -> np.ndarray:
    """Run ``steps`` vote steps on one haloed block and return its interior.

    ``labels`` carries a halo of ``depth`` cells (default ``steps * w``) per
    side; cells equal to :data:`OUTSIDE` do not exist and never vote.
    ``density`` (interior only, or None) is the damped density so far:
    step ``t`` (global, from 1) adds ``total / 10**(t - 1)``, always in the
    same order, so fusion never changes a bit. ``clamp`` (same shape as
    ``labels``) holds labels to keep where >= 0; ``seed`` replaces the
    one-hot planes of the first step (``seed="counts"``). ``wrap``: per
    dim (or one flag for all), whether the block holds that dim of a
    periodic grid whole, needing no halo along it (``depth`` zero there);
    a dim of zero depth that does not wrap has nothing beyond the block.

    Returns a stacked float64 array: ``[labels, density, changed, labeled]``
    (the last two hold per-step counts in their first ``steps`` cells) plus,
    with ``final_votes``, the ``nclasses`` vote planes of the last step.
    """
    xp = ops(labels).xp
    compiled = ops(labels).kernel("vote")
    radius = kernel.radius
    depth = tuple(steps * r for r in radius) if depth is None else depth
    # A dim of zero depth that does not wrap has nothing beyond the block.
    wrap = wrap_flags(wrap, labels.ndim)
    exact = any(d == 0 and not w and r > 0 for d, w, r in zip(depth, wrap, radius, strict=True))
    exists = labels != OUTSIDE
    cur = labels
    dens = density
    votes = None
    interior = tuple(slice(d, s - d) for d, s in zip(depth, labels.shape, strict=True))
    # OUTSIDE cells inside the block (support="occupied") have no density or votes.
    absent = ~exists[interior]
    absent = absent if bool(absent.any()) else None
    # Per step: cells of this block that changed label, and that are labeled,
    # kept in the first cells of two planes (a block has at least `steps` cells).
    changed = np.zeros(steps)
    labeled = np.zeros(steps)
    # A block without a halo returns its votes whole: the steps write them
    # straight into the output stack.
    nout = 4 + (nclasses if final_votes else 0)
    stack = xp.empty((nout, *labels.shape)) if not any(depth) else None
    into = stack[4:] if stack is not None and final_votes else None
    # Labels whose one-hot planes gave `votes` (None after counts planes):
    # later steps update those votes in place where few cells changed.
    basis = None
    for s in range(steps):
        if seed is not None and s == 0:
            votes = vote(cur, nclasses, kernel, method, seed, wrap, exact, into)
        else:
            moved = None if basis is None else xp.flatnonzero(cur != basis)
            if (
                moved is not None
                and compiled is not None
                and method == "auto"
                and _update_cost(moved.size, kernel)
                < nclasses * method_cost(kernel, cur.shape, method)
            ):
                flat = basis.reshape(-1)
                compiled.scatter_changes(
                    votes, kernel.weights, moved, flat[moved], cur.reshape(-1)[moved], wrap
                )
            else:
                votes = vote(cur, nclasses, kernel, method, None, wrap, exact, into)
            basis = cur
        new, total = decide(votes)
        if clamp is not None:
            new = xp.where(clamp >= 0, clamp, new)
        new[~exists] = OUTSIDE
        changed[s] = int(xp.count_nonzero(new[interior] != cur[interior]))
        labeled[s] = int(xp.count_nonzero(new[interior] >= 0))
        cur = new
        step_total = total[interior]
        if absent is not None:
            step_total = xp.where(absent, 0.0, step_total)
        step_density = step_total / 10.0 ** (first_step + s - 1)
        dens = step_density if dens is None else dens + step_density
    # The stack is filled in place (no per-plane temporaries and a copy of them all).
    out = stack if stack is not None else xp.empty((nout, *cur[interior].shape))
    out[0] = cur[interior]
    out[1] = dens
    for plane, counts in ((out[2], changed), (out[3], labeled)):
        flat = plane.reshape(-1)
        flat[:] = 0.0
        flat[:steps] = xp.asarray(counts)
    if final_votes:
        if votes is not into:
            out[4:] = votes[(slice(None), *interior)]
        if absent is not None:
            out[4:][:, absent] = 0.0
    return out


# --- the in-memory reference --------------------------------------------------------


def pad(a: Any, depth: int | tuple[int, ...], boundary: str) -> Any:
    """``a`` grown by ``depth`` cells a side: wrapped, or :data:`OUTSIDE` beyond an open edge."""
    xp = ops(a).xp
    width = depth if isinstance(depth, int) else [(d, d) for d in depth]
    if boundary == "periodic":
        return xp.pad(a, width, mode="wrap")
    return xp.pad(a, width, mode="constant", constant_values=OUTSIDE)


def run_numpy(
    labels: np.ndarray,
    *,
    nclasses: int,
    kernel: Kernel,
    iterations: int,
    boundary: Boundary = "periodic",
    method: CorrelationMethod = "auto",
    clamp: bool = False,
    seed_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-memory reference: one step at a time on a padded copy.

    Returns ``(labels, density, votes of the last step)``.
    """
    check_window(kernel, labels.shape)
    depth = kernel.radius
    cur = labels.astype(np.int32)
    fixed = cur.copy() if clamp else None
    density = None
    votes = None
    for t in range(1, iterations + 1):
        seed = None
        if seed_counts is not None and t == 1:
            width = [(0, 0)] + [(d, d) for d in depth]
            seed = np.pad(seed_counts, width, mode="wrap" if boundary == "periodic" else "constant")
        out = fused_steps(
            pad(cur, depth, boundary),
            density,
            nclasses=nclasses,
            kernel=kernel,
            steps=1,
            first_step=t,
            method=method,
            clamp=None if fixed is None else pad(fixed, depth, boundary),
            seed=seed,
            final_votes=True,
        )
        cur = out[0].astype(np.int32)
        density = out[1]
        votes = out[4:]
    return cur, density, votes


def check_window(kernel: Kernel, shape: tuple[int, ...]) -> None:
    """Refuse a window wider than the grid."""
    for r, n in zip(kernel.radius, shape, strict=True):
        if 2 * r + 1 > n:
            raise ParameterError(
                f"window: radius {r} spans {2 * r + 1} cells, larger than the grid's {n}; "
                "use a smaller window or more bins"
            )


# --- the filter on dask arrays ------------------------------------------------------


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


def persist_round(state: RoundState, stats: Any) -> tuple[RoundState, np.ndarray]:
    """A round of an in-memory run: persisted on the workers, its per-step counts computed."""
    labels, density, stats = dask.persist(state.labels, state.density, stats)
    return RoundState(state.step, labels, density), np.asarray(dask.compute(stats)[0])


def run_dask(
    labels: da.Array,
    *,
    nclasses: int,
    kernel: Kernel,
    iterations: int | None,
    boundary: Boundary = "periodic",
    method: CorrelationMethod = "auto",
    clamp: bool = False,
    fuse: int | None = None,
    tol: float = 0.0,
    max_iter: int = 100,
    start: RoundState | None = None,
    materialise: Callable[[RoundState, Any], tuple[RoundState, np.ndarray]] | None = None,
    history: list[dict[str, float]] | None = None,
    seed_counts: da.Array | None = None,
    support: str = "reachable",
) -> FinalRound:
    """The vote filter on a dask array: rounds of fused steps on haloed blocks.

    ``iterations=None`` runs until a step labels no new cell and changes at
    most ``tol`` of the cells (at most ``max_iter`` steps); the result is the
    same as stepping one at a time. ``fuse`` caps the steps per round
    (default: :func:`gridflow.engine.rounds.fusion_factor`). Every round but
    the last is computed by ``materialise(state, stats)`` (default:
    persist), which returns the state to continue from and the per-step
    ``(changed, labeled)`` counts; ``start`` resumes from such a state.
    ``history`` receives one dict per computed step (fractions changed and
    labeled). ``seed_counts`` (nclasses, *dims) replaces the one-hot labels
    in the first step (``seed="counts"``, docs/design.md §3.1). The last round is
    returned lazily, with the votes of its last step.

    ``support="occupied"``: only the cells labeled in ``labels`` exist, the
    others are :data:`OUTSIDE` (never vote, never labeled, no density or
    votes). Labels as COO chunks run the sparse engine
    (:mod:`gridflow.engine.sparse`), with the same results.
    """
    check_window(kernel, labels.shape)
    if support not in ("reachable", "occupied"):
        raise ParameterError(f"support: expected 'reachable' or 'occupied', got {support!r}")
    sparse_ = is_sparse(labels)
    if sparse_:
        from gridflow.engine import sparse as sparse_engine

        sparse_engine.check_kernel(kernel)
        chunks = sparse_engine.run_chunks(labels.chunks, kernel.radius)
    else:
        # Every chunk must hold at least one step's halo: merge smaller ones.
        chunks = tuple(
            ensure_minimum_chunksize(max(r, 1), c)
            for r, c in zip(kernel.radius, labels.chunks, strict=True)
        )
    # Between rounds the labels are held (and their halos sent) in the smallest
    # integer that takes every class and the two sentinels: one byte up to 127 classes.
    state_dtype = np.int32 if sparse_ else label_dtype(nclasses)
    labels = labels.rechunk(chunks).astype(state_dtype)
    occupied = support == "occupied"
    if occupied and not sparse_:
        labels = da.where(labels == UNLABELED, OUTSIDE, labels)
    materialise = materialise or persist_round
    history = [] if history is None else history
    fixed = labels if clamp else None
    state = start or RoundState(0, labels, None)
    state = RoundState(
        state.step,
        state.labels.rechunk(chunks).astype(labels.dtype),
        None if state.density is None else state.density.rechunk(chunks),
    )
    limit = iterations if iterations is not None else max_iter
    if state.step >= limit:
        raise ParameterError(f"resume: the checkpoint is already at step {state.step} of {limit}")
    ncells = math.prod(labels.shape)
    if seed_counts is not None:
        seed_counts = seed_counts.rechunk(((seed_counts.shape[0],), *chunks))
    whole = all(_wrapping(chunks, boundary))
    halo = halo_radius(kernel.radius, chunks)
    cost = step_cost(kernel, nclasses, tuple(min(c) for c in chunks), method, halo)
    # Cells labeled after the previous step (exact counts; a resumed run's from its history).
    labeled_before = history[-1]["labeled"] * ncells if history else None

    def one_round(state: RoundState, steps: int, final_votes: bool = False) -> da.Array:
        if sparse_:
            return sparse_engine.round_(
                state, labels if occupied else None, fixed, nclasses, kernel, boundary,
                seed_counts, steps, final_votes,
            )  # fmt: skip
        args = (fixed, nclasses, kernel, method, boundary, seed_counts)
        return _round(state, *args, steps, final_votes=final_votes)

    def labels_of(out: da.Array) -> da.Array:
        return sparse_engine.labels_of(out[0]) if sparse_ else out[0].astype(state_dtype)

    def plan(done: int, remaining: int) -> int:
        if sparse_:
            steps = sparse_engine.plan_steps(chunks, kernel.radius, remaining)
        else:
            steps = fusion_factor(chunks, halo, remaining, cost, whole=whole)
        return steps if fuse is None else min(steps, fuse)

    def advance(state: RoundState, steps: int) -> tuple[RoundState, np.ndarray]:
        out = one_round(state, steps)
        return materialise(
            RoundState(state.step + steps, labels_of(out), out[1]), _block_stats(out, steps)
        )

    def settled(state: RoundState, counts: np.ndarray, steps: int) -> int | None:
        nonlocal labeled_before
        for s, entry in enumerate(history_entries(state.step + 1, counts, ncells)):
            changed, labeled = float(counts[0][s]), float(counts[1][s])
            history.append(entry)
            before, labeled_before = labeled_before, labeled
            newly = labeled > 0 if before is None else labeled != before
            last = state.step + s + 1 == limit
            if last or (iterations is None and not newly and changed <= tol * ncells):
                return s + 1  # this round up to the stopping step, lazily with its votes
        return None

    state, steps = run_rounds(
        state,
        step=lambda st: st.step,
        limit=limit,
        plan=plan,
        materialise=advance,
        settled=settled,
        open_ended=iterations is None,
    )
    out = one_round(state, steps, final_votes=True)
    # A round that stopped the run was materialised, its steps recorded.
    recorded = bool(history) and history[-1]["step"] >= state.step + steps
    final = FinalRound(
        state.step + steps,
        labels_of(out),
        out[1],
        out[4:],
        None if recorded else _block_stats(out, steps),
        state.step + 1,
    )
    if occupied and not sparse_:
        final.labels = da.where(final.labels == OUTSIDE, UNLABELED, final.labels)
    return final


def label_dtype(nclasses: int) -> np.dtype:
    """The smallest signed integer holding classes ``0..nclasses-1``, UNLABELED and OUTSIDE."""
    for dtype in (np.int8, np.int16):
        if nclasses <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def step_cost(
    kernel: Kernel,
    nclasses: int,
    block: tuple[int, ...],
    method: str = "auto",
    halo: tuple[int, ...] | None = None,
) -> StepCost:
    """What a vote step costs per cell, for :func:`~gridflow.engine.rounds.fusion_factor`.

    A round's first step correlates every class plane; later steps mostly
    update the votes in place where labels changed, counted here as a
    sixteenth of a correlation (``benchmarks/bench_fusion.py``: with a
    quarter the rule fused too few steps and lost to fusing all the chunk
    allows).
    """
    halo = kernel.radius if halo is None else halo
    haloed = tuple(c + 2 * r for c, r in zip(block, halo, strict=True))
    first = nclasses * method_cost(kernel, haloed, method) / math.prod(haloed) * _UNIT_SECONDS
    return StepCost(first=first, later=first / 16)


def history_entries(first_step: int, counts: np.ndarray, ncells: int) -> list[dict[str, float]]:
    """One ``{"step", "changed", "labeled"}`` dict per step from per-step counts."""
    return [
        {"step": first_step + s, "changed": float(c) / ncells, "labeled": float(n) / ncells}
        for s, (c, n) in enumerate(zip(counts[0], counts[1], strict=True))
    ]


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
    depth = tuple(steps * r for r in halo_radius(kernel.radius, cur.chunks))
    return overlap_round(
        _round_block,
        state,
        [fixed] if fixed is not None else [],
        seed_counts,
        depth=depth,
        boundary=boundary,
        open_fill=OUTSIDE,
        seed_fill=0,
        nplanes=4 + (nclasses if final_votes else 0),
        meta=meta_like(cur, cur.ndim + 1, np.float64),
        has_clamp=fixed is not None,
        nclasses=nclasses,
        kernel=kernel,
        steps=steps,
        method=method,
        final_votes=final_votes,
        wrap=_wrapping(cur.chunks, boundary),
    )


def _wrapping(chunks: tuple[tuple[int, ...], ...], boundary: str) -> tuple[bool, ...]:
    """Per dim: held whole by one chunk on a periodic grid, so steps wrap inside the block."""
    return tuple(boundary == "periodic" and len(c) == 1 for c in chunks)


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
    firsts = planes.map_blocks(
        _first_cells, steps, chunks=chunks, dtype=np.float64, meta=np.empty((0,) * planes.ndim)
    )
    per_last = firsts.sum(axis=tuple(range(1, planes.ndim - 1)))
    return per_last.reshape(2, nblocks[-1], steps).sum(axis=1)


def _first_cells(block: Any, steps: int) -> np.ndarray:
    first = block.reshape((2, -1))[:, :steps]
    if hasattr(first, "todense"):  # a COO block (the sparse engine)
        first = first.todense()
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
