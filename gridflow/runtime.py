"""The Dask client a gridflow command runs on.

By default an in-process :class:`distributed.LocalCluster`: scheduler and
one worker with a thread per core live in this process and talk over
``inproc://`` (no network socket; the dashboard listens on 127.0.0.1 only).
The compiled kernels release the GIL, and nothing is serialised. ``workers=N`` starts N worker
processes instead; ``scheduler`` connects to a running cluster by address
(``tcp://host:8786``, ``tls://...``) or scheduler file (a ``.json`` path).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from gridflow.errors import ParameterError

__all__ = ["client"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    memory_limit: str | int | None = None,
) -> Iterator[Any]:
    """Start or connect to a Dask cluster for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        None or ``"local"`` for a LocalCluster on 127.0.0.1; a scheduler
        address (``tcp://...``, ``tls://...``); or a scheduler file path.
    workers : int, optional
        Worker processes of the LocalCluster; default one in-process worker
        with a thread per core.
    memory_limit : str or int, optional
        Memory limit per worker of the LocalCluster (``"4GB"``).

    Examples
    --------
    >>> with client() as c:  # doctest: +SKIP
    ...     print(c.dashboard_link)
    """
    from distributed import Client, LocalCluster

    if scheduler in (None, "", "local"):
        cores = os.cpu_count() or 1
        if workers is not None and workers < 1:
            raise ParameterError(f"workers: expected a positive number, got {workers}")
        kwargs: dict[str, Any] = {
            "dashboard_address": "127.0.0.1:0",
            "memory_limit": memory_limit if memory_limit is not None else "auto",
        }
        if workers is None:
            # In-process: scheduler and worker talk over inproc://, no socket.
            cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=cores, **kwargs)
        else:
            cluster = LocalCluster(
                host="127.0.0.1",
                processes=True,
                n_workers=workers,
                threads_per_worker=max(1, cores // workers),
                **kwargs,
            )
        with cluster, Client(cluster) as c:
            log.info("local Dask cluster: %s (dashboard %s)", c.scheduler.address, c.dashboard_link)
            yield c
        return
    if scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        with Client(scheduler) as c:
            log.info("connected to %s (dashboard %s)", scheduler, c.dashboard_link)
            yield c
        return
    if scheduler.endswith(".json"):
        if not os.path.exists(scheduler):
            raise ParameterError(f"scheduler: the scheduler file {scheduler} does not exist")
        with Client(scheduler_file=scheduler) as c:
            log.info("connected through %s (dashboard %s)", scheduler, c.dashboard_link)
            yield c
        return
    raise ParameterError(
        f"scheduler: expected 'local', an address (tcp://host:port) or a scheduler file "
        f"(.json), got {scheduler!r}"
    )
