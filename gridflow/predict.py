"""Prediction: the label (and class probabilities) of new points, read from a grid.

A point's cell comes from the grid's :class:`~gridflow.grid.GridSpec`, with
the same float64 rule as binning (periodic dims wrapped, docs/design.md §2). A
point in a cell gets the cell's value of the labels variable (``label`` by
default; ``fractal`` or ``cluster`` work the same way) and, on request, the
cell's ``probability`` row. A point with no cell (NaN, infinite, or outside
the bounds of a non-periodic dim) gets -1; it is counted, never dropped, and
the output has one row per input row, in input order.

A grid classified with a pyramid (docs/design.md §3.5; the classify stage
records ``levels`` > 1) is read at every level: a point's level-``l`` cell
is its level-0 cell ``// 2**l``, and the point is answered by the finest
level whose cell is labeled with a total vote of at least ``min_votes``,
else by the coarsest labeled level, else -1. The report then counts the
points each level answered.

A grid whose labels are on the CUDA device (CuPy chunks, or
``backend="cupy"``, which moves the dense variables there) is read there:
the points' cells are found by :func:`gridflow._kernels.cuda_cells.cells`
and the chunks' values read by :func:`gridflow._kernels.cuda_cells.gather`,
and the results come back to the host, equal to the CPU path's.

A sparse grid (variables of ``sparse.COO`` chunks) is read the same way,
chunk by chunk: each chunk needed becomes its sorted row-major cell keys
once, and the points' cells are found in it by binary search; a cell the
chunk does not hold reads as the fill (-1: unlabeled). No dense array is
made.

The grid is never gathered into one process. The labels stay a chunked dask
array and prediction runs in two passes over the points, on whatever Dask
scheduler is active:

1. each block of points computes which chunks of the grid its cells fall in
   (a few integers per block come back to the client);
2. per block, a task groups the block's rows by chunk; per (block, chunk) a
   task reads the rows' values out of that one chunk with vectorised
   indexing; per block, a task puts the values back in row order.

No task holds more than one block of points and one chunk of the grid, and
a chunk needed by many blocks is read once: it is one key of the labels'
own graph, shared by every task that needs it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.delayed import Delayed

from gridflow._kernels import cuda_cells
from gridflow._staging import check_output, staged_directory
from gridflow.backend import checked_backend, move, ops, to_host
from gridflow.binning import _kernel_args
from gridflow.errors import InputDataError, ParameterError, StoreError
from gridflow.grid import GridSpec
from gridflow.points import BLOCK_ROWS, Block, open_points, read_path
from gridflow.pyramid import level_bins, level_name, parse_min_votes, parse_pyramid_levels
from gridflow.sparse_grid import is_sparse, linear_keys
from gridflow.store import STAGE_VARIABLES, as_grid, grid_spec, refuse_incomplete

__all__ = ["PredictResult", "predict", "predict_to_parquet"]

log = logging.getLogger(__name__)

#: Labels variables whose values are ids of their own (not indices into the
#: ``class`` coordinate): predictions keep the ids.
ID_VARIABLES = frozenset({"cluster"})

PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"


@dataclass
class PredictResult:
    """Predictions for a set of points, one row per input row, in input order.

    Attributes
    ----------
    codes : ndarray of int64, shape (n,)
        Value of the labels variable at each point's cell: the class index
        (position in ``classes``), or -1 where the point has no cell or its
        cell is unlabeled. For an id variable (``cluster``) the id itself.
    classes : ndarray or None
        The grid's ``class`` coordinate (the original class names, strings or
        numbers); None for an id variable.
    probability : ndarray of float32, shape (n, n_classes), or None
        The cell's ``probability`` row when requested; NaN rows for points
        with no cell.
    report : dict
        ``rows`` = ``predicted`` + ``no_cell`` + ``unlabeled_cell``:
        points that got a label, points with no cell (NaN, infinite or out of
        range), and points whose cell holds -1 (at every level). With a
        pyramid also ``levels``: the points answered by each level, finest
        first (they sum to ``predicted``).
    variable : str
        The labels variable that was read.
    """

    codes: np.ndarray
    classes: np.ndarray | None
    probability: np.ndarray | None
    report: dict[str, Any]
    variable: str = "label"

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def labels(self) -> np.ndarray:
        """Class name per point (object array, None where ``codes`` is -1).

        For an id variable (``cluster``) these are the ids, as ``codes``.
        """
        if self.classes is None:
            return self.codes
        return _class_names(self.codes, self.classes)

    def to_frame(self) -> pd.DataFrame:
        """The predictions as a DataFrame: ``prediction`` (class names, missing
        where there is none) and one ``probability_<class>`` column per class
        when probabilities were read (``probability_0``, ... for an id variable)."""
        cols = {PREDICTION_COLUMN: _prediction_values(self.codes, self.classes)}
        if self.probability is not None:
            names = self.classes if self.classes is not None else range(self.probability.shape[1])
            for k, name in enumerate(names):
                cols[f"{PROBABILITY_PREFIX}{name}"] = self.probability[:, k]
        return pd.DataFrame(cols)


# --- the grid side ---------------------------------------------------------------


@dataclass(frozen=True)
class _Locator:
    """What a task needs to map points to (level, chunk, cell within chunk).

    Chunks are numbered across levels: chunk ``c`` of level ``l`` (C order
    over that level's chunk grid) is ``offsets[l] + c``, so with one level
    the ids are the level-0 chunk ids. With ``device`` the points' cells are
    found on the device and dense chunks are read there (:func:`_cell_index`,
    :func:`_gather`).
    """

    spec: GridSpec
    level_edges: tuple[tuple[np.ndarray, ...], ...]  # per level: chunk boundaries per dim
    device: bool = False

    @property
    def nlevels(self) -> int:
        return len(self.level_edges)

    @property
    def level_nchunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(len(e) - 1 for e in edges) for edges in self.level_edges)

    @property
    def nchunks(self) -> tuple[int, ...]:
        """Chunks per dim of level 0."""
        return self.level_nchunks[0]

    @property
    def offsets(self) -> np.ndarray:
        sizes = [math.prod(n) for n in self.level_nchunks]
        return np.cumsum([0, *sizes], dtype=np.int64)

    def chunk_at(self, c: int) -> tuple[int, tuple[int, ...]]:
        """The level and chunk index of chunk id ``c``."""
        offsets = self.offsets
        level = int(np.searchsorted(offsets, c, side="right") - 1)
        index = np.unravel_index(c - int(offsets[level]), self.level_nchunks[level])
        return level, tuple(int(i) for i in index)


@dataclass(frozen=True)
class _Keyed:
    """A sparse chunk as sorted row-major linear keys and their values: a
    point's cell is found by binary search (no dense copy of the chunk)."""

    keys: np.ndarray  # uint64, strictly increasing
    data: np.ndarray
    fill: Any
    shape: tuple[int, ...]

    def take(self, coords: np.ndarray) -> np.ndarray:
        """Values at ``(ndim, n)`` coordinates in the chunk; the fill where absent."""
        out = np.full(coords.shape[1], self.fill, dtype=self.data.dtype)
        if len(self.keys) == 0 or coords.shape[1] == 0:
            return out
        query = linear_keys(coords, self.shape)
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        found = self.keys[pos] == query
        out[found] = self.data[pos[found]]
        return out


def _keyed(chunk: Any) -> Any:
    """A ``sparse.COO`` chunk as a :class:`_Keyed` (one task per chunk, shared
    by every block of points that reads it); a dense chunk as it is."""
    if not hasattr(chunk, "coords"):
        return chunk
    keys = linear_keys(chunk.coords, chunk.shape)
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
        import sparse

        # Not in canonical order (or with duplicates, which COO sums): make it so.
        chunk = sparse.COO(
            chunk.coords,
            chunk.data,
            shape=chunk.shape,
            fill_value=chunk.fill_value,
            has_duplicates=True,
            sorted=False,
        )
        keys = linear_keys(chunk.coords, chunk.shape)
    return _Keyed(keys, np.asarray(chunk.data), chunk.fill_value, tuple(chunk.shape))


class _Level:
    """One pyramid level's labels, votes and probabilities, the latter two in
    chunks that line up with the labels' (one chunk of each per labels chunk)."""

    def __init__(self, labels: da.Array, votes: da.Array | None, probability: da.Array | None):
        self.labels = labels
        self.votes = None if votes is None else votes.rechunk(labels.chunks)
        # One block per labels chunk, all classes in it.
        self.probability = (
            None if probability is None else probability.rechunk((-1, *labels.chunks))
        )
        self.edges = tuple(np.cumsum((0, *c), dtype=np.int64) for c in labels.chunks)
        self._graphs: dict[str, Any] = {}

    def chunk(self, which: str, index: tuple[int, ...]) -> Any:
        """The chunk of ``which`` (labels, votes, probability) at ``index`` as a
        Delayed sharing the array's key (a sparse one as a :class:`_Keyed`), or None."""
        arr = getattr(self, which)
        if arr is None:
            return None
        if which not in self._graphs:
            self._graphs[which] = arr.__dask_graph__()
        key = (arr.name, 0, *index) if which == "probability" else (arr.name, *index)
        out = Delayed(key, self._graphs[which], layer=arr.__dask_layers__()[0])
        if is_sparse(arr):
            out = dask.delayed(_keyed, pure=True)(out)
        return out


class _Grid:
    """The labels (and probabilities) of a grid as dask arrays, checked once.

    With a pyramid (``levels > 1``, variable ``label``) every level's
    ``label_l{l}`` (and ``votes_l{l}``, ``probability_l{l}`` when needed).
    ``backend`` moves the dense arrays read to that backend
    (:func:`gridflow.backend.move`; None: as they are). ``device`` reads
    them on the CUDA device (see :class:`_Locator`); by default when the
    labels' chunks are CuPy arrays. The CUDA simulator's checks set it for
    NumPy chunks, which are its device arrays.
    """

    def __init__(
        self,
        ds: Any,
        variable: str,
        probabilities: bool,
        *,
        levels: Any = None,
        min_votes: Any = None,
        backend: str | None = None,
        device: bool | None = None,
    ) -> None:
        self.spec = grid_spec(ds)
        self.variable = variable
        self.nlevels, self.min_votes = _pyramid(ds, variable, levels, min_votes)
        self.classes = None
        if variable not in ID_VARIABLES and "class" in ds.coords:
            self.classes = np.asarray(ds["class"].values)
        self.levels = [
            self._level(ds, level, probabilities, backend) for level in range(self.nlevels)
        ]
        self.labels = self.levels[0].labels
        self.probability = self.levels[0].probability
        if device is None:
            device = ops(self.labels).name == "cupy"
        self.locator = _Locator(self.spec, tuple(lv.edges for lv in self.levels), device)

    def _level(self, ds: Any, level: int, probabilities: bool, backend: str | None) -> _Level:
        dims = tuple(level_name(d, level) for d in self.spec.dims)
        shape = level_bins(self.spec.bins, level)
        name = level_name(self.variable, level)
        # A missing level-0 labels variable says which stage to run.
        nlevels = self.nlevels if level else 1
        labels = _spatial_array(ds, name, dims, shape, level=level, nlevels=nlevels)
        if labels.dtype.kind not in "iu":
            raise StoreError(
                f"store: {name!r} has dtype {labels.dtype}, expected integers "
                f"(-1 = unlabeled); it is not a labels variable, choose another with variable="
            )
        # The coarsest level's votes never change the answer: below min_votes it
        # still answers as the coarsest labeled level.
        votes = None
        if self.min_votes > 0 and level < self.nlevels - 1:
            votes = _spatial_array(
                ds, level_name("votes", level), dims, shape, level=level, nlevels=self.nlevels
            )
        prob = None
        if probabilities:
            prob = _class_array(
                ds,
                level_name("probability", level),
                dims,
                shape,
                level=level,
                nlevels=self.nlevels,
            )
        return _Level(*(None if a is None else move(a, backend) for a in (labels, votes, prob)))

    @property
    def nclasses(self) -> int | None:
        return None if self.probability is None else int(self.probability.shape[0])


def _pyramid(ds: Any, variable: str, levels: Any, min_votes: Any) -> tuple[int, float]:
    """The pyramid levels to read and the votes a level's cell needs: the
    arguments when given, else the classify stage's record (1 and 0 when
    it has none). Only the ``label`` variable has a pyramid."""
    stages = ds.attrs.get("gridflow_stages", {})
    record = stages.get("classify", {}) if isinstance(stages, Mapping) else {}
    record = record if isinstance(record, Mapping) else {}
    try:
        stored = parse_pyramid_levels(record.get("levels", 1))
        stored_min = parse_min_votes(record.get("min_votes", 0))
    except ParameterError as exc:
        raise StoreError(
            f"store: the classify stage records an invalid pyramid ({exc}); "
            "the store's metadata is damaged, rerun `gridflow classify`"
        ) from None
    n = stored if levels is None else parse_pyramid_levels(levels)
    m = stored_min if min_votes is None else parse_min_votes(min_votes)
    if variable != "label":
        if levels is not None and n > 1:
            raise ParameterError(
                f"levels: only classify's 'label' has a pyramid, got levels={n} with "
                f"variable={variable!r}; leave levels unset"
            )
        return 1, 0.0
    return n, m


def _missing_variable(ds: Any, variable: str) -> StoreError:
    refuse_incomplete(ds, variable, needed_by="predict")
    stage = next((s for s, names in STAGE_VARIABLES.items() if variable in names), None)
    have = ", ".join(map(str, ds.data_vars)) or "none"
    fix = (
        f"run `gridflow {stage}` first"
        if stage is not None
        else "choose one of its variables with variable="
    )
    return StoreError(f"store: the grid has no {variable!r} variable (it has: {have}); {fix}")


def _missing_level(ds: Any, variable: str, level: int, nlevels: int) -> StoreError:
    refuse_incomplete(ds, "label", needed_by="predict")
    return StoreError(
        f"store: the grid has no {variable!r} variable, which level {level} of its "
        f"{nlevels}-level pyramid needs; rerun `gridflow classify` (levels={nlevels}), or "
        "predict with levels=1 to read level 0 only"
    )


def _as_dask(var: Any) -> da.Array:
    data = var.data
    return data if isinstance(data, da.Array) else da.asarray(data)


def _spatial_array(
    ds: Any,
    variable: str,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    *,
    level: int = 0,
    nlevels: int = 1,
) -> da.Array:
    if variable not in ds.data_vars:
        if nlevels > 1:
            raise _missing_level(ds, variable, level, nlevels)
        raise _missing_variable(ds, variable)
    var = ds[variable]
    if set(var.dims) != set(dims) or var.ndim != len(dims):
        raise StoreError(
            f"store: {variable!r} has dims {var.dims}, expected the grid's dims {dims}"
        )
    arr = _as_dask(var.transpose(*dims))
    if arr.shape != shape:
        raise StoreError(f"store: {variable!r} has shape {arr.shape}, the grid has {shape}")
    return arr


def _class_array(
    ds: Any,
    variable: str,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    *,
    level: int = 0,
    nlevels: int = 1,
) -> da.Array:
    if variable not in ds.data_vars:
        if level == 0:
            raise StoreError(
                "store: the grid has no 'probability' variable; predict without "
                "probabilities, or run `gridflow classify` so that it stores them"
            )
        raise _missing_level(ds, variable, level, nlevels)
    var = ds[variable]
    full = ("class", *dims)
    if set(var.dims) != set(full) or var.ndim != len(full):
        raise StoreError(f"store: {variable!r} has dims {var.dims}, expected {full}")
    arr = _as_dask(var.transpose(*full))
    if arr.shape[1:] != shape:
        raise StoreError(f"store: {variable!r} has shape {arr.shape}, expected (class, *{shape})")
    return arr


# --- the points side ----------------------------------------------------------------


def parse_columns(columns: Sequence[str] | str | None, spec: GridSpec) -> tuple[str, ...]:
    """Coordinate columns for a grid: one per dim, default the grid's dims."""
    if columns is None:
        return spec.dims
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    names = tuple(str(c) for c in columns)
    if len(names) != spec.ndim:
        raise ParameterError(
            f"columns: expected {spec.ndim} names, one per grid dim ({', '.join(spec.dims)}), "
            f"got {len(names)}: {', '.join(names)}"
        )
    return names


def _plain_array(points: Any) -> Any:
    """The ``(n, d)`` array behind ``points`` when it is one (else None)."""
    if isinstance(points, (np.ndarray, da.Array)) and points.dtype.names is None:
        return points
    if isinstance(points, (str, os.PathLike)):
        path = os.fspath(points)
        if path.lower().endswith(".npy") and os.path.isfile(path):
            arr = np.load(path, mmap_mode="r")
            return arr if arr.dtype.names is None else None
    return None


def _check_width(points: Any, spec: GridSpec) -> None:
    arr = _plain_array(points)
    if arr is None or arr.ndim > 2:
        return  # open_points explains other shapes
    width = 1 if arr.ndim == 1 else arr.shape[1]
    if width != spec.ndim:
        raise InputDataError(
            f"points: the points have {width} coordinates, the grid has {spec.ndim} dims "
            f"({', '.join(spec.dims)}); give one coordinate column per dim"
        )


def _open_points(points: Any, spec: GridSpec, columns: tuple[str, ...], given: bool) -> Any:
    _check_width(points, spec)
    try:
        return open_points(points, columns=columns, label=None, require_label=False)
    except InputDataError as exc:
        if "not found" not in str(exc):
            raise
        hint = (
            f"the grid's dims are ({', '.join(spec.dims)}); pass columns= naming the point "
            "columns for them, in dim order"
            if not given
            else f"columns= must name the point columns for the grid's dims ({', '.join(spec.dims)})"
        )
        raise InputDataError(f"{exc}; {hint}") from None


def _coords(part: Any, columns: tuple[str, ...]) -> np.ndarray:
    """``(n, d)`` float64 coordinates of a Block or a pandas partition."""
    if isinstance(part, Block):
        cols = part.columns
    else:
        cols = [part[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in columns]
    if not cols or len(cols[0]) == 0:
        return np.empty((0, len(columns)), dtype=np.float64)
    return np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])


