"""Histogram equalization of a density into levels, exact on chunked arrays.

A density is cut into ``L`` levels at quantiles ``q_1 < ... < q_{L-1}``
(docs/design.md §3.2). Each cell gets a rank ``r`` and the level

    level = #{i : r / n >= q_i}

with, for ``method="cells"`` (true equalization), ``n`` the number of cells
and ``r`` one plus the number of cells of lower density; for
``method="distinct"`` (the reference implementation's rule), ``n`` the
number of distinct density values and ``r`` one plus the number of distinct
values below the cell's (the reference's 1-based rank). Cells of equal
density share the rank of the first of them, so a large plateau of equal
density (empty space) stays in the level of its first cell instead of being
pushed up by its own size.

Densities are compared after rounding to :data:`DIGITS` significant digits:
values that agree to that many digits count as equal, so a density computed
by another code path (another summation order, another correlation method)
lands in the same level. Twelve digits absorb summation round-off (about
1e-15 relative) while keeping apart the closest distinct densities of the
reference output (8e-11 relative); nine digits would merge 14 of its pairs
and move 12 of its 40,000 cells to another level.

The quantiles are exact, not estimated from a sample: every block's distinct
rounded values are counted, split into key ranges, and merged range by range,
so no task holds more than about :data:`RANGE_CELLS` distinct values.

``exists`` restricts the equalization to a set of cells (docs/design.md §3.5):
the ranks, ``n`` and the thresholds count those cells only, as if the others
were not in the grid. On a dense array it is a boolean mask, and ``level`` is
0 off it. On a sparse density (a dask array of pydata-sparse ``COO`` chunks)
the existing cells are the *stored coordinates* of ``exists`` (default: of
the density itself); a cell the density does not store has its fill value.
The sparse ``level`` is a ``COO`` uint8 array that stores exactly the
existing cells, level-0 cells included as explicit zeros (its fill value 0
says nothing about existence: read the coordinates), so the work and the
result follow the existing cells, never the grid's volume.

This module works on NumPy and dask arrays; it knows nothing of xarray.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from gridflow._types import EqualizeMethod
from gridflow.backend import ops
from gridflow.errors import InputDataError, ParameterError

__all__ = [
    "DEFAULT_CUTS",
    "DIGITS",
    "Equalization",
    "density_keys",
    "equalize",
    "existing_cells",
    "key_values",
    "levels_of",
    "parse_levels",
    "values_at",
]


#: The reference implementation's cut quantiles (8 levels).
DEFAULT_CUTS = (0.08, 0.18, 0.28, 0.42, 0.62, 0.80, 0.95)
#: Significant digits two densities must share to count as equal.
DIGITS = 12
#: Most distinct values one merge task holds.
RANGE_CELLS = 1 << 24
#: Exponent offset that keeps keys of positive densities positive.
_EXP_BIAS = 400
#: Threshold of a level no cell reaches.
_EMPTY = np.iinfo(np.int64).max
#: Densities below this are treated as zero (10**(DIGITS - 1 - e) would overflow).
_TINY = 1e-290


def parse_levels(levels: int | Sequence[float] | str) -> tuple[float, ...]:
    """Cut quantiles from a number of levels ``L`` (cuts at ``i / L``) or a list of cuts.

    Examples
    --------
    >>> parse_levels(4)
    (0.25, 0.5, 0.75)
    >>> parse_levels("0.1,0.5")
    (0.1, 0.5)
    """
    usage = "expected a number of levels (2 to 256) or increasing cut quantiles in (0, 1)"
    if isinstance(levels, str):
        text = levels.strip()
        try:
            levels = (
                int(text)
                if "," not in text and "." not in text
                else [float(v) for v in text.split(",") if v.strip()]
            )
        except ValueError:
            raise ParameterError(f"levels: {usage}, got {text!r}") from None
    if isinstance(levels, (bool, np.bool_)):
        raise ParameterError(f"levels: {usage}, got {levels!r}")
    if isinstance(levels, (int, np.integer)):
        n = int(levels)
        if not 2 <= n <= 256:
            raise ParameterError(f"levels: {usage}, got {n}")
        return tuple(i / n for i in range(1, n))
    try:
        cuts = tuple(float(q) for q in levels)
    except (TypeError, ValueError):
        raise ParameterError(f"levels: {usage}, got {levels!r}") from None
    if not cuts or len(cuts) > 255:
        raise ParameterError(f"levels: {usage}, got {len(cuts)} cuts")
    if not all(0 < q < 1 for q in cuts) or any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ParameterError(f"levels: {usage}, got {list(cuts)}")
    return cuts


def parse_method(method: str) -> str:
    if method not in ("cells", "distinct"):
        raise ParameterError(f"method: expected 'cells' or 'distinct', got {method!r}")
    return method


# --- keys: densities rounded to DIGITS significant digits, as ordered integers ------------


def density_keys(density: np.ndarray, digits: int = DIGITS) -> np.ndarray:
    """int64 keys ordered like the densities rounded to ``digits`` significant digits.

    A positive density ``m * 10**(e - digits + 1)`` (``m`` an integer of
    ``digits`` digits) has key ``(e + 400) * 10**digits + m``; zero has key 0
    and a negative density the negated key of its magnitude. Equal keys mean
    equal rounded values.

    Examples
    --------
    >>> k = density_keys(np.array([1.0, 1.0 + 1e-15, 1.0 + 1e-9, 0.0]))
    >>> bool(k[0] == k[1] and k[2] > k[1] and k[3] == 0)
    True
    """
    x = np.asarray(density, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InputDataError(
            "density: holds NaN or infinite values; equalization needs finite densities"
        )
    mag = np.abs(x)
    pos = mag >= _TINY
    safe = np.where(pos, mag, 1.0)
    e = np.floor(np.log10(safe)).astype(np.int64)
    top = 10.0**digits
    for _ in range(3):  # log10 can be one off near powers of ten
        m = np.rint(safe * 10.0 ** (digits - 1 - e))
        up, down = m >= top, m < top / 10
        if not (up.any() or down.any()):
            break
        e = e + up - down
    key = (e + _EXP_BIAS) * np.int64(10**digits) + m.astype(np.int64)
    key = np.where(pos, key, 0)
    return np.where(x < 0, -key, key)


def key_values(keys: np.ndarray, digits: int = DIGITS) -> np.ndarray:
    """The rounded densities (float64) that :func:`density_keys` encodes."""
    keys = np.asarray(keys, dtype=np.int64)
    mag = np.abs(keys)
    e = mag // 10**digits - _EXP_BIAS
    m = mag % 10**digits
    with np.errstate(over="ignore", under="ignore"):
        out = m * np.power(10.0, (e - digits + 1).astype(np.float64))
    return np.where(keys == 0, 0.0, np.sign(keys) * out)


def levels_of(keys: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Level of each key: the number of thresholds at or below it (uint8)."""
    return np.searchsorted(thresholds, keys, side="right").astype(np.uint8)


