"""Rounds: the one fusion rule and the round driver.

A stage that iterates a one-block step (the vote filter of classify and
cluster, the fractal classifier's neighbour step) runs it in rounds: ``f``
fused steps on every chunk at once, with a halo ``f * r`` cells deep (``r``
the step's radius) exchanged once by ``map_overlap``. More steps per round
mean fewer rounds (each costs tasks, a halo exchange and a persist or a
checkpoint), but a deeper halo and so more cells computed twice.
:func:`fusion_factor` is the one rule that weighs the two;
:func:`run_rounds` is the one loop that materialises every round but the
last. The number of steps per round never changes a result: the stages'
tests assert it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

__all__ = [
    "ROUND_SECONDS",
    "StepCost",
    "fusion_factor",
    "halo_radius",
    "max_fusion",
    "overlap_round",
    "round_chunks",
    "run_rounds",
]

#: Cost of a round beyond its cells (dask tasks, halo exchange, persisting,
#: scheduler wake-ups), as timed on a loaded 2-core machine. Seconds.
ROUND_SECONDS = 1e-2
#: A block spanning a whole periodic grid has no halo: its rounds only bound
#: the time between checkpoints, about this many seconds of cell updates.
WHOLE_ROUND_SECONDS = (1 << 28) * 2.5e-9


@dataclass(frozen=True)
class StepCost:
    """The seconds one step costs per cell of its block.

    Attributes
    ----------
    first : float
        A round's first step, per haloed cell.
    later : float
        Each later step of the round, per cell it computes.
    shrinking : bool
        Later steps compute only the cells whose result is still valid (the
        region shrinks by ``r`` a step, as the fractal kernel does), rather
        than the whole haloed block (as the vote step's correlation does).
    """

    first: float
    later: float
    shrinking: bool = False

    def round_seconds(self, chunk: Sequence[int], radius: Sequence[int], f: int) -> float:
        """Estimated seconds of a round of ``f`` steps on a chunk haloed ``f * radius``."""
        total = ROUND_SECONDS
        for s in range(f):
            grow = f - s if self.shrinking else f
            cells = math.prod(c + 2 * grow * r for c, r in zip(chunk, radius, strict=True))
            total += cells * (self.first if s == 0 else self.later)
        return total


def max_fusion(chunk: Sequence[int], radius: Sequence[int], remaining: int) -> int:
    """The most steps a round may fuse: its halo fits the neighbouring chunk."""
    f = min(c // max(r, 1) for c, r in zip(chunk, radius, strict=True))
    return max(1, min(f, remaining))


def halo_radius(radius: Sequence[int], chunks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The halo a step needs per dim: the window radius, none along a dim held whole.

    A dim in one chunk has nothing beyond the block: it wraps inside it
    (periodic) or holds nothing past its edge (open), so in many dims (a
    grid split along at most 3 of them) the blocks carry no halo along the
    others, instead of one that would multiply their cells.
    """
    return tuple(0 if len(c) == 1 else int(r) for r, c in zip(radius, chunks, strict=True))


def overlap_round(
    block: Callable[..., Any],
    state: Any,
    extras: Sequence[Any],
    seed_counts: Any,
    *,
    depth: tuple[int, ...],
    boundary: str,
    open_fill: Any,
    seed_fill: Any,
    nplanes: int,
    meta: Any,
    **kwargs: Any,
) -> Any:
    """One lazy round of a vote engine: ``block`` mapped with ``map_overlap``.

    The blocks get ``state.labels`` and ``extras`` (labels-shaped) with a
    halo of ``depth``, the ``(class, *dims)`` seed counts on the first step
    (``state.step == 0``) with the same halo, and the carried density
    without one; on a periodic ``boundary`` the halos wrap, and beyond an
    open edge the labels and extras hold
    ``open_fill`` and the seed counts ``seed_fill``. The output stacks
    ``nplanes`` planes over the labels' chunks. ``block`` also receives
    ``has_seed``, ``has_density``, ``first_step`` and ``depth_``, and
    ``kwargs``.
    """
    cur = state.labels
    periodic = boundary == "periodic"
    arrays = [cur, *extras]
    depths = [dict(enumerate(depth))] * len(arrays)
    bounds = ["periodic" if periodic else open_fill] * len(arrays)
    seeded = seed_counts is not None and state.step == 0
    if seeded:
        arrays.append(seed_counts)
        depths.append({0: 0, **{i + 1: d for i, d in enumerate(depth)}})
        bounds.append("periodic" if periodic else seed_fill)
    if state.density is not None:
        arrays.append(state.density)
        depths.append(dict.fromkeys(range(cur.ndim), 0))
        bounds.append("none")
    return da.map_overlap(
        block,
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
        meta=meta,
        has_seed=seeded,
        has_density=state.density is not None,
        first_step=state.step + 1,
        depth_=depth,
        **kwargs,
    )


def round_chunks(
    chunks: tuple[tuple[int, ...], ...], radius: Sequence[int], steps: int
) -> tuple[tuple[int, ...], ...]:
    """``chunks`` with every chunk smaller than a ``steps``-step halo merged into a neighbour.

    The smallest chunk bounds the steps per round (a halo cannot be deeper
    than a chunk), so a small last chunk (800 cells in chunks of 256 leave
    32) would cap every round; merging it costs one rechunk. A dim in one
    chunk is left as it is.
    """
    return tuple(
        ensure_minimum_chunksize(min(steps * max(r, 1), sum(c)), c) if len(c) > 1 else c
        for c, r in zip(chunks, radius, strict=True)
    )


def fusion_factor(
    chunks: tuple[tuple[int, ...], ...],
    radius: Sequence[int],
    remaining: int,
    cost: StepCost,
    *,
    whole: bool = False,
) -> int:
    """Steps per round: the ``f`` that minimises the estimated seconds of the run.

    ``whole``: one block spans a periodic grid and needs no halo, so the
    rounds only bound the time between checkpoints (about
    :data:`WHOLE_ROUND_SECONDS` of work each). Otherwise ``f`` is at most
    :func:`max_fusion` of the smallest chunk and minimises the estimated
    seconds of the remaining steps in rounds of ``f`` (the last one shorter:
    30 steps run faster as one round of 30 than as 25 and 5).
    """
    if whole:
        ncells = math.prod(c[0] for c in chunks)
        per_step = ncells * max(cost.first, cost.later)
        return max(1, min(remaining, int(WHOLE_ROUND_SECONDS // max(per_step, 1e-300))))
    block = tuple(min(c) for c in chunks)
    fmax = max_fusion(block, radius, remaining)
    candidates = sorted({*np.unique(np.geomspace(1, fmax, 48).astype(int)).tolist(), fmax})
    seconds = {f: _run_seconds(cost, block, radius, f, remaining) for f in candidates}
    return min(seconds, key=seconds.get)


def _run_seconds(
    cost: StepCost, block: tuple[int, ...], radius: Sequence[int], f: int, remaining: int
) -> float:
    """Estimated seconds of ``remaining`` steps in rounds of ``f`` (the last one shorter)."""
    full, tail = divmod(remaining, f)
    total = full * cost.round_seconds(block, radius, f)
    return total + (cost.round_seconds(block, radius, tail) if tail else 0.0)


State = TypeVar("State")


def run_rounds(
    state: State,
    *,
    step: Callable[[State], int],
    limit: int,
    plan: Callable[[int, int], int],
    materialise: Callable[[State, int], tuple[State, Any]],
    settled: Callable[[State, Any, int], int | None] | None = None,
    open_ended: bool = False,
) -> tuple[State, int]:
    """Drive rounds up to the last; return the state it starts from and its steps.

    Parameters
    ----------
    state
        The stage's state after ``step(state)`` steps (a fresh start or a
        resumed checkpoint).
    limit : int
        Steps in all (the cap, when ``open_ended``).
    plan : callable
        ``plan(done, remaining)``: steps of the next round (the stage calls
        :func:`fusion_factor` and applies its own caps).
    materialise : callable
        ``materialise(state, steps)``: compute a round of ``steps`` (persist
        it, or checkpoint it into the store) and return the state after it
        and its per-step statistics.
    settled : callable, optional
        ``settled(state, stats, steps)``, called after every materialised
        round: the number of steps into that round at which the run stops,
        or None to go on.
    open_ended : bool
        The run stops when ``settled`` says so (at ``limit`` at the latest),
        so every round is materialised; otherwise the round that reaches
        ``limit`` is the last and is left to the caller, lazily.

    Returns
    -------
    (state, steps)
        The caller builds the last round from ``state``, ``steps`` steps.
    """
    while True:
        done = step(state)
        steps = plan(done, limit - done)
        if not open_ended and done + steps == limit:
            return state, steps
        new, stats = materialise(state, steps)
        stop = settled(state, stats, steps) if settled is not None else None
        if stop is not None:
            return state, stop
        state = new
