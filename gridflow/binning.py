"""Points to per-class count grids.

:func:`bin_points` reads labeled points from any source :mod:`gridflow.points`
accepts and counts them per class and cell into a dask array of shape
``(class, *dims)``. Two strategies:

``"tree"``
    a compiled kernel counts the partitions of points into dense grids, one
    grid per thread of the cluster (each thread's chain of partitions adds to
    the same grid), and the grids are summed by a tree reduction. Used when a
    grid fits comfortably in one worker's memory; fastest. With
    ``backend="cupy"`` the grids are device arrays counted by the CUDA
    kernel (:func:`gridflow._kernels.cuda_cells.count`, atomic adds) and
    summed on the device, with the same counts as the CPU kernel's.
``"chunked"``
    every partition emits the sorted distinct (output chunk, class, cell)
    keys it holds with their counts; the keys are merged per group of output
    chunks and each output chunk is assembled on its own. No process ever
    holds more than a group of keys and one output chunk, so grids larger
    than a worker's memory bin fine.

Two layouts of the counts (``layout=``, docs/design.md §3.5):

``"dense"``
    NumPy chunks, by either strategy.
``"sparse"``
    ``sparse.COO`` chunks (fill 0) of the occupied cells only, chunked along
    at most :data:`~gridflow.sparse_grid.MAX_SPLIT_DIMS` spatial dims (those
    with the most bins; the others whole). Always the ``"chunked"``
    machinery: the sorted distinct keys of each partition (int64, chunk
    major, from the compiled keys kernel) are merged per group of output
    chunks in a tree, and each output chunk is assembled as a COO from its
    slice of the merged keys. Nothing dense is allocated anywhere, whatever
    ``strategy`` says: a tree of dense grids is never built for a sparse grid
    (its reduction is the tree merge of the sorted keys).
``"auto"``
    sparse when the dense counts would not fit the workers' memory, or when
    fewer than 1 cell in 16 can be occupied (at most one cell per row read;
    see :func:`gridflow.engine.planner.choose_layout`); else dense. When
    the rows are not known before the pass (bounds and classes given, and a
    source that is not in memory) and the dense counts fit, the keys pass
    runs first and the layout is chosen from the rows it read: the same
    merged keys assemble dense or COO chunks.

Rows with NaN/inf coordinates, out-of-range coordinates or a missing or
unknown label are dropped and counted in a :class:`BinReport`.

Guards before work: a dense grid whose counts would not fit the workers'
memory is refused (:func:`gridflow.engine.planner.plan_binning`), once before the
data is read and again when the classes are known; a sparse grid whose
(class, cell) keys would overflow 64-bit integers, or whose keys would not
fit the workers (:func:`gridflow.engine.planner.check_sparse_grid`), is
refused too; so is a label column with more than ``max_classes`` distinct
values (:data:`MAX_CLASSES` by default), which is almost always the wrong
column.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from gridflow._kernels import cuda_cells
from gridflow._kernels.binning import BAD_LABEL, BINNED, NONFINITE, OUT_OF_RANGE, kernel
from gridflow._types import LAYOUTS, BinningStrategy, Layout, choices
from gridflow.backend import namespace, ops, to_host
from gridflow.engine.planner import (
    check_dense_grid,
    check_keys,
    check_sparse_grid,
    choose_layout,
    dense_fits,
    plan_binning,
)
from gridflow.errors import InputDataError, ParameterError, StorageError, storage_error
from gridflow.grid import GridSpec, bounds_from_extrema, parse_bins, parse_bounds
from gridflow.points import Block, PointSource, check_labels, open_points, reading
from gridflow.runtime import active_client, cluster_memory, worker_memory
from gridflow.sparse_grid import MAX_SPLIT_DIMS

__all__ = [
    "MAX_CLASSES",
    "BinReport",
    "bin_points",
    "parse_chunks",
    "parse_layout",
    "parse_max_classes",
    "sparse_chunks",
]

log = logging.getLogger(__name__)


#: Target size of one output block of counts (all classes) for chunks="auto".
AUTO_CHUNK_BYTES = 64 * 2**20
#: Cells of dense key space merged by one task of the chunked strategy.
GROUP_CELLS = 2**25
_U32_MAX = 2**32 - 1
#: Cells (class, cell entries) a chunk of a sparse grid aims at for chunks="auto".
SPARSE_CHUNK_CELLS = 2**20
#: Below this many cells in all, a sparse grid is not split for parallelism.
SPARSE_SPLIT_CELLS = 2**16
#: Most chunks chunks="auto" gives a sparse grid (8**3: 8 blocks along 3 dims).
MAX_SPARSE_CHUNKS = 512
#: Most distinct labels binned without ``max_classes``. The counts hold a
#: plane per class and a vote step keeps ~33 bytes per class per cell, so
#: past a thousand classes a dense grid is the wrong tool, and a column with
#: that many distinct values is nearly always an id or a measurement.
MAX_CLASSES = 1024


def parse_max_classes(max_classes: Any) -> int:
    """The most distinct labels a run accepts: a positive integer."""
    integer = isinstance(max_classes, (int, np.integer)) and not isinstance(
        max_classes, (bool, np.bool_)
    )
    if not integer or max_classes < 1:
        raise ParameterError(f"max_classes: expected a positive integer, got {max_classes!r}")
    return int(max_classes)


def _too_many_classes(
    n: int, limit: int, label: str | None, where: str, *, at_least: bool = False
) -> InputDataError:
    more = "at least " if at_least else ""
    return InputDataError(
        f"points: the label column {label!r} of {where} has {more}{n:,} distinct values, more "
        f"than {limit:,} classes; check --label names the class column, or pass --max-classes "
        f"{max(n, limit + 1)} (max_classes=) if there really are that many"
    )


@dataclass
class BinReport:
    """What binning did with the rows it read.

    ``rows`` = ``binned`` + ``nonfinite`` + ``out_of_range`` + ``bad_label``.
    """

    rows: int = 0
    binned: int = 0
    nonfinite: int = 0
    out_of_range: int = 0
    bad_label: int = 0
    strategy: str = ""
    partitions: int = 0
    per_class: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.nonfinite + self.out_of_range + self.bad_label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = f"binned {self.binned:,} of {self.rows:,} rows"
        drops = [
            f"{n:,} {what}"
            for n, what in (
                (self.nonfinite, "with NaN/inf coordinates"),
                (self.out_of_range, "out of range"),
                (self.bad_label, "with a missing or unknown label"),
            )
            if n
        ]
        if drops:
            text += "; dropped " + ", ".join(drops)
        return text + f" ({self.strategy} strategy, {self.partitions} partitions)"


# --- compiled kernels ---------------------------------------------------------


def _kernel_args(spec: GridSpec) -> tuple[np.ndarray, ...]:
    return (
        spec.lo,
        spec.hi,
        spec.width,
        np.asarray(spec.bins, dtype=np.int64),
        np.asarray(spec.periodic, dtype=np.bool_),
    )


def _columns(block: Block) -> tuple[np.ndarray, ...]:
    """Coordinate columns of one dtype (numba compiles one kernel per dtype set)."""
    cols = [np.asarray(c) for c in block.columns]
    if len({c.dtype for c in cols}) > 1 or cols[0].dtype.kind not in "f":
        cols = [c.astype(np.float64) for c in cols]
    return tuple(cols)


# --- labels -----------------------------------------------------------------


@dataclass(frozen=True)
class _Classes:
    """Class names and how a block's labels map onto class codes."""

    names: tuple
    kind: str  # "int", "float", "str", "category" (labels arrive as codes)
    categories: tuple | None = None  # what "category" codes index

    def codes(self, labels: np.ndarray) -> np.ndarray:
        k = len(self.names)
        if self.kind == "category":
            if self.categories == self.names:
                return labels
            where = {n: i for i, n in enumerate(self.names)}
            table = np.array([where.get(c, -1) for c in self.categories] + [-1], np.int64)
            return table[labels]  # code -1 (missing) reads the trailing -1
        if self.kind in ("int", "float") and self.names == tuple(range(k)):
            if labels.dtype.kind in "iu":
                return labels
            if labels.dtype.kind == "b":
                return labels.view(np.int8)
            with np.errstate(invalid="ignore"):
                codes = np.where(labels == np.floor(labels), labels, -1.0)
            return np.nan_to_num(codes, nan=-1.0).astype(np.int64)
        # By value, in the order the names are given; -1 for anything else.
        if labels.dtype == object:
            check_labels(labels)
        return pd.Index(list(self.names)).get_indexer(pd.Index(labels))


