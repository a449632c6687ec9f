"""The resolution pyramid: coarser copies of a grid (docs/design.md §3.5).

Level 0 is the binned grid. Level ``l`` has ``ceil(bins / 2**l)`` cells per
dim and its counts are the level-0 counts summed exactly over cell index
``i // 2**l``: a level-``l`` cell covers ``2**l`` level-0 cells per dim (the
last one fewer when ``bins`` is not a multiple of ``2**l``, so the level
reaches past ``hi`` there). A level-``l`` dim is periodic only when the
level-0 dim is and ``bins % 2**l == 0``; otherwise its seam would join cells
of unequal width, so it is open at that level.

Level ``l`` lives in the same Dataset as level 0, its variables and spatial
dims suffixed ``_l{l}`` (``counts_l1`` on ``("class", "x_l1", "y_l1")``,
coordinate ``x_l1``); see :func:`level_name`. A point's level-``l`` cell is
its level-0 cell ``// 2**l`` (periodic wrapping happens at level 0), which is
how :func:`gridflow.predict` reads the pyramid.

Examples
--------
>>> import dask.array as da
>>> counts = da.ones((1, 5, 4), dtype=np.uint32, chunks=(1, 2, 4))
>>> level_bins((5, 4), 1)
(3, 2)
>>> coarsen(counts, 1).compute()[0].tolist()
[[4, 4], [4, 4], [2, 2]]
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from gridflow.backend import namespace
from gridflow.errors import ParameterError
from gridflow.grid import GridSpec
from gridflow.sparse_grid import MAX_SPLIT_DIMS, is_sparse

__all__ = [
    "coarsen",
    "level_bins",
    "level_coords",
    "level_name",
    "level_periodic",
    "level_spec",
    "parse_min_votes",
    "parse_pyramid_levels",
]


# --- parameters -----------------------------------------------------------------------


def parse_pyramid_levels(levels: Any) -> int:
    """The number of pyramid levels: an integer >= 1 (1 = the binned grid only).

    Accepts an int or its string (``"3"`` from a config file or the CLI).

    Examples
    --------
    >>> parse_pyramid_levels("3")
    3
    """
    n = _integer(levels)
    if n is None or n < 1:
        raise ParameterError(
            f"levels: expected an integer >= 1 (pyramid levels; 1 = the binned grid only), "
            f"got {levels!r}"
        )
    return n


def parse_min_votes(min_votes: Any) -> float:
    """The total vote a level's cell needs to answer a point: a finite number >= 0.

    Examples
    --------
    >>> parse_min_votes("2.5")
    2.5
    """
    value = None
    if not isinstance(min_votes, (bool, np.bool_)):
        try:
            value = float(min_votes)
        except (TypeError, ValueError):
            value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ParameterError(
            f"min_votes: expected a finite number >= 0 (the total vote a level's cell needs "
            f"to answer a point; 0 = the finest labeled level answers), got {min_votes!r}"
        )
    return value


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (or its string), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def _level(level: Any) -> int:
    n = _integer(level)
    if n is None or n < 0:
        raise ParameterError(f"level: expected a pyramid level, an integer >= 0, got {level!r}")
    return n


# --- geometry -------------------------------------------------------------------------


def level_bins(bins: tuple[int, ...], level: int) -> tuple[int, ...]:
    """Cells per dim at ``level``: ``ceil(bins / 2**level)``.

    Examples
    --------
    >>> level_bins((400, 300, 7), 2)
    (100, 75, 2)
    """
    f = 2 ** _level(level)
    return tuple(-(-int(b) // f) for b in bins)


def level_periodic(spec: GridSpec, level: int) -> tuple[bool, ...]:
    """Periodic flags at ``level``: level-0 periodic and ``bins % 2**level == 0``.

    Examples
    --------
    >>> level_periodic(GridSpec(("x", "y"), (0, 1), (8, 6), periodic=True), 2)
    (True, False)
    """
    f = 2 ** _level(level)
    return tuple(bool(p) and b % f == 0 for p, b in zip(spec.periodic, spec.bins, strict=True))


def level_name(name: str, level: int) -> str:
    """The name of a variable or dim at ``level``: ``name`` at 0, else ``name_l{level}``.

    Examples
    --------
    >>> level_name("label", 0), level_name("label", 2), level_name("x", 2)
    ('label', 'label_l2', 'x_l2')
    """
    level = _level(level)
    return str(name) if level == 0 else f"{name}_l{level}"


def _level_bounds(spec: GridSpec, level: int) -> tuple[tuple[float, float], ...]:
    """``(lo, lo + nbins_l * 2**level * cell width)`` per dim (``hi`` itself when
    the level's cells tile the level-0 span exactly)."""
    f = 2**level
    out = []
    for (lo, hi), b, nb in zip(spec.bounds, spec.bins, level_bins(spec.bins, level), strict=True):
        # Multiplying by the integer nb * f first keeps the level-0 rounding
        # of lo + i * (hi - lo) / bins.
        out.append((lo, hi if nb * f == b else lo + (nb * f) * (hi - lo) / b))
    return tuple(out)


def level_spec(spec: GridSpec | Any, level: int) -> GridSpec:
    """The geometry of ``level``: its dims (suffixed), bounds, bins and periodic flags.

    ``spec`` is a :class:`~gridflow.grid.GridSpec` or a grid Dataset. The bins
    are :func:`level_bins`, the bounds ``(lo, lo + nbins_l * 2**level *
    (hi - lo) / bins)`` (``hi`` when ``bins`` is a multiple of ``2**level``),
    the periodic flags :func:`level_periodic`: classify a level with this
    spec's boundary. Points are not mapped with it: a point's level cell is
    its level-0 cell ``// 2**level``.

    Examples
    --------
    >>> s = level_spec(GridSpec(("x",), (0, 10), 5, periodic=True), 1)
    >>> s.dims, s.bins, s.bounds, s.periodic
    (('x_l1',), (3,), ((0.0, 12.0),), (False,))
    """
    spec = _as_spec(spec)
    level = _level(level)
    if level == 0:
        return spec
    return GridSpec(
        dims=tuple(level_name(d, level) for d in spec.dims),
        bounds=_level_bounds(spec, level),
        bins=level_bins(spec.bins, level),
        periodic=level_periodic(spec, level),
    )


def _as_spec(ds_or_spec: Any) -> GridSpec:
    if isinstance(ds_or_spec, GridSpec):
        return ds_or_spec
    from gridflow.store import grid_spec

    return grid_spec(ds_or_spec)


def level_coords(ds_or_spec: Any, level: int) -> dict[str, Any]:
    """The spatial coordinates of ``level``, by name (``{"x_l1": ..., "y_l1": ...}``).

    Bin centres ``lo + (i + 0.5) * 2**level * (hi - lo) / bins`` as
    ``xarray.Variable`` objects on their own dim, with the attributes of the
    level-0 coordinates (from the Dataset when one is given: ``long_name``,
    ``units``...) and the level's ``bounds``, ``bins`` and ``periodic``. At
    level 0 they equal the store's own coordinates.

    Examples
    --------
    >>> c = level_coords(GridSpec(("x",), (0, 8), 8), 2)["x_l2"]
    >>> c.values.tolist(), c.attrs["bounds"], c.attrs["bins"]
    ([2.0, 6.0], [0.0, 8.0], 2)
    """
    import xarray as xr

    spec = _as_spec(ds_or_spec)
    level = _level(level)
    f = 2**level
    given = None if isinstance(ds_or_spec, GridSpec) else ds_or_spec
    bounds = _level_bounds(spec, level)
    periodic = level_periodic(spec, level)
    out: dict[str, Any] = {}
    for i, dim in enumerate(spec.dims):
        lo, hi = spec.bounds[i]
        nb = level_bins(spec.bins, level)[i]
        centres = lo + (np.arange(nb, dtype=np.float64) + 0.5) * f * (hi - lo) / spec.bins[i]
        attrs: dict[str, Any] = {"long_name": dim}
        if given is not None and dim in getattr(given, "coords", {}):
            attrs.update(given[dim].attrs)
        attrs.update(
            bounds=[bounds[i][0], bounds[i][1]],
            bins=nb,
            periodic=int(periodic[i]),
        )
        name = level_name(dim, level)
        out[name] = xr.Variable(name, centres, attrs=attrs)
    return out


# --- counts ---------------------------------------------------------------------------


def _input_chunks(counts: da.Array, f: int) -> tuple[int | tuple[int, ...], ...]:
    """Level-0 chunks whose boundaries fall on multiples of ``f``: a dim in one
    chunk stays whole, a split dim gets ``max(1, chunk // f) * f`` cells per
    chunk (the level's chunk is then ``max(1, chunk // f)``). Sparse arrays
    keep at most :data:`MAX_SPLIT_DIMS` split dims, those with most chunks."""
    spatial = counts.chunks[1:]
    split = [i for i, c in enumerate(spatial) if len(c) > 1]
    if is_sparse(counts) and len(split) > MAX_SPLIT_DIMS:
        split = sorted(split, key=lambda i: -len(spatial[i]))[:MAX_SPLIT_DIMS]
    out: list[int | tuple[int, ...]] = [counts.chunks[0]]
    for i, c in enumerate(spatial):
        out.append(max(1, c[0] // f) * f if i in split else sum(c))
    return tuple(out)


def coarsen(counts: da.Array, level: int) -> da.Array:
    """The ``(class, *dims)`` counts of level 0 summed into the cells of ``level``.

    Exact: integer sums in the input's dtype (uint32 stays uint32, uint64
    stays uint64; a sum never exceeds the grid's total, which the dtype
    holds). Works on NumPy (and CuPy) chunks and on ``sparse.COO`` chunks of
    fill 0, which stay sparse (their coordinates are divided by
    ``2**level`` and duplicates summed). Lazy: nothing is computed here.

    Chunks: a dim in one chunk stays one chunk; a split dim's level-0 chunk
    ``c`` becomes ``max(1, c // 2**level)`` cells (the level-0 array is
    rechunked to multiples of ``2**level`` first when ``c`` is not one).
    A sparse array keeps at most three split dims.

    Parameters
    ----------
    counts : dask.array.Array
        Level-0 counts, class axis first.
    level : int
        The pyramid level, >= 0 (0 returns ``counts`` unchanged).

    Returns
    -------
    dask.array.Array
        Shape ``(nclasses, *level_bins(bins, level))``, same dtype and chunk type.

    Examples
    --------
    >>> c = da.from_array(np.arange(6, dtype=np.uint64).reshape(1, 6), chunks=(1, 2))
    >>> coarsen(c, 1).compute().tolist()
    [[1, 5, 9]]
    """
    level = _level(level)
    if not isinstance(counts, da.Array):
        raise ParameterError(
            f"counts: expected a dask array (class, *dims), got {type(counts).__name__}; "
            "wrap it with dask.array.from_array"
        )
    if counts.ndim < 2:
        raise ParameterError(
            f"counts: expected a (class, *dims) array of 2 or more dims, got {counts.ndim}"
        )
    if level == 0:
        return counts
    f = 2**level
    source = counts.rechunk(_input_chunks(counts, f))
    out_chunks = (source.chunks[0], *(tuple(-(-s // f) for s in c) for c in source.chunks[1:]))
    block = _coarsen_sparse if is_sparse(counts) else _coarsen_dense
    return da.map_blocks(
        block,
        source,
        factor=f,
        chunks=out_chunks,
        dtype=counts.dtype,
        meta=counts._meta,
        name=f"coarsen-l{level}-{source.name}",
    )


def _coarsen_dense(block: Any, factor: int) -> Any:
    xp = namespace(block)
    nclass, *shape = block.shape
    padded = [-(-s // factor) * factor for s in shape]
    if padded != shape:
        full = xp.zeros((nclass, *padded), dtype=block.dtype)
        full[(slice(None), *(slice(0, s) for s in shape))] = block
        block = full
    split = [nclass]
    for p in padded:
        split += [p // factor, factor]
    axes = tuple(range(2, 2 * len(shape) + 1, 2))
    return block.reshape(split).sum(axis=axes, dtype=block.dtype)


def _coarsen_sparse(block: Any, factor: int) -> Any:
    from gridflow.sparse_grid import coo, linear_keys, unravel_keys

    if block.fill_value != 0:
        raise ValueError(f"coarsen: sparse counts must have fill value 0, got {block.fill_value!r}")
    nclass, *shape = block.shape
    out_shape = (nclass, *(-(-s // factor) for s in shape))
    coords = np.array(block.coords, dtype=np.int64, copy=True)
    coords[1:] //= factor
    keys = linear_keys(coords, out_shape)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    data = np.asarray(block.data)[order]
    if len(keys):
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        sums = np.add.reduceat(data, starts, dtype=data.dtype)
        keys = keys[starts]
        keep = sums != 0
        keys, sums = keys[keep], sums[keep]
    else:
        sums = data
    return coo(unravel_keys(keys, out_shape), sums, out_shape, fill_value=block.fill_value)