# --- tasks ----------------------------------------------------------------------------


def _chunk_of(points: np.ndarray, loc: _Locator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with a cell, their chunk ids and their cells within the chunk.

    With several levels each row appears once per level (level 0 first):
    its level-``l`` cell is its level-0 cell ``// 2**l``.
    """
    cells0 = _cell_index(points, loc.spec, loc.device)
    ok = cells0[:, 0] >= 0
    if not ok.all():
        rows = np.flatnonzero(ok)
        cells0 = cells0[rows]
    else:
        rows = np.arange(len(cells0), dtype=np.int64)
    offsets = loc.offsets
    all_ids, all_cells = [], []
    for level, edges in enumerate(loc.level_edges):
        cells = cells0 >> level if level else cells0
        if level == 0 and loc.nlevels > 1:
            cells = cells0.copy()  # the coarser levels start from it
        chunk = np.empty_like(cells)
        for i, e in enumerate(edges):
            size = int(e[1]) if len(e) > 1 else 1
            # Regular chunks (the last one may be smaller, never larger).
            if np.array_equal(e[:-1], np.arange(len(e) - 1) * size) and e[-1] - e[-2] <= size:
                chunk[:, i] = cells[:, i] // size
            else:
                chunk[:, i] = np.searchsorted(e, cells[:, i], side="right") - 1
            cells[:, i] -= e[chunk[:, i]]
        nchunks = loc.level_nchunks[level]
        ids = np.ravel_multi_index(tuple(chunk.T), nchunks) if len(rows) else rows.copy()
        all_ids.append(ids + offsets[level] if level else ids)
        all_cells.append(cells)
    if loc.nlevels == 1:
        return rows, all_ids[0], all_cells[0]
    return np.tile(rows, loc.nlevels), np.concatenate(all_ids), np.concatenate(all_cells)


def _cell_index(points: np.ndarray, spec: GridSpec, device: bool) -> np.ndarray:
    """``spec.cell_index(points)``; with ``device`` found on the device.

    On the device :func:`~gridflow._kernels.cuda_cells.cells` gives the flat
    cell (the same float64 rule, -1 where none) and the per-dim cells are
    unravelled on the host, -1 on every dim of a point with no cell.
    """
    if not device or len(points) == 0:
        return spec.cell_index(points)
    on_device = cuda_cells.array_module().asarray(points)
    cols = tuple(on_device[:, j] for j in range(spec.ndim))
    flat = to_host(cuda_cells.cells(cols, *_kernel_args(spec)))
    cells = np.full(points.shape, -1, dtype=np.int64)
    ok = flat >= 0
    cells[ok] = np.column_stack(np.unravel_index(flat[ok], spec.shape))
    return cells


def _touched(part: Any, loc: _Locator, columns: tuple[str, ...]) -> tuple[int, np.ndarray]:
    """Pass 1: the number of rows and the distinct chunk ids of a block."""
    pts = _coords(part, columns)
    return len(pts), np.unique(_chunk_of(pts, loc)[1])


def _locate(part: Any, loc: _Locator, columns: tuple[str, ...], rows_expected: int) -> dict:
    """Pass 2: the block's rows grouped by chunk, with their cells inside it."""
    pts = _coords(part, columns)
    if len(pts) != rows_expected:  # the partitions of both passes must agree
        raise RuntimeError(
            f"gridflow.predict: a block has {len(pts)} rows, the first pass saw {rows_expected}"
        )
    rows, ids, local = _chunk_of(pts, loc)
    if len(ids) == 0:
        return {}
    if ids[0] == ids[-1] and (ids == ids[0]).all():
        return {int(ids[0]): (rows, local)}
    # A small sort key makes numpy's stable sort a radix sort.
    key = ids.astype(np.min_scalar_type(int(ids.max())), copy=False)
    order = np.argsort(key, kind="stable")
    rows, ids, local = rows[order], ids[order], local[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1, [len(ids)]])
    return {int(ids[s]): (rows[s:e], local[s:e]) for s, e in itertools.pairwise(starts)}


