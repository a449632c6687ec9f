"""Prediction: the label (and class probabilities) of new points, read from a grid.

A point's cell comes from the grid's :class:`~gridflow.grid.GridSpec`, with
the same float64 rule as binning (periodic dims wrapped, docs/design.md §2). A
point in a cell gets the cell's value of the labels variable (``label`` by
default; ``fractal`` or ``cluster`` work the same way) and, on request, the
cell's ``probability`` row. A point with no cell (NaN, infinite, or outside
the bounds of a non-periodic dim) gets -1; it is counted, never dropped, and
the output has one row per input row, in input order.

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

from gridflow._staging import check_output, staged_directory
from gridflow.backend import to_host
from gridflow.errors import InputDataError, ParameterError, StoreError
from gridflow.grid import GridSpec
from gridflow.points import BLOCK_ROWS, Block, open_points, read_path
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
        range), and points whose cell holds -1.
    variable : str
        The labels variable that was read.
    """

    codes: np.ndarray
    classes: np.ndarray | None
    probability: np.ndarray | None
    report: dict[str, int]
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
    """What a task needs to map points to (chunk, cell within chunk)."""

    spec: GridSpec
    edges: tuple[np.ndarray, ...]  # chunk boundaries per dim, from 0 to bins

    @property
    def nchunks(self) -> tuple[int, ...]:
        return tuple(len(e) - 1 for e in self.edges)


class _Grid:
    """The labels (and probabilities) of a grid as dask arrays, checked once."""

    def __init__(self, ds: Any, variable: str, probabilities: bool) -> None:
        self.spec = grid_spec(ds)
        self.variable = variable
        self.labels = _spatial_array(ds, variable, self.spec)
        if self.labels.dtype.kind not in "iu":
            raise StoreError(
                f"store: {variable!r} has dtype {self.labels.dtype}, expected integers "
                f"(-1 = unlabeled); it is not a labels variable, choose another with variable="
            )
        self.classes = None
        if variable not in ID_VARIABLES and "class" in ds.coords:
            self.classes = np.asarray(ds["class"].values)
        self.probability = None
        if probabilities:
            if "probability" not in ds.data_vars:
                raise StoreError(
                    "store: the grid has no 'probability' variable; predict without "
                    "probabilities, or run `gridflow classify` so that it stores them"
                )
            prob = _class_array(ds, "probability", self.spec)
            # One block per labels chunk, all classes in it.
            self.probability = prob.rechunk((-1, *self.labels.chunks))
        self.locator = _Locator(
            self.spec, tuple(np.cumsum((0, *c), dtype=np.int64) for c in self.labels.chunks)
        )
        self._label_graph = self.labels.__dask_graph__()
        self._prob_graph = None if self.probability is None else self.probability.__dask_graph__()

    @property
    def nclasses(self) -> int | None:
        return None if self.probability is None else int(self.probability.shape[0])

    def label_chunk(self, index: tuple[int, ...]) -> Delayed:
        """The labels chunk at ``index`` as a Delayed sharing the array's key."""
        return Delayed(
            (self.labels.name, *index),
            self._label_graph,
            layer=self.labels.__dask_layers__()[0],
        )

    def probability_chunk(self, index: tuple[int, ...]) -> Delayed | None:
        if self.probability is None:
            return None
        return Delayed(
            (self.probability.name, 0, *index),
            self._prob_graph,
            layer=self.probability.__dask_layers__()[0],
        )


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


def _as_dask(var: Any) -> da.Array:
    data = var.data
    return data if isinstance(data, da.Array) else da.asarray(data)


def _spatial_array(ds: Any, variable: str, spec: GridSpec) -> da.Array:
    if variable not in ds.data_vars:
        raise _missing_variable(ds, variable)
    var = ds[variable]
    if set(var.dims) != set(spec.dims) or var.ndim != spec.ndim:
        raise StoreError(
            f"store: {variable!r} has dims {var.dims}, expected the grid's dims {spec.dims}"
        )
    arr = _as_dask(var.transpose(*spec.dims))
    if arr.shape != spec.shape:
        raise StoreError(f"store: {variable!r} has shape {arr.shape}, the grid has {spec.shape}")
    return arr


def _class_array(ds: Any, variable: str, spec: GridSpec) -> da.Array:
    var = ds[variable]
    dims = ("class", *spec.dims)
    if set(var.dims) != set(dims) or var.ndim != len(dims):
        raise StoreError(f"store: {variable!r} has dims {var.dims}, expected {dims}")
    return _as_dask(var.transpose(*dims))


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
    """Rows with a cell, their flat chunk ids, and their cells within the chunk."""
    cells = loc.spec.cell_index(points)
    ok = cells[:, 0] >= 0
    if not ok.all():
        rows = np.flatnonzero(ok)
        cells = cells[rows]
    else:
        rows = np.arange(len(cells), dtype=np.int64)
    chunk = np.empty_like(cells)
    for i, e in enumerate(loc.edges):
        size = int(e[1]) if len(e) > 1 else 1
        if np.array_equal(e[:-1], np.arange(len(e) - 1) * size):  # regular chunks
            chunk[:, i] = cells[:, i] // size
        else:
            chunk[:, i] = np.searchsorted(e, cells[:, i], side="right") - 1
        cells[:, i] -= e[chunk[:, i]]
    ids = np.ravel_multi_index(tuple(chunk.T), loc.nchunks) if len(rows) else rows
    return rows, ids, cells


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


