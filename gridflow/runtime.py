"""The Dask client a gridflow command runs on.

``scheduler`` chooses the cluster (docs/design.md §4, §5):

``None`` / ``"local"``
    An in-process :class:`distributed.LocalCluster`: scheduler and one worker
    with a thread per core live in this process and talk over ``inproc://``
    (no network socket; the dashboard listens on 127.0.0.1 only).
    ``workers=N`` starts N worker processes instead, all on 127.0.0.1.
``"tcp://host:8786"``, ``"tls://..."``
    A running scheduler; TLS certificates come from Dask's configuration
    (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``)
    or ``security``.
``"scheduler.json"``
    A running scheduler found through its scheduler file.
``"slurm"``, ``"pbs"``
    Workers are batch jobs submitted by dask-jobqueue; cores, memory,
    walltime, queue and account come from the options given here or from
    ``~/.config/dask/jobqueue.yaml``.
``"mpi"``
    Inside ``mpiexec``/``srun``: dask-mpi makes rank 0 the scheduler, rank 1
    runs the command, every other rank is a worker. On ranks other than 1,
    :func:`client` serves until the command ends, then raises ``SystemExit(0)``.
``"gpu"``
    dask-cuda's LocalCUDACluster: one worker per visible GPU, on 127.0.0.1.

Optional dependencies are imported only when their scheduler is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from gridflow.backend import WORKER_CORES_ENV
from gridflow.errors import ClusterError, MissingDependencyError, ParameterError

__all__ = [
    "JOBQUEUE",
    "ClusterMemory",
    "SchedulerOptions",
    "active_client",
    "client",
    "cluster_memory",
    "dashboard_link",
    "job_script",
    "parse_memory_limit",
    "quiet_task_errors",
    "wait_for_running_tasks",
    "worker_memory",
]

log = logging.getLogger(__name__)

#: Scheduler names backed by dask-jobqueue, and their cluster classes.
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
_NAMED = ("local", "mpi", "gpu", *JOBQUEUE)


#: The smallest memory limit taken as meant (no Dask worker runs in less).
MIN_MEMORY = 2**24


def parse_memory_limit(memory_limit: str | int | float | None) -> str | int | float | None:
    """Check a memory limit: ``"4GB"``, ``"512 MiB"``, bytes, a fraction of this
    machine's memory (``0.5``), ``"auto"``, or None (not given); returned as given.

    The rules are distributed's; sizes under 16 MiB are refused as typos.

    Examples
    --------
    >>> parse_memory_limit("4GB")
    '4GB'
    """
    from dask.utils import parse_bytes

    expected = "memory_limit: expected a size like 4GB (or 512MiB, or 'auto')"
    if memory_limit is None or memory_limit == "auto":
        return memory_limit
    value: float
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (str, int, float)):
        raise ParameterError(f"{expected}, got {memory_limit!r}")
    if isinstance(memory_limit, str):
        try:
            value = float(memory_limit)  # distributed reads numbers as bytes or a fraction
        except ValueError:
            try:
                value = parse_bytes(memory_limit) if memory_limit.strip() else 0
            except (ValueError, TypeError):
                value = 0
    else:
        value = float(memory_limit)
    fraction = 0 < value <= 1 and not (isinstance(memory_limit, int))
    if not (fraction or MIN_MEMORY <= value < float("inf")):  # NaN fails both
        raise ParameterError(f"{expected}, got {memory_limit!r}")
    return memory_limit


@dataclass(frozen=True)
class SchedulerOptions:
    """Where and how big: the ``scheduler`` section of a pipeline, or the global options.

    ``None`` means "not given": the scheduler's own default, or for
    ``slurm``/``pbs`` the value in ``jobqueue.yaml``.
    """

    scheduler: str = "local"
    workers: int | None = None
    threads: int | None = None
    memory_limit: str | int | None = None
    cores: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    jobs: int | None = None
    interface: str | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads", "cores", "jobs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ParameterError(f"{name}: expected a positive integer, got {value!r}")
        parse_memory_limit(self.memory_limit)
        s = self.scheduler or "local"
        object.__setattr__(self, "scheduler", s)
        if not (s in _NAMED or s.endswith(".json") or "://" in s):
            raise ParameterError(
                "scheduler: expected 'local', 'slurm', 'pbs', 'mpi', 'gpu', an address "
                f"(tcp://host:port, tls://host:port) or a scheduler file (.json), got {s!r}"
            )

    def replace(self, **changes: Any) -> SchedulerOptions:
        """A copy with the given options changed; ``None`` values change nothing."""
        given = {k: v for k, v in changes.items() if v is not None}
        return SchedulerOptions(**{**asdict(self), **given})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _require(module: str, scheduler: str, package: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"scheduler {scheduler}: needs {package} ({exc}); install it with "
            f"pip install 'gridflow[{extra}]'"
        ) from None


@contextlib.contextmanager
def client(
    scheduler: str | SchedulerOptions | None = None,
    *,
    security: Any = None,
    **options: Any,
) -> Iterator[Any]:
    """Start or connect to a Dask cluster for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str or SchedulerOptions, optional
        ``None``/``"local"``, ``"slurm"``, ``"pbs"``, ``"mpi"``, ``"gpu"``, a
        scheduler address (``tcp://...``, ``tls://...``) or a scheduler file
        (``.json``); see the module docstring.
    security : distributed.Security, optional
        TLS credentials for a ``tls://`` address (default: Dask's configuration).
    **options
        Fields of :class:`SchedulerOptions`: ``workers`` (worker processes of
        a local or GPU cluster), ``threads`` (per worker), ``memory_limit``
        (per worker, ``"4GB"``; per job for slurm/pbs), ``cores``,
        ``walltime``, ``queue``, ``account``, ``jobs`` (slurm/pbs),
        ``interface`` (network interface of mpi/slurm/pbs, e.g. ``ib0``).

    Examples
    --------
    >>> with client() as c:  # doctest: +SKIP
    ...     print(c.dashboard_link)
    """
    if isinstance(scheduler, SchedulerOptions):
        opts = scheduler.replace(**options)
    else:
        opts = SchedulerOptions(scheduler=scheduler or "local", **options)
    s = opts.scheduler
    if s == "local":
        with _local(opts) as c:
            yield c
    elif s in JOBQUEUE:
        with _jobqueue(opts) as c:
            yield c
    elif s == "mpi":
        with _mpi(opts) as c:
            yield c
    elif s == "gpu":
        with _gpu(opts) as c:
            yield c
    elif s.endswith(".json"):
        from distributed import Client

        if not os.path.exists(s):
            raise ParameterError(f"scheduler: the scheduler file {s} does not exist")
        with _connect(lambda: Client(scheduler_file=s, security=security), s) as c:
            log.info("connected through %s (dashboard %s)", s, c.dashboard_link)
            yield c
    else:
        from distributed import Client

        with _connect(lambda: Client(s, security=security), s) as c:
            log.info("connected to %s (dashboard %s)", s, c.dashboard_link)
            yield c


def _connect(make: Any, where: str) -> Any:
    """``make()`` (a Client of a running scheduler), or one line when it cannot be reached.

    distributed retries for ``distributed.comm.timeouts.connect`` (30 s by
    default; ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s`` changes it).
    """
    import dask
    from dask.utils import parse_timedelta

    try:
        return make()
    except (OSError, TimeoutError) as exc:
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        why = "" if first.startswith("Timed out") else f" ({first})"
        raise ClusterError(
            f"scheduler: cannot reach the Dask scheduler at {where} within {timeout:g} s{why}; "
            "check the address and that the scheduler runs, or leave --scheduler out for a "
            "local cluster",
            param="scheduler",
        ) from None


def _threads(opts: SchedulerOptions, workers: int) -> int:
    return opts.threads or max(1, (os.cpu_count() or 1) // workers)


#: glibc malloc settings of local worker processes. distributed starts workers
#: with ``MALLOC_TRIM_THRESHOLD_=65536`` (give freed memory back at once), which
#: also pins the mmap threshold at 128 KiB: every chunk-sized temporary of a
#: round is then a fresh mapping whose pages fault in again, and a 456² x 5
#: vote round ran 1.5x slower alone, 2x slower beside a second worker (one-off
#: timings of fused_steps on one block). Blocks under 64 MiB come from the heap and
#: are reused; free memory past 128 MiB at the heap's top still goes back.
MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


@contextlib.contextmanager
def _local(opts: SchedulerOptions) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    kwargs: dict[str, Any] = {
        "dashboard_address": "127.0.0.1:0",
        # Each worker serves its own HTTP status page: on all interfaces unless told.
        "worker_dashboard_address": "127.0.0.1:0",
        "memory_limit": opts.memory_limit if opts.memory_limit is not None else "auto",
    }
    cores = os.cpu_count() or 1
    if opts.workers is None:
        # In-process: scheduler and worker talk over inproc://, no socket.
        cluster = LocalCluster(
            processes=False, n_workers=1, threads_per_worker=_threads(opts, 1), **kwargs
        )
        here = {WORKER_CORES_ENV: str(cores)}  # the worker runs in this process
    else:
        # Each worker process owns its share of the cores: its tasks' FFTs and
        # compiled loops split that share (gridflow.backend.task_threads).
        here = {}
        spawn = {**MALLOC_ENVIRON, WORKER_CORES_ENV: str(max(1, cores // opts.workers))}
        config = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in spawn.items()}
        with dask.config.set(config):  # read by each nanny as it is created
            cluster = LocalCluster(
                host="127.0.0.1",
                processes=True,
                n_workers=opts.workers,
                threads_per_worker=_threads(opts, opts.workers),
                **kwargs,
            )
    with _environ(here), cluster, Client(cluster) as c:
        log.info("local Dask cluster: %s (dashboard %s)", c.scheduler.address, dashboard_link(c))
        yield c


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block, restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dashboard_link(c: Any) -> str:
    """The dashboard's address as it is bound: 127.0.0.1 for a local cluster.

    Dask's own ``dashboard_link`` names the host's address even where the
    dashboard listens on loopback only.
    """
    port = c.scheduler_info().get("services", {}).get("dashboard")
    if port and c.scheduler.address.startswith(("inproc://", "tcp://127.0.0.1:")):
        return f"http://127.0.0.1:{port}/status"
    return c.dashboard_link


def _jobqueue_cluster(opts: SchedulerOptions) -> Any:
    """The dask-jobqueue cluster object (a scheduler in this process, no job yet)."""
    import dask

    jq = _require("dask_jobqueue", opts.scheduler, "dask-jobqueue", "hpc")
    cls = getattr(jq, JOBQUEUE[opts.scheduler])
    section = f"jobqueue.{opts.scheduler}"
    for name, config in (("cores", "cores"), ("memory_limit", "memory")):
        if getattr(opts, name) is None and dask.config.get(f"{section}.{config}", None) is None:
            flag = name.replace("_", "-")
            raise ParameterError(
                f"{name}: scheduler {opts.scheduler} needs the {config} of one job; pass "
                f"--{flag} (scheduler.{name} in a pipeline) or set {section}.{config} in "
                "~/.config/dask/jobqueue.yaml"
            )
    kwargs: dict[str, Any] = {
        "cores": opts.cores,
        "memory": opts.memory_limit,
        "walltime": opts.walltime,
        "queue": opts.queue,
        "account": opts.account,
        "interface": opts.interface,
    }
    if opts.workers is not None:
        kwargs["processes"] = opts.workers  # worker processes per job
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if opts.interface is None and dask.config.get(f"{section}.interface", None) is None:
        # Jobs reach the scheduler by this host's name; the dashboard stays local.
        kwargs["scheduler_options"] = {"dashboard_address": "127.0.0.1:0"}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # dask-jobqueue's own checks (walltime, memory format, ...)
        raise ParameterError(f"scheduler {opts.scheduler}: {exc}".splitlines()[0]) from None


def job_script(scheduler: str | SchedulerOptions, **options: Any) -> str:
    """The batch script dask-jobqueue would submit for one job of ``slurm``/``pbs``.

    Nothing is submitted: useful to check resources before a run.

    Examples
    --------
    >>> print(job_script("pbs", cores=8, memory_limit="32GB", walltime="02:00:00"))  # doctest: +SKIP
    """
    opts = (
        scheduler.replace(**options)
        if isinstance(scheduler, SchedulerOptions)
        else SchedulerOptions(scheduler=scheduler, **options)
    )
    if opts.scheduler not in JOBQUEUE:
        raise ParameterError(
            f"scheduler: job scripts exist for {sorted(JOBQUEUE)}, got {opts.scheduler!r}"
        )
    with _jobqueue_cluster(opts) as cluster:
        return cluster.job_script()


@contextlib.contextmanager
def _jobqueue(opts: SchedulerOptions) -> Iterator[Any]:
    from distributed import Client

    cluster = _jobqueue_cluster(opts)
    jobs = opts.jobs or 1
    with cluster, Client(cluster) as c:
        log.info(
            "%s: submitting %d job(s) for workers; scheduler %s (dashboard %s)",
            opts.scheduler,
            jobs,
            c.scheduler.address,
            c.dashboard_link,
        )
        log.debug("job script:\n%s", cluster.job_script())
        cluster.scale(jobs=jobs)
        # Memory-aware choices (chunks, binning strategy) read the workers.
        c.wait_for_workers(1)
        log.info("%s: %d worker(s) up", opts.scheduler, len(c.scheduler_info()["workers"]))
        yield c


@contextlib.contextmanager
def _mpi(opts: SchedulerOptions) -> Iterator[Any]:
    _require("mpi4py", "mpi", "mpi4py and an MPI library", "hpc")
    dask_mpi = _require("dask_mpi", "mpi", "dask-mpi", "hpc")
    from distributed import Client
    from mpi4py import MPI

    size = MPI.COMM_WORLD.Get_size()
    if size < 3:
        raise ParameterError(
            f"scheduler mpi: needs at least 3 MPI ranks (scheduler, client, workers), "
            f"got {size}; launch with mpiexec -n 4 (or srun -n 4)"
        )
    is_client = dask_mpi.initialize(
        interface=opts.interface,
        nthreads=opts.threads or 1,
        memory_limit=opts.memory_limit if opts.memory_limit is not None else "auto",
        exit=False,
    )
    if not is_client:
        raise SystemExit(0)  # the scheduler or a worker: served until rank 1 ended
    c = Client()
    try:
        c.wait_for_workers(size - 2)
        log.info(
            "dask-mpi: %d workers, scheduler %s (dashboard %s)",
            size - 2,
            c.scheduler.address,
            c.dashboard_link,
        )
        yield c
    finally:
        # Ends the scheduler and the workers, so every rank exits.
        with contextlib.suppress(Exception):
            c.shutdown()
        c.close()


@contextlib.contextmanager
def _gpu(opts: SchedulerOptions) -> Iterator[Any]:
    dask_cuda = _require("dask_cuda", "gpu", "dask-cuda", "gpu")
    from distributed import Client

    kwargs: dict[str, Any] = {
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "worker_dashboard_address": "127.0.0.1:0",
        "threads_per_worker": opts.threads or 1,
    }
    if opts.workers is not None:
        kwargs["n_workers"] = opts.workers
    if opts.memory_limit is not None:
        kwargs["memory_limit"] = opts.memory_limit
    with dask_cuda.LocalCUDACluster(**kwargs) as cluster, Client(cluster) as c:
        log.info(
            "dask-cuda: %d GPU worker(s), scheduler %s (dashboard %s)",
            len(c.scheduler_info()["workers"]),
            c.scheduler.address,
            dashboard_link(c),
        )
        yield c


#: What distributed's workers log about a failing task, and about the teardown
#: that follows when the command stops on it (tasks cancelled, scheduler gone).
_TASK_FAILURE = (
    "Compute Failed",
    "Async instruction for",
    "Failed to communicate with scheduler during heartbeat",
)


class _NoTaskFailure(logging.Filter):
    """Drops distributed's own report of a task's exception (the caller reports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TASK_FAILURE)


def _quiet_here() -> None:
    for name in ("distributed.worker", "distributed.worker.state_machine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTaskFailure) for f in logger.filters):
            logger.addFilter(_NoTaskFailure())


def quiet_task_errors(c: Any = None) -> None:
    """Silence distributed's "Compute Failed" log of a failing task.

    The caller reports the exception itself (the CLI prints one line).
    Without a client: in this process (an in-process cluster's workers);
    with one: also in the processes of its workers. Only for clusters the
    caller started: a shared cluster's logs are its owner's.
    """
    _quiet_here()
    if c is not None:
        with contextlib.suppress(Exception):  # only noise: never fail a run for it
            c.run(_quiet_here)


def _running_tasks(dask_worker: Any) -> int:
    return len(dask_worker.state.all_running_tasks)


def wait_for_running_tasks(timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` s) until no task runs on the active cluster's workers.

    A computation that failed on one task returns while its other tasks
    still run; a caller cleaning up what they write waits for them first.
    """
    import time

    c = active_client()
    end = time.monotonic() + timeout
    while c is not None and time.monotonic() < end:
        try:
            if not any(c.run(_running_tasks).values()):
                return
        except Exception:  # a worker gone meanwhile: nothing more to wait for there
            return
        time.sleep(0.05)


def active_client() -> Any:
    """The Dask client of the running ``with client()`` block, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True)
class ClusterMemory:
    """Memory of the active cluster's workers (this machine's without a client)."""

    total: float  # bytes, every worker together
    workers: int
    smallest: float  # bytes of the smallest worker
    threads: int  # tasks the smallest worker runs at once


def cluster_memory() -> ClusterMemory:
    """The workers' memory: all of them, and the smallest (see :func:`worker_memory`).

    A worker without a limit counts as this machine's memory.
    """
    import psutil

    machine = float(psutil.virtual_memory().total)
    c = active_client()
    if c is not None:
        workers = c.scheduler_info(n_workers=-1)["workers"].values()
        limits = [(float(w.get("memory_limit") or machine), w.get("nthreads", 1)) for w in workers]
        if limits:
            smallest, threads = min(limits)
            total = sum(m for m, _ in limits)
            return ClusterMemory(total, len(limits), smallest, int(threads))
    return ClusterMemory(machine, 1, machine, os.cpu_count() or 1)


def worker_resources() -> dict[str, Any]:
    """What the memory planner plans for: one worker's memory limit and threads,
    and the threads of the whole cluster (keywords of
    :func:`gridflow.engine.planner.plan_filter`)."""
    memory, threads = worker_memory()
    client = active_client()
    total = sum(client.nthreads().values()) if client is not None else threads
    return {"memory": memory, "threads": threads, "total_threads": total}


def worker_memory() -> tuple[float, int]:
    """(bytes one worker may use, tasks it runs at once) on the active scheduler.

    The smallest worker counts; without a client, this machine's memory and
    cores (see :func:`cluster_memory`).
    """
    mem = cluster_memory()
    return mem.smallest, mem.threads
