"""The Dask client a command runs on, from the global options or a pipeline's."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import click


def global_scheduler() -> dict[str, Any]:
    """The global options (--scheduler, --workers, ...) of the running command; None: not given."""
    return click.get_current_context().obj["scheduler"]


def global_backend() -> str | None:
    """``--backend``, else ``"cupy"`` with ``--scheduler gpu``, else None (as stored)."""
    obj = click.get_current_context().obj
    given = obj.get("backend")
    if given is None and obj["scheduler"].get("scheduler") == "gpu":
        return "cupy"
    return given


def connect(options: Any = None) -> Any:
    """The ``with`` block's Dask client: ``options`` (SchedulerOptions) or the global options."""
    # Dask's own chatter (cluster start and stop) is noise below debug level;
    # distributed sets its loggers' levels when imported, so set them after.
    import distributed  # noqa: F401  (configures its loggers on import)

    from gridflow.runtime import SchedulerOptions

    quiet = max(logging.WARNING, logging.getLogger().level)
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(quiet)
    if options is None:
        given = {k: v for k, v in global_scheduler().items() if v is not None}
        options = SchedulerOptions(**given)
    # A task's error is the command's one error line, not also distributed's
    # "Compute Failed" report (kept at --log-level debug).
    return _client(options, quiet=logging.getLogger().level > logging.DEBUG)


@contextlib.contextmanager
def _client(options: Any, *, quiet: bool) -> Iterator[Any]:
    from gridflow.runtime import client, quiet_task_errors

    if quiet:
        quiet_task_errors()
    with client(options) as c:
        if quiet and options.scheduler in ("local", "mpi", "gpu"):
            quiet_task_errors(c)  # the workers this command started, in their processes
        try:
            yield c
        except BaseException:
            if quiet:  # the error is the one line: stopping the cluster on it is not news
                for name in list(logging.root.manager.loggerDict):
                    if name.split(".")[0] in ("distributed", "tornado", "asyncio"):
                        logging.getLogger(name).setLevel(logging.CRITICAL)
            raise
