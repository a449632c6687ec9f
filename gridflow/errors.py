"""Exceptions and warnings raised by gridflow.

Every error about bad input derives from :class:`GridflowError`, itself a
:class:`ValueError`, so ``except ValueError`` keeps working for callers that
do not know gridflow. Messages are one line: what is wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "GridflowError",
    "GridflowWarning",
    "InputDataError",
    "MemoryPlanWarning",
    "MissingDependencyError",
    "ParameterError",
    "StoreError",
]


class GridflowError(ValueError):
    """Base class of gridflow's errors about user input."""


class ParameterError(GridflowError):
    """A parameter (bins, bounds, window, ...) has an invalid value."""


class InputDataError(GridflowError):
    """The point data cannot be used: missing columns, wrong types, no valid rows."""


class StoreError(GridflowError):
    """A Zarr store is missing, foreign, from a newer format, or lacks a stage."""


class MissingDependencyError(GridflowError, ImportError):
    """An optional dependency (dask-jobqueue, dask-mpi, dask-cuda, ...) is not installed."""


class GridflowWarning(UserWarning):
    """Warnings issued by gridflow (turned into errors by the test suite)."""


class MemoryPlanWarning(GridflowWarning):
    """A run's estimated peak memory per worker exceeds what a worker has."""