def _block_uniques(labels: np.ndarray, kind: str, label: str | None = None) -> np.ndarray:
    if kind == "str":
        check_labels(labels, label)
    if kind == "float":
        labels = labels[~np.isnan(labels)]
        if labels.size and not np.all(labels == np.floor(labels)):
            bad = labels[labels != np.floor(labels)][0]
            raise InputDataError(
                f"points: labels must be integers or strings, found the float {bad}"
            )
        return np.unique(labels)
    if kind == "str":
        u = pd.unique(pd.Series(labels, dtype=object).dropna())
        return np.asarray(u, dtype=object)
    return np.asarray(pd.unique(labels))


def _merge_uniques(parts: list[np.ndarray], kind: str) -> tuple:
    if kind == "str":
        values = set()
        for p in parts:
            values.update(p.tolist())
        try:
            names = tuple(sorted(values))
        except TypeError:
            raise InputDataError(
                "points: the label column mixes numbers and strings; use one type of label"
            ) from None
        return names
    allv = np.unique(np.concatenate(parts)) if parts else np.array([])
    if kind == "float":
        return tuple(int(v) if float(v).is_integer() else float(v) for v in allv)
    return tuple(v.item() for v in allv)


# --- the one pass that infers bounds and classes ---------------------------------


def _scan_block(
    block: Block,
    bounds: bool,
    classes: str | None,
    limit: int = MAX_CLASSES,
    label: str | None = None,
    where: str = "the points",
) -> tuple:
    mins = maxs = None
    if bounds:
        mins, maxs = [], []
        for c in block.columns:
            c = np.asarray(c, dtype=np.float64)
            finite = c[np.isfinite(c)]
            mins.append(finite.min() if finite.size else np.inf)
            maxs.append(finite.max() if finite.size else -np.inf)
    uniques = _block_uniques(block.labels, classes, label) if classes else None
    if uniques is not None and len(uniques) > limit:
        # Here, not after the merge: a million ids never travel to one process.
        raise _too_many_classes(len(uniques), limit, label, where, at_least=True)
    return mins, maxs, uniques, len(block.columns[0]) if block.columns else 0


