"""The point process: K superimposed perturbed lattices, and its lazy DataFrame.

Row ``r`` is a pure function of ``(seed, r)`` through counter-based random
numbers (:mod:`gridflow.counter_rng`): its class (one uniform against the class
weights), its lattice point (one integer per dim) and its perturbation (one
uniform per dim) come from distinct streams, so the rows are the same whatever
the number of partitions or workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from gridflow import counter_rng
from gridflow._types import Distribution
from gridflow.errors import ParameterError
from gridflow.synth._parse import (
    BAYES_COLUMN,
    LABEL_COLUMN,
    _parse_columns,
    _parse_distribution,
    _parse_int,
    _parse_modulo,
    _parse_scale,
    _parse_shifts,
    _parse_stretch,
    _parse_weights,
)
from gridflow.synth.density import _INVERSE_CDF, _LOG_DENSITY

if TYPE_CHECKING:
    import dask.dataframe as dd

DEFAULT_PARTITION_ROWS = 1_000_000

# Counter-RNG stream ids: the kind in the high 32 bits, the dim in the low.
_CLASS, _LATTICE, _NOISE, _SHIFT = 1, 2, 3, 4
# Rows per block in log_density, so the temporaries stay in the CPU cache.
_BLOCK_ROWS = 1 << 14


def _stream(kind: int, dim: int = 0) -> int:
    return (kind << 32) | dim


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


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
    distribution: Distribution = "logistic"
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
        scale = _parse_scale(self.scale)
        distribution = _parse_distribution(self.distribution)
        modulo = _parse_modulo(self.modulo)

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
            "modulo": modulo,
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
            Points, read as by :meth:`log_density`.

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