def _gather(chunk: Any, index: np.ndarray) -> np.ndarray:
    """``chunk``'s values at C-order flat ``index``, read on the device
    (:func:`~gridflow._kernels.cuda_cells.gather`) and brought to the host."""
    xp = cuda_cells.array_module()
    values = xp.asarray(chunk).reshape(-1)
    return to_host(cuda_cells.gather(values, xp.asarray(index), 0))


def _read_cells(chunk: Any, local: np.ndarray, device: bool = False) -> np.ndarray:
    """A chunk's values at ``(n, d)`` cells within it (a dense one read on the
    device with ``device``)."""
    if isinstance(chunk, _Keyed):
        return chunk.take(local.T)
    if device:
        return _gather(chunk, np.ravel_multi_index(tuple(local.T), chunk.shape))
    return to_host(chunk[tuple(local.T)])


def _read_rows(chunk: Any, local: np.ndarray, device: bool = False) -> np.ndarray:
    """A ``(class, *dims)`` chunk's ``(n, class)`` rows at ``(n, d)`` cells within it."""
    nclasses, n = chunk.shape[0], len(local)
    if isinstance(chunk, _Keyed):
        coords = np.vstack([np.repeat(np.arange(nclasses), n)[None, :], np.tile(local.T, nclasses)])
        return chunk.take(coords).reshape(nclasses, n).T
    if device:
        cells = np.ravel_multi_index(tuple(local.T), chunk.shape[1:])
        plane = math.prod(chunk.shape[1:])
        index = np.arange(nclasses, dtype=np.int64)[:, None] * plane + cells
        return _gather(chunk, index.reshape(-1)).reshape(nclasses, n).T
    return to_host(chunk[(slice(None), *local.T)]).T


