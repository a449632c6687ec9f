"""The vote filter on sparse grids: dask arrays of COO chunks (docs/design.md §3.5).

A sparse round is the dense round of :mod:`gridflow.engine.vote` on the
cells that exist: one task a block cuts its halo from the neighbour chunks
(:func:`_overlap_round`: ``f * w`` deep along the split dims, none along the
dims held whole, which wrap inside the block when periodic), and
:func:`_round_block` runs ``f`` steps on it.

- ``support="reachable"``: a step is evaluated on every cell whose window
  holds a labeled cell (the dilation of the labeled set, computed one dim at
  a time on sorted keys). Outside it the dense grid has no vote either, so
  labels, density and votes equal the dense engine's bit for bit.
- ``support="occupied"``: only the cells holding points exist (the cells
  labeled at the start); the others are :data:`~gridflow.engine.vote.OUTSIDE`
  and never vote. Equal to the dense engine with those cells OUTSIDE.

The votes of a step come from :func:`gridflow._kernels.sparse.gather`, whose
work follows the neighbour pairs that exist, not the ``(2w+1)**d`` offsets
of the window, or, where the points fill a block and that costs less, from
the dense engine's window sums over the block (:func:`_step_votes`). Each step computes only the cells whose result the round
still needs (the region shrinks by ``w`` a step towards the block's core).

A round's output is one COO block of stacked planes, as the dense round's:
``[label + 1, density, changed, labeled, votes...]`` (fill 0; the per-step
counts in the first cells of their planes).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import dask.array as da
import numpy as np

from gridflow._kernels import sparse as kernels
from gridflow.engine.rounds import StepCost, block_round, fusion_factor, halo_radius, max_fusion
from gridflow.errors import GridTooLargeError, ParameterError
from gridflow.kernels import Kernel
from gridflow.sparse_grid import coo, linear_keys, unravel_keys

__all__ = [
    "MAX_WINDOW_OFFSETS",
    "initial_labels",
    "labels_of",
    "occupied_cells",
    "outputs",
    "plan_steps",
    "resolve_support",
    "round_",
    "run_chunks",
]

#: Most offsets of a window the sparse engine holds weights for (2**24: w=2
#: in 10-D has 9.8e6, w=3 in 8-D 5.8e6).
MAX_WINDOW_OFFSETS = 2**24
#: ``support="auto"`` takes the reachable cells while they are at most this
#: many times the occupied ones (a step's work grows with its active cells).
REACH_FACTOR = 8
#: Bytes one active cell of a block costs during a step: its key and
#: coordinates, labels, votes (per class), density, and the dilation's
#: temporaries (about three copies of the keys).
_CELL_BYTES = 96
#: Seconds per neighbour probe of :func:`gather`, for the fusion rule: a rough
#: figure (not measured per probe; a loaded 2-core machine took about 90 ns a
#: neighbour pair in 8-D), and only its ratio to the halo's cost matters there.
_PROBE_SECONDS = 4e-8
#: Share of a worker thread's memory a block's dense votes may take.
DENSE_BLOCK_SHARE = 0.125


def _meta(dtype: Any, ndim: int, fill: Any) -> Any:
    return coo(np.zeros((ndim, 0), np.int64), np.zeros(0, dtype), (0,) * ndim, fill)


def _keys(block: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 row-major keys of a COO block's entries, and their order."""
    keys = linear_keys(block.coords, block.shape).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], order


# --- labels -----------------------------------------------------------------------


def initial_labels(counts: da.Array) -> da.Array:
    """L0 of a sparse grid: each occupied cell's majority class (lowest on ties), fill -1."""
    return counts.map_blocks(
        _majority, drop_axis=0, dtype=np.int32, meta=_meta(np.int32, counts.ndim - 1, -1)
    )


