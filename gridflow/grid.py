"""Grid geometry: :class:`GridSpec` maps point coordinates to cells.

A grid has named dims, per-dim bounds ``(lo, hi)``, a number of bins per dim
and a periodic flag per dim. The cell of a value ``v`` on one dim is
``floor((v - lo) / (hi - lo) * bins)``; ``v == hi`` falls in the last cell of a
non-periodic dim, and a periodic dim first reduces ``v - lo`` modulo
``hi - lo``. Values outside ``[lo, hi]`` on a non-periodic dim, and NaN or
infinite values on any dim, have no cell (index ``-1``).

This module knows nothing of xarray or Zarr; it works on NumPy-like arrays
(NumPy or CuPy: the array namespace is taken from the input).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gridflow.backend import namespace
from gridflow.errors import InputDataError, ParameterError

__all__ = [
    "GridSpec",
    "bounds_from_extrema",
    "infer_bounds",
    "parse_bins",
    "parse_bounds",
    "parse_periodic",
]


def _per_dim(value: Any, ndim: int, name: str, kind: type | tuple[type, ...]) -> tuple:
    """Broadcast a scalar or check a sequence has one entry per dim."""
    if isinstance(value, kind) and not isinstance(value, (str, bytes)):
        return (value,) * ndim
    if isinstance(value, str) and kind is not str:
        # "400,300" from a config file or a CLI option.
        value = [v for v in value.split(",") if v.strip()]
    try:
        values = tuple(value)
    except TypeError:
        raise ParameterError(
            f"{name}: expected one value or one per dim ({ndim}), got {value!r}"
        ) from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise ParameterError(
            f"{name}: expected 1 or {ndim} values (one per dim), got {len(values)}: {value!r}"
        )
    return values


def parse_bins(bins: int | Sequence[int] | str, ndim: int) -> tuple[int, ...]:
    """Canonical bins: one positive int per dim."""
    out = []
    for b in _per_dim(bins, ndim, "bins", (int, np.integer)):
        try:
            ib = int(b)
        except (TypeError, ValueError):
            raise ParameterError(f"bins: expected positive integers, got {b!r}") from None
        if isinstance(b, float) and b != ib:
            raise ParameterError(f"bins: expected positive integers, got {b!r}")
        if ib <= 0:
            raise ParameterError(f"bins: expected positive integers, got {ib}; use e.g. --bins 400")
        out.append(ib)
    return tuple(out)


def parse_periodic(periodic: bool | Sequence[bool] | str, ndim: int) -> tuple[bool, ...]:
    """Canonical periodic flags: one bool per dim."""
    if isinstance(periodic, str):
        periodic = [
            p.strip().lower() in ("1", "true", "yes", "y", "t") for p in periodic.split(",")
        ]
    return tuple(bool(p) for p in _per_dim(periodic, ndim, "periodic", (bool, np.bool_)))


def parse_bounds(
    bounds: Sequence[float] | Sequence[Sequence[float]] | str, ndim: int
) -> tuple[tuple[float, float], ...]:
    """Canonical bounds: one finite ``(lo, hi)`` pair with ``lo < hi`` per dim,
    whose width ``hi - lo`` is finite too.

    Accepts pairs ``[(lo0, hi0), (lo1, hi1)]``, a flat list
    ``[lo0, hi0, lo1, hi1]``, a string ``"lo0,hi0,lo1,hi1"``, or a single pair
    for every dim.
    """
    if isinstance(bounds, str):
        try:
            bounds = [float(b) for b in bounds.split(",") if b.strip()]
        except ValueError:
            raise ParameterError(
                f"bounds: expected numbers 'lo,hi' per dim, got {bounds!r}"
            ) from None
    flat = np.asarray(bounds, dtype=object).ravel().tolist()
    try:
        flat = [float(v) for v in flat]
    except (TypeError, ValueError):
        raise ParameterError(f"bounds: expected numbers (lo, hi) per dim, got {bounds!r}") from None
    if len(flat) == 2:
        flat = flat * ndim
    if len(flat) != 2 * ndim:
        raise ParameterError(
            f"bounds: expected a (lo, hi) pair per dim ({2 * ndim} numbers), got {len(flat)}"
        )
    pairs = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(ndim))
    for i, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ParameterError(
                f"bounds: dim {i} has non-finite bounds ({lo}, {hi}); give finite numbers 'lo,hi'"
            )
        if not lo < hi:
            raise ParameterError(
                f"bounds: dim {i} needs lo < hi, got lo={lo}, hi={hi}; give 'lo,hi' with lo below hi"
            )
        if not math.isfinite(hi - lo):
            raise ParameterError(
                f"bounds: dim {i} spans [{lo:g}, {hi:g}], wider than a float64 holds "
                "(hi - lo overflows to inf); give narrower bounds"
            )
    return pairs


@dataclass(frozen=True)
class GridSpec:
    """Geometry of an N-dimensional grid: dims, bounds, bins, periodic.

    Parameters
    ----------
    dims : sequence of str
        Names of the dims, usually the point columns (``("x", "y")``).
    bounds : sequence
        ``(lo, hi)`` per dim, or a flat ``[lo0, hi0, lo1, hi1, ...]``, or one
        pair for all dims.
    bins : int or sequence of int
        Cells per dim.
    periodic : bool or sequence of bool, default False
        Periodic dims wrap around (a torus), as in the reference method.

    Examples
    --------
    >>> spec = GridSpec(("x", "y"), bounds=(0, 1), bins=4, periodic=True)
    >>> spec.shape
    (4, 4)
    >>> spec.cell_index(np.array([[0.1, 1.05]])).tolist()
    [[0, 0]]
    """

    dims: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]
    bins: tuple[int, ...]
    periodic: tuple[bool, ...] = False  # type: ignore[assignment]

    def __post_init__(self) -> None:
        dims = (self.dims,) if isinstance(self.dims, str) else tuple(self.dims)
        if not dims:
            raise ParameterError("dims: expected at least one dim name, got none")
        dims = tuple(str(d) for d in dims)
        if len(set(dims)) != len(dims):
            raise ParameterError(f"dims: names must be unique, got {dims}")
        ndim = len(dims)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "bounds", parse_bounds(self.bounds, ndim))
        object.__setattr__(self, "bins", parse_bins(self.bins, ndim))
        object.__setattr__(self, "periodic", parse_periodic(self.periodic, ndim))
        for dim, (lo, hi), n in zip(dims, self.bounds, self.bins, strict=True):
            # Cells narrower than the float64 spacing there cannot be told apart.
            if (hi - lo) / n < np.spacing(max(abs(lo), abs(hi))):
                raise ParameterError(
                    f"bins: {n} cells on {dim} [{lo:g}, {hi:g}] would be narrower than float64 "
                    f"resolves there ({np.spacing(max(abs(lo), abs(hi))):g}); use fewer bins"
                )

    # --- geometry ---------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bins

    @property
    def ncells(self) -> int:
        return math.prod(self.bins)

    @property
    def lo(self) -> np.ndarray:
        return np.array([b[0] for b in self.bounds], dtype=np.float64)

    @property
    def hi(self) -> np.ndarray:
        return np.array([b[1] for b in self.bounds], dtype=np.float64)

    @property
    def width(self) -> np.ndarray:
        """``hi - lo`` per dim (the period of a periodic dim)."""
        return self.hi - self.lo

    @property
    def cell_size(self) -> np.ndarray:
        return self.width / np.asarray(self.bins, dtype=np.float64)

    def centers(self, dim: int | str) -> np.ndarray:
        """Bin-centre coordinates ``lo + (i + 0.5) * (hi - lo) / bins`` of one dim."""
        i = self._axis(dim)
        lo, hi = self.bounds[i]
        return lo + (np.arange(self.bins[i], dtype=np.float64) + 0.5) * (hi - lo) / self.bins[i]

    def edges(self, dim: int | str) -> np.ndarray:
        """Exact bin edges of one dim, consistent with :meth:`cell_index`.

        ``edges[i]`` is the smallest float64 that falls in cell ``i`` (and
        ``edges[-1] == hi``), so ``np.histogramdd(..., bins=[spec.edges(d) ...])``
        counts exactly as gridflow does. ``np.linspace(lo, hi, bins + 1)`` may
        differ from these by an ulp, which moves values lying on an edge.
        """
        i = self._axis(dim)
        lo, hi = self.bounds[i]
        n = self.bins[i]
        idx = np.arange(1, n, dtype=np.int64)
        # The cell function is monotone in v: bisect over the ordered float64
        # values for the first one whose cell is >= its index.
        low = np.full(n - 1, _ordinal(lo)[0], dtype=np.int64)
        high = np.full(n - 1, _ordinal(hi)[0], dtype=np.int64)
        while np.any(low < high):
            mid = (low >> 1) + (high >> 1) + (low & high & 1)  # no overflow
            above = _cells_1d(np, _from_ordinal(mid), lo, hi, n, False) >= idx
            high = np.where(above, mid, high)
            low = np.where(above, low, mid + 1)
        inner = _from_ordinal(low)
        return np.concatenate([[lo], inner, [hi]])

    def _axis(self, dim: int | str) -> int:
        if isinstance(dim, str):
            try:
                return self.dims.index(dim)
            except ValueError:
                raise ParameterError(f"unknown dim {dim!r}; the grid has {self.dims}") from None
        return int(dim)

    # --- cell indexing ------------------------------------------------------

    def cell_index(self, points: Any) -> Any:
        """Integer cell index per dim of ``points`` (shape ``(n, ndim)``).

        Returns an int64 array of the same shape; a point with no cell on a
        dim (NaN, infinite, or out of range on a non-periodic dim) gets -1 on
        every dim. Works on NumPy and CuPy arrays alike.
        """
        xp = namespace(points)
        pts = xp.asarray(points, dtype=xp.float64)
        if pts.ndim != 2 or pts.shape[1] != self.ndim:
            raise ParameterError(
                f"points: expected shape (n, {self.ndim}) for dims {self.dims}, got {pts.shape}"
            )
        out = xp.empty(pts.shape, dtype=xp.int64)
        for i, (lo, hi) in enumerate(self.bounds):
            out[:, i] = _cells_1d(xp, pts[:, i], lo, hi, self.bins[i], self.periodic[i])
        bad = (out < 0).any(axis=1)
        out[bad] = -1
        return out

    def parse_chunks(self, chunks: int | Sequence[int] | str) -> tuple[int, ...]:
        """Spatial chunk sizes from an int, one int per dim, or ``"64,32"``; clipped to the grid.

        The one parser of given chunks (binning's ``"auto"`` rule and the
        filter planner start from its result).
        """
        if isinstance(chunks, str):
            try:
                chunks = [int(c) for c in chunks.split(",") if c.strip()]
            except ValueError:
                raise ParameterError(
                    f"chunks: expected integers or 'auto', got {chunks!r}"
                ) from None
        if isinstance(chunks, (int, np.integer)):
            chunks = [int(chunks)] * self.ndim
        chunks = [int(c) for c in chunks]
        if len(chunks) == 1:
            chunks *= self.ndim
        if len(chunks) != self.ndim:
            raise ParameterError(
                f"chunks: expected 1 or {self.ndim} values (one per dim), got {len(chunks)}"
            )
        if any(c <= 0 for c in chunks):
            raise ParameterError(f"chunks: expected positive integers, got {chunks}")
        return tuple(min(c, b) for c, b in zip(chunks, self.bins, strict=True))

    def flat_index(self, points: Any) -> Any:
        """C-order flat cell index of ``points`` (shape ``(n, ndim)``), -1 where none."""
        xp = namespace(points)
        if xp is np and np.ndim(points) == 2 and np.shape(points)[1] == self.ndim:
            from gridflow._kernels.cells import flat_index

            return flat_index(points, self)
        cells = self.cell_index(points)
        flat = xp.zeros(cells.shape[0], dtype=xp.int64)
        for i, n in enumerate(self.bins):
            flat = flat * n + cells[:, i]
        return xp.where(cells[:, 0] < 0, -1, flat)

    # --- serialisation ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "dims": list(self.dims),
            "bounds": [list(b) for b in self.bounds],
            "bins": list(self.bins),
            "periodic": list(self.periodic),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridSpec:
        missing = {"dims", "bounds", "bins"} - set(d)
        if missing:
            raise ParameterError(f"grid spec: missing keys {sorted(missing)}")
        unknown = set(d) - {"dims", "bounds", "bins", "periodic"}
        if unknown:
            raise ParameterError(f"grid spec: unknown keys {sorted(unknown)}")
        return cls(
            dims=tuple(d["dims"]),
            bounds=d["bounds"],
            bins=d["bins"],
            periodic=d.get("periodic", False),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> GridSpec:
        return cls.from_dict(json.loads(text))


_SIGN = np.int64(-(2**63))


def _ordinal(x: Any) -> Any:
    """float64 -> int64 with the same order (for bisection over floats)."""
    i = np.atleast_1d(np.asarray(x, dtype=np.float64)).view(np.int64)
    with np.errstate(over="ignore"):
        return np.where(i >= 0, i, _SIGN - i)


def _from_ordinal(o: Any) -> Any:
    o = np.atleast_1d(np.asarray(o, dtype=np.int64))
    with np.errstate(over="ignore"):
        return np.where(o >= 0, o, _SIGN - o).view(np.float64)


def _cells_1d(xp: Any, v: Any, lo: float, hi: float, n: int, periodic: bool) -> Any:
    """Cell index of values ``v`` on one dim, -1 where none (see module doc).

    The arithmetic order (subtract, divide by the width, multiply by the bins)
    is part of the format: the fused binning kernel performs the same float64
    operations so both agree bit for bit.
    """
    width = hi - lo
    t = v - lo
    if periodic:
        with np.errstate(invalid="ignore"):  # fmod(inf) is NaN: no cell
            t = xp.fmod(t, width)
        t = xp.where(t < 0, t + width, t)
        ok = xp.isfinite(t)
    else:
        ok = (v >= lo) & (v <= hi)
    with np.errstate(invalid="ignore"):
        c = xp.floor(t / width * n)
        c = xp.where(ok, c, -1.0)
    c = xp.where(c >= n, n - 1, c)
    return c.astype(xp.int64)


def infer_bounds(frame: Any, columns: Iterable[str]) -> tuple[tuple[float, float], ...]:
    """Finite min and max of each column, in one pass over the data.

    ``frame`` is a pandas or dask DataFrame; NaN and infinite values are
    ignored. A column whose finite values are all equal gets a unit-wide
    interval centred on that value so the grid stays valid.
    """
    import pandas as pd

    columns = list(columns)
    sub = frame[columns]
    finite = sub.where(np.isfinite(sub.astype("float64")))
    if isinstance(frame, pd.DataFrame):
        lows, highs = finite.min(), finite.max()
    else:
        import dask

        lows, highs = dask.compute(finite.min(), finite.max())
    return bounds_from_extrema(columns, [lows[c] for c in columns], [highs[c] for c in columns])


def bounds_from_extrema(
    columns: Sequence[str], lows: Sequence[float], highs: Sequence[float]
) -> tuple[tuple[float, float], ...]:
    """Bounds from each column's finite min and max (a constant column gets a
    unit-wide interval centred on its value)."""
    bounds = []
    for col, lo, hi in zip(columns, lows, highs, strict=True):
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputDataError(
                f"points: column {col!r} has no finite values to infer bounds from; "
                "give --bounds or clean the column"
            )
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        if not math.isfinite(hi - lo):
            raise InputDataError(
                f"points: column {col!r} spans [{lo:g}, {hi:g}], wider than a float64 holds "
                "(max - min overflows to inf); give --bounds or drop the extreme values"
            )
        bounds.append((lo, hi))
    return tuple(bounds)