def _scan(
    src: PointSource, need_bounds: bool, label_kind: str | None, limit: int = MAX_CLASSES
) -> tuple:
    parts = dask.compute(
        *[
            dask.delayed(_scan_block)(b, need_bounds, label_kind, limit, src.label, src.description)
            for b in src.blocks
        ]
    )
    rows = sum(p[3] for p in parts)
    if rows == 0:
        raise InputDataError(f"points: {src.description} holds no rows; nothing to bin")
    bounds = None
    if need_bounds:
        lows = np.min([p[0] for p in parts], axis=0)
        highs = np.max([p[1] for p in parts], axis=0)
        bounds = bounds_from_extrema(src.columns, lows, highs)
    names = _merge_uniques([p[2] for p in parts], label_kind) if label_kind else None
    if names is not None and len(names) > limit:
        raise _too_many_classes(len(names), limit, src.label, src.description)
    return bounds, names, rows


def _known_rows(src: PointSource) -> int | None:
    """The rows of a source held in memory (its blocks are values, not tasks), else None.

    Lets ``layout="auto"`` decide before the pass for arrays and pandas
    frames without reading anything.
    """
    rows = 0
    for block in src.blocks:
        graph = block.__dask_graph__()
        if len(graph) != 1:
            return None
        node = next(iter(graph.values()))
        value = getattr(node, "value", node)
        if not isinstance(value, Block):
            return None
        rows += len(value.columns[0]) if value.columns else 0
    return rows


# --- chunks -------------------------------------------------------------------


