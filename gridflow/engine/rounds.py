"""Rounds: the one fusion rule and the round driver.

A stage that iterates a one-block step (the vote filter of classify and
cluster, the fractal classifier's neighbour step) runs it in rounds: ``f``
fused steps on every chunk at once, with a halo ``f * r`` cells deep (``r``
the step's radius) exchanged once (:func:`block_round` for the vote
engines, ``map_overlap`` for the fractal step). More steps per round
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
    "assemble_dense",
    "block_round",
    "fusion_factor",
    "halo_pieces",
    "halo_radius",
    "haloed_shape",
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
    """One lazy round of the dense vote engine: ``block`` on every haloed chunk.

    The blocks get ``state.labels`` and ``extras`` (labels-shaped) with a
    halo of ``depth``, the ``(class, *dims)`` seed counts on the first step
    (``state.step == 0``) with the same halo, and the carried density
    without one; on a periodic ``boundary`` the halos wrap, and beyond an
    open edge the labels and extras hold ``open_fill`` and the seed counts
    ``seed_fill``. The output stacks ``nplanes`` planes over the labels'
    chunks. ``block`` also receives ``has_seed``, ``has_density``,
    ``first_step`` and ``depth_``, and ``kwargs``.

    The graph is :func:`block_round`'s: each halo slab is cut where its
    chunk lives, and the block's own task assembles them, so the scheduler
    places the round's work with the chunk it extends (``map_overlap``'s
    separate concatenation tasks were placed by their slabs and piled two
    thirds of a round's blocks onto one of two workers).
    """
    seeded = seed_counts is not None and state.step == 0
    return block_round(
        block,
        state,
        [(a, open_fill) for a in (state.labels, *extras)]
        + ([(seed_counts, seed_fill)] if seeded else []),
        depth=depth,
        periodic=boundary == "periodic",
        nplanes=nplanes,
        meta=meta,
        assemble=assemble_dense,
        slabs=True,
        has_seed=seeded,
        **kwargs,
    )


def block_round(
    block: Callable[..., Any],
    state: Any,
    haloed: Sequence[tuple[Any, Any]],
    *,
    depth: tuple[int, ...],
    periodic: bool,
    nplanes: int,
    meta: Any,
    assemble: Callable[..., Any],
    slabs: bool,
    block_id: bool = False,
    **kwargs: Any,
) -> Any:
    """One task a block: ``block`` on the haloed chunks of ``haloed``, a lazy array.

    ``haloed`` lists ``(array, fill)``: arrays over the labels' chunks
    (after any leading axes held whole), each given to ``block`` with a
    halo ``depth`` deep, at most one chunk (:func:`max_fusion`), wrapping
    when ``periodic``. Beyond an open edge a dense block is padded with
    ``fill``; ``fill=None`` leaves the halo out there (COO blocks hold what
    exists). ``state.density`` follows without a halo. ``assemble(parts,
    boxes, shape, fill)`` builds one haloed block from its pieces:
    neighbour chunks whole, or with ``slabs`` each piece cut by a task of
    its own where its chunk lives (only halos travel), ``boxes[p] = (lo,
    hi, at)``. ``block`` gets ``has_density``, ``first_step``, ``depth_``,
    ``kwargs`` and, with ``block_id``, the block's index.
    """
    import functools
    import itertools
    import operator

    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    cur = state.labels
    chunks = cur.chunks
    density = state.density
    fn = functools.partial(
        block,
        has_density=density is not None,
        first_step=state.step + 1,
        depth_=depth,
        **kwargs,
    )
    name = "round-" + tokenize(
        [(a.name, fill) for a, fill in haloed], density.name if density is not None else None,
        depth, periodic, nplanes, state.step, slabs, sorted(kwargs.items(), key=str),
    )  # fmt: skip
    slab = "halo-" + name
    dsk: dict[Any, Any] = {}
    pad = [fill is not None for _, fill in haloed]
    for idx in np.ndindex(*cur.numblocks):
        inputs = []
        for i, (a, fill) in enumerate(haloed):
            pieces = list(itertools.product(*halo_pieces(idx, chunks, depth, periodic, pad[i])))
            boxes = np.array([[[q[k] for q in piece] for k in (1, 2, 3)] for piece in pieces])
            lead = (0,) * (a.ndim - cur.ndim)
            keys = []
            for p, piece in enumerate(pieces):
                key = (a.name, *lead, *(q[0] for q in piece))
                whole = all(
                    q[1] == 0 and q[2] == c[q[0]] for q, c in zip(piece, chunks, strict=True)
                )
                if slabs and not whole:
                    cut = (*(slice(None) for _ in lead), *(slice(q[1], q[2]) for q in piece))
                    dsk[(slab, i, *idx, p)] = (operator.getitem, key, cut)
                    key = (slab, i, *idx, p)
                keys.append(key)
            shape = haloed_shape(idx, chunks, depth, pieces, pad[i])
            inputs.append([keys, boxes, shape, fill])  # lists: dask looks for keys in them
        own = [(density.name, *idx)] if density is not None else []
        dsk[(name, 0, *idx)] = (
            _assembled_block, fn, assemble, (0, *idx) if block_id else None, inputs, own,
        )  # fmt: skip
    graph = HighLevelGraph.from_collections(
        name,
        dsk,
        dependencies=[*(a for a, _ in haloed), *([density] if density is not None else [])],
    )
    return da.Array(graph, name, ((nplanes,), *chunks), meta=meta)


def _assembled_block(
    fn: Callable[..., Any],
    assemble: Callable[..., Any],
    block_id: tuple[int, ...] | None,
    inputs: list[list[Any]],
    own: list[Any],
) -> Any:
    """Assemble each input's haloed block from its pieces, then run ``fn`` on them."""
    blocks = [assemble(parts, boxes, shape, fill) for parts, boxes, shape, fill in inputs]
    extra = {} if block_id is None else {"block_id": block_id}
    return fn(*blocks, *own, **extra)


