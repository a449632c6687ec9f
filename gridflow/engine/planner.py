"""Memory planner: peak memory per worker of a filter run, and chunk sizes that fit.

One task of a classify round holds a haloed block: a chunk of ``c`` cells
per side grown by ``depth = steps * w`` cells on every side, so
``prod(c + 2 * depth)`` cells. Per haloed cell a vote step keeps the one-hot
planes (bool), their float copy, the votes and the correlation's scratch
(``4 * K`` floats of ``itemsize`` bytes and ``K`` bools), and a few per-cell
arrays for the labels, the argmax and the total vote (about 30 bytes). The
stacked output of the block (``4 + K`` float64 planes of the interior) and
four interior planes of per-step counts exist at the end. A worker runs
``threads`` such tasks at once::

    task   ≈ haloed × (33·K + 30 + 4·inputs) + interior × 8 × (8 + K)
    worker ≈ threads × task              (must stay under ~60% of its limit)

The figures match what ``tracemalloc`` measures on a block to within a
factor of two (``tests/test_planner.py``). :func:`plan_filter` picks the
chunk side and the steps fused per round so a worker stays under the
budget, and warns (:class:`~gridflow.errors.MemoryPlanWarning`) before a
run that cannot fit even with the smallest chunks.

Binning (:func:`plan_binning`) is planned the same way, and refused up front
(:class:`~gridflow.errors.GridTooLargeError`) when the dense counts would
not fit the workers' memory together, or when the strategy's peak would
not fit one worker: the ``tree`` strategy holds a whole grid per thread
(and a tree step more), the ``chunked`` one a few copies of one output
chunk per thread.

The layout of the counts (:func:`choose_layout`): ``"auto"`` is sparse when
the dense counts would not fit (the test :func:`check_dense_grid` makes) or
when fewer than one cell in :data:`SPARSE_OCCUPANCY` can be occupied (the
occupied cells are at most the rows read). A sparse grid keeps only the
keys of its occupied cells: :func:`check_keys` refuses a grid whose
(class, cell) keys would overflow 64-bit integers, :func:`check_sparse_grid`
one whose keys would not fit the workers together (:data:`SPARSE_KEY_BYTES`
per point).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gridflow.errors import GridTooLargeError, MemoryPlanWarning

__all__ = [
    "BinPlan",
    "MemoryPlan",
    "check_dense_grid",
    "check_keys",
    "check_sparse_grid",
    "choose_layout",
    "dense_fits",
    "filter_task_bytes",
    "format_bytes",
    "plan_binning",
    "plan_filter",
]

log = logging.getLogger(__name__)

#: Share of a worker's memory limit a run plans to use (Dask starts spilling at 60%).
BUDGET_FRACTION = 0.6
#: Largest block a plan makes (cells of one chunk): beyond this tasks only get slower to move.
MAX_CHUNK_CELLS = 2**22


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"):
        if abs(n) < 1024 or unit == "YiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} YiB"  # pragma: no cover


def filter_task_bytes(
    chunk: Sequence[int],
    nclasses: int,
    radius: Sequence[int],
    steps: int,
    *,
    itemsize: int = 8,
    label_itemsize: int = 4,
    counts_itemsize: int = 4,
    seed_counts: bool = False,
    clamp: bool = False,
    final_votes: bool = True,
) -> int:
    """Estimated peak bytes of one task of a round of ``steps`` fused vote steps.

    Parameters
    ----------
    chunk : sequence of int
        Interior cells of the block per dim.
    nclasses : int
        Classes K (vote planes).
    radius : sequence of int
        Window radius per dim; the halo is ``steps * radius`` per side.
    steps : int
        Steps fused into the round.
    itemsize : int
        Bytes of the vote dtype (float64: 8).
    label_itemsize, counts_itemsize : int
        Bytes of a label (int32) and of a count (uint32; uint64 is 8).
    seed_counts, clamp, final_votes : bool
        Whether the round also carries the counts (``seed="counts"``), the
        clamped labels, and returns the last step's votes.
    """
    haloed = math.prod(c + 2 * steps * r for c, r in zip(chunk, radius, strict=True))
    interior = math.prod(chunk)
    k = nclasses
    per_cell = k * (4 * itemsize + 1) + 30 + label_itemsize * (1 + int(clamp))
    if seed_counts:
        per_cell += k * (counts_itemsize + itemsize)
    planes = 4 + (k if final_votes else 0)
    return int(haloed * per_cell + interior * 8 * (4 + planes))


@dataclass(frozen=True)
class MemoryPlan:
    """Chunks and fusion of a filter run, and its estimated peak memory."""

    chunks: tuple[int, ...]
    fuse: int
    task_bytes: int
    threads: int
    memory: float
    fits: bool

    @property
    def worker_bytes(self) -> int:
        """Estimated peak of one worker: ``threads`` tasks at once."""
        return self.threads * self.task_bytes

    def summary(self) -> str:
        side = "x".join(map(str, self.chunks))
        return (
            f"chunks {side}, up to {self.fuse} steps per round: about "
            f"{format_bytes(self.task_bytes)} per task, {format_bytes(self.worker_bytes)} per "
            f"worker ({self.threads} threads) of {format_bytes(self.memory)}"
        )


def _fuse_cap(chunk: Sequence[int], radius: Sequence[int], iterations: int) -> int:
    return max(1, min(min(c // max(r, 1) for c, r in zip(chunk, radius, strict=True)), iterations))


def plan_filter(
    shape: Sequence[int],
    nclasses: int,
    radius: Sequence[int],
    *,
    iterations: int,
    chunks: Sequence[int] | None = None,
    memory: float,
    threads: int,
    total_threads: int | None = None,
    keep_chunks: bool = False,
    warn: bool = True,
    **task: bool | int,
) -> MemoryPlan:
    """Chunks and steps per round for ``iterations`` vote steps on a grid of ``shape``.

    With ``chunks`` given, the plan keeps them and fuses as many steps per
    round as fit the budget; when one step per round does not fit, or with
    ``chunks=None``, it picks the largest cubic chunk side that fits (at
    most :data:`MAX_CHUNK_CELLS` cells, and small enough that every thread
    of the cluster gets a chunk). ``memory`` and ``threads`` are one
    worker's limit and threads, ``total_threads`` the cluster's (default
    ``threads``): the stage asks the runtime for them
    (:func:`gridflow.runtime.worker_resources`). ``keep_chunks=True`` never changes given chunks (only the
    fusion). Other keywords go to :func:`filter_task_bytes`.

    Warns with :class:`~gridflow.errors.MemoryPlanWarning` when even one
    step on the smallest chunks exceeds the budget.

    Examples
    --------
    >>> plan = plan_filter((4096, 4096), 5, (10, 10), iterations=3,
    ...                    memory=4 * 2**30, threads=2)
    >>> plan.fits, plan.chunks
    (True, (1024, 1024))
    >>> plan.fuse
    3
    """
    budget = BUDGET_FRACTION * memory / threads
    shape = tuple(int(s) for s in shape)
    radius = tuple(int(r) for r in radius)

    def fits(chunk: tuple[int, ...], fuse: int) -> int:
        # A dim held whole carries no halo (the engine wraps or stops at its edge).
        halo = tuple(0 if c >= n else r for c, n, r in zip(chunk, shape, radius, strict=True))
        return filter_task_bytes(chunk, nclasses, halo, fuse, **task)

    if chunks is not None:
        chunk = tuple(min(int(c), s) for c, s in zip(chunks, shape, strict=True))
        for f in range(_fuse_cap(chunk, radius, iterations), 0, -1):
            if fits(chunk, f) <= budget:
                return MemoryPlan(chunk, f, fits(chunk, f), threads, memory, True)
        if keep_chunks:
            return _too_big(MemoryPlan(chunk, 1, fits(chunk, 1), threads, memory, False), warn)
    # Parallelism: at least one chunk per thread of the cluster.
    total_threads = threads if total_threads is None else total_threads
    split = split_dims(shape)
    whole = math.prod(n for j, n in enumerate(shape) if j not in split)
    ndim = len(split)
    side = min(max(shape), max(1, int((MAX_CHUNK_CELLS / whole) ** (1 / ndim))))
    cells = math.prod(shape)
    if len(shape) > len(split):
        # In many dims a cut costs a halo as deep as the window through a
        # few bins, and the compiled kernels use every thread of a block:
        # first try the grid in one block.
        side = max(shape)
    elif total_threads > 1 and cells > total_threads * 4**ndim * whole:
        side = min(side, max(1, int((cells / whole / total_threads) ** (1 / ndim))))
    smallest = max(max(radius), 1)
    sides = [side]
    while sides[-1] > smallest:
        sides.append(max(smallest, sides[-1] // 2))

    def cube(s: int) -> tuple[int, ...]:
        return tuple(min(s, n) if j in split else n for j, n in enumerate(shape))

    # Prefer all the fusion the chunks allow (fewer rounds), then larger chunks.
    for s in sides:
        chunk = cube(s)
        f = _fuse_cap(chunk, radius, iterations)
        if fits(chunk, f) <= budget:
            return MemoryPlan(chunk, f, fits(chunk, f), threads, memory, True)
    for s in sides:
        chunk = cube(s)
        for f in range(_fuse_cap(chunk, radius, iterations) - 1, 0, -1):
            if fits(chunk, f) <= budget:
                return MemoryPlan(chunk, f, fits(chunk, f), threads, memory, True)
    return _too_big(MemoryPlan(chunk, 1, fits(chunk, 1), threads, memory, False), warn)


def split_dims(shape: Sequence[int]) -> tuple[int, ...]:
    """The dims a filter's blocks are split along: all of them up to 3, else the 3 largest.

    In more dims the others stay whole: a halo along each of ``d`` dims
    would multiply a block's cells by ``prod((c + 2r) / c)`` and its
    neighbour pieces by ``3**d``, while a whole dim needs no halo at all.
    """
    from gridflow.sparse_grid import MAX_SPLIT_DIMS

    order = sorted(range(len(shape)), key=lambda j: (-shape[j], j))
    return tuple(sorted(order[:MAX_SPLIT_DIMS]))


def _too_big(plan: MemoryPlan, warn: bool) -> MemoryPlan:
    if warn:
        msg = (
            f"memory: a worker needs about {format_bytes(plan.worker_bytes)} even with "
            f"{plan.summary()}; give workers more memory (--memory-limit), fewer "
            "threads, or use a smaller window"
        )
        log.warning(msg)
        warnings.warn(msg, MemoryPlanWarning, stacklevel=3)
    return plan


# --- binning ------------------------------------------------------------------------

#: Bytes of one count (uint32; a grid widens to uint64 only past 2**32 - 1 points).
COUNT_BYTES = 4
#: Share of a worker the tree strategy may fill (its grids are not spillable).
TREE_FRACTION = 0.5
#: Copies of an output chunk a chunked-binning thread holds: the zeroed chunk,
#: its slice, the encoded and the compressed bytes.
CHUNK_COPIES = 4


@dataclass(frozen=True)
class BinPlan:
    """The strategy of a binning run and its estimated peak memory."""

    strategy: str
    grid_bytes: int  # the dense counts of the whole grid, uncompressed
    worker_bytes: int  # the estimated peak of one worker
    memory: float  # one (the smallest) worker's limit
    threads: int

    def summary(self) -> str:
        return (
            f"{self.strategy} strategy: {format_bytes(self.grid_bytes)} of counts, about "
            f"{format_bytes(self.worker_bytes)} per worker ({self.threads} threads) of "
            f"{format_bytes(self.memory)}"
        )


def _cells(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _workers(mem) -> str:
    if mem.workers == 1:
        return f"1 worker of {format_bytes(mem.total)}"
    return f"{mem.workers} workers, {format_bytes(mem.total)} together"


def check_dense_grid(
    shape: Sequence[int], nclasses: int, *, memory: Any, classes_known: bool = True
) -> int:
    """Refuse a dense grid whose counts would not fit the workers' memory together.

    Returns the counts' bytes. ``memory`` is a
    :class:`~gridflow.runtime.ClusterMemory` (the stage asks the runtime's
    :func:`~gridflow.runtime.cluster_memory`). A grid larger than one worker still bins (chunk by chunk), but one
    larger than all of them cannot be classified in memory either.
    ``classes_known=False``: ``nclasses`` is a lower bound (before the data
    pass that finds the classes).
    """
    mem = memory
    grid_bytes = COUNT_BYTES * max(int(nclasses), 1) * math.prod(int(b) for b in shape)
    if grid_bytes > mem.total:
        classes = f" x {nclasses} classes" if nclasses > 1 else ""
        least = "" if classes_known else "at least "
        raise GridTooLargeError(
            f"bins: a dense grid of {_cells(shape)} cells{classes} needs {least}"
            f"{format_bytes(grid_bytes)} of counts, more than the workers' memory "
            f"({_workers(mem)}); use fewer bins, or more workers or memory (--workers, "
            "--memory-limit), or the sparse layout (--layout sparse, layout='sparse')",
            param="bins",
        )
    return grid_bytes


def dense_fits(shape: Sequence[int], nclasses: int, *, memory: Any) -> bool:
    """Whether :func:`check_dense_grid` accepts the dense counts (without raising)."""
    return COUNT_BYTES * max(int(nclasses), 1) * math.prod(int(b) for b in shape) <= memory.total


def plan_binning(
    shape: Sequence[int],
    nclasses: int,
    chunks: Sequence[int],
    *,
    strategy: str = "auto",
    memory: Any,
) -> BinPlan:
    """The binning strategy for a grid of ``shape`` x ``nclasses``, refused when it cannot fit.

    ``"auto"`` picks ``"tree"`` when a worker holds its grids in at most
    :data:`TREE_FRACTION` of its memory, else ``"chunked"``. Raises
    :class:`~gridflow.errors.GridTooLargeError` before any work when the
    counts exceed the workers' memory together (:func:`check_dense_grid`),
    or the strategy's peak exceeds one worker's memory.

    Examples
    --------
    >>> from gridflow.runtime import ClusterMemory
    >>> plan_binning((400, 400), 5, (400, 400), memory=ClusterMemory(2**33, 1, 2**33, 4)).strategy
    'tree'
    """
    mem = memory
    grid_bytes = check_dense_grid(shape, nclasses, memory=mem)
    threads = max(int(mem.threads), 1)
    # Every thread holds its chain's grid, and a tree step up to split_every + 1
    # more (two per thread plus eight is conservative).
    tree_bytes = grid_bytes * (threads * 2 + 8)
    chunk_bytes = COUNT_BYTES * max(int(nclasses), 1) * math.prod(int(c) for c in chunks)
    chunked_bytes = threads * CHUNK_COPIES * chunk_bytes
    if strategy == "auto":
        strategy = "tree" if tree_bytes <= TREE_FRACTION * mem.smallest else "chunked"
    peak = tree_bytes if strategy == "tree" else chunked_bytes
    plan = BinPlan(strategy, grid_bytes, peak, mem.smallest, threads)
    if peak > mem.smallest:
        if strategy == "tree":
            raise GridTooLargeError(
                f"strategy: the tree strategy holds a whole grid per thread, about "
                f"{format_bytes(peak)} per worker ({threads} threads) of "
                f"{format_bytes(mem.smallest)}; use strategy 'chunked' or fewer bins",
                param="strategy",
            )
        raise GridTooLargeError(
            f"chunks: chunks of {_cells(chunks)} cells x {nclasses} classes take "
            f"{format_bytes(chunk_bytes)} each, about {format_bytes(peak)} per worker "
            f"({threads} threads) of {format_bytes(mem.smallest)}; use smaller chunks",
            param="chunks",
        )
    log.debug("binning plan: %s", plan.summary())
    return plan


# --- sparse binning -----------------------------------------------------------------

#: ``layout="auto"`` is sparse when fewer than one cell in this many can hold a point.
SPARSE_OCCUPANCY = 16
#: Fewest cells an ``"auto"`` grid goes sparse at for being mostly empty: a
#: smaller grid is cheaper dense (its counts take at most 64 MiB a class, and
#: the dense engine's correlations beat neighbour pairs there), and stays an
#: ordinary NumPy-backed Dataset.
SPARSE_MIN_CELLS = 2**24
#: ... up to this many dims: beyond, a dense step's window of (2w+1)**d cells
#: (and its halo reaching 3**d - 1 blocks) costs more than the pairs that
#: exist, so a mostly empty grid is sparse whatever its size.
SPARSE_MIN_CELLS_DIMS = 3
#: Bytes sparse binning keeps per distinct (class, cell) key: the key and its count.
SPARSE_KEY_BYTES = 8 + 8
#: Largest key (int64) of the binning kernel; the store's keys are uint64.
MAX_KEY = 2**63 - 1


def choose_layout(
    layout: str, shape: Sequence[int], nclasses: int, *, rows: int | None, memory: Any
) -> tuple[str | None, str]:
    """The layout of a grid's counts and why: ``("sparse", reason)``, ``("dense", reason)``.

    ``"dense"`` and ``"sparse"`` are kept. ``"auto"`` is sparse when the dense
    counts would not fit the workers' memory together (:func:`dense_fits`),
    or when ``rows`` (the rows read, an upper bound of the occupied cells)
    is fewer than ``cells / SPARSE_OCCUPANCY`` (in up to 3 dims, only on a
    grid of at least :data:`SPARSE_MIN_CELLS` cells); dense otherwise. With
    ``rows=None`` (not counted yet) and dense counts that fit, the layout is
    None: decide again once the rows are counted.

    Examples
    --------
    >>> from gridflow.runtime import ClusterMemory
    >>> mem = ClusterMemory(2**33, 1, 2**33, 4)
    >>> choose_layout("auto", (100,) * 6, 3, rows=10**5, memory=mem)[0]
    'sparse'
    >>> choose_layout("auto", (400, 400), 3, rows=10**6, memory=mem)[0]
    'dense'
    """
    if layout != "auto":
        return layout, f"layout={layout!r} was asked for"
    cells = math.prod(int(b) for b in shape)
    if not dense_fits(shape, nclasses, memory=memory):
        grid_bytes = COUNT_BYTES * max(int(nclasses), 1) * cells
        return "sparse", (
            f"the dense counts ({format_bytes(grid_bytes)}) would not fit the workers' memory "
            f"({_workers(memory)})"
        )
    if cells < SPARSE_MIN_CELLS and len(shape) <= SPARSE_MIN_CELLS_DIMS:
        return "dense", f"{cells:,} cells are fewer than {SPARSE_MIN_CELLS:,}: dense is cheaper"
    if rows is None:
        return None, "the rows are not counted yet"
    if rows * SPARSE_OCCUPANCY < cells:
        return "sparse", (
            f"at most {rows:,} of the {cells:,} cells can hold a point, fewer than 1 in "
            f"{SPARSE_OCCUPANCY}"
        )
    return "dense", (
        f"{rows:,} rows can fill 1 in {SPARSE_OCCUPANCY} or more of the {cells:,} cells, and "
        "the dense counts fit"
    )


def check_keys(
    shape: Sequence[int],
    nclasses: int,
    chunks: Sequence[int] | None = None,
    *,
    at_least: bool = False,
) -> None:
    """Refuse a sparse grid whose (class, cell) keys would overflow 64-bit integers.

    The binning kernel numbers a cell by its chunk, class and place in the
    chunk (int64): ``nclasses * prod(ceil(bins / chunks) * chunks)`` keys must
    stay below 2**63. The store's row-major keys (uint64) need no more.
    """
    shape = [int(b) for b in shape]
    k = max(int(nclasses), 1)
    keys = k * math.prod(shape)
    classes = f" x {k} classes" if k > 1 else ""
    least = "at least " if at_least else ""
    if keys > MAX_KEY:
        raise GridTooLargeError(
            f"bins: a grid of {_cells(shape)} cells{classes} has {least}{keys:.3g} (class, cell) "
            f"keys, more than a 64-bit key can number ({MAX_KEY:.3g}); use fewer bins or dims",
            param="bins",
        )
    if chunks is not None:
        padded = k * math.prod(-(-b // int(c)) * int(c) for b, c in zip(shape, chunks, strict=True))
        if padded > MAX_KEY:
            raise GridTooLargeError(
                f"chunks: chunks of {_cells(chunks)} cells pad the grid of {_cells(shape)} "
                f"cells{classes} to {padded:.3g} keys, more than a 64-bit key can number "
                f"({MAX_KEY:.3g}); use chunks that divide the bins, or fewer bins or dims",
                param="chunks",
            )


def check_sparse_grid(rows: int | None, nclasses: int, shape: Sequence[int], *, memory: Any) -> int:
    """Refuse a sparse binning whose keys would not fit the workers; returns their bytes.

    Until the counts are assembled the binning keeps every distinct
    (class, cell) key of the points with its count on the workers
    (:data:`SPARSE_KEY_BYTES`; at most one key per row read, spread over the
    groups of output chunks being merged), so the keys of ``rows`` points
    must fit the workers' memory together. ``rows=None`` (not counted yet)
    checks nothing and returns 0.

    Examples
    --------
    >>> from gridflow.runtime import ClusterMemory
    >>> check_sparse_grid(10**6, 3, (100,) * 6, memory=ClusterMemory(2**33, 1, 2**33, 4))
    16000000
    """
    if rows is None:
        return 0
    mem = memory
    entries = min(int(rows), max(int(nclasses), 1) * math.prod(int(b) for b in shape))
    keys_bytes = SPARSE_KEY_BYTES * entries
    if keys_bytes > mem.total:
        raise GridTooLargeError(
            f"bins: a sparse grid of {rows:,} points keeps up to {format_bytes(keys_bytes)} of "
            f"keys while binning ({SPARSE_KEY_BYTES} bytes per point), more than the workers' "
            f"memory ({_workers(mem)}); bin fewer points, or use more workers or memory "
            "(--workers, --memory-limit)",
            param="bins",
        )
    return keys_bytes