def parse_chunks(
    chunks: int | Sequence[int] | str | None, spec: GridSpec, nclasses: int
) -> tuple[int, ...]:
    """Spatial chunk size per dim: an int, one int per dim, or ``"auto"``.

    ``"auto"`` aims at blocks of about 64 MiB of uint32 counts (all classes),
    less on workers with little memory, with the same side on every dim
    split (all of them up to 3 dims, else the 3 with the most bins:
    :func:`~gridflow.engine.planner.split_dims`; the others whole), never
    larger than the grid.
    """
    if chunks is None or chunks == "auto":
        from gridflow.engine.planner import split_dims

        memory, nthreads = worker_memory()
        # Writing a block holds a few copies of it (encode, compress) per thread.
        target = min(AUTO_CHUNK_BYTES, memory / (16 * nthreads))
        cells = max(1, int(target) // (4 * max(nclasses, 1)))
        split = split_dims(spec.bins)
        whole = math.prod(b for j, b in enumerate(spec.bins) if j not in split)
        side = max(1, int((cells / whole) ** (1.0 / len(split))))
        return tuple(min(side, b) if j in split else b for j, b in enumerate(spec.bins))
    return spec.parse_chunks(chunks)


def parse_layout(layout: Any) -> str:
    """The layout of the counts: ``"auto"``, ``"dense"`` or ``"sparse"``."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ParameterError(f"layout: expected {choices(LAYOUTS)}, got {layout!r}")
    return layout


def _split_dims(chunks: Sequence[int], spec: GridSpec) -> list[str]:
    return [d for d, c, b in zip(spec.dims, chunks, spec.bins, strict=True) if c < b]


def sparse_chunks(
    chunks: int | Sequence[int] | str | None,
    spec: GridSpec,
    nclasses: int,
    rows: int | None = None,
) -> tuple[int, ...]:
    """Spatial chunk size per dim of a sparse grid.

    A sparse grid is split along at most :data:`MAX_SPLIT_DIMS` dims, the
    others whole, so a halo touches at most 26 neighbour blocks. Given
    ``chunks`` that split more dims are refused. ``"auto"`` splits the dims
    with the most bins (the first on ties) into about one chunk per
    :data:`SPARSE_CHUNK_CELLS` (class, cell) entries that can be occupied (at
    most ``rows``, or every entry when ``rows`` is None), at least one per
    thread of the cluster when there are :data:`SPARSE_SPLIT_CELLS` or more,
    at most :data:`MAX_SPARSE_CHUNKS`; the longest side is cut first.

    Examples
    --------
    >>> spec = GridSpec(tuple("abcdef"), bounds=(0, 1), bins=(100, 100, 100, 100, 100, 100))
    >>> sparse_chunks("auto", spec, 3, rows=10**4)  # one chunk
    (100, 100, 100, 100, 100, 100)
    >>> sparse_chunks("auto", spec, 3, rows=10**8)  # about 96 chunks
    (20, 20, 25, 100, 100, 100)
    >>> sparse_chunks((50, 100, 25, 100, 100, 100), spec, 3)
    (50, 100, 25, 100, 100, 100)
    """
    if chunks is not None and chunks != "auto":
        given = spec.parse_chunks(chunks)
        split = _split_dims(given, spec)
        if len(split) > MAX_SPLIT_DIMS:
            example = tuple(
                c if d in split[:MAX_SPLIT_DIMS] else b
                for d, c, b in zip(spec.dims, given, spec.bins, strict=True)
            )
            raise ParameterError(
                f"chunks: a sparse grid is chunked along at most {MAX_SPLIT_DIMS} dims (the others "
                f"whole), got chunks {given} splitting {len(split)} ({', '.join(split)}); give "
                f"the other dims their full size, e.g. {','.join(map(str, example))}, or 'auto'"
            )
        return given
    entries = max(int(nclasses), 1) * spec.ncells
    bound = entries if rows is None else min(int(rows), entries)
    want = -(-bound // SPARSE_CHUNK_CELLS)
    if bound >= SPARSE_SPLIT_CELLS:
        want = max(want, _total_threads())
    want = min(want, MAX_SPARSE_CHUNKS)
    order = sorted(range(spec.ndim), key=lambda j: (-spec.bins[j], j))
    candidates = [j for j in order[:MAX_SPLIT_DIMS] if spec.bins[j] > 1]
    blocks = list(spec.bins)  # per dim: bins per block side, refined below
    nblocks = dict.fromkeys(candidates, 1)
    while candidates and math.prod(nblocks.values()) < want:
        # Cut the longest side once more (the lowest dim on ties).
        j = max(candidates, key=lambda j: (-(-spec.bins[j] // nblocks[j]), -j))
        if -(-spec.bins[j] // nblocks[j]) <= 1:
            break
        nblocks[j] += 1
    for j, n in nblocks.items():
        blocks[j] = -(-spec.bins[j] // n)
    return tuple(blocks)


# --- strategies -----------------------------------------------------------------


def _count_into(
    acc: tuple | None, block: Block, classes: _Classes, spec: GridSpec, device: bool = False
) -> tuple[Any, np.ndarray]:
    """Count one block into the running ``(grid, stats)`` of a chain.

    The chain owns its grid: each step adds in place and hands it on, so a
    thread allocates and zeroes one grid however many blocks it counts.
    With ``device`` the grid is a device array
    (:func:`~gridflow._kernels.cuda_cells.array_module`): the block's
    columns and codes are copied to the device and counted there by
    :func:`~gridflow._kernels.cuda_cells.count`; the stats stay host int64
    (the block's are copied back and added), so the widening rule reads them
    on the host.
    """
    nclasses = len(classes.names)
    xp = cuda_cells.array_module() if device else np
    if acc is None:
        acc = (
            xp.zeros(nclasses * spec.ncells, dtype=np.uint32),
            np.zeros(4 + nclasses, dtype=np.int64),
        )
    grid, stats = acc
    rows = len(block.columns[0]) if block.columns else 0
    if grid.dtype == np.uint32 and stats[BINNED] + rows > _U32_MAX:
        grid = grid.astype(np.uint64)  # a cell could wrap: widen first
    if not rows:
        return grid, stats
    cols, codes = _columns(block), classes.codes(block.labels)
    if device:
        block_stats = xp.zeros(stats.shape, dtype=np.int64)
        cols = tuple(xp.asarray(c) for c in cols)
        cuda_cells.count(cols, xp.asarray(codes), nclasses, *_kernel_args(spec), grid, block_stats)
        stats += to_host(block_stats)
    else:
        kernel(spec.ndim, "dense")(cols, codes, nclasses, *_kernel_args(spec), grid, stats)
    return grid, stats


def _add_dense(parts: list[tuple]) -> tuple:
    """Sum dense partial grids; promotes to uint64 only if the total could wrap.

    The grids are summed where they are (host or device arrays, by the
    namespace of the first); the stats are host arrays.
    """
    stats = np.sum([p[1] for p in parts], axis=0)
    total = parts[0][0].astype(_count_dtype(stats), copy=False)  # the chains' grids are ours
    xp = namespace(total)
    for grid, _ in parts[1:]:
        xp.add(total, grid, out=total, casting="unsafe")
    return total, stats


def _tree(items: list[Any], combine: Any, split_every: int = 8) -> Any:
    """Reduce delayed items with ``combine(list)`` in a tree of fan-in ``split_every``."""
    while len(items) > 1:
        items = [
            dask.delayed(combine)(items[i : i + split_every])
            for i in range(0, len(items), split_every)
        ]
    return items[0]


def _block_keys(block: Block, classes: _Classes, spec: GridSpec, csize: tuple, nblocks: tuple):
    stats = np.zeros(4 + len(classes.names), dtype=np.int64)
    if not block.columns or not len(block.columns[0]):
        return np.empty(0, np.int64), np.empty(0, np.uint64), stats
    codes = classes.codes(block.labels)
    keys = kernel(spec.ndim, "keys")(
        _columns(block),
        codes,
        len(classes.names),
        *_kernel_args(spec),
        np.asarray(csize, np.int64),
        np.asarray(nblocks, np.int64),
        stats,
    )
    keys, counts = np.unique(keys, return_counts=True)
    return keys, counts.astype(np.uint64), stats


def _split_keys(part: tuple, bounds: np.ndarray) -> list[tuple]:
    keys, counts, _ = part
    cut = np.searchsorted(keys, bounds)
    return [(keys[a:b], counts[a:b]) for a, b in itertools.pairwise(cut)]


def _merge_keys(pieces: list[tuple]) -> tuple:
    keys = np.concatenate([p[0] for p in pieces])
    counts = np.concatenate([p[1] for p in pieces])
    if not keys.size:
        return keys, counts
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


def _sum_stats(parts: list[np.ndarray]) -> np.ndarray:
    return np.sum(parts, axis=0)


def _dense_chunk(
    group: tuple, key0: int, nclasses: int, csize: tuple, shape: tuple, dtype: Any
) -> np.ndarray:
    keys, counts = group
    block_cells = math.prod(csize)
    a, b = np.searchsorted(keys, [key0, key0 + nclasses * block_cells])
    out = np.zeros(nclasses * block_cells, dtype=dtype)
    out[keys[a:b] - key0] = counts[a:b]
    out = out.reshape((nclasses, *csize))
    return out[(slice(None), *(slice(0, s) for s in shape))]


def _bin_tree(src, classes, spec, chunks, device: bool = False) -> tuple[da.Array, np.ndarray]:
    """The tree strategy: one chain of blocks per thread of the cluster, then a tree sum.

    With ``device`` every chain counts into a device grid
    (:func:`_count_into`), the partial grids are summed on the device and
    the counts' chunks are device arrays (CuPy; NumPy under the CUDA
    simulator). The stats come back as host int64 either way.
    """
    nchains = max(1, min(len(src.blocks), _total_threads()))
    chains = []
    for c in range(nchains):
        acc = None
        for block in src.blocks[c::nchains]:
            acc = dask.delayed(_count_into)(acc, block, classes, spec, device)
        chains.append(acc)
    total = _tree(chains, _add_dense)
    (total,) = dask.persist(total)
    stats = np.asarray(dask.compute(total[1])[0])
    dtype = _count_dtype(stats)
    shape = (len(classes.names), *spec.shape)
    meta = ops(cuda_cells.array_module().empty(0)).meta(len(shape), dtype) if device else None
    grid = da.from_delayed(
        dask.delayed(_as_grid)(total[0], shape, dtype),
        shape=shape,
        dtype=dtype,
        meta=meta,
        name=False,
    )
    return grid.rechunk((shape[0], *chunks)), stats


def _as_grid(flat: Any, shape: tuple, dtype: Any) -> Any:
    # A lone chain skips _add_dense and may have widened early (it widens on
    # rows read, not rows binned): cast to the dtype the array declares.
    return flat.astype(dtype, copy=False).reshape(shape)


@dataclass(frozen=True)
class _Keys:
    """The merged keys of a keys pass: one persisted ``(keys, counts)`` per group
    of output chunks, and the chunk-major key geometry they follow."""

    groups: list[Any]
    stats: np.ndarray
    chunks: tuple[int, ...]
    nblocks: tuple[int, ...]
    span: int  # keys of one output chunk: classes x its (padded) cells
    per_group: int  # output chunks per group
    nclasses: int


def _keys_pass(src, classes, spec, chunks) -> _Keys:
    """Every partition's sorted distinct keys, merged per group of output chunks."""
    nclasses = len(classes.names)
    nblocks = tuple(-(-b // c) for b, c in zip(spec.bins, chunks, strict=True))
    nchunks = math.prod(nblocks)
    span = nclasses * math.prod(chunks)  # key space of one output chunk
    per_group = max(1, GROUP_CELLS // span)
    ngroups = -(-nchunks // per_group)
    bounds = np.minimum(np.arange(ngroups + 1) * per_group, nchunks) * span

    parts = [dask.delayed(_block_keys)(b, classes, spec, chunks, nblocks) for b in src.blocks]
    splits = [dask.delayed(_split_keys, nout=ngroups)(p, bounds) for p in parts]
    groups = [_tree([s[g] for s in splits], _merge_keys) for g in range(ngroups)]
    stats_d = _tree([p[2] for p in parts], _sum_stats)
    groups, stats = dask.persist(groups, stats_d)
    stats = np.asarray(dask.compute(stats)[0])
    return _Keys(list(groups), stats, tuple(chunks), nblocks, span, per_group, nclasses)


def _count_dtype(stats: np.ndarray) -> Any:
    return np.uint32 if stats[BINNED] <= _U32_MAX else np.uint64


def _assemble(keys: _Keys, spec: GridSpec, piece: Any, meta: Any = None) -> da.Array:
    """The ``(class, *dims)`` counts, each output chunk made by ``piece`` from its group."""
    dtype = _count_dtype(keys.stats)
    blocks = np.empty(keys.nblocks, dtype=object)
    for cid, idx in enumerate(np.ndindex(*keys.nblocks)):
        shape = tuple(
            min(c, b - i * c) for i, c, b in zip(idx, keys.chunks, spec.bins, strict=True)
        )
        task = dask.delayed(piece)(
            keys.groups[cid // keys.per_group],
            cid * keys.span,
            keys.nclasses,
            keys.chunks,
            shape,
            dtype,
        )
        blocks[idx] = da.from_delayed(
            task, shape=(keys.nclasses, *shape), dtype=dtype, meta=meta, name=False
        )
    return da.block([_nested(blocks)])  # the outer list is the class axis


def _bin_chunked(src, classes, spec, chunks) -> tuple[da.Array, np.ndarray]:
    keys = _keys_pass(src, classes, spec, chunks)
    return _assemble(keys, spec, _dense_chunk), keys.stats


def _coo_chunk(
    group: tuple, key0: int, nclasses: int, csize: tuple, shape: tuple, dtype: Any
) -> Any:
    """One output chunk as a ``sparse.COO`` (fill 0) from its slice of the group's keys.

    Within a chunk the keys run over (class, cell of the padded chunk) in row-major
    order, so the coordinates come out sorted and distinct.
    """
    from gridflow.sparse_grid import coo

    keys, counts = group
    block_cells = math.prod(csize)
    a, b = np.searchsorted(keys, [key0, key0 + nclasses * block_cells])
    local = keys[a:b] - key0
    coords = np.empty((1 + len(csize), local.size), dtype=np.int64)
    coords[0], rest = np.divmod(local, block_cells)
    for j in range(len(csize) - 1, -1, -1):
        rest, coords[1 + j] = np.divmod(rest, csize[j])
    return coo(coords, counts[a:b].astype(dtype), (nclasses, *shape), fill_value=0)


def _coo_meta(ndim: int, dtype: Any) -> Any:
    import sparse

    return sparse.COO(
        np.empty((ndim, 0), np.int64), np.empty(0, dtype), shape=(0,) * ndim, fill_value=0
    )


def _occupied(group: tuple, span: int, block_cells: int) -> int:
    """Spatial cells a group's keys occupy (any class)."""
    keys = group[0]
    chunk, local = np.divmod(keys, span)
    return int(np.unique(chunk * block_cells + local % block_cells).size)


def _occupied_cells(keys: _Keys) -> int:
    block_cells = math.prod(keys.chunks)
    parts = [dask.delayed(_occupied)(g, keys.span, block_cells) for g in keys.groups]
    return int(sum(dask.compute(*parts)))


def _sparse_counts(keys: _Keys, spec: GridSpec) -> da.Array:
    meta = _coo_meta(1 + spec.ndim, _count_dtype(keys.stats))
    return _assemble(keys, spec, _coo_chunk, meta=meta)


def _nested(blocks: np.ndarray) -> list:
    """An object array of dask arrays as the nested lists ``da.block`` takes."""
    return list(blocks) if blocks.ndim == 1 else [_nested(b) for b in blocks]


def _total_threads() -> int:
    client = active_client()
    if client is not None:
        threads = sum(client.nthreads().values())
        if threads:
            return threads
    return os.cpu_count() or 1


def _parse_strategy(strategy: str) -> str:
    if strategy not in ("auto", "tree", "chunked"):
        raise ParameterError(f"strategy: expected 'auto', 'tree' or 'chunked', got {strategy!r}")
    return strategy


def _check_output_dir(store: str | os.PathLike) -> None:
    """Refuse, before reading any point, a store whose folder cannot be written."""
    parent = os.path.dirname(os.path.abspath(os.fspath(store)))
    if not os.path.isdir(parent) or os.access(parent, os.W_OK):
        return  # a missing folder is check_writable's to report
    code = errno.EROFS if _read_only(parent) else errno.EACCES
    error = storage_error(OSError(code, os.strerror(code), parent), os.fspath(store))
    raise error or StorageError(f"store: cannot write in {parent}; write elsewhere")


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# --- the public function ---------------------------------------------------------


def bin_points(
    points: Any,
    store: str | os.PathLike | None = None,
    *,
    bins: int | Sequence[int] | str | None = None,
    columns: Sequence[str] | str | None = None,
    label: str = "label",
    labels: Any = None,
    bounds: Any = None,
    periodic: bool | Sequence[bool] | None = None,
    spec: GridSpec | None = None,
    classes: Sequence | None = None,
    chunks: int | Sequence[int] | str = "auto",
    strategy: BinningStrategy = "auto",
    layout: Layout = "auto",
    strict: bool = False,
    max_classes: int = MAX_CLASSES,
    overwrite: bool = False,
    backend: str | None = None,
) -> Any:
    """Count labeled points per class and cell.

    Parameters
    ----------
    points : any source :func:`~gridflow.points.open_points` reads
        Labeled points: Parquet, CSV, Zarr, ``.npy``/``.npz`` paths, pandas or
        dask DataFrames, or an ``(n, d)`` array with ``labels=``.
    store : path, optional
        Zarr store to write. Written completely or not at all.
    bins : int, sequence of int or str
        Cells per dim (``400`` or ``(400, 300)``). Required unless ``spec``.
    columns : sequence of str, optional
        Coordinate columns in dim order; default every numeric column but the
        label (or the columns recorded by :mod:`gridflow.synth`).
    label : str, default "label"
        Label column; integers or strings. Class names are kept in the
        ``class`` coordinate, sorted.
    labels : array-like, optional
        Labels for an array ``points``.
    bounds : optional
        ``(lo, hi)`` per dim; default the data's finite range (one pass), or
        the period box recorded by :mod:`gridflow.synth`.
    periodic : bool or sequence of bool, optional
        Periodic dims wrap; default False (True per dim for synth output).
    spec : GridSpec, optional
        Full geometry; replaces ``bins``, ``bounds`` and ``periodic``.
    classes : sequence, optional
        Class names in order; skips the pass that finds them. Labels not in
        it are dropped and counted.
    chunks : int, sequence of int or "auto"
        Spatial chunk size of the counts. A sparse grid is split along at
        most 3 dims (see :func:`sparse_chunks`).
    strategy : {"auto", "tree", "chunked"}
        See the module docstring; "auto" picks "tree" when a grid fits
        comfortably in a worker's memory. A sparse grid always bins by keys
        ("chunked").
    layout : {"auto", "dense", "sparse"}
        NumPy or ``sparse.COO`` chunks; "auto" is sparse when the dense
        counts would not fit the workers' memory or fewer than 1 cell in 16
        can hold a point (see the module docstring). The choice is logged
        and kept in ``attrs["gridflow_stages"]["bin"]["layout"]``.
    strict : bool, default False
        Raise instead of dropping rows with NaN/inf, out-of-range
        coordinates or bad labels.
    max_classes : int, default 1024
        Refuse a label column with more distinct values (nearly always the
        wrong column); raise it when there really are that many classes.
    overwrite : bool, default False
        Replace an existing gridflow store at ``store``.
    backend : {"numpy", "cupy"}, optional
        Where the returned dense counts live: host memory (default) or the
        CUDA device (CuPy; gridflow[gpu]). With ``"cupy"`` the tree strategy
        counts on the device (the same counts, bit for bit); the chunked
        strategy counts on the host and moves the counts. A store is written
        from the host either way; a sparse grid stays on the host.

    Raises
    ------
    GridTooLargeError
        Before any work, when dense counts (``layout="dense"``) would not fit
        the workers' memory (fewer bins, or more workers or memory), or a
        sparse grid's keys would overflow 64 bits or not fit the workers.
    StorageError
        When the store's filesystem is read-only, full or not writable;
        nothing is left at ``store``.

    Returns
    -------
    xarray.Dataset
        ``counts`` (class, *dims), uint32 (uint64 if more than 2**32-1 points
        are binned), NumPy or COO chunks, with bin-centre coordinates;
        ``attrs["gridflow_stages"]["bin"]["report"]`` holds the
        :class:`BinReport` as a dict. Backed by ``store`` when given,
        else by persisted dask chunks.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ds = bin_points(rng.random((1000, 2)), labels=rng.integers(0, 3, 1000),
    ...                 bins=8, bounds=(0, 1))
    >>> int(ds["counts"].sum())
    1000
    """
    from gridflow import store as store_mod
    from gridflow.backend import checked_backend

    backend = checked_backend(backend)  # a missing CuPy or device is named before any work
    if store is not None:
        store_mod.check_writable(store, overwrite=overwrite, inputs={"the points": points})
        _check_output_dir(store)
    max_classes = parse_max_classes(max_classes)
    strategy = _parse_strategy(strategy)
    layout = parse_layout(layout)
    if spec is not None and columns is None:
        columns = spec.dims
    src = open_points(points, columns=columns, label=label, labels=labels)
    if spec is not None:
        if tuple(spec.dims) != src.columns:
            raise ParameterError(
                f"spec: dims {spec.dims} do not match the coordinate columns {src.columns}"
            )
    elif bins is None:
        raise ParameterError("bins: expected cells per dim, got None; pass bins=400 or --bins 400")

    hints = src.hints
    if spec is None and bounds is None and hints.get("bounds") is not None:
        bounds = hints["bounds"]
        log.info("using the bounds recorded in %s: %s", src.description, bounds)
    if spec is None and periodic is None and hints.get("periodic") is not None:
        periodic = hints["periodic"]
    if spec is None and bounds is not None:
        bounds = parse_bounds(bounds, src.ndim)
    shape = spec.shape if spec is not None else parse_bins(bins, src.ndim)

    kind = src.label_kind
    if classes is not None:
        names = tuple(classes)
        if not names:
            raise ParameterError("classes: expected at least one class name, got none")
    else:
        names = src.categories
    if names is not None and len(names) > max_classes:
        raise _too_many_classes(len(names), max_classes, src.label, src.description)
    # Before the pass over the data: a grid too large with a single class.
    least = len(names) if names else 1
    mem = cluster_memory()
    if layout == "dense":
        check_dense_grid(shape, least, memory=mem, classes_known=bool(names))
    elif layout == "sparse" or not dense_fits(shape, least, memory=mem):
        check_keys(shape, least, at_least=not names)
    need_bounds = spec is None and bounds is None
    need_classes = kind if names is None else None
    rows = _known_rows(src)
    if need_bounds or need_classes:
        with reading(src):
            found_bounds, found_names, rows = _scan(src, need_bounds, need_classes, max_classes)
        bounds = found_bounds if need_bounds else bounds
        names = found_names if need_classes else names
    if not names:
        raise InputDataError(f"points: {src.description} has no labeled rows; nothing to bin")
    classes_ = _Classes(tuple(names), kind, src.categories)
    if spec is None:
        spec = GridSpec(src.columns, bounds=bounds, bins=bins, periodic=periodic or False)
    nclasses = len(names)

    chosen, why = choose_layout(layout, spec.shape, nclasses, rows=rows, memory=mem)
    if chosen is None and strategy == "tree":
        chosen, why = "dense", "strategy='tree' builds dense grids"
    if chosen is None and chunks not in (None, "auto"):
        given = spec.parse_chunks(chunks)
        if len(_split_dims(given, spec)) > MAX_SPLIT_DIMS:
            chosen, why = "dense", f"the chunks split more than {MAX_SPLIT_DIMS} dims"
    occupied = None
    if chosen == "sparse":
        check_keys(spec.shape, nclasses)
        check_sparse_grid(rows, nclasses, spec.shape, memory=mem)
        chunks_ = sparse_chunks(chunks, spec, nclasses, rows)
        check_keys(spec.shape, nclasses, chunks_)
        if strategy == "tree":
            log.info("a sparse grid bins by keys: the chunked strategy replaces 'tree'")
        strategy = "chunked"
    else:
        chunks_ = parse_chunks(chunks, spec, nclasses)
        plan_strategy = "chunked" if chosen is None else strategy
        strategy = plan_binning(
            spec.shape, nclasses, chunks_, strategy=plan_strategy, memory=mem
        ).strategy
    log.info(
        "binning %s into %s cells x %d classes (%s layout%s, %s strategy, chunks %s)",
        src.description,
        "x".join(map(str, spec.bins)),
        nclasses,
        chosen or "undecided",
        f": {why}" if chosen else " until the rows are counted",
        strategy,
        chunks_,
    )
    with reading(src):
        if chosen == "dense" and strategy == "tree":
            device = backend == "cupy" and spec.ndim <= cuda_cells.MAX_DIMS
            counts, stats = _bin_tree(src, classes_, spec, chunks_, device=device)
        elif chosen == "dense":
            counts, stats = _bin_chunked(src, classes_, spec, chunks_)
        else:
            keys = _keys_pass(src, classes_, spec, chunks_)
            stats = keys.stats
            if chosen is None:
                chosen, why = choose_layout(
                    layout, spec.shape, nclasses, rows=int(stats[:4].sum()), memory=mem
                )
                log.info("layout: %s (%s)", chosen, why)
            if chosen == "sparse":
                counts = _sparse_counts(keys, spec)
                occupied = _occupied_cells(keys)
                if len(_split_dims(chunks_, spec)) > MAX_SPLIT_DIMS:
                    rows_read = int(stats[:4].sum())
                    counts = counts.rechunk(
                        (nclasses, *sparse_chunks("auto", spec, nclasses, rows_read))
                    )
            else:
                counts = _assemble(keys, spec, _dense_chunk)

    report = BinReport(
        rows=int(stats[:4].sum()),
        binned=int(stats[BINNED]),
        nonfinite=int(stats[NONFINITE]),
        out_of_range=int(stats[OUT_OF_RANGE]),
        bad_label=int(stats[BAD_LABEL]),
        strategy=strategy,
        partitions=src.npartitions,
    )
    _check_report(report, src, spec, strict)
    report.per_class = {str(n): int(c) for n, c in zip(names, stats[4:], strict=True)}
    log.info("%s", report.summary())
    if occupied is not None:
        log.info(
            "sparse counts: %s of %s cells occupied (%.3g%%)",
            f"{occupied:,}",
            f"{spec.ncells:,}",
            100 * occupied / spec.ncells,
        )
    ds = store_mod.counts_dataset(
        counts, spec, names, report.to_dict(), layout=chosen, occupied=occupied
    )
    if store is None:
        return _on_backend(ds, backend)
    try:
        store_mod.write_new_store(ds, store, overwrite=overwrite)
    except OSError as exc:
        error = storage_error(exc, os.fspath(store))
        if error is None:
            raise
        raise error from exc
    return _on_backend(store_mod.open_grid(store), backend)


def _on_backend(ds: Any, backend: str | None) -> Any:
    """``ds`` with its dense counts on ``backend`` (None: as they are)."""
    from gridflow.backend import move

    if backend is not None:
        counts = ds["counts"]
        ds["counts"] = counts.copy(data=move(counts.data, backend))
    return ds


def _check_report(report: BinReport, src: PointSource, spec: GridSpec, strict: bool) -> None:
    if report.rows == 0:
        raise InputDataError(f"points: {src.description} holds no rows; nothing to bin")
    if report.binned == 0:
        bounds = ", ".join(
            f"{d}: [{lo:g}, {hi:g}]" for d, (lo, hi) in zip(spec.dims, spec.bounds, strict=True)
        )
        raise InputDataError(
            f"points: none of the {report.rows:,} rows could be binned ({report.summary()}); "
            f"check the bounds ({bounds}) and the label column"
        )
    if strict and report.dropped:
        raise InputDataError(
            f"points: {report.summary()}; clean the input or drop --strict to skip such rows"
        )