def assemble_dense(parts: list[Any], boxes: np.ndarray, shape: tuple[int, ...], fill: Any) -> Any:
    """One dense haloed block of spatial ``shape`` from slabs cut to size: slab ``p``
    lands at ``boxes[p][2]``; cells no slab covers (beyond an open edge) hold ``fill``."""
    from gridflow.backend import ops

    first = parts[0]
    lead = first.shape[: first.ndim - len(shape)]
    full = (*lead, *shape)
    covered = sum(math.prod(p.shape) for p in parts) == math.prod(full)
    xp = ops(first).xp
    out = xp.empty(full, first.dtype) if covered else xp.full(full, fill, first.dtype)
    for part, (_, _, at) in zip(parts, boxes, strict=True):
        size = part.shape[len(lead) :]
        out[(..., *(slice(a, a + n) for a, n in zip(at, size, strict=True)))] = part
    return out


def halo_pieces(
    idx: tuple[int, ...], chunks: tuple, depth: tuple[int, ...], periodic: bool, pad: bool
) -> list[list[tuple[int, int, int, int]]]:
    """Per dim, the ``(neighbour, lo, hi, at)`` slabs of a haloed block: the
    neighbour's cells ``[lo, hi)`` along that dim land at ``at`` onwards.

    Beyond an open edge there is no slab; with ``pad`` the block still
    starts ``depth`` cells before its chunk there (the cells to fill).
    """
    out = []
    for i, c, d in zip(idx, chunks, depth, strict=True):
        n = len(c)
        below = bool(d) and (periodic or i > 0)
        above = bool(d) and (periodic or i < n - 1)
        start = d if below or (pad and d) else 0
        dim = [(i, 0, c[i], start)]
        if below:
            dim.insert(0, ((i - 1) % n, c[(i - 1) % n] - d, c[(i - 1) % n], 0))
        if above:
            dim.append(((i + 1) % n, 0, d, start + c[i]))
        out.append(dim)
    return out


def haloed_shape(
    idx: tuple[int, ...], chunks: tuple, depth: tuple[int, ...], pieces: list[tuple], pad: bool
) -> tuple[int, ...]:
    """Spatial shape of a haloed block: its chunk and ``depth`` a side with
    ``pad``, else what the slabs of ``pieces`` cover."""
    if pad:
        return tuple(c[i] + 2 * d for i, c, d in zip(idx, chunks, depth, strict=True))
    dims = len(pieces[0])
    return tuple(
        max(piece[j][3] + piece[j][2] - piece[j][1] for piece in pieces) for j in range(dims)
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