def _lookup(
    piece: tuple, labels: Any, probability: Any, votes: Any = None, *, device: bool = False
) -> tuple:
    """The values of one chunk at the cells of one block's rows."""
    rows, local = piece
    values = _read_cells(labels, local, device).astype(np.int64, copy=False)
    probs = None
    if probability is not None:
        probs = _read_rows(probability, local, device).astype(np.float32, copy=False)
    vals = None
    if votes is not None:
        vals = _read_cells(votes, local, device).astype(np.float64, copy=False)
    return rows, values, probs, vals


def _assemble(
    rows: int,
    nclasses: int | None,
    pieces: list[tuple],
    levels: Sequence[int] = (),
    nlevels: int = 1,
    min_votes: float = 0.0,
) -> tuple:
    """A block's predictions in row order, with its share of the report.

    Each row is answered by the finest level whose cell is labeled with at
    least ``min_votes`` votes, else by the coarsest labeled level, else -1.
    ``levels`` gives each piece's level (all 0 when empty). The stats are
    ``rows, predicted, no_cell, unlabeled_cell`` and the rows answered per level.
    """
    label = np.full((nlevels, rows), -1, dtype=np.int64)
    good = np.zeros((nlevels, rows), dtype=bool)
    probs = [
        None if nclasses is None else np.full((rows, nclasses), np.nan, dtype=np.float32)
        for _ in range(nlevels)
    ]
    in_cell = 0
    for i, (r, values, p, votes) in enumerate(pieces):
        level = levels[i] if len(levels) else 0
        label[level, r] = np.where(values < 0, -1, values)
        good[level, r] = values >= 0
        if votes is not None:
            good[level, r] &= votes >= min_votes
        if level == 0:
            in_cell += len(r)
        if p is not None:
            probs[level][r] = p
    labeled = label >= 0
    # The finest good level, else the coarsest labeled one, else none (-1).
    answer = np.where(
        good.any(axis=0),
        np.argmax(good, axis=0),
        np.where(labeled.any(axis=0), nlevels - 1 - np.argmax(labeled[::-1], axis=0), -1),
    )
    ok = answer >= 0
    at = np.flatnonzero(ok)
    codes = np.full(rows, -1, dtype=np.int64)
    codes[at] = label[answer[at], at]
    prob = probs[0]
    if prob is not None and nlevels > 1:
        prob = prob.copy()  # a row no level answers keeps level 0's, as a plain read
        for level in range(1, nlevels):
            sel = at[answer[at] == level]
            prob[sel] = probs[level][sel]
    predicted = len(at)
    per_level = np.bincount(answer[at], minlength=nlevels)
    stats = np.array(
        [rows, predicted, rows - in_cell, in_cell - predicted, *per_level], dtype=np.int64
    )
    return codes, prob, stats


