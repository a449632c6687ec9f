"""Comparing two gridflow stores bit for bit."""

from __future__ import annotations

import numpy as np
import xarray as xr

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
