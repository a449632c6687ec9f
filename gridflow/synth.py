"""The reference data: K superimposed perturbed lattices, in N dimensions.

This is the data of "Fast Classification and Clustering via Image Convolution
Filters" (V. Granville): class ``c`` is a Poisson-binomial process, the
integer lattice ``{-extent, ..., extent}**d`` shifted by ``shift_c`` with every
point perturbed independently per coordinate by ``scale * stretch[c, j] * e``,
``e`` drawn from a logistic (the reference), uniform on [-1, 1], or Cauchy
law. By default points are mapped modulo 1 onto the period box ``[0, 1)**d``,
the torus the reference method classifies.

Row ``r`` is a pure function of ``(seed, r)`` through counter-based random
numbers (:mod:`gridflow.counter_rng`): its class (one uniform against the class
weights), its lattice point (one integer per dim) and its perturbation (one
uniform per dim) come from distinct streams. The data are therefore identical
whatever the number of partitions or workers.

The generator knows each class density, so it also gives the Bayes-optimal
class of any point (:meth:`PointProcess.bayes_class`): the accuracy ceiling
any classifier of these data can reach.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from gridflow import counter_rng
from gridflow._staging import check_output, staged_directory
from gridflow.errors import InputDataError, ParameterError

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "DISTRIBUTIONS",
    "METADATA_KEY",
    "PointProcess",
    "make_points",
    "read_synth_metadata",
    "write_points",
]

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("logistic", "uniform", "cauchy")
"""Perturbation laws: standard logistic, uniform on [-1, 1], standard Cauchy."""

METADATA_KEY = b"gridflow.synth"
"""Parquet key-value metadata key under which :func:`write_points` stores JSON."""

LABEL_COLUMN = "label"
BAYES_COLUMN = "bayes"
DEFAULT_PARTITION_ROWS = 1_000_000
_METADATA_VERSION = 1

# Counter-RNG stream ids: the kind in the high 32 bits, the dim in the low.
_CLASS, _LATTICE, _NOISE, _SHIFT = 1, 2, 3, 4
# Relative size below which a density term is dropped (2**-60 ~ 8.7e-19).
_LOG_TOL = -60 * math.log(2.0)
# Wrapped logistic: Fourier series from this gamma up, real-space series below.
_FOURIER_MIN_GAMMA = 0.3
# Rows per block in log_density, so the temporaries stay in the CPU cache.
_BLOCK_ROWS = 1 << 14


def _stream(kind: int, dim: int = 0) -> int:
    return (kind << 32) | dim


# --- parameter parsing -------------------------------------------------------


def _parse_int(value: Any, name: str, lo: int, hi: int | None = None, hint: str = "") -> int:
    """An int in ``[lo, hi]`` (Python or NumPy integer, not bool)."""
    if isinstance(value, (bool, np.bool_)):
        ok = False
    else:
        try:
            value = operator.index(value)
            ok = value >= lo and (hi is None or value <= hi)
        except TypeError:
            ok = False
    if not ok:
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ParameterError(f"{name}: expected an integer {span}, got {value!r}{hint}")
    return value


def _parse_real_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected numbers, got {value!r}") from None
    if not np.isfinite(arr).all():
        raise ParameterError(f"{name}: expected finite numbers, got {value!r}")
    return arr


def _parse_shifts(value: Any, classes: int, dims: int) -> np.ndarray:
    arr = _parse_real_array(value, "shifts")
    if arr.shape == (classes,) and dims == 1:
        arr = arr[:, None]
    if arr.shape != (classes, dims):
        raise ParameterError(
            f"shifts: expected shape (classes, dims) = ({classes}, {dims}), got {arr.shape}; "
            "give one offset per class and dim"
        )
    return arr


def _parse_stretch(value: Any, classes: int, dims: int) -> np.ndarray:
    arr = _parse_real_array(value, "stretch")
    if arr.ndim == 1 and arr.shape == (classes,):
        arr = arr[:, None]
    if arr.ndim not in (0, 2) or (
        arr.ndim == 2 and arr.shape not in ((classes, 1), (classes, dims))
    ):
        raise ParameterError(
            f"stretch: expected a scalar, shape ({classes},) or ({classes}, {dims}), "
            f"got {arr.shape}; give one factor, one per class, or one per class and dim"
        )
    if not (arr > 0).all():
        raise ParameterError(f"stretch: expected positive factors, got {value!r}")
    return np.broadcast_to(arr, (classes, dims)).copy()


def _parse_weights(value: Any, classes: int) -> np.ndarray:
    arr = _parse_real_array(value, "weights")
    if arr.shape != (classes,):
        raise ParameterError(
            f"weights: expected one weight per class ({classes}), got shape {arr.shape}"
        )
    if (arr < 0).any() or not arr.sum() > 0:
        raise ParameterError(
            f"weights: expected non-negative weights with a positive sum, got {value!r}"
        )
    return arr / arr.sum()


def _parse_columns(columns: Sequence[str] | str | None, dims: int) -> tuple[str, ...]:
    """Coordinate column names: ``x0 .. x{d-1}`` by default."""
    if columns is None:
        return tuple(f"x{j}" for j in range(dims))
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    names = tuple(columns)
    if len(names) != dims or not all(isinstance(c, str) and c for c in names):
        raise ParameterError(
            f"columns: expected {dims} non-empty names (one per dim), got {columns!r}"
        )
    if len(set(names)) != dims or {LABEL_COLUMN, BAYES_COLUMN} & set(names):
        raise ParameterError(
            f"columns: expected unique names other than {LABEL_COLUMN!r} and "
            f"{BAYES_COLUMN!r}, got {names!r}"
        )
    return names


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


# --- the process ---------------------------------------------------------------


@dataclass(frozen=True)
class PointProcess:
    """K superimposed perturbed lattices: the reference data, in ``dims`` dims.

    Parameters
    ----------
    dims : int, default 2
        Number of coordinates.
    classes : int, default 5
        Number of classes K (one shifted lattice each).
    scale : float, default 0.15
        Perturbation scale ``s`` (the reference's ``s``).
    seed : int, default 0
        Random seed, ``0 <= seed < 2**64``. Drives the default shifts and
        every draw.
    extent : int, default 10
        Lattice points are ``{-extent, ..., extent}`` per dim. With
        ``modulo=True`` the data do not depend on it.
    distribution : {"logistic", "uniform", "cauchy"}, default "logistic"
        Law of the perturbation ``e`` (standard logistic as in the reference,
        uniform on [-1, 1], or standard Cauchy); a coordinate moves by
        ``scale * stretch[c, j] * e``.
    shifts : array_like, shape (classes, dims), optional
        Lattice offset of each class; drawn uniformly in (0, 1) from ``seed``
        when omitted.
    stretch : float or array_like, shape (classes,) or (classes, dims), optional
        Per-class (and per-dim) factor on the perturbation scale; default 1.
    weights : array_like, shape (classes,), optional
        Class proportions (normalised to sum 1); default equal.
    modulo : bool, default True
        Map points onto the period box ``[0, 1)**dims`` (a torus), as the
        reference method does.

    Examples
    --------
    >>> process = PointProcess(dims=2, classes=3, scale=0.1, seed=1)
    >>> frame = process.sample(0, 4, bayes=True)
    >>> list(frame.columns)
    ['x0', 'x1', 'label', 'bayes']
    >>> bool(frame[["x0", "x1"]].ge(0).all().all() and frame[["x0", "x1"]].lt(1).all().all())
    True
    >>> process.log_density(frame[["x0", "x1"]].to_numpy()).shape
    (4, 3)
    """

    dims: int = 2
    classes: int = 5
    scale: float = 0.15
    seed: int = 0
    extent: int = 10
    distribution: str = "logistic"
    shifts: tuple[tuple[float, ...], ...] | None = None
    stretch: tuple[tuple[float, ...], ...] | None = None
    weights: tuple[float, ...] | None = None
    modulo: bool = True

    def __post_init__(self) -> None:
        dims = _parse_int(self.dims, "dims", 1, hint="; use e.g. dims=2")
        classes = _parse_int(self.classes, "classes", 1, hint="; use e.g. classes=5")
        seed = _parse_int(self.seed, "seed", 0, 2**64 - 1)
        # integers() draws the lattice point among 2 * extent + 1 <= 2**32 values.
        extent = _parse_int(self.extent, "extent", 0, 2**31 - 1)
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            scale = math.nan
        if isinstance(self.scale, (bool, np.bool_)) or not (math.isfinite(scale) and scale > 0):
            raise ParameterError(
                f"scale: expected a positive finite number, got {self.scale!r}; use e.g. scale=0.15"
            )
        distribution = str(self.distribution).lower()
        if distribution not in DISTRIBUTIONS:
            raise ParameterError(
                f"distribution: expected one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if not isinstance(self.modulo, (bool, np.bool_)):
            raise ParameterError(f"modulo: expected True or False, got {self.modulo!r}")

        if self.shifts is None:
            shifts = np.stack(
                [
                    counter_rng.uniform(seed, _stream(_SHIFT, j), np.arange(classes))
                    for j in range(dims)
                ],
                axis=1,
            )
        else:
            shifts = _parse_shifts(self.shifts, classes, dims)
        if self.stretch is None:
            stretch = np.ones((classes, dims))
        else:
            stretch = _parse_stretch(self.stretch, classes, dims)
        if self.weights is None:
            weights = np.full(classes, 1.0 / classes)
        else:
            weights = _parse_weights(self.weights, classes)

        canonical = {
            "dims": dims,
            "classes": classes,
            "scale": scale,
            "seed": seed,
            "extent": extent,
            "distribution": distribution,
            "shifts": None if self.shifts is None else _nested_tuple(shifts),
            "stretch": None if self.stretch is None else _nested_tuple(stretch),
            "weights": None if self.weights is None else tuple(weights.tolist()),
            "modulo": bool(self.modulo),
        }
        for name, value in canonical.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_shifts", shifts)
        object.__setattr__(self, "_stretch", stretch)
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_gamma", scale * stretch)

    # --- resolved parameters --------------------------------------------------

    @property
    def shifts_(self) -> np.ndarray:
        """Lattice offsets, shape (classes, dims), given or drawn from the seed."""
        return _read_only(self._shifts)

    @property
    def stretch_(self) -> np.ndarray:
        """Perturbation scale factors, shape (classes, dims)."""
        return _read_only(self._stretch)

    @property
    def weights_(self) -> np.ndarray:
        """Class proportions, shape (classes,), summing to 1."""
        return _read_only(self._weights)

    @property
    def periodic(self) -> tuple[bool, ...]:
        """Per dim: True when the data live on the torus (``modulo=True``)."""
        return (self.modulo,) * self.dims

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """Suggested grid bounds ``(lo, hi)`` per dim.

        The period box ``(0, 1)`` per dim with ``modulo=True``. Otherwise the
        lattice span ``[-extent + min shift, extent + max shift]`` padded by
        ``10 * scale * max stretch`` (logistic: about 1e-4 of the points fall
        outside per dim; Cauchy: about 6%) or by ``scale * max stretch``
        (uniform: every point falls inside). A suggestion for binning only.
        """
        if self.modulo:
            return ((0.0, 1.0),) * self.dims
        factor = 1.0 if self.distribution == "uniform" else 10.0
        pad = factor * self._gamma.max(axis=0)
        lo = -self.extent + self._shifts.min(axis=0) - pad
        hi = self.extent + self._shifts.max(axis=0) + pad
        return tuple((float(a), float(b)) for a, b in zip(lo, hi, strict=True))

    # --- serialisation ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, with shifts, stretch and weights resolved.

        ``PointProcess.from_dict(p.to_dict())`` generates the same data as ``p``.
        """
        return {
            "dims": self.dims,
            "classes": self.classes,
            "scale": self.scale,
            "seed": self.seed,
            "extent": self.extent,
            "distribution": self.distribution,
            "shifts": self._shifts.tolist(),
            "stretch": self._stretch.tolist(),
            "weights": self._weights.tolist(),
            "modulo": self.modulo,
        }

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> PointProcess:
        """Rebuild a process from :meth:`to_dict` (or any subset of the fields)."""
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ParameterError(
                f"point process: unknown parameters {sorted(unknown)}; "
                f"expected some of {list(cls.__dataclass_fields__)}"
            )
        return cls(**params)

    # --- sampling -------------------------------------------------------------

    def sample(
        self,
        start: int,
        stop: int,
        *,
        columns: Sequence[str] | str | None = None,
        bayes: bool = False,
    ) -> pd.DataFrame:
        """Rows ``start .. stop - 1`` of the point stream, as a DataFrame.

        Parameters
        ----------
        start, stop : int
            Row range, ``0 <= start <= stop``. Any split of a range into
            pieces gives the same rows as the whole.
        columns : sequence of str, optional
            Names of the coordinate columns; default ``x0 .. x{dims-1}``.
        bayes : bool, default False
            Add a ``bayes`` column: the Bayes-optimal class of each point.

        Returns
        -------
        pandas.DataFrame
            float64 coordinate columns, ``label`` (int64 class index) and
            optionally ``bayes`` (int64), indexed by the row numbers.

        Examples
        --------
        >>> process = PointProcess(dims=1, classes=2, seed=3)
        >>> whole = process.sample(0, 6)
        >>> whole.iloc[2:6].equals(process.sample(2, 6))
        True
        """
        start = _parse_int(start, "start", 0)
        stop = _parse_int(stop, "stop", start, 2**63 - 1, hint=f" (start is {start})")
        names = _parse_columns(columns, self.dims)
        coords, label = self._draw(np.arange(start, stop, dtype=np.int64))
        data: dict[str, np.ndarray] = dict(zip(names, coords, strict=True))
        data[LABEL_COLUMN] = label
        if bayes:
            data[BAYES_COLUMN] = self._bayes(coords)
        return pd.DataFrame(data, index=pd.RangeIndex(start, stop))

    def _draw(self, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Coordinates (one array per dim) and labels of the given rows."""
        cumulative = np.cumsum(self._weights)
        cumulative /= cumulative[-1]
        u = counter_rng.uniform(self.seed, _stream(_CLASS), rows)
        # Searching the K-1 inner cut points gives 0..K-1 and skips zero weights.
        label = np.searchsorted(cumulative[:-1], u, side="right").astype(np.int64)
        inverse_cdf = _INVERSE_CDF[self.distribution]
        coords = []
        for j in range(self.dims):
            lattice = counter_rng.integers(
                self.seed, _stream(_LATTICE, j), rows, 2 * self.extent + 1
            )
            noise = inverse_cdf(counter_rng.uniform(self.seed, _stream(_NOISE, j), rows))
            noise *= self._gamma[label, j]
            x = (lattice - self.extent).astype(np.float64)
            x += self._shifts[label, j]
            x += noise
            if self.modulo:
                x -= np.floor(x)
                # x - floor(x) rounds up to 1.0 for tiny negative x; 1 is 0 on the torus.
                x[x >= 1.0] = 0.0
            coords.append(x)
        return coords, label

    def to_dask(
        self,
        n_points: int,
        *,
        columns: Sequence[str] | str | None = None,
        bayes: bool = False,
        npartitions: int | None = None,
    ) -> dd.DataFrame:
        """The first ``n_points`` rows as a lazy dask DataFrame.

        See :func:`make_points`, which builds the process and calls this.
        """
        import dask.dataframe as dd

        n_points = _parse_int(n_points, "n_points", 1, hint="; use e.g. n_points=100_000")
        names = _parse_columns(columns, self.dims)
        if npartitions is None:
            npartitions = -(-n_points // DEFAULT_PARTITION_ROWS)
        npartitions = _parse_int(npartitions, "npartitions", 1, n_points)
        edges = [i * n_points // npartitions for i in range(npartitions + 1)]
        ranges = list(itertools.pairwise(edges))
        meta = self.sample(0, 0, columns=names, bayes=bayes)
        return dd.from_map(
            _partition,
            ranges,
            args=(self, names, bayes),
            meta=meta,
            divisions=(*edges[:-1], n_points - 1),
            label="gridflow-synth",
            enforce_metadata=False,
        )

    # --- densities --------------------------------------------------------------

    def log_density(self, x: ArrayLike) -> np.ndarray:
        """Log of ``weight_c * density_c(x)`` for every point and class.

        With ``modulo=True`` the density is that of the torus ``[0, 1)**dims``
        (``x`` is read modulo 1); otherwise that of ``R**dims``. The sum of
        ``exp`` over classes is the mixture density. Computed in log space, so
        classes keep their order where the densities underflow.

        Parameters
        ----------
        x : array_like, shape (n, dims)
            Points.

        Returns
        -------
        ndarray, shape (n, classes)
            float64; ``-inf`` where a class has zero density (uniform law).

        Examples
        --------
        >>> process = PointProcess(dims=1, classes=2, shifts=[0.0, 0.5], scale=0.05)
        >>> process.log_density([[0.0], [0.5]]).argmax(axis=1).tolist()
        [0, 1]
        """
        return self._log_density(self._columns_of(x))

    def bayes_class(self, x: ArrayLike) -> np.ndarray:
        """The Bayes-optimal class of each point: the largest :meth:`log_density`.

        Ties go to the lowest class index; points with a NaN or infinite
        coordinate get -1.

        Parameters
        ----------
        x : array_like, shape (n, dims)
            Points.

        Returns
        -------
        ndarray of int64, shape (n,)

        Examples
        --------
        >>> process = PointProcess(dims=1, classes=2, shifts=[0.0, 0.5], scale=0.05)
        >>> process.bayes_class([[0.02], [0.45], [np.nan]]).tolist()
        [0, 1, -1]
        """
        return self._bayes(self._columns_of(x))

    def _columns_of(self, x: ArrayLike) -> list[np.ndarray]:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.dims:
            raise ParameterError(
                f"x: expected an array of shape (n, {self.dims}), got shape {arr.shape}"
            )
        return list(np.ascontiguousarray(arr.T))

    def _bayes(self, coords: list[np.ndarray]) -> np.ndarray:
        out = self._log_density(coords).argmax(axis=1)
        bad = ~np.logical_and.reduce([np.isfinite(c) for c in coords])
        out[bad] = -1
        return out.astype(np.int64, copy=False)

    def _log_density(self, coords: list[np.ndarray]) -> np.ndarray:
        n = coords[0].shape[0] if coords else 0
        out = np.empty((n, self.classes))
        log_one = _LOG_DENSITY[self.distribution, self.modulo]
        extent = None if self.modulo else self.extent
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            log_weights = np.log(self._weights)
            for lo in range(0, n, _BLOCK_ROWS):
                hi = min(lo + _BLOCK_ROWS, n)
                for c in range(self.classes):
                    acc = np.full(hi - lo, log_weights[c])
                    for j in range(self.dims):
                        u = coords[j][lo:hi] - self._shifts[c, j]
                        acc += log_one(u, float(self._gamma[c, j]), extent)
                    out[lo:hi, c] = acc
        return out


def _nested_tuple(arr: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(row) for row in arr.tolist())


def _partition(
    rows: tuple[int, int],
    process: PointProcess,
    names: tuple[str, ...],
    bayes: bool,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """One partition of :meth:`PointProcess.to_dask`.

    ``columns`` is dask's column projection: the Bayes class is only computed
    when it is asked for.
    """
    frame = process.sample(
        rows[0],
        rows[1],
        columns=names,
        bayes=bayes and (columns is None or BAYES_COLUMN in columns),
    )
    return frame if columns is None else frame[columns]


# --- perturbation laws ----------------------------------------------------------


def _logistic_inverse_cdf(u: np.ndarray) -> np.ndarray:
    # 1 - u is exact for counter_rng.uniform's values, so this is finite.
    out = np.subtract(1.0, u)
    np.divide(u, out, out=out)
    return np.log(out, out=out)


def _uniform_inverse_cdf(u: np.ndarray) -> np.ndarray:
    return np.subtract(2.0 * u, 1.0, out=u)


def _cauchy_inverse_cdf(u: np.ndarray) -> np.ndarray:
    u -= 0.5
    u *= np.pi
    return np.tan(u, out=u)


_INVERSE_CDF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "logistic": _logistic_inverse_cdf,
    "uniform": _uniform_inverse_cdf,
    "cauchy": _cauchy_inverse_cdf,
}


# --- class densities per dim ------------------------------------------------------
#
# Each function gets ``u = x - shift`` for one class and dim and the scale
# ``gamma = scale * stretch`` and returns log g(u): on the torus (extent None)
# the perturbation density wrapped on period 1, sum over m of f(u + m); on the
# lattice the average over h in -extent..extent of f(u - h). Both factorise
# over dims because the lattice is a product set.


@functools.lru_cache(maxsize=1024)
def _logistic_series_coefs(gamma: float) -> tuple[float, ...]:
    """b_k = (-1)^(k+1) k / (1 - q^k), q = e^(-1/gamma), for the tail series.

    Term k of the series is at most |b_k| e^(-(1.5 k - 0.5)/gamma) relative
    to the nearest term's share (>= 1/4); stop below 2**-60 of that.
    """
    coefs = []
    k = 1
    while math.log(k / -math.expm1(-k / gamma)) - (1.5 * k - 0.5) / gamma > _LOG_TOL - math.log(
        4.0
    ):
        coefs.append((-1) ** (k + 1) * k / -math.expm1(-k / gamma))
        k += 1
    return tuple(coefs)


@functools.lru_cache(maxsize=1024)
def _logistic_fourier_coefs(gamma: float) -> tuple[float, ...]:
    """2 phi(2 pi k) = 4 a k e^(-a k) / (1 - e^(-2 a k)), a = 2 pi^2 gamma.

    Stops below 2**-60 of the wrapped density, which is above 0.9 for
    gamma >= _FOURIER_MIN_GAMMA.
    """
    a = 2.0 * math.pi**2 * gamma
    coefs = []
    k = 1
    while (coef := 4.0 * a * k * math.exp(-a * k) / -math.expm1(-2.0 * a * k)) > 2.0**-60:
        coefs.append(coef)
        k += 1
    return tuple(coefs)


def _log_wrapped_logistic(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """log of sum over m of f(u + m), f the logistic density of scale gamma.

    Small gamma: with t = |u - round(u)| in [0, 1/2], the three nearest terms
    (m = 0 and the two neighbours) are exact and the others are the series
    f(v) = (1/gamma) sum_k (-1)^(k+1) k e^(-k v / gamma) summed over m in
    closed form (geometric series), all divided by e^(-t/gamma) so nothing
    underflows. Large gamma: the Fourier series 1 + 2 sum phi(2 pi k)
    cos(2 pi k u) with phi(w) = pi gamma w / sinh(pi gamma w), by Clenshaw.
    Both are truncated at 2**-60 relative.
    """
    t = np.abs(u - np.rint(u))
    if gamma >= _FOURIER_MIN_GAMMA:
        # Clenshaw: b_k = coef_k + 2 cos(theta) b_(k+1) - b_(k+2), then
        # sum_k coef_k cos(k theta) = cos(theta) b_1 - b_2.
        cos = np.cos(2.0 * math.pi * t)
        two_cos = 2.0 * cos
        b1, b2 = np.zeros_like(t), np.zeros_like(t)
        for coef in reversed(_logistic_fourier_coefs(gamma)):
            b2 *= -1.0
            b2 += two_cos * b1
            b2 += coef
            b1, b2 = b2, b1
        cos *= b1
        cos -= b2
        cos += 1.0
        return np.log(cos, out=cos)

    q = math.exp(-1.0 / gamma)
    coefs = _logistic_series_coefs(gamma)
    w = np.exp(t * (-1.0 / gamma))  # the nearest term e^(-t/gamma)
    p = np.exp(t * (2.0 / gamma) - 1.0 / gamma)  # e^(-(1-t)/gamma) / w
    r_near = w * p  # e^(-d/gamma) of the neighbour at distance d = 1 - t
    r_far = w * q  # ... and at distance 1 + t
    total = np.square(1.0 + w)
    np.reciprocal(total, out=total)
    total += p / np.square(1.0 + r_near)
    total += q / np.square(1.0 + r_far)
    if coefs:
        # The translates beyond the neighbours: sum_k coef_k y^k / w with
        # y = e^(-(2 - t)/gamma) = q r_near and e^(-(2 + t)/gamma) = q r_far.
        r_near *= q
        total += p * _horner([q * c for c in coefs], r_near)
        r_far *= q
        total += _horner([q * q * c for c in coefs], r_far)
    out = np.log(total, out=total)
    out -= t * (1.0 / gamma) + math.log(gamma)
    return out


def _horner(coefs: Sequence[float], y: np.ndarray) -> np.ndarray:
    """sum_k coefs[k] * y**k for k = 0 .. len(coefs) - 1 (at least one)."""
    acc = coefs[-1] * y if len(coefs) > 1 else np.full_like(y, coefs[0])
    for coef in reversed(coefs[1:-1]):
        acc += coef
        acc *= y
    if len(coefs) > 1:
        acc += coefs[0]
    return acc


def _log_lattice_logistic(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """log of the mean over h in -extent..extent of f(u - h), f logistic.

    Sums the lattice points around the nearest one ``h0`` until the terms
    fall below 2**-60 of it, relative to the nearest term so nothing
    underflows. The ratio of the term at distance d to e^(-t/gamma) is
    e^(-(d - t)/gamma) / (1 + e^(-d/gamma))**2.
    """
    h0 = np.clip(np.rint(u), -extent, extent)
    delta = u - h0
    t = np.abs(delta)
    side = np.where(delta < 0, -1.0, 1.0)
    # Lattice points left on the near side (towards u) and the far side of h0.
    room_near = extent - side * h0
    room_far = extent + side * h0
    q = math.exp(-1.0 / gamma)
    window = min(2 * extent, math.ceil(gamma * (-_LOG_TOL + math.log(4.0) - math.log1p(-q))) + 1)
    w = np.exp(-t / gamma)
    # Near-side points exist only when |delta| <= 1/2 (h0 was not clipped).
    p = np.exp((2.0 * np.minimum(t, 0.5) - 1.0) / gamma)
    total = 1.0 / np.square(1.0 + w)
    for k in range(1, window + 1):
        near = p * q ** (k - 1)  # e^(-(k - t)/gamma) / w
        term = near / np.square(1.0 + w * near)
        term[room_near < k] = 0.0
        total += term
        far = q**k  # e^(-(k + t)/gamma) / w
        term = far / np.square(1.0 + w * far)
        term[room_far < k] = 0.0
        total += term
    out = np.log(total, out=total)
    out -= t / gamma
    out -= math.log(gamma) + math.log(2 * extent + 1)
    return out


def _log_wrapped_uniform(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """Uniform on [-gamma, gamma] wrapped: count of translates covering u."""
    delta = u - np.rint(u)
    count = np.floor(gamma - delta) - np.ceil(-gamma - delta) + 1.0
    out = np.log(np.maximum(count, 0.0))
    out -= math.log(2.0 * gamma)
    return out


def _log_lattice_uniform(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """Uniform on [-gamma, gamma]: count of lattice points within gamma of u."""
    top = np.minimum(np.floor(u + gamma), extent)
    bottom = np.maximum(np.ceil(u - gamma), -extent)
    out = np.log(np.maximum(top - bottom + 1.0, 0.0))
    out -= math.log(2.0 * gamma) + math.log(2 * extent + 1)
    return out


def _log_sinh(y: float) -> float:
    return y - math.log(2.0) + math.log1p(-math.exp(-2.0 * y)) if y > 20 else math.log(math.sinh(y))


def _log_wrapped_cauchy(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """Wrapped Cauchy on period 1: sinh(2 pi gamma) / (cosh(2 pi gamma) - cos(2 pi u)).

    Written as sinh(y) cosh(y) / (sinh(y)**2 + sin(pi u)**2) with y = pi gamma,
    which neither cancels near u = 0 nor overflows for large gamma.
    """
    y = math.pi * gamma
    log_sinh = _log_sinh(y)
    log_cosh = y - math.log(2.0) + math.log1p(math.exp(-2.0 * y))
    sin = np.abs(np.sin(math.pi * (u - np.rint(u))))
    out = np.logaddexp(2.0 * log_sinh, 2.0 * np.log(sin))
    np.subtract(log_sinh + log_cosh, out, out=out)
    return out


def _log_lattice_cauchy(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """Cauchy: every lattice point counts (heavy tails), so this costs O(extent) per point."""
    total = np.zeros_like(u)
    for h in range(-extent, extent + 1):
        d = u - h
        d *= d
        d += gamma * gamma
        total += np.reciprocal(d, out=d)
    out = np.log(total, out=total)
    out += math.log(gamma / math.pi) - math.log(2 * extent + 1)
    return out


_LOG_DENSITY: dict[tuple[str, bool], Callable[[np.ndarray, float, Any], np.ndarray]] = {
    ("logistic", True): _log_wrapped_logistic,
    ("logistic", False): _log_lattice_logistic,
    ("uniform", True): _log_wrapped_uniform,
    ("uniform", False): _log_lattice_uniform,
    ("cauchy", True): _log_wrapped_cauchy,
    ("cauchy", False): _log_lattice_cauchy,
}


# --- public constructors ------------------------------------------------------------


def make_points(
    n_points: int,
    *,
    dims: int = 2,
    classes: int = 5,
    scale: float = 0.15,
    seed: int = 0,
    bayes: bool = False,
    columns: Sequence[str] | str | None = None,
    npartitions: int | None = None,
    **process_kwargs: Any,
) -> dd.DataFrame:
    """A lazy dask DataFrame of ``n_points`` labelled points from a :class:`PointProcess`.

    Parameters
    ----------
    n_points : int
        Number of rows (>= 1).
    dims, classes, scale, seed
        See :class:`PointProcess`.
    bayes : bool, default False
        Add the ``bayes`` column (Bayes-optimal class). When a computation
        selects columns without it, it is not computed.
    columns : sequence of str, optional
        Coordinate column names; default ``x0 .. x{dims-1}``.
    npartitions : int, optional
        Number of partitions (1 .. n_points); default one per million rows.
        The rows are the same for every value.
    **process_kwargs
        ``extent``, ``distribution``, ``shifts``, ``stretch``, ``weights``,
        ``modulo``: see :class:`PointProcess`.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns as :meth:`PointProcess.sample`, indexed by row number with
        known divisions. Build ``PointProcess(...)`` with the same arguments
        for its densities and suggested bounds.

    Examples
    --------
    >>> ddf = make_points(1000, classes=3, npartitions=4, seed=2)
    >>> ddf.npartitions, len(ddf.compute())
    (4, 1000)
    """
    process = PointProcess(dims=dims, classes=classes, scale=scale, seed=seed, **process_kwargs)
    return process.to_dask(n_points, columns=columns, bayes=bayes, npartitions=npartitions)


def write_points(
    path: str | os.PathLike[str],
    n_points: int,
    *,
    bayes: bool = False,
    columns: Sequence[str] | str | None = None,
    npartitions: int | None = None,
    overwrite: bool = False,
    **process_kwargs: Any,
) -> PointProcess:
    """Generate points and write them as a Parquet dataset at ``path``.

    The dataset (one file per partition, pyarrow, no index column) is written
    to a temporary sibling directory and renamed into place once complete, so
    a failure never leaves a partial dataset at ``path``. Every file carries
    JSON under the key ``METADATA_KEY``: the process parameters, the column
    names, and the suggested grid ``bounds`` and ``periodic`` flags (see
    :func:`read_synth_metadata`).

    Parameters
    ----------
    path : str or path-like
        Local directory to create.
    n_points : int
        Number of rows.
    bayes, columns, npartitions
        See :func:`make_points`.
    overwrite : bool, default False
        Replace an existing ``path`` that gridflow wrote (never anything
        else); otherwise an existing path is an error.
    **process_kwargs
        Parameters of :class:`PointProcess`.

    Returns
    -------
    PointProcess
        The process that generated the data.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> path = tempfile.mkdtemp() + "/points"
    >>> process = write_points(path, 500, classes=2, seed=4)
    >>> len(pd.read_parquet(path)), read_synth_metadata(path)["periodic"]
    (500, [True, True])
    """
    process = PointProcess(**process_kwargs)
    names = _parse_columns(columns, process.dims)
    target = Path(os.path.abspath(os.fspath(path)))
    check_output(target, overwrite=overwrite, parents=True)
    ddf = process.to_dask(n_points, columns=names, bayes=bayes, npartitions=npartitions)
    metadata = {
        "version": _METADATA_VERSION,
        "n_points": int(n_points),
        "columns": list(names),
        "label": LABEL_COLUMN,
        "bayes": BAYES_COLUMN if bayes else None,
        "bounds": [list(b) for b in process.bounds],
        "periodic": list(process.periodic),
        "process": process.to_dict(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(target) as staging:
        ddf.to_parquet(
            staging,
            engine="pyarrow",
            write_index=False,
            custom_metadata={METADATA_KEY: json.dumps(metadata).encode()},
        )
    logger.info("wrote %d synthetic points to %s", n_points, target)
    return process


def read_synth_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON :func:`write_points` stored with a Parquet dataset, or None.

    Parameters
    ----------
    path : str or path-like
        A Parquet file or a dataset directory (its ``_common_metadata`` or
        ``_metadata`` file when present, else its first data file is read).

    Returns
    -------
    dict or None
        Keys ``version``, ``n_points``, ``columns``, ``label``, ``bayes``,
        ``bounds``, ``periodic`` and ``process`` (the :meth:`PointProcess.to_dict`
        parameters); None when the data were not written by :func:`write_points`.

    Examples
    --------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/points"
    >>> _ = write_points(path, 100, dims=3, modulo=False, seed=5)
    >>> meta = read_synth_metadata(path)
    >>> meta["columns"], meta["periodic"]
    (['x0', 'x1', 'x2'], [False, False, False])
    >>> PointProcess.from_dict(meta["process"]).sample(0, 100).equals(pd.read_parquet(path))
    True
    """
    import pyarrow.parquet as pq

    source = Path(os.fspath(path))
    if source.is_dir():
        candidates = [source / "_common_metadata", source / "_metadata"]
        candidates = [c for c in candidates if c.is_file()] or sorted(source.glob("*.parquet"))
        if not candidates:
            raise InputDataError(f"path: no Parquet files in directory {str(source)!r}")
        source = candidates[0]
    elif not source.is_file():
        raise InputDataError(
            f"path: {str(source)!r} does not exist; give a Parquet file or dataset"
        )
    try:
        metadata = pq.read_schema(source).metadata or {}
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputDataError(
            f"path: cannot read a Parquet schema from {str(source)!r}: {exc}"
        ) from exc
    raw = metadata.get(METADATA_KEY)
    return None if raw is None else json.loads(raw)