def _lookup(piece: tuple, labels: Any, probability: Any) -> tuple:
    """The values of one chunk at the cells of one block's rows."""
    rows, local = piece
    index = tuple(local.T)
    values = to_host(labels[index]).astype(np.int64, copy=False)
    probs = None
    if probability is not None:
        probs = to_host(probability[(slice(None), *index)]).T.astype(np.float32, copy=False)
    return rows, values, probs


def _assemble(rows: int, nclasses: int | None, pieces: list[tuple]) -> tuple:
    """A block's predictions in row order, with its share of the report."""
    codes = np.full(rows, -1, dtype=np.int64)
    probs = None if nclasses is None else np.full((rows, nclasses), np.nan, dtype=np.float32)
    in_cell = unlabeled = 0
    for r, values, p in pieces:
        codes[r] = np.where(values < 0, -1, values)
        in_cell += len(r)
        unlabeled += int(np.count_nonzero(values < 0))
        if probs is not None:
            probs[r] = p
    stats = np.array([rows, in_cell - unlabeled, rows - in_cell, unlabeled], dtype=np.int64)
    return codes, probs, stats


def _plan(
    grid: _Grid,
    parts: Sequence[Any],
    touched: Sequence[tuple[int, np.ndarray]],
    columns: tuple[str, ...],
) -> list[Delayed]:
    """Pass 2 as a graph: one ``(codes, probability, stats)`` Delayed per part."""
    token = uuid.uuid4().hex[:8]
    loc = grid.locator
    label_chunks: dict[int, Delayed] = {}
    prob_chunks: dict[int, Delayed | None] = {}
    out = []
    for b, (part, (rows, ids)) in enumerate(zip(parts, touched, strict=True)):
        groups = dask.delayed(_locate, pure=False)(
            part, loc, columns, rows, dask_key_name=f"predict-locate-{token}-{b}"
        )
        pieces = []
        for c in ids.tolist():
            if c not in label_chunks:
                index = tuple(int(i) for i in np.unravel_index(c, loc.nchunks))
                label_chunks[c] = grid.label_chunk(index)
                prob_chunks[c] = grid.probability_chunk(index)
            pieces.append(
                dask.delayed(_lookup, pure=False)(
                    groups[c],
                    label_chunks[c],
                    prob_chunks[c],
                    dask_key_name=f"predict-lookup-{token}-{b}-{c}",
                )
            )
        out.append(
            dask.delayed(_assemble, pure=False)(
                rows, grid.nclasses, pieces, dask_key_name=f"predict-assemble-{token}-{b}"
            )
        )
    return out


def _first_pass(
    blocks: Sequence[Any], loc: _Locator, columns: tuple[str, ...]
) -> list[tuple[int, np.ndarray]]:
    tasks = [dask.delayed(_touched, pure=False)(b, loc, columns) for b in blocks]
    return list(dask.compute(*tasks))


REPORT_KEYS = ("rows", "predicted", "no_cell", "unlabeled_cell")


def _report(stats: Sequence[np.ndarray]) -> dict[str, int]:
    total = np.sum(stats, axis=0) if len(stats) else np.zeros(4, dtype=np.int64)
    return {k: int(v) for k, v in zip(REPORT_KEYS, total, strict=True)}


def _stats_row(result: tuple | None) -> pd.DataFrame:
    stats = np.zeros(4, dtype=np.int64) if result is None else result[2]
    return pd.DataFrame(stats[None, :], columns=list(REPORT_KEYS))[: 0 if result is None else 1]


# --- public functions --------------------------------------------------------------


def predict(
    grid: Any,
    points: Any,
    *,
    columns: Sequence[str] | str | None = None,
    variable: str = "label",
    probabilities: bool = False,
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
        Also read each point's row of the ``probability`` variable.

    Returns
    -------
    PredictResult
        ``codes``, ``labels`` (class names), ``probability`` and ``report``,
        one row per input row in input order; points with no cell get -1 and
        are counted in ``report["no_cell"]``.

    Raises
    ------
    StoreError
        The grid lacks ``variable`` (run ``gridflow classify`` first), or
        ``probability`` when it is requested.
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
    ds = as_grid(grid)
    g = _Grid(ds, variable, probabilities)
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
    report = _report([r[2] for r in results])
    log.info(
        "predicted %s of %s points (%s with no cell, %s in unlabeled cells)",
        f"{report['predicted']:,}",
        f"{report['rows']:,}",
        f"{report['no_cell']:,}",
        f"{report['unlabeled_cell']:,}",
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
) -> dict[str, int]:
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
    grid, points, columns, variable
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
        The report: ``rows``, ``predicted``, ``no_cell``, ``unlabeled_cell``.

    Examples
    --------
    >>> predict_to_parquet("grid.zarr", "new_points.parquet", "predicted.parquet")  # doctest: +SKIP
    {'rows': 1000, 'predicted': 990, 'no_cell': 10, 'unlabeled_cell': 0}
    """
    out = os.path.abspath(os.fspath(out))
    check_output(out, overwrite=overwrite, inputs={"the grid": grid, "the points": points})
    ds = as_grid(grid)
    if probabilities is None:
        probabilities = "probability" in ds.data_vars
    g = _Grid(ds, variable, probabilities)
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
    meta = _attach(frame._meta, _assemble(0, g.nclasses, []), g.classes, new_columns)

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
            [dask.delayed(_stats_row, pure=False)(r) for r in results], meta=_stats_row(None)
        )
        _, stats = dask.compute(write, stats)
    report = _report(stats.to_numpy())
    log.info("wrote %s (%s)", out, report)
    return report


# --- output helpers ---------------------------------------------------------------


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
