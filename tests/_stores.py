"""Test helpers for what gridflow reads and writes: point sources in every
format, and comparing two gridflow stores bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr

#: The point sources :func:`point_source` makes: files first, then in memory.
POINT_SOURCES = ("parquet", "csv", "csv-glob", "zarr", "npz", "npy", "pandas", "dask")


def point_source(
    kind: str,
    df: pd.DataFrame,
    directory: Path,
    *,
    stem: str = "p",
    partitions: int = 3,
    dask_partitions: int = 4,
    zarr_chunk: int = 700,
) -> Any:
    """The columns of ``df`` as a point source of ``kind`` (one of POINT_SOURCES).

    Files go in ``directory`` (the path is returned as a str): Parquet in
    ``partitions`` files, CSV, CSV files of 1000 rows (a glob), a Zarr group
    of 1-D arrays in chunks of ``zarr_chunk`` rows, ``.npz``, a structured
    ``.npy``. In memory: the pandas frame, or a dask one of ``dask_partitions``.
    """
    if kind == "parquet":
        path = directory / f"{stem}.parquet"
        dd.from_pandas(df, npartitions=partitions).to_parquet(path, write_index=False)
        return str(path)
    if kind == "csv":
        path = directory / f"{stem}.csv"
        df.to_csv(path, index=False)
        return str(path)
    if kind == "csv-glob":
        for i, start in enumerate(range(0, len(df), 1000)):
            df.iloc[start : start + 1000].to_csv(directory / f"part{i}.csv", index=False)
        return str(directory / "part*.csv")
    if kind == "zarr":
        path = directory / f"{stem}.zarr"
        xr.Dataset({c: ("row", df[c].to_numpy()) for c in df}).chunk({"row": zarr_chunk}).to_zarr(
            path, zarr_format=3, consolidated=False
        )
        return str(path)
    if kind == "npz":
        path = directory / f"{stem}.npz"
        np.savez(path, **{c: df[c].to_numpy() for c in df})
        return str(path)
    if kind == "npy":
        path = directory / f"{stem}.npy"
        np.save(path, df.to_records(index=False))
        return str(path)
    if kind == "pandas":
        return df
    if kind == "dask":
        return dd.from_pandas(df, npartitions=dask_partitions)
    raise AssertionError(kind)


#: Attributes that say when and where a store was made, not what it holds.
PROVENANCE = ("history",)


def assert_same_store(a, b, *, ignore_scheduler: bool = True, ignore_rounds: bool = False) -> None:
    """Every variable equal bit for bit (values, dtype, chunks) and equal attributes.

    ``ignore_scheduler``: the pipeline's recorded scheduler may differ;
    ``ignore_rounds``: so may the log of which attempt computed which round.
    """
    A = xr.open_zarr(a, consolidated=False)
    B = xr.open_zarr(b, consolidated=False)
    assert sorted(A.variables) == sorted(B.variables)
    for name in A.variables:
        x, y = A[name].values, B[name].values
        assert x.dtype == y.dtype, name
        assert x.tobytes() == y.tobytes() if x.dtype != object else np.array_equal(x, y), name
        assert A[name].encoding.get("chunks") == B[name].encoding.get("chunks"), name
    attrs_a = {k: v for k, v in A.attrs.items() if k not in PROVENANCE}
    attrs_b = {k: v for k, v in B.attrs.items() if k not in PROVENANCE}
    for attrs in (attrs_a, attrs_b):
        if ignore_scheduler and "gridflow_pipeline" in attrs:
            attrs["gridflow_pipeline"] = {
                k: v for k, v in attrs["gridflow_pipeline"].items() if k != "scheduler"
            } | {"config": _no_scheduler(attrs["gridflow_pipeline"]["config"])}
        if ignore_rounds:
            for stage in attrs.get("gridflow_stages", {}).values():
                stage.pop("rounds", None)
    assert attrs_a == attrs_b


def _no_scheduler(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "scheduler"}
