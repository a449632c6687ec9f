"""The ``ds.gridflow`` accessor: gridflow's stages as methods of a grid Dataset.

Importing :mod:`gridflow` registers it. On a Dataset that views a store
(opened with :func:`gridflow.open_grid` or ``xr.open_zarr``, unmodified),
a stage runs on the store, as if given its path: the results are written
into it and the store is returned opened again, so calls chain::

    ds = gridflow.open_grid("grid.zarr")
    ds = ds.gridflow.classify(window=5).gridflow.cluster(window=5)

On any other Dataset (from :func:`gridflow.bin_points` without a store, or
one changed in memory) the stage runs in memory and returns the new
Dataset. Either way the results are those of the function itself.
"""

from __future__ import annotations

import os
from typing import Any

import xarray as xr

__all__ = ["GridflowAccessor"]


def _read_from(data: Any, source: str) -> bool:
    """Whether ``data`` is a dask array that reads a variable of the store
    unchanged (xarray names those ``open_dataset-...``)."""
    import dask.array as da

    if not isinstance(data, da.Array) or not data.name.startswith("open_dataset-"):
        return False
    return set(data.dask.layers) <= {data.name, f"original-{data.name}"}


def store_of(ds: xr.Dataset) -> str | None:
    """The store a Dataset views, or None.

    A Dataset views the store recorded in ``ds.encoding["source"]`` when
    that is a gridflow store, and each of its variables is one of the
    store's, read lazily and unchanged (the store may since have gained
    variables: a stage's results, which the Dataset would read).
    """
    from gridflow import store as store_mod

    source = ds.encoding.get("source")
    if not isinstance(source, (str, os.PathLike)) or not store_mod.is_gridflow_store(source):
        return None
    source = os.fspath(source)
    if not all(_read_from(v.data, source) for v in ds.data_vars.values()):
        return None
    try:
        current = store_mod.open_grid(source)
    except ValueError:  # damaged since it was opened: not a store to write
        return None
    for name, var in ds.data_vars.items():
        if name not in current.data_vars or current[name].shape != var.shape:
            return None
    return source


@xr.register_dataset_accessor("gridflow")
class GridflowAccessor:
    """gridflow's stages on a grid Dataset: ``ds.gridflow.classify(...)`` and friends.

    Each method takes the keyword arguments of the function it names
    (:func:`gridflow.classify`, :func:`gridflow.cluster`,
    :func:`gridflow.fractal`, :func:`gridflow.window_filter`,
    :func:`gridflow.predict`, :func:`gridflow.render.render`).

    Examples
    --------
    >>> import numpy as np, gridflow
    >>> rng = np.random.default_rng(0)
    >>> ds = gridflow.bin_points(rng.random((400, 2)), labels=rng.integers(0, 2, 400),
    ...                          bins=8, bounds=(0, 1))
    >>> ds.gridflow.store is None, ds.gridflow.spec.bins
    (True, (8, 8))
    >>> out = ds.gridflow.classify(window=1, iterations=2)
    >>> int(out["label"].min()) >= 0
    True
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def spec(self) -> Any:
        """The grid's :class:`~gridflow.GridSpec`."""
        from gridflow.store import grid_spec

        return grid_spec(self._ds)

    @property
    def store(self) -> str | None:
        """The path of the store this Dataset views, or None (see :func:`store_of`)."""
        return store_of(self._ds)

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> xr.Dataset:
        """``fn`` on the store (then the store opened again), or on the Dataset."""
        path = self.store
        if path is None:
            return fn(self._ds, *args, **kwargs)
        from gridflow.store import open_grid

        fn(path, *args, **kwargs)
        return open_grid(path)

    def classify(self, **kwargs: Any) -> xr.Dataset:
        """:func:`gridflow.classify` on this grid."""
        from gridflow.classify import classify

        return self._run(classify, **kwargs)

    def cluster(self, **kwargs: Any) -> xr.Dataset:
        """:func:`gridflow.cluster` on this grid."""
        from gridflow.cluster import cluster

        return self._run(cluster, **kwargs)

    def fractal(self, **kwargs: Any) -> xr.Dataset:
        """:func:`gridflow.fractal` on this grid."""
        from gridflow.fractal import fractal

        return self._run(fractal, **kwargs)

    def filter(self, expression: str, **kwargs: Any) -> xr.Dataset:
        """:func:`gridflow.window_filter` of ``expression`` on this grid."""
        from gridflow.filters import window_filter

        return self._run(window_filter, expression, **kwargs)

    def predict(self, points: Any, **kwargs: Any) -> Any:
        """:func:`gridflow.predict`: the labels of ``points`` read off this grid."""
        from gridflow.predict import predict

        return predict(self.store or self._ds, points, **kwargs)

    def render(
        self, var: str = "label", out: str | os.PathLike | None = None, **kwargs: Any
    ) -> Any:
        """The RGB image of ``var`` (:func:`gridflow.render.image`); with ``out``
        (a .png) or ``animation``, the files :func:`gridflow.render.render` writes."""
        from gridflow import render as render_mod

        grid = self.store or self._ds
        if out is None and kwargs.get("animation") is None:
            kwargs.pop("animation", None)
            return render_mod.image(grid, var, **kwargs)
        return render_mod.render(grid, var, out, **kwargs)
