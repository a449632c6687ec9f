"""Parameters of the point process, parsed once into canonical values.

Every helper raises :class:`~gridflow.errors.ParameterError` with "expected
…, got …"; :class:`~gridflow.synth.PointProcess` and its methods call them
at the boundary and trust their results.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from gridflow._types import DISTRIBUTIONS
from gridflow.errors import ParameterError

#: Names of the label and Bayes-class columns of the point stream.
LABEL_COLUMN = "label"
BAYES_COLUMN = "bayes"


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


def _parse_scale(value: Any) -> float:
    """A positive finite float (not bool)."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(value, (bool, np.bool_)) or not (math.isfinite(scale) and scale > 0):
        raise ParameterError(
            f"scale: expected a positive finite number, got {value!r}; use e.g. scale=0.15"
        )
    return scale


def _parse_distribution(value: Any) -> str:
    """One of :data:`~gridflow._types.DISTRIBUTIONS`, in any case."""
    distribution = str(value).lower()
    if distribution not in DISTRIBUTIONS:
        raise ParameterError(
            f"distribution: expected one of {', '.join(DISTRIBUTIONS)}, got {value!r}"
        )
    return distribution


def _parse_modulo(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"modulo: expected True or False, got {value!r}")
    return bool(value)


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