def _plan(
    grid: _Grid,
    parts: Sequence[Any],
    touched: Sequence[tuple[int, np.ndarray]],
    columns: tuple[str, ...],
) -> list[Delayed]:
    """Pass 2 as a graph: one ``(codes, probability, stats)`` Delayed per part."""
    token = uuid.uuid4().hex[:8]
    loc = grid.locator
    chunks: dict[int, tuple] = {}
    out = []
    for b, (part, (rows, ids)) in enumerate(zip(parts, touched, strict=True)):
        groups = dask.delayed(_locate, pure=False)(
            part, loc, columns, rows, dask_key_name=f"predict-locate-{token}-{b}"
        )
        pieces, levels = [], []
        for c in ids.tolist():
            if c not in chunks:
                level, index = loc.chunk_at(c)
                lv = grid.levels[level]
                chunks[c] = (
                    level,
                    lv.chunk("labels", index),
                    lv.chunk("probability", index),
                    lv.chunk("votes", index),
                )
            level, labels, probability, votes = chunks[c]
            args = (groups[c], labels, probability) + (() if votes is None else (votes,))
            pieces.append(
                dask.delayed(_lookup, pure=False)(
                    *args, device=loc.device, dask_key_name=f"predict-lookup-{token}-{b}-{c}"
                )
            )
            levels.append(level)
        out.append(
            dask.delayed(_assemble, pure=False)(
                rows,
                grid.nclasses,
                pieces,
                levels,
                grid.nlevels,
                grid.min_votes,
                dask_key_name=f"predict-assemble-{token}-{b}",
            )
        )
    return out


