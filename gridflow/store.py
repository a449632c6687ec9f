"""Zarr stores of gridflow grids: schema, provenance, atomic writes.

A store is one Zarr v3 group readable with ``xr.open_zarr`` holding the
variables of DESIGN.md §2 (``counts`` first, then what later stages add),
one bin-centre coordinate per dim and a ``class`` coordinate with the
original class names. Global attributes:

``gridflow_format``
    format version of the store (:data:`FORMAT_VERSION`);
``gridflow_version``
    the gridflow release that last wrote it;
``gridflow_grid``
    the :class:`~gridflow.grid.GridSpec` as a dict;
``gridflow_stages``
    per-stage parameters and reports (``{"bin": {...}, ...}``);
``history``
    one line per command that wrote the store (CF convention, newest last).

A new store is written into a temporary sibling directory and renamed into
place when complete, so a failed or interrupted run never leaves a store
that opens as valid.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from typing import Any

import numpy as np

from gridflow._staging import staged_directory
from gridflow.errors import ParameterError, StoreError
from gridflow.grid import GridSpec

__all__ = [
    "FORMAT_VERSION",
    "as_grid",
    "check_writable",
    "counts_dataset",
    "grid_spec",
    "history_line",
    "is_gridflow_store",
    "open_grid",
    "summary",
    "write_new_store",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: Variables each stage writes, in the order ``info`` lists them.
STAGE_VARIABLES = {
    "bin": ("counts",),
    "classify": ("label", "confidence", "density", "probability"),
    "cluster": ("level", "cluster"),
    "fractal": ("fractal",),
}


def _version() -> str:
    from gridflow import __version__

    return __version__


def history_line(command: str, params: dict[str, Any]) -> str:
    """``<UTC time> gridflow <version> <command> <params as JSON>``."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{now} gridflow {_version()} {command} {json.dumps(params, default=str)}"


def counts_dataset(counts: Any, spec: GridSpec, classes: tuple, report: dict[str, Any]) -> Any:
    """Wrap a ``(class, *dims)`` count array in the store schema."""
    import xarray as xr

    coords: dict[str, Any] = {}
    for i, dim in enumerate(spec.dims):
        lo, hi = spec.bounds[i]
        coords[dim] = xr.Variable(
            dim,
            spec.centers(i),
            attrs={
                "bounds": [lo, hi],
                "bins": spec.bins[i],
                "periodic": int(spec.periodic[i]),
                "long_name": dim,
            },
        )
    coords["class"] = xr.Variable("class", _class_coordinate(classes))
    counts_var = xr.Variable(
        ("class", *spec.dims),
        counts,
        attrs={"long_name": "points per class per cell"},
    )
    # The grid itself is in gridflow_grid; the stage records what is its own.
    params = {"chunks": [c[0] for c in counts.chunks[1:]], "report": report}
    attrs = {
        "gridflow_format": FORMAT_VERSION,
        "gridflow_version": _version(),
        "gridflow_grid": spec.to_dict(),
        "gridflow_stages": {"bin": params},
        "history": history_line("bin", {"grid": spec.to_dict(), "rows": report.get("rows")}),
    }
    return xr.Dataset({"counts": counts_var}, coords=coords, attrs=attrs)


def _class_coordinate(classes: tuple) -> np.ndarray:
    values = list(classes)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values], dtype=object)


def is_gridflow_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a Zarr group carrying gridflow's format attribute."""
    meta = os.path.join(os.fspath(path), "zarr.json")
    try:
        with open(meta) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return "gridflow_format" in (doc.get("attributes") or {})