# --- exact order statistics over chunks ------------------------------------------------


def _block_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, c = np.unique(keys.ravel(), return_counts=True)
    return u, c.astype(np.int64)


def _cells(part: tuple[np.ndarray, np.ndarray]) -> int:
    return int(part[1].sum())


def _merge(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys of several (keys, counts) pairs with summed counts."""
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    if len(keys) == 0:
        return keys, counts
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


def _sample(part: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    u = part[0]
    if len(u) <= n:
        return u
    return u[np.linspace(0, len(u) - 1, n).astype(np.int64)]


def _split(part: tuple[np.ndarray, np.ndarray], splitters: np.ndarray) -> list[tuple]:
    u, c = part
    cut = np.searchsorted(u, splitters, side="left")
    bounds = [0, *cut.tolist(), len(u)]
    return [(u[a:b], c[a:b]) for a, b in itertools.pairwise(bounds)]


def _summary(part: tuple[np.ndarray, np.ndarray]) -> tuple[int, int, int]:
    """Distinct keys, cells, and cells of the last key of a range."""
    u, c = part
    return len(u), int(c.sum()), int(c[-1]) if len(c) else 0


@dataclass
class Equalization:
    """Result of :func:`equalize`.

    Attributes
    ----------
    level : dask.array.Array
        uint8 level per cell, 0 .. len(cuts); 0 off ``exists``. Sparse: ``COO``
        chunks storing every existing cell (explicit zeros included).
    thresholds : ndarray of int64
        Key of the lowest density of each level 1 .. L-1 (nondecreasing).
    cuts : tuple of float
        The cut quantiles.
    n : int
        Existing cells (``method="cells"``) or their distinct rounded densities
        (``"distinct"``).
    """

    level: da.Array
    thresholds: np.ndarray
    cuts: tuple[float, ...]
    method: str
    n: int
    digits: int = DIGITS

    @property
    def threshold_densities(self) -> list[float | None]:
        """The rounded density where each level 1 .. L-1 starts (None: the level is empty)."""
        empty = self.thresholds == _EMPTY
        values = key_values(np.where(empty, 0, self.thresholds), self.digits)
        return [None if e else float(v) for e, v in zip(empty, values, strict=True)]


def equalize(
    density: Any,
    *,
    levels: int | Sequence[float] | str = DEFAULT_CUTS,
    method: EqualizeMethod = "cells",
    digits: int = DIGITS,
    exists: Any = None,
) -> Equalization:
    """Equalize a density into levels, exactly, block by block.

    Parameters
    ----------
    density : ndarray or dask.array.Array
        Float density per cell, finite; NumPy or pydata-sparse ``COO`` chunks.
    levels : int or sequence of float
        Number of levels ``L`` (cuts at ``i / L``) or the cut quantiles;
        default the reference's 8 levels.
    method : {"cells", "distinct"}
        Rank among cells (true equalization) or among distinct densities
        (the reference implementation's rule).
    digits : int
        Significant digits two densities must share to count as equal (1 to 15).
    exists : array, optional
        The cells to equalize over (default: every cell; for a sparse density,
        the cells it stores). Dense: a boolean mask of the density's shape.
        Sparse: a dask array of ``COO`` chunks whose stored coordinates are
        the existing cells (its values are ignored).

    Returns
    -------
    Equalization
        ``level`` is lazy (its thresholds are already computed).

    Examples
    --------
    >>> eq = equalize(np.arange(10.0), levels=2)
    >>> eq.level.compute().tolist()
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    >>> mask = np.arange(10) >= 6  # only the last four cells exist
    >>> equalize(np.arange(10.0), levels=2, exists=mask).level.compute().tolist()
    [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    """
    cuts = parse_levels(levels)
    method = parse_method(method)
    if not (isinstance(digits, (int, np.integer)) and 1 <= digits <= 15):
        raise ParameterError(f"digits: expected an integer from 1 to 15, got {digits!r}")
    digits = int(digits)
    if not isinstance(density, da.Array):
        chunk = density if ops(density).name == "sparse" else np.asarray(density, np.float64)
        density = da.from_array(chunk, chunks=-1, asarray=False)
    if ops(density).name == "sparse":
        return _equalize_sparse(density, cuts, method, digits, exists)
    keys = density.map_blocks(density_keys, digits, dtype=np.int64)
    if exists is None:
        blocks = keys.to_delayed().ravel().tolist()
        thresholds, n = _thresholds(blocks, cuts, method, keys.size)
        level = keys.map_blocks(levels_of, thresholds, dtype=np.uint8)
        return Equalization(level, thresholds, cuts, method, n, digits)
    if tuple(np.shape(exists)) != tuple(density.shape):
        raise ParameterError(
            f"exists: expected a mask of the density's shape {tuple(density.shape)}, "
            f"got shape {tuple(np.shape(exists))}"
        )
    mask = exists if isinstance(exists, da.Array) else da.from_array(np.asarray(exists))
    mask = mask.astype(bool).rechunk(keys.chunks)
    blocks = [
        dask.delayed(_masked)(k, m)
        for k, m in zip(
            keys.to_delayed().ravel().tolist(), mask.to_delayed().ravel().tolist(), strict=True
        )
    ]
    thresholds, n = _thresholds(blocks, cuts, method)
    level = da.map_blocks(_masked_levels, keys, mask, thresholds, dtype=np.uint8)
    return Equalization(level, thresholds, cuts, method, n, digits)


def _masked(keys: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return keys[mask]


def _masked_levels(keys: np.ndarray, mask: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.where(mask, levels_of(keys, thresholds), np.uint8(0))


# --- sparse densities: the existing cells only ------------------------------------------


def _equalize_sparse(
    density: da.Array, cuts: tuple[float, ...], method: str, digits: int, exists: Any
) -> Equalization:
    import sparse

    if exists is None:
        exists = density
    elif not isinstance(exists, da.Array) and ops(exists).name == "sparse":
        exists = da.from_array(exists, chunks=-1, asarray=False)
    if not (isinstance(exists, da.Array) and ops(exists).name == "sparse"):
        raise ParameterError(
            "exists: a sparse density needs the existing cells as a dask array of sparse.COO "
            f"chunks (their stored coordinates), got {type(exists).__name__}"
        )
    if tuple(exists.shape) != tuple(density.shape):
        raise ParameterError(
            f"exists: expected the density's shape {tuple(density.shape)}, "
            f"got {tuple(exists.shape)}"
        )
    block = tuple(max(c, default=0) for c in density.chunks)
    if math.prod(block) > np.iinfo(np.int64).max:
        raise ParameterError(
            f"density: sparse chunks of shape {block} have more cells than int64 keys can "
            "name; split the grid along more dims"
        )
    exists = exists.rechunk(density.chunks)
    pairs = zip(
        density.to_delayed().ravel().tolist(), exists.to_delayed().ravel().tolist(), strict=True
    )
    blocks = [dask.delayed(_existing_keys)(d, e, digits) for d, e in pairs]
    thresholds, n = _thresholds(blocks, cuts, method)
    meta = sparse.COO.from_numpy(np.zeros((0,) * density.ndim, np.uint8))
    level = da.map_blocks(
        _sparse_levels, density, exists, thresholds, digits, dtype=np.uint8, meta=meta
    )
    return Equalization(level, thresholds, cuts, method, n, digits)


def existing_cells(block: Any) -> np.ndarray:
    """Sorted row-major local keys (int64) of the cells a ``COO`` block stores."""
    coords = np.asarray(block.coords, dtype=np.int64)
    keys = (
        np.ravel_multi_index(tuple(coords), block.shape) if coords.size else np.zeros(0, np.int64)
    )
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
        keys = np.unique(keys)
    return keys


def values_at(block: Any, keys: np.ndarray) -> np.ndarray:
    """The values of a ``COO`` (or dense) block at sorted local ``keys``; its fill elsewhere."""
    if ops(block).name != "sparse":
        return np.asarray(block).ravel()[keys]
    stored = np.asarray(
        np.ravel_multi_index(tuple(np.asarray(block.coords, np.int64)), block.shape)
        if block.nnz
        else np.zeros(0, np.int64),
        dtype=np.int64,
    )
    data = np.asarray(block.data)
    if len(stored) > 1 and not np.all(stored[1:] > stored[:-1]):
        order = np.argsort(stored, kind="stable")
        stored, data = stored[order], data[order]
    out = np.full(len(keys), block.fill_value, dtype=data.dtype)
    if len(stored):
        pos = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
        hit = stored[pos] == keys
        out[hit] = data[pos[hit]]
    return out


def _existing_keys(density: Any, exists: Any, digits: int) -> np.ndarray:
    return density_keys(values_at(density, existing_cells(exists)).astype(np.float64), digits)


def _sparse_levels(density: Any, exists: Any, thresholds: np.ndarray, digits: int) -> Any:
    import sparse

    cells = existing_cells(exists)
    lev = levels_of(_existing_keys(density, exists, digits), thresholds)
    coords = np.stack(np.unravel_index(cells, exists.shape)) if len(cells) else None
    if coords is None:
        coords = np.zeros((len(exists.shape), 0), np.int64)
    return sparse.COO(
        coords.astype(np.int64),
        lev,
        shape=exists.shape,
        fill_value=np.uint8(0),
        has_duplicates=False,
        sorted=True,
        prune=False,
    )


def _thresholds(
    blocks: list[Any], cuts: tuple[float, ...], method: str, size: int | None = None
) -> tuple[np.ndarray, int]:
    """The lowest key of each level, from exact per-range distinct counts.

    ``blocks`` are delayed key arrays (any shape); ``size`` their total number
    of keys, counted here when not given.
    """
    uniq = dask.persist(*[dask.delayed(_block_unique)(b) for b in blocks])
    if size is None:
        size = int(sum(dask.compute(*[dask.delayed(_cells)(u) for u in uniq])))
    nranges = max(1, min(len(uniq), math.ceil(size / RANGE_CELLS)))
    if nranges == 1:
        ranges = list(dask.persist(dask.delayed(_merge)(list(uniq))))
    else:
        samples = dask.compute(*[dask.delayed(_sample)(u, 64) for u in uniq])
        pool = np.unique(np.concatenate(samples))
        splitters = pool[np.linspace(0, len(pool) - 1, nranges + 1).astype(np.int64)[1:-1]]
        splitters = np.unique(splitters)
        pieces = [dask.delayed(_split, nout=len(splitters) + 1)(u, splitters) for u in uniq]
        ranges = list(
            dask.persist(
                *[dask.delayed(_merge)([p[r] for p in pieces]) for r in range(len(splitters) + 1)]
            )
        )
    sizes = np.array(dask.compute(*[dask.delayed(_summary)(r) for r in ranges]), dtype=np.int64)
    distinct = method == "distinct"
    n = int(sizes[:, 0 if distinct else 1].sum())
    thresholds = np.full(len(cuts), _EMPTY, dtype=np.int64)
    if n == 0:  # no cell exists: every level is empty
        return thresholds, 0
    # Ranks of the first and last key of each range (ranks grow across ranges).
    below = np.concatenate([[0], np.cumsum(sizes[:, 0 if distinct else 1])[:-1]])
    last = below + (sizes[:, 0] if distinct else sizes[:, 1] - sizes[:, 2] + 1)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, q in enumerate(cuts):
        reached = np.flatnonzero((sizes[:, 0] > 0) & (last / n >= q))
        if len(reached) == 0:  # no rank reaches q: the level stays empty
            continue
        r = int(reached[0])
        if r not in cache:
            cache[r] = dask.compute(ranges[r])[0]
        u, c = cache[r]
        hit = _ranks(c, method, int(below[r])) / n >= q
        thresholds[i] = u[int(np.argmax(hit))]
    return thresholds, n


def _ranks(counts: np.ndarray, method: str, below: int) -> np.ndarray:
    """1-based rank of each sorted distinct key: one plus what lies strictly below."""
    if method == "distinct":
        return below + np.arange(1, len(counts) + 1, dtype=np.int64)
    return below + 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