def _first_pass(
    blocks: Sequence[Any], loc: _Locator, columns: tuple[str, ...]
) -> list[tuple[int, np.ndarray]]:
    tasks = [dask.delayed(_touched, pure=False)(b, loc, columns) for b in blocks]
    return list(dask.compute(*tasks))


REPORT_KEYS = ("rows", "predicted", "no_cell", "unlabeled_cell")


def _report(stats: Sequence[np.ndarray], nlevels: int = 1) -> dict[str, Any]:
    """The report; with a pyramid also ``levels``: the points each level answered."""
    width = len(REPORT_KEYS) + nlevels
    total = np.sum(stats, axis=0) if len(stats) else np.zeros(width, dtype=np.int64)
    report: dict[str, Any] = {k: int(v) for k, v in zip(REPORT_KEYS, total, strict=False)}
    if nlevels > 1:
        report["levels"] = [int(v) for v in total[len(REPORT_KEYS) :]]
    return report


def _stats_columns(nlevels: int) -> list[str]:
    return [*REPORT_KEYS, *(f"level_{level}" for level in range(nlevels))]


def _stats_row(result: tuple | None, nlevels: int = 1) -> pd.DataFrame:
    width = len(REPORT_KEYS) + nlevels
    stats = np.zeros(width, dtype=np.int64) if result is None else result[2]
    return pd.DataFrame(stats[None, :], columns=_stats_columns(nlevels))[
        : 0 if result is None else 1
    ]


# --- public functions --------------------------------------------------------------