def _majority(block: Any) -> Any:
    cells = block.shape[1:]
    held = block.data > 0
    coords, data = block.coords[:, held], block.data[held]
    keys = linear_keys(coords[1:], cells).astype(np.int64)
    # Per cell: the largest count, then the lowest class.
    order = np.lexsort((coords[0], -data.astype(np.float64), keys))
    keys = keys[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if keys.size else np.zeros(0, bool)
    pick = order[first]
    return coo(coords[1:, pick], coords[0, pick].astype(np.int32), cells, -1)


def labels_of(plane: da.Array) -> da.Array:
    """int32 labels (fill -1) from a round's ``label + 1`` plane."""
    return plane.map_blocks(_labels_block, dtype=np.int32, meta=_meta(np.int32, plane.ndim, -1))


def _labels_block(block: Any) -> Any:
    held = block.data > 0
    return coo(block.coords[:, held], block.data[held].astype(np.int32) - 1, block.shape, -1)


def occupied_cells(labels: da.Array) -> int:
    """Cells labeled in ``labels`` (COO chunks): the occupied cells of a grid's L0."""
    import dask

    sizes = labels.map_blocks(
        lambda b: np.array([b.nnz], np.int64).reshape((1,) * b.ndim),
        dtype=np.int64,
        chunks=tuple((1,) * n for n in labels.numblocks),
        meta=np.empty((0,) * labels.ndim, np.int64),
    )
    return int(dask.compute(sizes.sum())[0])


# --- planning ---------------------------------------------------------------------


def check_kernel(kernel: Kernel) -> None:
    """Refuse a window with more offsets than the sparse engine holds weights for."""
    if kernel.weights.size > MAX_WINDOW_OFFSETS:
        raise ParameterError(
            f"window: {kernel.weights.size:,} offsets in {kernel.ndim}-D, more than the sparse "
            f"engine's {MAX_WINDOW_OFFSETS:,}; use a smaller window"
        )


def run_chunks(chunks: tuple[tuple[int, ...], ...], radius: tuple[int, ...]) -> tuple:
    """``chunks`` with every split dim's chunks at least one step's halo deep."""
    from dask.array.overlap import ensure_minimum_chunksize

    return tuple(
        ensure_minimum_chunksize(max(r, 1), c) if len(c) > 1 else c
        for c, r in zip(chunks, radius, strict=True)
    )


def plan_steps(chunks: tuple[tuple[int, ...], ...], radius: tuple[int, ...], remaining: int) -> int:
    """Steps per sparse round.

    A halo runs along the split dims only. One block holding the whole grid
    needs none and fuses every step (up to its core's cells, where the round
    keeps its per-step counts); otherwise :func:`fusion_factor` weighs the
    halo against the rounds, with the dims held whole at radius 0.
    """
    core = math.prod(min(c) for c in chunks)
    if all(len(c) == 1 for c in chunks):
        return max(1, min(remaining, core))
    eff = halo_radius(radius, chunks)
    block = tuple(min(c) for c in chunks)
    cost = StepCost(first=_PROBE_SECONDS, later=_PROBE_SECONDS)
    steps = fusion_factor(chunks, eff, remaining, cost)
    return max(1, min(steps, max_fusion(block, eff, remaining), core))


def resolve_support(
    support: str,
    *,
    occupied: int,
    ncells: int,
    nclasses: int,
    kernel: Kernel,
    steps: int,
    memory: float,
) -> str:
    """``"auto"``: reachable while its active cells fit ``memory`` and are at
    most :data:`REACH_FACTOR` times the occupied cells, else occupied.

    The reachable set after ``steps`` steps is at most every cell within
    ``steps * w`` of an occupied one: ``occupied * (2 steps w + 1)**d``,
    and never more than the grid. A support that cannot fit is refused with
    the numbers.
    """
    side = [2 * steps * r + 1 for r in kernel.radius]
    reach = min(float(ncells), float(occupied) * math.prod(float(s) for s in side))
    per_cell = _CELL_BYTES + 8 * nclasses

    def fits(cells: float) -> bool:
        return cells * per_cell <= memory

    if support == "auto":
        # Reachable costs reach / occupied times the work of occupied a step.
        cheap = reach <= REACH_FACTOR * max(occupied, 1)
        support = "reachable" if cheap and fits(reach) else "occupied"
    need = reach if support == "reachable" else float(occupied)
    if not fits(need):
        other = "support='occupied', " if support == "reachable" else ""
        raise GridTooLargeError(
            f"grid: support={support!r} keeps up to {need:,.0f} active cells "
            f"({need * per_cell / 2**30:,.1f} GiB), more than the workers' "
            f"{memory / 2**30:,.1f} GiB; use {other}fewer bins or more memory"
        )
    return support


# --- one round ----------------------------------------------------------------------


def round_(
    state: Any,
    support: da.Array | None,
    fixed: da.Array | None,
    nclasses: int,
    kernel: Kernel,
    boundary: str,
    seed_counts: da.Array | None,
    steps: int,
    final_votes: bool = False,
) -> da.Array:
    """One lazy round of ``steps`` fused steps from ``state`` on COO chunks.

    ``support`` (the start labels, COO) gives the cells that exist with
    ``support="occupied"``; None: every cell exists.
    """
    cur = state.labels
    depth = tuple(steps * r for r in halo_radius(kernel.radius, cur.chunks))
    return _overlap_round(
        _round_block,
        state,
        [extra for extra in (support, fixed) if extra is not None],
        seed_counts,
        depth=depth,
        periodic=boundary == "periodic",
        nplanes=4 + (nclasses if final_votes else 0),
        meta=_meta(np.float64, cur.ndim + 1, 0.0),
        has_support=support is not None,
        has_clamp=fixed is not None,
        nclasses=nclasses,
        kernel=kernel,
        steps=steps,
        grid_chunks=cur.chunks,
        final_votes=final_votes,
        dense_cells=dense_block_cells(nclasses),
    )


def _overlap_round(
    block: Any,
    state: Any,
    extras: list[da.Array],
    seed_counts: da.Array | None,
    *,
    depth: tuple[int, ...],
    periodic: bool,
    nplanes: int,
    meta: Any,
    **kwargs: Any,
) -> da.Array:
    """:func:`gridflow.engine.rounds.overlap_round` for COO chunks: one task a block.

    Each block's task takes its neighbours' COO chunks whole and cuts their
    halo slabs itself (:func:`_haloed`), one pass over each neighbour's
    entries, where ``map_overlap`` would slice every piece apart and
    concatenate them again as more tasks (most of a crowded sparse round's
    time). The halo is ``depth`` deep along the split dims, at most one
    chunk (:func:`~gridflow.engine.rounds.max_fusion`), wrapping when
    ``periodic`` and absent beyond an open edge; the seed counts (class
    axis whole) on the first step and the carried density (no halo) as
    ``overlap_round`` gives them, and so are the keywords ``block`` gets
    (with ``periodic`` and ``block_id``).
    """
    seeded = seed_counts is not None and state.step == 0
    haloed = [(a, None) for a in (state.labels, *extras, *([seed_counts] if seeded else []))]
    return block_round(
        functools.partial(block, periodic=periodic),
        state,
        haloed,
        depth=depth,
        periodic=periodic,
        nplanes=nplanes,
        meta=meta,
        assemble=_haloed,
        slabs=False,
        has_seed=seeded,
        block_id=True,
        **kwargs,
    )


def _haloed(parts: list[Any], boxes: np.ndarray, shape: tuple[int, ...], fill: None = None) -> Any:
    """One COO block of ``shape`` (after any leading whole axis of the parts)
    from the slabs ``boxes[p] = (lo, hi, at)`` of the parts ``parts[p]``."""
    lead = parts[0].ndim - len(shape)
    coords, data = [], []
    for part, (lo, hi, at) in zip(parts, boxes, strict=True):
        c = part.coords.astype(np.int64)
        keep = np.ones(c.shape[1], bool)
        for j in range(len(shape)):
            if lo[j] > 0 or hi[j] < part.shape[lead + j]:
                keep &= (c[lead + j] >= lo[j]) & (c[lead + j] < hi[j])
        c = c[:, keep]
        c[lead:] += (at - lo)[:, None]
        coords.append(c)
        data.append(np.asarray(part.data)[keep])
    full = (*parts[0].shape[:lead], *shape)
    return coo(
        np.concatenate(coords, axis=1),
        np.concatenate(data),
        full,
        parts[0].fill_value,
        sorted=False,
    )


def dense_block_cells(nclasses: int) -> int:
    """Most cells of a block whose votes a step may sum densely: the dense
    votes (float64 a class) and their one-hot and window-sum temporaries,
    about 3 copies, in :data:`DENSE_BLOCK_SHARE` of a worker thread's memory."""
    from gridflow.runtime import worker_memory

    memory, threads = worker_memory()
    return int(DENSE_BLOCK_SHARE * memory / max(threads, 1) / (3 * 8 * max(nclasses, 1) + 8))


def _core_box(
    block_id: tuple[int, ...], grid_chunks: tuple, depth: tuple[int, ...], periodic: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and length of the block's core in its haloed block, and the dims that wrap."""
    left, length, wrap = [], [], []
    for i, chunks, d in zip(block_id, grid_chunks, depth, strict=True):
        left.append(d if d and (periodic or i > 0) else 0)
        length.append(chunks[i])
        wrap.append(periodic and len(chunks) == 1)
    return np.array(left, np.int64), np.array(length, np.int64), np.array(wrap, np.bool_)


def _in_box(coords: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    keep = np.ones(coords.shape[1], bool)
    for c, a, b in zip(coords, lo, hi, strict=True):
        keep &= (c >= a) & (c < b)
    return keep


def _dilate(
    keys: np.ndarray,
    shape: np.ndarray,
    radius: tuple[int, ...],
    wrap: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """Sorted keys of every cell of the box [lo, hi) within the window of a cell of ``keys``.

    One dim at a time (the window is a box), so duplicates merge after each
    dim instead of after all ``(2w+1)**d`` offsets.
    """
    strides = np.ones(len(shape), np.int64)
    for j in range(len(shape) - 2, -1, -1):
        strides[j] = strides[j + 1] * shape[j + 1]
    for j in range(len(shape)):
        r = radius[j]
        c = (keys // strides[j]) % shape[j]
        parts = []
        for delta in range(-r, r + 1):
            v = c + delta
            if wrap[j]:
                v = v % shape[j]
                parts.append(keys + (v - c) * strides[j])
            else:
                ok = (v >= lo[j]) & (v < hi[j])
                parts.append(keys[ok] + delta * strides[j])
        keys = np.unique(np.concatenate(parts))
    return keys


def _merge_density(
    keys: np.ndarray, values: np.ndarray | None, new_keys: np.ndarray, new_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``values + new_values`` on the union of the keys (0 where absent), as the dense sum."""
    if values is None:
        return new_keys, new_values
    union = np.union1d(keys, new_keys)
    out = np.zeros(union.size)
    out[np.searchsorted(union, keys)] = values
    at = np.searchsorted(union, new_keys)
    out[at] = out[at] + new_values
    return union, out


def _round_block(
    *blocks: Any,
    block_id: tuple[int, ...] | None = None,
    has_support: bool,
    has_clamp: bool,
    has_seed: bool,
    has_density: bool,
    nclasses: int,
    kernel: Kernel,
    steps: int,
    first_step: int,
    depth_: tuple[int, ...],
    grid_chunks: tuple,
    periodic: bool,
    final_votes: bool,
    dense_cells: int,
) -> Any:
    labels, rest = blocks[0], list(blocks[1:])
    support = rest.pop(0) if has_support else None
    clamp = rest.pop(0) if has_clamp else None
    seed = rest.pop(0) if has_seed else None
    density = rest.pop(0) if has_density else None
    # The output's first axis is the planes': the block's own index follows it.
    block_id = block_id[1:] if block_id is not None else (0,) * labels.ndim
    shape = np.array(labels.shape, np.int64)
    left, core, wrap = _core_box(block_id, grid_chunks, depth_, periodic)
    radius = kernel.radius
    r = np.array(radius, np.int64)
    core_hi = left + core

    # Sources: the labeled cells, by key.
    skeys, order = _keys(labels)
    slabels = labels.data[order].astype(np.int32)
    skeys, slabels = skeys[slabels >= 0], slabels[slabels >= 0]
    exist = _keys(support)[0] if support is not None else None
    if clamp is not None:
        ckeys, corder = _keys(clamp)
        cvalues = clamp.data[corder].astype(np.int32)
        ckeys, cvalues = ckeys[cvalues >= 0], cvalues[cvalues >= 0]  # held: labeled cells
    rows = None
    if seed is not None:
        # Per cell, its counts of every class (the first step's sources).
        cell_keys = linear_keys(seed.coords[1:], seed.shape[1:]).astype(np.int64)
        rkeys, inverse = np.unique(cell_keys, return_inverse=True)
        rows = np.zeros((rkeys.size, nclasses))
        rows[inverse, seed.coords[0]] = seed.data
    dkeys = dvalues = None
    if density is not None:
        dk, dorder = _keys(density)
        # The density arrives as the core: re-key it in the haloed block.
        dc = unravel_keys(dk, density.shape) + left[:, None]
        dkeys, dvalues = linear_keys(dc, shape).astype(np.int64), density.data[dorder]

    changed = np.zeros(steps)
    labeled = np.zeros(steps)
    votes = tkeys = None
    for s in range(steps):
        reach = (steps - 1 - s) * r
        lo = np.where(wrap, 0, np.maximum(0, left - reach))
        hi = np.where(wrap, shape, np.minimum(shape, core_hi + reach))
        src_keys, src_labels = (rkeys, None) if (rows is not None and s == 0) else (skeys, slabels)
        if exist is not None:
            tkeys = exist[_in_box(unravel_keys(exist, shape), lo, hi)]
        else:
            tkeys = _dilate(src_keys, shape, radius, wrap, lo, hi)
        tcoords = unravel_keys(tkeys, shape)
        votes = _step_votes(
            unravel_keys(src_keys, shape),
            src_labels,
            rows if src_labels is None else None,
            seed if src_labels is None else None,
            tcoords,
            nclasses=nclasses,
            kernel=kernel,
            shape=shape,
            wrap=wrap,
            dense_cells=dense_cells,
        )
        new, total = kernels.decide(votes)
        if clamp is not None:
            at = np.searchsorted(ckeys, tkeys)
            held = (at < ckeys.size) & (ckeys[np.minimum(at, ckeys.size - 1)] == tkeys)
            new[held] = cvalues[at[held]]
        incore = _in_box(tcoords, left, core_hi)
        # Per-step counts over the core: cells whose label changed, cells labeled.
        old_in = _in_box(unravel_keys(skeys, shape), left, core_hi)
        okeys, olabels = skeys[old_in], slabels[old_in]
        nkeys, nlabels = tkeys[incore & (new >= 0)], new[incore & (new >= 0)]
        common, oi, ni = np.intersect1d(okeys, nkeys, assume_unique=True, return_indices=True)
        changed[s] = (
            okeys.size + nkeys.size - 2 * common.size + np.count_nonzero(olabels[oi] != nlabels[ni])
        )
        labeled[s] = nkeys.size
        step_total = total[incore] / 10.0 ** (first_step + s - 1)
        dkeys, dvalues = _merge_density(dkeys, dvalues, tkeys[incore], step_total)
        keep = new >= 0
        skeys, slabels = tkeys[keep], new[keep]
    return _stack(
        shape, left, core, skeys, slabels, dkeys, dvalues, changed, labeled,
        (tkeys, votes) if final_votes else None, nclasses,
    )  # fmt: skip


def _step_votes(
    scoords: np.ndarray,
    slabels: np.ndarray | None,
    srows: np.ndarray | None,
    seed: Any,
    tcoords: np.ndarray,
    *,
    nclasses: int,
    kernel: Kernel,
    shape: np.ndarray,
    wrap: np.ndarray,
    dense_cells: int,
) -> np.ndarray:
    """``(m, nclasses)`` votes of a step at the targets ``tcoords``: from the
    neighbour pairs (:func:`gridflow._kernels.sparse.gather`), or from the
    dense engine's window sums over the block where those cost less.

    Where the points fill a block, the pairs outnumber the block's cells
    times its per-cell cost (:func:`dense_cheaper`); a block of at most
    ``dense_cells`` cells is then densified, voted as the dense engine does
    with nothing beyond its edges (its halo holds every source the targets
    see), and read at the targets. Votes are exact sums of dyadic weights,
    so both ways give the same bits. ``srows``/``seed``: the first step of
    ``seed="counts"`` (per-source class counts; the seed COO block).
    """
    n, m = scoords.shape[1], tcoords.shape[1]
    dims = tuple(int(x) for x in shape)
    if m and math.prod(dims) <= dense_cells and dense_cheaper(n, m, kernel, dims, nclasses):
        from gridflow.engine.vote import UNLABELED, vote

        flags = tuple(bool(w) for w in wrap)
        if srows is not None:
            votes = vote(None, nclasses, kernel, "auto", seed.todense(), flags, True)
        else:
            cells = np.full(dims, UNLABELED, np.int32)
            cells[tuple(scoords)] = slabels
            votes = vote(cells, nclasses, kernel, "auto", None, flags, True)
        return np.ascontiguousarray(votes[(slice(None), *tcoords)].T)
    return kernels.gather(
        scoords,
        np.zeros(n, np.int32) if slabels is None else slabels,
        srows,
        tcoords,
        nclasses=nclasses,
        radius=np.array(kernel.radius, np.int64),
        shape=shape,
        wrap=wrap,
        weights=kernel.weights,
    )


def dense_cheaper(
    sources: int, targets: int, kernel: Kernel, shape: tuple[int, ...], nclasses: int
) -> bool:
    """Whether a step's votes cost less as dense window sums over the block
    ``shape`` than as neighbour pairs.

    The pairs' cost (:data:`_PROBE_SECONDS` a probe): each target probes the
    source lines of its window along the last dim that hold a source, about
    ``prod(2w+1 over the other dims)`` times the chance that a line of the
    block holds one, ``2w+1`` cells each. The dense cost is the dense
    engine's (:func:`gridflow.engine.correlate.method_cost`) per class.
    """
    from gridflow.engine.correlate import method_cost
    from gridflow.engine.vote import _UNIT_SECONDS

    volume = math.prod(shape)
    side = [2 * r + 1 for r in kernel.radius]
    lines = volume / max(shape[-1], 1)
    filled = min(1.0, sources / max(lines, 1.0))
    probes = targets * math.prod(side[:-1]) * filled * side[-1]
    dense = nclasses * method_cost(kernel, shape, "auto") * _UNIT_SECONDS
    return dense < probes * _PROBE_SECONDS


def _stack(
    shape: np.ndarray,
    left: np.ndarray,
    core: np.ndarray,
    skeys: np.ndarray,
    slabels: np.ndarray,
    dkeys: np.ndarray,
    dvalues: np.ndarray,
    changed: np.ndarray,
    labeled: np.ndarray,
    final: tuple[np.ndarray, np.ndarray] | None,
    nclasses: int,
) -> Any:
    """The round's COO output ``(planes, *core)``: labels + 1, density, counts, votes."""
    core_hi = left + core

    def local(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = unravel_keys(keys, shape)
        inside = _in_box(c, left, core_hi)
        return c[:, inside] - left[:, None], inside

    coords, data = [], []

    def add(plane: int, c: np.ndarray, v: np.ndarray) -> None:
        nz = v != 0
        coords.append(np.vstack([np.full((1, int(nz.sum())), plane, np.int64), c[:, nz]]))
        data.append(np.asarray(v, np.float64)[nz])

    c, inside = local(skeys)
    add(0, c, slabels[inside].astype(np.float64) + 1.0)
    c, inside = local(dkeys)
    add(1, c, dvalues[inside])
    first = unravel_keys(np.arange(changed.size), core)
    add(2, first, changed)
    add(3, first, labeled)
    if final is not None:
        tkeys, votes = final
        c, inside = local(tkeys)
        v = votes[inside]
        for k in range(nclasses):
            add(4 + k, c, v[:, k])
    nplanes = 4 + (nclasses if final is not None else 0)
    shape_out = (nplanes, *(int(n) for n in core))
    return coo(np.concatenate(coords, axis=1), np.concatenate(data), shape_out, 0.0, sorted=False)


# --- outputs ------------------------------------------------------------------------


def outputs(final: Any, nclasses: int, probabilities: bool) -> dict[str, da.Array]:
    """classify's variables from a sparse :class:`~gridflow.engine.vote.FinalRound`.

    ``confidence`` = top vote / total, ``votes`` = the total vote of the last
    step, ``probability`` = votes / total: computed exactly as the dense
    outputs (float64, then float32), on the cells that have a vote.
    """
    label_dtype = np.int16 if nclasses < 2**15 else np.int32
    votes = final.votes
    spatial = votes.ndim - 1
    out = {
        "label": final.labels.map_blocks(
            _astype, label_dtype, dtype=label_dtype, meta=_meta(label_dtype, spatial, -1)
        ),
        "density": final.density.map_blocks(
            _astype, np.float32, dtype=np.float32, meta=_meta(np.float32, spatial, 0.0)
        ),
    }
    for name in ("confidence", "votes"):
        out[name] = votes.map_blocks(
            _vote_summary,
            name,
            drop_axis=0,
            dtype=np.float32,
            meta=_meta(np.float32, spatial, 0.0),
        )
    if probabilities:
        out["probability"] = votes.map_blocks(
            _probability, dtype=np.float32, meta=_meta(np.float32, spatial + 1, 0.0)
        )
    return out


def _astype(block: Any, dtype: Any) -> Any:
    return coo(block.coords, block.data.astype(dtype), block.shape, block.fill_value)


def _cells(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct cells of a ``(class, *cells)`` COO block: keys, and each entry's cell."""
    keys = linear_keys(block.coords[1:], block.shape[1:]).astype(np.int64)
    cells, inverse = np.unique(keys, return_inverse=True)
    return cells, inverse, keys


def _rows(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ``(class, *cells)`` COO block as per-cell vote rows: the distinct cells'
    keys, each entry's cell, the rows and their totals (summed in class order)."""
    cells, inverse, _ = _cells(block)
    nclasses = block.shape[0]
    dense = np.zeros((cells.size, nclasses))
    dense[inverse, block.coords[0]] = block.data
    total = dense[:, 0].copy()
    for k in range(1, nclasses):
        total += dense[:, k]
    return cells, inverse, dense, total


def _vote_summary(block: Any, name: str) -> Any:
    cells, _, dense, total = _rows(block)
    if name == "votes":
        value = total
    else:
        value = np.where(total > 0, dense.max(axis=1) / np.where(total > 0, total, 1.0), 0.0)
    return coo(unravel_keys(cells, block.shape[1:]), value.astype(np.float32), block.shape[1:], 0.0)


def _probability(block: Any) -> Any:
    _, inverse, _, total = _rows(block)
    prob = (block.data / total[inverse]).astype(np.float32)
    return coo(block.coords, prob, block.shape, 0.0)
