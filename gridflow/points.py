"""Point sources: read labeled points from files and in-memory containers.

Binning and prediction accept the same sources; this module turns any of
them into a :class:`PointSource`, a list of lazily computed blocks of
coordinate columns and labels, without copying in-memory data:

- a path to Parquet (file, directory or glob), CSV (file or glob), a Zarr
  group of 1-D arrays (one per column; without ``columns`` the coordinate
  columns go in name order, since a group does not order its arrays),
  ``.npy`` (structured array) or ``.npz`` (one array per column);
- a pandas or dask DataFrame;
- a NumPy array of shape ``(n, d)`` with ``labels=`` given separately, or a
  mapping of column name to 1-D array.

Parquet written by :func:`gridflow.synth.write_points` carries its coordinate
columns and suggested grid geometry in its metadata; :attr:`PointSource.hints`
exposes them.

Reading happens in Dask tasks, later; :func:`reading` turns what goes wrong
there (a damaged Parquet page, a CSV that does not parse, a column whose type
changes) into one :class:`~gridflow.errors.InputDataError` naming the file.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import pandas as pd

from gridflow.errors import GridflowError, InputDataError, storage_error

__all__ = ["Block", "PointSource", "check_labels", "open_points", "read_path", "reading"]

log = logging.getLogger(__name__)

#: Rows per block when gridflow splits in-memory arrays itself.
BLOCK_ROWS = 4_000_000


class Block(NamedTuple):
    """One partition of points: coordinate columns and labels (or None)."""

    columns: tuple[np.ndarray, ...]
    labels: np.ndarray | None


@dataclass
class PointSource:
    """Points as lazily computed blocks, with the names of their columns.

    Build one with :func:`open_points`. ``label`` is None when the source has
    no label column (prediction inputs).
    """

    columns: tuple[str, ...]
    label: str | None
    blocks: list[Any]
    label_kind: str | None = None
    categories: tuple | None = None
    hints: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: The files read, and their format ("parquet", "csv", "zarr", ...), when from a path.
    files: tuple[str, ...] = ()
    format: str = ""

    @property
    def ndim(self) -> int:
        return len(self.columns)

    @property
    def npartitions(self) -> int:
        return len(self.blocks)


def open_points(
    source: Any,
    *,
    columns: Sequence[str] | str | None = None,
    label: str | None = "label",
    labels: Any = None,
    require_label: bool = True,
) -> PointSource:
    """Open a point source for binning or prediction.

    Parameters
    ----------
    source : path, DataFrame, ndarray or mapping
        Where the points are (see the module docstring for the formats).
    columns : sequence of str or str, optional
        Coordinate columns, in grid dim order. Default: the columns recorded
        by the synthetic generator, else every numeric column except the
        label column (and a ``bayes`` column).
    label : str or None, default "label"
        Name of the label column. None for unlabeled points.
    labels : array-like, optional
        Labels given separately from a NumPy ``source``.
    require_label : bool, default True
        Raise if the label column is missing.

    Examples
    --------
    >>> src = open_points(np.zeros((10, 2)), labels=np.zeros(10, int))
    >>> src.columns, src.npartitions
    (('x0', 'x1'), 1)
    """
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.fspath(source), columns, label, labels, require_label)
    if isinstance(source, (np.ndarray, da.Array)) and source.dtype.names is None:
        return _from_array(source, columns, labels, label, require_label)
    if isinstance(source, np.ndarray):  # structured
        source = {n: source[n] for n in source.dtype.names}
    if isinstance(source, Mapping):
        return _from_mapping(source, columns, label, labels, require_label, "arrays")
    if isinstance(source, pd.DataFrame):
        return _from_pandas(source, columns, label, require_label)
    if _is_dask_frame(source):
        return _from_frame(source, columns, label, require_label, "dask DataFrame", {})
    raise InputDataError(
        f"points: expected a path, DataFrame, NumPy array or mapping of columns, "
        f"got {type(source).__name__}"
    )


def _is_dask_frame(obj: Any) -> bool:
    return (
        type(obj).__module__.startswith("dask")
        and hasattr(obj, "to_delayed")
        and hasattr(obj, "columns")
    )


# --- paths ----------------------------------------------------------------


def _open_path(
    path: str,
    columns: Sequence[str] | None,
    label: str | None,
    labels: Any,
    require_label: bool,
) -> PointSource:
    data, hints = read_path(path)
    if isinstance(data, np.ndarray):
        src = _from_array(data, columns, labels, label, require_label)
    elif isinstance(data, Mapping):
        src = _from_mapping(data, columns, label, labels, require_label, path)
    else:
        src = _from_frame(data, columns, label, require_label, path, hints)
    src.files, src.format = _files_of(path)
    return src


def read_path(path: str) -> tuple[Any, dict[str, Any]]:
    """Every column of a point file, and the hints recorded in it.

    Returns a dask DataFrame (Parquet, CSV), a mapping of column name to 1-D
    array (Zarr group, ``.npz``, structured ``.npy``) or an ``(n, d)`` array
    (plain ``.npy``), with the synthetic generator's metadata (or ``{}``).
    """
    import dask.dataframe as dd

    files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not files or not all(os.path.exists(f) for f in files):
        raise InputDataError(f"points: {path} does not exist; give an existing file or directory")
    first = files[0].rstrip("/")
    text = _text_files(first) if len(files) == 1 and os.path.isdir(first) else []
    if text:  # a folder of CSV files
        files, first = text, text[0]
    lower = first.lower()
    if lower.endswith(".zarr") or any(
        os.path.exists(os.path.join(first, m)) for m in ("zarr.json", ".zgroup")
    ):
        return _zarr_columns(first), {}
    if lower.endswith(".npz"):
        with np.load(first) as z:
            return {k: _npz_array(z, k, first) for k in z.files}, {}
    if lower.endswith(".npy"):
        arr = np.load(first, mmap_mode="r")
        if arr.dtype.names is None:
            return arr, {}
        return {n: arr[n] for n in arr.dtype.names}, {}
    if _empty_file(files):
        raise InputDataError(f"points: {path} is empty; it holds no rows")
    if lower.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        sep = "\t" if lower.endswith(".tsv") else ","
        dtype = _csv_dtypes(files, sep) if len(files) > 1 else None
        try:
            frame = dd.read_csv(files, sep=sep, blocksize="64MB", assume_missing=False, dtype=dtype)
        except pd.errors.EmptyDataError:
            raise InputDataError(f"points: {path} is empty; it holds no rows") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputDataError(
                f"points: cannot parse {first} as CSV ({_first_line(exc)}); fix the file"
            ) from None
        return frame, {}
    if lower.endswith((".parquet", ".pq")) or os.path.isdir(first):
        from gridflow.synth import read_synth_metadata

        hints = read_synth_metadata(first) or {}
        try:
            return dd.read_parquet(files if len(files) > 1 else first), hints
        except Exception as exc:  # pyarrow raises many types for unreadable files
            raise InputDataError(f"points: cannot read {path} as Parquet ({exc})") from None
    raise InputDataError(
        f"points: cannot tell the format of {path}; use .parquet, .csv, .zarr, .npy or .npz"
    )


#: Rows of each CSV file read up front to compare the files' column types.
_SAMPLE_ROWS = 1000
_TEXT = (".csv", ".csv.gz", ".txt", ".tsv")


def _text_files(folder: str) -> list[str]:
    """The CSV files of a folder holding no Parquet file (else none)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    if any(n.lower().endswith((".parquet", ".pq")) for n in names):
        return []
    return [
        os.path.join(folder, n)
        for n in names
        if n.lower().endswith(_TEXT) and not n.startswith((".", "_"))
    ]