def predict(
    grid: Any,
    points: Any,
    *,
    columns: Sequence[str] | str | None = None,
    variable: str = "label",
    probabilities: bool = False,
    levels: int | None = None,
    min_votes: float | None = None,
    backend: str | None = None,
) -> PredictResult:
    """Predict the class of points by reading the grid at their cells.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid from :func:`~gridflow.open_grid` (or its store path) holding
        the labels variable.
    points : path, DataFrame, ndarray or mapping
        Any source :func:`~gridflow.open_points` accepts: Parquet, CSV, Zarr,
        ``.npy``/``.npz`` paths, pandas or dask DataFrames, an ``(n, d)``
        array (columns in grid dim order) or a mapping of columns.
    columns : sequence of str or str, optional
        The point columns holding the grid's dims, in dim order. Default: the
        grid's dim names.
    variable : str, default "label"
        The labels variable: ``"label"`` (classify), ``"fractal"``, or
        ``"cluster"`` (cluster ids, kept as ids).
    probabilities : bool, default False
        Also read each point's row of the ``probability`` variable (of the
        level that answers the point, ``probability_l{l}``, with a pyramid).
    levels : int, optional
        Pyramid levels to read (``label``, ``label_l1``, ...); default: the
        classify stage's ``levels`` (1 when it records none). ``levels=1``
        reads ``label`` alone.
    min_votes : float, optional
        The total vote (``votes``, ``votes_l{l}``) a level's cell needs to
        answer a point; default: the classify stage's ``min_votes`` (0).
    backend : {"numpy", "cupy"}, optional
        Where the grid is read: host memory or the CUDA device (CuPy;
        gridflow[gpu]), its dense variables moved there first; default
        where its labels are (a grid with CuPy chunks is read on the device).
        On the device the points' cells are found and the values read by
        CUDA kernels; the results are host arrays, equal to the host's.
        Sparse grids are read on the host.

    Returns
    -------
    PredictResult
        ``codes``, ``labels`` (class names), ``probability`` and ``report``,
        one row per input row in input order; points with no cell get -1 and
        are counted in ``report["no_cell"]``. With a pyramid,
        ``report["levels"]`` counts the points each level answered.

    Raises
    ------
    StoreError
        The grid lacks ``variable`` (run ``gridflow classify`` first), a
        level of its pyramid, or ``probability`` when it is requested.
    ParameterError
        ``levels``, ``min_votes`` or ``backend`` is invalid.
    MissingDependencyError
        ``backend="cupy"`` without CuPy or a CUDA device.
    InputDataError
        The points lack a coordinate column, or have the wrong number of
        coordinates.

    Examples
    --------
    >>> import xarray as xr
    >>> from gridflow import bin_points
    >>> rng = np.random.default_rng(0)
    >>> ds = bin_points(rng.random((500, 2)), labels=rng.integers(0, 2, 500),
    ...                 bins=4, bounds=(0, 1))
    >>> counts = ds["counts"]
    >>> ds["label"] = xr.where(counts.sum("class") > 0, counts.argmax("class"), -1)
    >>> result = predict(ds, np.array([[0.1, 0.2], [2.0, 0.5]]))
    >>> int(result.codes[1]), result.report["no_cell"]
    (-1, 1)
    """
    backend = checked_backend(backend)
    ds = as_grid(grid)
    g = _Grid(ds, variable, probabilities, levels=levels, min_votes=min_votes, backend=backend)
    cols = parse_columns(columns, g.spec)
    src = _open_points(points, g.spec, cols, columns is not None)
    touched = _first_pass(src.blocks, g.locator, src.columns)
    results = dask.compute(*_plan(g, src.blocks, touched, src.columns))
    if results:
        codes = np.concatenate([r[0] for r in results])
        probs = None if g.nclasses is None else np.concatenate([r[1] for r in results])
    else:
        codes = np.empty(0, dtype=np.int64)
        probs = None if g.nclasses is None else np.empty((0, g.nclasses), dtype=np.float32)
    report = _report([r[2] for r in results], g.nlevels)
    log.info(
        "predicted %s of %s points (%s with no cell, %s in unlabeled cells)%s",
        f"{report['predicted']:,}",
        f"{report['rows']:,}",
        f"{report['no_cell']:,}",
        f"{report['unlabeled_cell']:,}",
        _levels_note(report),
    )
    return PredictResult(codes, g.classes, probs, report, variable)