def check_writable(path: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse to clobber an existing store unless asked, and never a foreign one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreError(f"store: the directory {parent} does not exist; create it first")
        return
    if not overwrite:
        raise StoreError(f"store: {path} already exists; pass --overwrite to replace it")
    if not is_gridflow_store(path):
        raise StoreError(
            f"store: refusing to replace {path}: it is not a gridflow store; choose another path"
        )


def write_new_store(ds: Any, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``ds`` as a new store at ``path``, all or nothing.

    The dataset is written to a temporary sibling directory (computing any
    dask arrays chunk by chunk on the active scheduler) and renamed into
    place only when complete.
    """
    path = os.path.abspath(os.fspath(path))
    check_writable(path, overwrite=overwrite)
    with staged_directory(path) as staging:
        ds.to_zarr(staging, mode="w-", zarr_format=3, consolidated=False)
    log.info("wrote %s", path)


def open_grid(path: str | os.PathLike) -> Any:
    """Open a gridflow store as an xarray Dataset of dask arrays.

    Raises
    ------
    StoreError
        When ``path`` is missing, is not a gridflow store, or was written by
        a newer format version.

    Examples
    --------
    >>> ds = open_grid("grid.zarr")  # doctest: +SKIP
    >>> ds["counts"].dims  # doctest: +SKIP
    ('class', 'x', 'y')
    """
    import xarray as xr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreError(f"store: {path} does not exist; create it with `gridflow bin`")
    if not is_gridflow_store(path):
        raise StoreError(
            f"store: {path} is not a gridflow store (no gridflow_format attribute); "
            "it was written by another program; create one with `gridflow bin`"
        )
    ds = xr.open_zarr(path, consolidated=False)
    fmt = ds.attrs.get("gridflow_format")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise StoreError(
            f"store: {path} has format version {fmt}, newer than this gridflow reads "
            f"({FORMAT_VERSION}); upgrade gridflow"
        )
    if "counts" not in ds or "gridflow_grid" not in ds.attrs:
        raise StoreError(f"store: {path} lacks counts or its grid; recreate it with `gridflow bin`")
    return ds


def as_grid(grid: Any) -> Any:
    """A store path opened with :func:`open_grid`, or a Dataset as it is."""
    import xarray as xr

    if isinstance(grid, (str, os.PathLike)):
        return open_grid(grid)
    if isinstance(grid, xr.Dataset):
        return grid
    raise ParameterError(
        f"grid: expected a store path or an xarray Dataset from open_grid, got {type(grid).__name__}"
    )


def grid_spec(ds: Any) -> GridSpec:
    """The GridSpec recorded in a store's attributes."""
    try:
        return GridSpec.from_dict(ds.attrs["gridflow_grid"])
    except KeyError:
        raise StoreError("store: no gridflow_grid attribute; not a gridflow dataset") from None


def summary(ds: Any) -> str:
    """A human-readable multi-line summary of a store (``gridflow info``)."""
    spec = grid_spec(ds)
    stages = ds.attrs.get("gridflow_stages", {})
    lines = [
        f"gridflow store (format {ds.attrs.get('gridflow_format')}, "
        f"written by gridflow {ds.attrs.get('gridflow_version')})"
    ]
    lines.append("grid:")
    for i, dim in enumerate(spec.dims):
        lo, hi = spec.bounds[i]
        chunk = ds["counts"].chunks[i + 1][0] if ds["counts"].chunks else spec.bins[i]
        lines.append(
            f"  {dim:<10} {spec.bins[i]:>8} bins  [{lo:g}, {hi:g}]"
            f"{'  periodic' if spec.periodic[i] else ''}  chunk {chunk}"
        )
    counts = ds["counts"]
    lines.append(f"counts: {counts.dtype}, {counts.nbytes / 2**20:.1f} MiB uncompressed")
    report = stages.get("bin", {}).get("report", {})
    per_class = report.get("per_class") or {}
    lines.append(f"classes ({ds.sizes['class']}):")
    for name in ds["class"].values.tolist():
        n = per_class.get(str(name))
        lines.append(f"  {name!s:<16} {n:>14,} points" if n is not None else f"  {name!s}")
    if report:
        lines.append(
            f"rows: {report['rows']:,} read, {report['binned']:,} binned, "
            f"{report['rows'] - report['binned']:,} dropped "
            f"(non-finite {report['nonfinite']:,}, out of range {report['out_of_range']:,}, "
            f"bad label {report['bad_label']:,})"
        )
    present = [s for s, names in STAGE_VARIABLES.items() if any(v in ds for v in names)]
    lines.append("stages: " + ", ".join(present))
    history = ds.attrs.get("history", "")
    if history:
        lines.append("history:")
        lines.extend(f"  {h}" for h in str(history).splitlines())
    return "\n".join(lines)
