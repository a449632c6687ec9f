"""Sparse grids: dask arrays of pydata-sparse ``COO`` chunks (docs/design.md §3.5).

A sparse grid is the same Dataset as a dense one whose variables hold only
the cells that exist. These helpers are what every stage shares: telling the
layouts apart, row-major linear keys, and small conversions. ``sparse`` is
imported only when a sparse grid is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gridflow.backend import ops

__all__ = [
    "MAX_SPLIT_DIMS",
    "coo",
    "densify",
    "index_dtype",
    "is_sparse",
    "linear_keys",
    "unravel_keys",
]

#: Spatial dims a sparse grid is chunked along (the others are whole): a
#: halo then touches at most 3**3 - 1 neighbour blocks whatever the dimension.
MAX_SPLIT_DIMS = 3


def _data(x: Any) -> Any:
    """The dask (or in-memory) array behind an xarray object, or ``x``."""
    import xarray as xr

    if isinstance(x, xr.DataArray):
        x = x.variable
    return x.data if isinstance(x, xr.Variable) else x


def is_sparse(x: Any) -> bool:
    """True when ``x`` (a dask array, xarray Variable/DataArray or chunk) has COO chunks."""
    try:
        return ops(_data(x)).name == "sparse"
    except TypeError:
        return False


def index_dtype(shape: Sequence[int]) -> np.dtype:
    """The smallest unsigned integer that holds every coordinate of ``shape``.

    A chunk's coordinates are most of its memory: 8 bytes a dim and entry as
    int64, 1 as uint8 (a 6-D chunk of 24-cell sides: 48 bytes an entry
    against 6). Arithmetic on them casts to int64 first.
    """
    return np.min_scalar_type(max([int(n) - 1 for n in shape] + [0]))


def coo(
    coords: np.ndarray,
    data: np.ndarray,
    shape: Sequence[int],
    fill_value: Any = 0,
    sorted: bool = True,
) -> Any:
    """A ``sparse.COO`` from distinct ``(ndim, n)`` coordinates (in row-major order
    unless ``sorted=False``), held as :func:`index_dtype`."""
    import sparse

    shape = tuple(int(n) for n in shape)
    return sparse.COO(
        np.asarray(coords).reshape(len(shape), -1).astype(index_dtype(shape), copy=False),
        np.asarray(data),
        shape=shape,
        fill_value=fill_value,
        has_duplicates=False,
        sorted=sorted,
    )


def densify(x: Any) -> np.ndarray:
    """The dense NumPy array of ``x`` (computed): for tests and small grids only."""
    a = _data(x)
    if hasattr(a, "compute"):
        a = a.compute()
    return a.todense() if hasattr(a, "todense") else np.asarray(a)


def linear_keys(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Row-major linear keys (uint64) of ``(ndim, n)`` coordinates in ``shape``."""
    coords = np.asarray(coords, dtype=np.int64).reshape(len(shape), -1)
    keys = np.zeros(coords.shape[1], dtype=np.uint64)
    for c, n in zip(coords, shape, strict=True):
        keys *= np.uint64(n)
        keys += c.astype(np.uint64)
    return keys


def unravel_keys(keys: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``(ndim, n)`` int64 coordinates of row-major linear ``keys`` in ``shape``."""
    keys = np.asarray(keys, dtype=np.uint64).copy()
    out = np.empty((len(shape), keys.size), dtype=np.int64)
    for j in range(len(shape) - 1, -1, -1):
        n = np.uint64(shape[j])
        out[j] = (keys % n).astype(np.int64)
        keys //= n
    return out