def _files_of(path: str) -> tuple[tuple[str, ...], str]:
    """The files a point path stands for (a glob, a folder), and their format."""
    files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
    first = files[0].rstrip("/") if files else path
    lower = first.lower()
    if lower.endswith(".zarr") or os.path.exists(os.path.join(first, "zarr.json")):
        return (first,), "zarr"
    if os.path.isdir(first) and len(files) == 1:
        text = _text_files(first)
        if text:
            return tuple(text), "csv"
        found = []
        for root, dirs, names in os.walk(first):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found += [os.path.join(root, n) for n in sorted(names) if not n.startswith((".", "_"))]
        return tuple(found), "parquet"
    if lower.endswith(_TEXT):
        return tuple(files), "csv"
    if lower.endswith((".parquet", ".pq")):
        return tuple(files), "parquet"
    return tuple(files), lower.rsplit(".", 1)[-1]


def _npz_array(z: Any, key: str, path: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError:  # an object array: NumPy loads those only by unpickling
        raise InputDataError(
            f"points: array {key!r} of {path} holds Python objects (dtype object), which "
            "gridflow does not unpickle; save it as numbers or strings "
            "(e.g. np.savez(..., label=labels.astype(str)))"
        ) from None


def _kind(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return "integers"
    if pd.api.types.is_float_dtype(dtype):
        return "floats"
    return "strings"


def _csv_dtypes(files: list[str], sep: str) -> dict[str, str] | None:
    """Column types the CSV files agree on, read from each file's first rows.

    Integers in one file and floats in another read as floats; numbers in
    one and strings in another, or files with other columns, are refused
    naming both files (dask would fail on them later, inside a task).
    """
    first: dict[str, tuple[str, str]] = {}  # column -> (kind, file)
    widen: dict[str, str] = {}
    columns0: list[str] | None = None
    for f in files:
        try:
            sample = pd.read_csv(f, sep=sep, nrows=_SAMPLE_ROWS)
        except pd.errors.EmptyDataError:
            continue
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputDataError(
                f"points: cannot parse {f} as CSV ({_first_line(exc)}); fix the file or leave "
                "it out of the input"
            ) from None
        columns = [str(c) for c in sample.columns]
        if columns0 is None:
            columns0 = columns
        elif columns != columns0:
            raise InputDataError(
                f"points: {f} has the columns {', '.join(columns)} but {files[0]} has "
                f"{', '.join(columns0)}; give every file the same columns"
            )
        for c in columns:
            kind = _kind(sample[c].dtype)
            if len(sample[c].dropna()) == 0:
                continue  # no value seen yet: any type fits
            if c not in first:
                first[c] = (kind, f)
                continue
            seen, where = first[c]
            if seen != kind and "strings" in (seen, kind):
                raise InputDataError(
                    f"points: column {c!r} holds {seen} in {where} but {kind} in {f}; use one "
                    f"type of {c} in every file (all numbers or all strings)"
                )
            if seen != kind:
                widen[c] = "float64"
    return widen or None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = "".join(ch for ch in lines[0] if ch.isprintable())  # no control bytes on a terminal
    return text.strip().rstrip(".:").strip() or type(exc).__name__


def _empty_file(files: list[str]) -> bool:
    """True when every file is empty, or a small text file with a header only."""

    def empty(f: str) -> bool:
        if not os.path.isfile(f):
            return False
        size = os.path.getsize(f)
        if size == 0:
            return True
        if size > 2**16 or not f.lower().endswith((".csv", ".tsv", ".txt")):
            return False
        with open(f, "rb") as fh:
            return sum(1 for line in fh if line.strip()) <= 1

    return all(empty(f) for f in files)


def _zarr_columns(path: str) -> dict[str, Any]:
    import xarray as xr

    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:
        raise InputDataError(
            f"points: cannot read {path} as a Zarr group of columns ({exc})"
        ) from None
    # A Zarr group does not order its arrays: default columns go by name.
    return {name: ds[name].data for name in sorted(map(str, ds.variables)) if ds[name].ndim == 1}


# --- dataframes -----------------------------------------------------------


def _from_frame(frame, columns, label, require_label, description, hints) -> PointSource:
    meta = frame._meta
    available = [str(c) for c in meta.columns]
    label = _present_label(
        label,
        available,
        require_label,
        f"label column {label!r} not found in {description}; available columns: "
        f"{', '.join(available)}; pass --label NAME",
    )
    columns = _choose_columns(columns, available, label, hints, lambda c: meta[c].dtype)
    frame = frame[[*columns, label] if label is not None else list(columns)]
    kind, categories = _label_kind(meta[label].dtype, label, description) if label else (None, None)
    if kind == "category" and categories is None:
        # Categories differ between partitions: read the values, not the codes.
        kind = "str"
    blocks = [
        dask.delayed(_frame_block)(part, tuple(columns), label, kind == "category")
        for part in frame.to_delayed()
    ]
    return PointSource(tuple(columns), label, blocks, kind, categories, hints, str(description))


def _present_label(
    label: str | None, available: list[str], require_label: bool, missing: str
) -> str | None:
    """``label`` if it is among the ``available`` columns, else None, or the
    error ``points: {missing}`` when the label is required."""
    if label is None or label in available:
        return label
    if require_label:
        raise InputDataError(f"points: {missing}")
    return None


def _frame_block(
    part: pd.DataFrame, columns: tuple[str, ...], label: str | None, codes: bool
) -> Block:
    cols = tuple(_coord_array(part[c].to_numpy(), c) for c in columns)
    labels = None if label is None else _label_array(part[label], codes)
    return Block(cols, labels)


def _coord_array(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind not in "fiub":
        # Pandas nullable floats arrive as objects when they hold NA.
        try:
            return np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputDataError(
                f"points: column {name!r} is not numeric (found {a[:1].tolist()}); "
                "choose numeric coordinate columns with --columns"
            ) from None
    return a


def check_labels(labels: np.ndarray, label: str | None = None) -> None:
    """Refuse labels that are not one integer or string per row (lists, dicts, arrays)."""
    if labels.dtype != object or pd.api.types.infer_dtype(labels, skipna=True) != "mixed":
        return
    scalar = (str, bytes, int, float, bool, np.generic)
    bad = next((v for v in labels if v is not None and not isinstance(v, scalar)), None)
    if bad is None:
        return
    name = f" {label!r}" if label else ""
    example = repr(bad)
    example = example if len(example) <= 40 else example[:37] + "..."
    raise InputDataError(
        f"points: the label column{name} holds {type(bad).__name__} values (e.g. {example}); "
        "labels must be one integer or string per row"
    )


def _label_array(s: pd.Series, codes: bool) -> np.ndarray:
    """Labels of one partition: category codes when the categories are the
    same in every partition, else the values (NaN/None for missing)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        if codes:
            return s.cat.codes.to_numpy()
        return s.astype(object).to_numpy()
    if s.dtype.kind in "iubf":
        return s.to_numpy()
    return s.to_numpy(dtype=object, na_value=None)


def _choose_columns(columns, available, label, hints, dtype_of) -> list[str]:
    given = columns is not None and len(columns) > 0
    if not given:
        if hints.get("columns"):
            columns = list(hints["columns"])
        else:
            excluded = {label, "bayes"}
            columns = [c for c in available if c not in excluded and _is_numeric_dtype(dtype_of(c))]
            if not columns:
                raise InputDataError(
                    f"points: no numeric coordinate columns found among {available}; "
                    "pass --columns x,y"
                )
    columns = [str(c) for c in columns]
    missing = [c for c in columns if c not in available]
    if missing:
        source = " (given with --columns)" if given else ""
        raise InputDataError(
            f"points: column {missing[0]!r} not found{source}; available columns: "
            f"{', '.join(available)}"
        )
    if label is not None and label in columns:
        raise InputDataError(
            f"points: {label!r} is the label column (--label); it cannot also be a coordinate "
            "(--columns)"
        )
    if len(set(columns)) != len(columns):
        raise InputDataError(f"points: columns must be distinct, got {columns}")
    for c in columns:
        if not _is_numeric_dtype(dtype_of(c)):
            raise InputDataError(
                f"points: column {c!r} is not numeric (dtype {dtype_of(c)}); "
                "choose numeric coordinate columns with --columns"
            )
    return columns


def _is_numeric_dtype(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _label_kind(dtype: Any, label: str, description: str) -> tuple[str, tuple | None]:
    """'int', 'float' (integral floats, NaN = missing), 'str' or 'category'."""
    if isinstance(dtype, pd.CategoricalDtype):
        from dask.dataframe.utils import UNKNOWN_CATEGORIES

        cats = dtype.categories
        # dask's meta of a Parquet categorical holds a placeholder, not the categories.
        if cats is None or len(cats) == 0 or UNKNOWN_CATEGORIES in cats:
            return "category", None
        return "category", tuple(cats.tolist())
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        return "int", None
    if pd.api.types.is_float_dtype(dtype):
        return "float", None
    if pd.api.types.is_string_dtype(dtype) or getattr(dtype, "kind", "") == "O":
        return "str", None
    raise InputDataError(
        f"points: label column {label!r} in {description} has dtype {dtype}; "
        "labels must be integers or strings"
    )


def _from_pandas(df: pd.DataFrame, columns, label, require_label) -> PointSource:
    """Slice the columns' NumPy arrays directly (no copy, no dask DataFrame)."""
    arrays: dict[str, Any] = {}
    categories = None
    for name in df.columns:
        s = df[name]
        if name == label and isinstance(s.dtype, pd.CategoricalDtype):
            categories = tuple(s.cat.categories.tolist())
            arrays[str(name)] = s.cat.codes.to_numpy()
        elif isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufb":
            arrays[str(name)] = s.to_numpy()
        elif pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(
            s.dtype, pd.CategoricalDtype
        ):  # nullable extension dtypes: NA becomes NaN
            arrays[str(name)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            arrays[str(name)] = s.to_numpy(dtype=object, na_value=None)
    src = _from_mapping(arrays, columns, label, None, require_label, "pandas DataFrame")
    if categories is not None and src.label == label:
        src.label_kind, src.categories = "category", categories
    return src


# --- arrays ---------------------------------------------------------------


def _from_array(arr, columns, labels, label, require_label) -> PointSource:
    """An ``(n, d)`` NumPy or dask array: one column per dim, named x0.. by default."""
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputDataError(f"points: expected an array of shape (n, d), got shape {arr.shape}")
    names = list(columns) if columns else [f"x{i}" for i in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise InputDataError(
            f"points: {len(names)} column names for an array with {arr.shape[1]} columns"
        )
    return _from_mapping(
        {n: arr[:, i] for i, n in enumerate(names)}, names, label, labels, require_label, "array"
    )


def _from_mapping(arrays, columns, label, labels, require_label, description) -> PointSource:
    arrays = dict(arrays)
    if labels is not None:
        arrays[label or "label"] = labels
        label = label or "label"
    available = list(arrays)
    label = _present_label(
        label,
        available,
        require_label,
        f"no labels: {description} has no column {label!r} "
        f"(available: {', '.join(available)}); pass labels= or --label NAME",
    )
    columns = _choose_columns(
        columns, available, label, {}, lambda c: np.asarray(arrays[c][:0]).dtype
    )
    n = len(arrays[columns[0]])
    for name in [*columns, *([label] if label else [])]:
        if len(arrays[name]) != n:
            raise InputDataError(
                f"points: column {name!r} has {len(arrays[name])} rows, expected {n} like "
                f"{columns[0]!r}"
            )
    if label is not None:
        lab = arrays[label]
        dtype = lab.dtype if hasattr(lab, "dtype") else np.asarray(lab).dtype
        if dtype.kind in "US":
            dtype = np.dtype(object)
        kind, categories = _label_kind(dtype, label, description)
    else:
        kind, categories = None, None
    blocks = _array_blocks([arrays[c] for c in columns], arrays[label] if label else None, n)
    return PointSource(tuple(columns), label, blocks, kind, categories, {}, str(description))


def _array_blocks(cols: list[Any], labels: Any, n: int) -> list[Any]:
    if any(isinstance(c, da.Array) for c in [*cols, labels]):
        cols = [da.asarray(c) for c in cols]
        chunks = cols[0].chunks[0]
        cols = [c.rechunk((chunks,)) for c in cols]
        parts = [c.to_delayed().ravel() for c in cols]
        lab_parts = (
            da.asarray(labels).rechunk((chunks,)).to_delayed().ravel()
            if labels is not None
            else [None] * len(chunks)
        )
        return [
            dask.delayed(_make_block)(tuple(p[i] for p in parts), lab_parts[i])
            for i in range(len(chunks))
        ]
    cols = [np.asarray(c) for c in cols]
    labels = None if labels is None else np.asarray(labels)
    if labels is not None and labels.dtype.kind in "US":
        labels = labels.astype(object)
    starts = range(0, max(n, 1), BLOCK_ROWS)
    return [
        dask.delayed(
            Block(
                tuple(c[s : s + BLOCK_ROWS] for c in cols),
                None if labels is None else labels[s : s + BLOCK_ROWS],
            ),
            pure=False,
            traverse=False,
        )
        for s in starts
    ]


def _make_block(cols: tuple[np.ndarray, ...], labels: np.ndarray | None) -> Block:
    return Block(tuple(cols), labels)


# --- reading failures, as one line -----------------------------------------------------

_MISMATCH = re.compile(r"^\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|$", re.M)
_DECODE = re.compile(r"decompress|decod|codec|corrupt|checksum|crc|invalid input", re.I)


@contextlib.contextmanager
def reading(src: PointSource) -> Iterator[None]:
    """Computations of the ``with`` block read ``src``: their read failures become one line.

    A damaged Parquet page, a CSV that does not parse, a column whose type
    changes part way (dask's "Mismatched dtypes"), a damaged Zarr chunk, a
    file that cannot be read: an :class:`~gridflow.errors.InputDataError`
    naming the file (found by reading each file again when the input has
    several), or a :class:`~gridflow.errors.StorageError`. Anything else
    is raised as it is.

    Examples
    --------
    >>> src = open_points(np.zeros((4, 2)), labels=np.zeros(4, int))
    >>> with reading(src):
    ...     _ = dask.compute(*src.blocks)
    """
    try:
        yield
    except GridflowError:
        raise
    except Exception as exc:
        error = read_error(exc, src)
        if error is None:
            raise
        raise error from exc


def read_error(exc: BaseException, src: PointSource) -> GridflowError | None:
    """The one-line error for a failure while reading ``src``, or None if it is not one."""
    disk = storage_error(exc)
    if disk is not None:
        return disk
    text = str(exc)
    where = src.description or "the points"
    if isinstance(exc, ValueError) and "Mismatched dtypes" in text:
        rows = [m.groups() for m in _MISMATCH.finditer(text) if m.group(1) != "Column"]
        if rows:
            column, found, expected = rows[0]
            return InputDataError(
                f"points: column {column!r} of {where} holds {_kind(found)} ({found}) where its "
                f"first rows hold {_kind(expected)} ({expected}); give the column one type in "
                "every row and file"
            )
        return InputDataError(
            f"points: the column types of {where} change part way; give each column one type"
        )
    if not _is_read_failure(exc):
        return None
    reason = _first_line(exc)
    if src.format == "zarr":
        return InputDataError(
            f"points: cannot read {where}: a chunk is damaged ({reason}); write the store again"
        )
    path = where
    if len(src.files) > 1:
        found = _damaged_file(src)
        if found is not None:
            path, reason = found
    elif src.files:
        path = src.files[0]
    if src.format == "csv":
        return InputDataError(
            f"points: cannot parse {path} as CSV ({reason}); fix the file or leave it out "
            "of the input"
        )
    return InputDataError(
        f"points: cannot read {path} as Parquet ({reason}); the file is damaged or "
        "truncated: write it again, or leave it out of the input"
    )


def _is_read_failure(exc: BaseException) -> bool:
    try:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, (pd.errors.ParserError, UnicodeDecodeError, EOFError)):
        return True
    if isinstance(exc, OSError) and exc.errno is None:  # pyarrow's IOError status
        return True
    return isinstance(exc, (RuntimeError, ValueError)) and bool(_DECODE.search(str(exc)))


def _probe(path: str, fmt: str, columns: tuple[str, ...]) -> str | None:
    """Why one file of a source cannot be read, or None."""
    try:
        if fmt == "csv":
            sep = "\t" if path.lower().endswith(".tsv") else ","
            pd.read_csv(path, sep=sep)
        else:
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            names = set(f.schema_arrow.names)
            f.read(columns=[c for c in columns if c in names])
    except Exception as exc:
        return _first_line(exc)
    return None


def _damaged_file(src: PointSource) -> tuple[str, str] | None:
    """The first file of ``src`` that does not read, and why (one more pass, on failure only)."""
    wanted = tuple(c for c in (*src.columns, src.label) if c)
    probes = [dask.delayed(_probe)(f, src.format, wanted) for f in src.files]
    try:
        reasons = dask.compute(*probes)
    except Exception:  # pragma: no cover - the probe itself failed: name the source
        return None
    for f, reason in zip(src.files, reasons, strict=True):
        if reason is not None:
            return f, reason
    return None