def predict_to_parquet(
    grid: Any,
    points: Any,
    out: str | os.PathLike[str],
    *,
    columns: Sequence[str] | str | None = None,
    variable: str = "label",
    probabilities: bool | None = None,
    overwrite: bool = False,
    levels: int | None = None,
    min_votes: float | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Predict points partition by partition and write them, with their
    predictions, to a Parquet dataset.

    The output directory holds every input column (an array's columns are
    named after ``columns``, default the grid's dims; a DataFrame's index is
    not written), then ``prediction`` (the class names, missing where there is
    none) and, with probabilities, one float32 ``probability_<class>`` column
    per class. Rows keep their input order (part files are numbered in
    order). The whole pipeline runs partition by partition on the active
    Dask scheduler, and the output appears all at once or not at all.

    Parameters
    ----------
    grid, points, columns, variable, levels, min_votes, backend
        As in :func:`predict`.
    out : path
        Output directory.
    probabilities : bool, optional
        Write the probability columns; default: when the grid stores them.
    overwrite : bool, default False
        Replace an existing ``out`` that gridflow wrote (never anything
        else). ``out`` is never the grid's store or the points.

    Returns
    -------
    dict
        The report: ``rows``, ``predicted``, ``no_cell``, ``unlabeled_cell``
        (and ``levels`` with a pyramid), as :func:`predict` gives it.

    Examples
    --------
    >>> predict_to_parquet("grid.zarr", "new_points.parquet", "predicted.parquet")  # doctest: +SKIP
    {'rows': 1000, 'predicted': 990, 'no_cell': 10, 'unlabeled_cell': 0}
    """
    backend = checked_backend(backend)
    out = os.path.abspath(os.fspath(out))
    check_output(out, overwrite=overwrite, inputs={"the grid": grid, "the points": points})
    ds = as_grid(grid)
    if probabilities is None:
        probabilities = "probability" in ds.data_vars
    g = _Grid(ds, variable, probabilities, levels=levels, min_votes=min_votes, backend=backend)
    cols = parse_columns(columns, g.spec)
    _open_points(points, g.spec, cols, columns is not None)  # validates the source
    frame = _source_frame(points, cols)
    new_columns = _output_columns(g)
    clash = [c for c in new_columns if c in set(map(str, frame.columns))]
    if clash:
        raise InputDataError(
            f"points: the input already has a column {clash[0]!r}; rename or drop it first"
        )

    parts = frame.to_delayed()
    # Pass 1 reads the coordinate columns only, when the projection keeps the
    # partitions (a reader may merge projected partitions: then read all).
    blocks = open_points(frame, columns=cols, label=None, require_label=False).blocks
    if len(blocks) != len(parts):
        blocks = parts
    touched = _first_pass(blocks, g.locator, cols)
    results = _plan(g, parts, touched, cols)
    frames = [
        dask.delayed(_attach, pure=False)(p, r, g.classes, new_columns)
        for p, r in zip(parts, results, strict=True)
    ]
    meta = _attach(
        frame._meta, _assemble(0, g.nclasses, [], nlevels=g.nlevels), g.classes, new_columns
    )

    import dask.dataframe as dd

    predicted = dd.from_delayed(frames, meta=meta, verify_meta=True)
    width = max(6, len(str(len(frames) - 1)))
    with staged_directory(out) as staging:
        write = predicted.to_parquet(
            staging,
            write_index=False,
            compute=False,
            name_function=f"part.{{:0{width}d}}.parquet".format,
        )
        # As a frame too: computing expressions and plain graphs together
        # would materialise the whole DataFrame graph first.
        stats = dd.from_delayed(
            [dask.delayed(_stats_row, pure=False)(r, g.nlevels) for r in results],
            meta=_stats_row(None, g.nlevels),
        )
        _, stats = dask.compute(write, stats)
    report = _report(stats.to_numpy(), g.nlevels)
    log.info("wrote %s (%s)", out, report)
    return report


# --- output helpers ---------------------------------------------------------------


def _levels_note(report: Mapping[str, Any]) -> str:
    if "levels" not in report:
        return ""
    counts = ", ".join(f"level {i}: {n:,}" for i, n in enumerate(report["levels"]))
    return f"; answered by {counts}"


def _output_columns(grid: _Grid) -> list[str]:
    names = [PREDICTION_COLUMN]
    if grid.nclasses is not None:
        classes = grid.classes if grid.classes is not None else np.arange(grid.nclasses)
        names += [f"{PROBABILITY_PREFIX}{c}" for c in classes.tolist()]
    return names


def _attach(part: pd.DataFrame, result: tuple, classes: Any, names: list[str]) -> pd.DataFrame:
    codes, probs, _ = result
    cols: dict[str, Any] = {names[0]: _prediction_values(codes, classes)}
    for k, name in enumerate(names[1:]):
        cols[name] = probs[:, k]
    return part.assign(**cols)


def _class_names(codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    ok = codes >= 0
    if ok.any() and codes.max() >= len(classes):
        raise StoreError(
            f"store: a label ({int(codes.max())}) is not a class index (there are "
            f"{len(classes)} classes); the labels variable does not match the class coordinate"
        )
    names = np.full(len(codes), None, dtype=object)
    names[ok] = classes.astype(object)[codes[ok]]
    return names


def _prediction_values(codes: np.ndarray, classes: np.ndarray | None) -> Any:
    """A pandas array of class names with missing values (ids stay int64)."""
    if classes is None:
        return codes
    names = _class_names(codes, classes)
    kind = classes.dtype.kind
    if kind in "iu":
        return pd.array(names, dtype="Int64")
    if kind == "f":
        return np.where(codes >= 0, names, np.nan).astype(np.float64)
    return pd.array(names, dtype=pd.StringDtype())


# --- every source as a dask DataFrame of all its columns -----------------------------


def _source_frame(points: Any, names: tuple[str, ...]) -> Any:
    import dask.dataframe as dd

    if isinstance(points, pd.DataFrame):
        return dd.from_pandas(points, npartitions=_nparts(len(points)), sort=False)
    if type(points).__module__.startswith("dask") and hasattr(points, "to_delayed"):
        return points  # a dask DataFrame
    if isinstance(points, (str, os.PathLike)):
        return _path_frame(os.fspath(points), names)
    arr = _plain_array(points)
    if arr is not None:
        return _columns_frame(_array_columns(arr, names))
    if isinstance(points, np.ndarray):  # structured
        points = {n: points[n] for n in points.dtype.names}
    return _columns_frame(dict(points))


def _nparts(rows: int) -> int:
    return max(1, math.ceil(rows / BLOCK_ROWS))


def _array_columns(arr: Any, names: tuple[str, ...]) -> dict[str, Any]:
    arr = arr[:, None] if arr.ndim == 1 else arr
    return {n: arr[:, i] for i, n in enumerate(names)}


def _columns_frame(arrays: Mapping[str, Any]) -> Any:
    """A dask DataFrame of the 1-D columns (NumPy or dask) of equal length."""
    import dask.dataframe as dd

    arrays = {str(k): v for k, v in arrays.items() if getattr(v, "ndim", 1) == 1}
    n = len(next(iter(arrays.values())))
    arrays = {k: v for k, v in arrays.items() if len(v) == n}
    if not any(isinstance(v, da.Array) for v in arrays.values()):
        df = pd.DataFrame({k: np.asarray(v) for k, v in arrays.items()})
        return dd.from_pandas(df, npartitions=_nparts(n), sort=False)
    first = next(v for v in arrays.values() if isinstance(v, da.Array))
    chunks = first.chunks
    series = [
        dd.from_dask_array(da.asarray(v).rechunk(chunks), columns=k) for k, v in arrays.items()
    ]
    return dd.concat(series, axis=1)


def _path_frame(path: str, names: tuple[str, ...]) -> Any:
    """Every column of a point file, as a dask DataFrame."""
    data, _ = read_path(path)
    if isinstance(data, np.ndarray):
        return _columns_frame(_array_columns(data, names))
    if isinstance(data, Mapping):
        return _columns_frame(data)
    return data
