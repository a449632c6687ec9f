"""Exceptions and warnings raised by gridflow.

Every error about bad input derives from :class:`GridflowError`, itself a
:class:`ValueError`, so ``except ValueError`` keeps working for callers that
do not know gridflow. Messages are one line: what is wrong and how to fix it.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

__all__ = [
    "BoundaryWarning",
    "ClusterError",
    "ConvergenceWarning",
    "EmptyGridWarning",
    "GridTooLargeError",
    "GridflowError",
    "GridflowWarning",
    "InputDataError",
    "MemoryPlanWarning",
    "MissingDependencyError",
    "ParameterError",
    "StaleLockWarning",
    "StorageError",
    "StoreBusyError",
    "StoreError",
    "causes",
    "storage_error",
]


#: A message about one parameter starts with its name: ``"bins: expected ..."``.
_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")


class GridflowError(ValueError):
    """Base class of gridflow's errors about user input.

    ``param`` is the parameter the message is about (``"min_cells"`` for
    ``"min_cells: expected ..."``), given or read off the message; the CLI
    shows it as its option (``--min-cells``).
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self._param = param

    @property
    def param(self) -> str | None:
        given = self.__dict__.get("_param")
        if given is not None:
            return given
        match = _PARAM.match(str(self))
        return match.group(1) if match else None


class ParameterError(GridflowError):
    """A parameter (bins, bounds, window, ...) has an invalid value."""


class InputDataError(GridflowError):
    """The point data cannot be used: missing columns, wrong types, no valid rows."""


class StoreError(GridflowError):
    """A Zarr store is missing, foreign, from a newer format, or lacks a stage."""


class GridTooLargeError(ParameterError):
    """A grid (its bins and classes) would not fit the workers' memory."""


class StorageError(GridflowError):
    """The filesystem refused a write: read-only, full, over quota, or no permission."""


class ClusterError(GridflowError):
    """The Dask scheduler cannot be reached."""


class StoreBusyError(StoreError):
    """Another process holds the store's writer lock."""


class MissingDependencyError(GridflowError, ImportError):
    """An optional dependency (dask-jobqueue, dask-mpi, dask-cuda, ...) is not installed."""


class GridflowWarning(UserWarning):
    """Warnings issued by gridflow (turned into errors by the test suite)."""


class BoundaryWarning(GridflowWarning):
    """A boundary that contradicts the grid's geometry (periodic on dims that do not wrap)."""


class ConvergenceWarning(GridflowWarning):
    """``iterations="auto"`` stopped at ``max_iter`` before the labels settled."""


class EmptyGridWarning(GridflowWarning):
    """A stage runs on a grid without a single point: every cell stays unlabeled."""


class StaleLockWarning(GridflowWarning):
    """A writer lock left by a process that no longer runs was taken over."""


class MemoryPlanWarning(GridflowWarning):
    """A run's estimated peak memory per worker exceeds what a worker has."""


# --- filesystem errors as one line ------------------------------------------------------

#: errno values that are the user's to fix (space, permissions), not gridflow bugs.
STORAGE_ERRNOS = frozenset(
    e
    for e in (errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EACCES, errno.EPERM)
    if e is not None
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(getattr(e, "exceptions", ()))
        todo.extend((e.__cause__, e.__context__))


def _user_path(path: str) -> str:
    """``path`` with gridflow's temporary sibling names turned back into the target's."""
    from gridflow._staging import TEMPORARY

    parts = []
    for part in os.fspath(path).split(os.sep):
        match = TEMPORARY.match(part)
        parts.append(match.group(1) if match else part)
        if match:
            break  # inside a staged write: the target is what the user named
    return os.sep.join(parts)


def storage_error(exc: BaseException, path: str | os.PathLike | None = None) -> StorageError | None:
    """The filesystem's refusal behind ``exc`` as one line, or None.

    Looks through ``exc``'s causes (an ``OSError`` raised in a Dask task
    arrives as itself) for a read-only filesystem, a full disk or quota, or
    a permission error. ``path`` is what was being written (the command's
    output); the error's own file name is used when it is not given.

    Examples
    --------
    >>> str(storage_error(OSError(errno.ENOSPC, "No space left on device"), "/x/g.zarr"))
    'no space left on device while writing /x/g.zarr; free space or write elsewhere'
    """
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            break
    else:
        return None
    name = e.filename if isinstance(e.filename, str) else None
    where = os.fspath(path) if path is not None else (_user_path(name) if name else None)
    if e.errno == errno.EROFS:
        target = where or "the output"
        message = f"{target} is on a read-only filesystem; write elsewhere or remount it read-write"
    elif e.errno == errno.ENOSPC:
        target = f" while writing {where}" if where else ""
        message = f"no space left on device{target}; free space or write elsewhere"
    elif e.errno == getattr(errno, "EDQUOT", None):
        target = f" while writing {where}" if where else ""
        message = f"disk quota exceeded{target}; free space or write elsewhere"
    else:
        target = _user_path(name) if name else (where or "a file")
        message = f"permission denied on {target}; check its owner and mode, or use another path"
    return StorageError(message)
