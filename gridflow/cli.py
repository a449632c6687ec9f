"""The ``gridflow`` command line.

Every subcommand reads and writes files (Parquet points, Zarr stores) and
runs on a Dask cluster chosen by the global options. Bad input ends with a
one-line ``error:`` message on stderr and exit code 2; nothing half-written
is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from gridflow.errors import GridflowError, InputDataError, StoreError, storage_error

log = logging.getLogger("gridflow")

EXIT_USAGE = 2


def _fail(message: str) -> None:
    """Print ``error: message`` (one line) on stderr and exit with code 2."""
    line = " ".join(str(message).split())  # one line, whatever the message holds
    click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_USAGE)


# Parameters of a command that name what it writes, then what it reads, in
# the order a filesystem error is blamed on them.
_OUTPUTS = ("out", "all_dir", "out_dir", "json_out", "animation", "store")
_STORES = ("store",)
_POINTS = ("input_", "points", "test_points", "train")
_DECODE = re.compile(r"decompress|decod|codec|corrupt|checksum|crc|invalid input", re.I)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into one ``error:`` line and exit code 2.

    gridflow's own errors (raised here or in a Dask task) name their
    parameter as the command's option (``--min-cells``, not ``min_cells``);
    a filesystem that refuses a write (read-only, full, over quota, no
    permission), a damaged chunk of a store and an unreadable input file
    are named with the command's paths. Anything else is a bug and keeps
    its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = _message(exc, kwargs)
            if message is None:
                raise
            _fail(message)

    return wrapper


def _message(exc: BaseException, kwargs: dict[str, Any]) -> str | None:
    """The one line for ``exc`` raised by a command called with ``kwargs``, or None."""
    from gridflow.errors import causes

    for e in causes(exc):
        if isinstance(e, GridflowError):
            return _render(e)
    path = next((kwargs[k] for k in _OUTPUTS if kwargs.get(k)), None)
    disk = storage_error(exc, path)
    if disk is not None:
        return str(disk)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return f"{exc.strerror}: {exc.filename}; check the path"
    reason = _first_line(exc)
    store = next((kwargs[k] for k in _STORES if kwargs.get(k)), None)
    # A command given a store reads no other JSON (a pipeline is YAML).
    if _from_zarr(exc) or (isinstance(exc, json.JSONDecodeError) and store is not None):
        what = "its metadata" if isinstance(exc, json.JSONDecodeError) else "a chunk"
        where = store or "the store"
        return (
            f"store: cannot read {where}: {what} is damaged ({reason}); restore the store from "
            "a copy or recreate it with `gridflow bin`"
        )
    points = next((kwargs[k] for k in _POINTS if kwargs.get(k)), None)
    if points is not None and _from_reader(exc):
        return (
            f"points: cannot read {points} ({reason}); the file is damaged or not in the "
            "format its name says: write it again"
        )
    return None


def _render(exc: GridflowError) -> str:
    """``exc``'s message, its parameter named as the command's option."""
    message = str(exc)
    param = exc.param
    if param is None or isinstance(exc, (InputDataError, StoreError)):
        return message  # "points: ...", "store: ...": about an argument, not an option
    flag = _flag(param)
    if flag is None or not message.startswith(f"{param}:"):
        return message
    return flag + message[len(param) :]


def _flag(param: str) -> str | None:
    """The long option (``--min-cells``) of the running command or the group for ``param``."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        for p in ctx.command.params:
            if not isinstance(p, click.Option):
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            names = {p.name, *(o[2:].replace("-", "_") for o in longs)}
            if longs and param in names:
                return longs[0]
        ctx = ctx.parent
    return None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    text = "".join(ch for ch in lines[0] if ch.isprintable()) if lines else ""
    return text.strip().rstrip(".:").strip() or type(exc).__name__


def _frames(exc: BaseException) -> list[str]:
    tb, files = exc.__traceback__, []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return files


def _in_zarr(exc: BaseException) -> bool:
    return any(("/zarr/" in f or "/numcodecs/" in f) for f in _frames(exc))


def _from_zarr(exc: BaseException) -> bool:
    """A chunk that does not decode (raised by the codec, here or in a worker)."""
    if not isinstance(exc, (RuntimeError, ValueError, OSError, EOFError)):
        return False
    if "/numcodecs/" in "".join(_frames(exc)):
        return True
    return bool(_DECODE.search(str(exc))) and (_in_zarr(exc) or not exc.__traceback__)


def _from_reader(exc: BaseException) -> bool:
    """A point file that pyarrow or pandas cannot read."""
    try:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):
            return True
    except ImportError:  # pragma: no cover
        pass
    import pandas as pd

    if isinstance(exc, (pd.errors.ParserError, UnicodeDecodeError)):
        return True
    return isinstance(exc, OSError) and exc.errno is None


class _UsageError(click.ClickException):
    """A click usage error, shown as one ``error:`` line like gridflow's own."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(exc: click.UsageError) -> _UsageError:
    message = exc.format_message().strip().rstrip(".")
    param = getattr(exc, "param", None)
    if isinstance(exc, click.MissingParameter):
        message = message[:1].lower() + message[1:]
    elif isinstance(exc, click.BadParameter) and param is not None and exc.param_hint is None:
        longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        name = longs[0] if longs else param.human_readable_name
        message = f"{name}: {exc.message.rstrip('.')}"
    else:
        message = message[:1].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "gridflow"
    return _UsageError(f"{message}; see `{command} --help`")


class _Gridflow(click.Group):
    """The ``gridflow`` group: click's own usage errors are one line too (DESIGN §5)."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _memory_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--memory-limit``, checked when the command line is parsed."""
    from gridflow.errors import ParameterError
    from gridflow.runtime import parse_memory_limit

    try:
        return parse_memory_limit(value)
    except ParameterError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], ctx=ctx, param=param) from None


@click.group(
    cls=_Gridflow,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="gridflow")
@click.option(
    "--scheduler",
    default=None,
    metavar="SCHEDULER",
    help="Dask scheduler: 'local' (default: an in-process cluster on 127.0.0.1), "
    "'slurm' or 'pbs' (workers are batch jobs, dask-jobqueue), 'mpi' (inside mpiexec/srun, "
    "dask-mpi), 'gpu' (dask-cuda), an address tcp://host:port or tls://host:port, or a "
    "scheduler file (.json).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Worker processes: of the local cluster (default: one in-process worker), of the "
    "GPU cluster (default: one per GPU), or per slurm/pbs job.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Threads per worker (local, mpi, gpu; slurm/pbs: cores / workers).",
)
@click.option(
    "--memory-limit",
    default=None,
    callback=_memory_limit,
    help="Memory per local worker, or per slurm/pbs job: 4GB.",
)
@click.option("--cores", type=int, default=None, help="Cores per slurm/pbs job.")
@click.option("--jobs", type=int, default=None, help="slurm/pbs jobs to submit (default 1).")
@click.option("--walltime", default=None, help="Walltime of a slurm/pbs job: 01:00:00.")
@click.option("--queue", default=None, help="slurm partition or pbs queue.")
@click.option("--account", default=None, help="slurm/pbs account to charge.")
@click.option("--interface", default=None, help="Network interface of mpi/slurm/pbs workers: ib0.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress of long stages: always a bar / nothing. "
    "Default: a bar on a terminal, else a log line every 10 s.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, progress: bool | None, **scheduler: Any) -> None:
    """Classify and cluster huge point datasets with image convolution filters.

    slurm and pbs settings not given here come from ~/.config/dask/jobqueue.yaml.
    """
    from gridflow.progress import set_progress

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    set_progress(progress)
    _exit_on_sigterm()
    _one_line_warnings()
    ctx.obj = {"scheduler": scheduler}


def _one_line_warnings() -> None:
    """gridflow's warnings as ``warning: ...`` lines, like its errors (others as Python shows them)."""
    import warnings

    from gridflow.errors import GridflowWarning

    shown = warnings.showwarning

    def show(message: Any, category: Any, filename: Any, lineno: Any, *args: Any) -> None:
        if issubclass(category, GridflowWarning):
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            shown(message, category, filename, lineno, *args)

    warnings.showwarning = show


def _exit_on_sigterm() -> None:
    """SIGTERM (a batch job's preemption or walltime) ends the command at once,
    the store's lock given back and its staging folder removed; the stage's
    last complete round stays for --resume. (Raising from the handler could
    land in a garbage-collector callback, which swallows it.)"""
    import os
    import signal

    def stop(signum: int, frame: Any) -> None:
        from gridflow.store import abandon_writes

        abandon_writes()
        click.echo(
            "error: stopped by SIGTERM; rerun the same command with --resume to continue "
            "from the last complete round",
            err=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (e.g. embedded)
        signal.signal(signal.SIGTERM, stop)


def _cluster(ctx: click.Context, options: Any = None) -> Any:
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
        given = {k: v for k, v in ctx.obj["scheduler"].items() if v is not None}
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


@main.command()
@click.argument("out", type=click.Path(dir_okay=True, writable=True))
@click.option(
    "--points", "n_points", type=int, default=1_000_000, show_default=True, help="Number of points."
)
@click.option("--dims", type=int, default=2, show_default=True, help="Dimension of the space.")
@click.option("--classes", type=int, default=5, show_default=True, help="Number of classes K.")
@click.option(
    "--scale",
    type=float,
    default=0.15,
    show_default=True,
    help="Perturbation scale s: larger means more overlap between classes.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--distribution",
    type=click.Choice(["logistic", "uniform", "cauchy"]),
    default="logistic",
    show_default=True,
    help="Perturbation distribution F.",
)
@click.option(
    "--extent",
    type=int,
    default=10,
    show_default=True,
    help="Lattice points per dim span -extent..extent.",
)
@click.option(
    "--modulo/--no-modulo",
    default=True,
    show_default=True,
    help="Map points onto the period box [0,1)^d (the torus of the reference method).",
)
@click.option("--bayes", is_flag=True, help="Add the Bayes-optimal class of each point.")
@click.option(
    "--partitions", type=int, default=None, help="Parquet partitions (default ~1M rows each)."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
@_errors
def synth(
    ctx: click.Context,
    out: str,
    n_points: int,
    dims: int,
    classes: int,
    scale: float,
    seed: int,
    distribution: str,
    extent: int,
    modulo: bool,
    bayes: bool,
    partitions: int | None,
    overwrite: bool,
) -> None:
    """Generate labeled points (superimposed perturbed lattices) into OUT.parquet."""
    from gridflow.synth import write_points

    t0 = time.perf_counter()
    with _cluster(ctx):
        write_points(
            out,
            n_points,
            dims=dims,
            classes=classes,
            scale=scale,
            seed=seed,
            distribution=distribution,
            extent=extent,
            modulo=modulo,
            bayes=bayes,
            npartitions=partitions,
            overwrite=overwrite,
        )
    click.echo(
        f"wrote {n_points:,} points ({dims}-D, {classes} classes) to {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )


@main.command("bin")
@click.argument("input_", metavar="INPUT")
@click.argument("store", type=click.Path())
@click.option(
    "--columns",
    default=None,
    help="Coordinate columns, e.g. x,y (default: every numeric column but the label).",
)
@click.option("--label", default="label", show_default=True, help="Label column.")
@click.option("--bins", required=True, help="Cells per dim: 400, or 400,300.")
@click.option("--bounds", default=None, help="lo,hi per dim, e.g. 0,1,0,1 (default: data range).")
@click.option(
    "--periodic/--no-periodic",
    default=None,
    help="Wrap every dim (a torus). Default: off, or as recorded by `gridflow synth`.",
)
@click.option(
    "--chunks", default="auto", show_default=True, help="Spatial chunk size: 256 or 256,128."
)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "tree", "chunked"]),
    default="auto",
    show_default=True,
    help="tree: sum per-partition grids; chunked: group by output chunk.",
)
@click.option(
    "--strict", is_flag=True, help="Refuse rows with NaN/inf, out-of-range or bad labels."
)
@click.option(
    "--max-classes",
    type=int,
    default=1024,
    show_default=True,
    help="Refuse a label column with more distinct values (usually the wrong --label).",
)
@click.option("--overwrite", is_flag=True, help="Replace STORE if it is a gridflow store.")
@click.pass_context
@_errors
def bin_(
    ctx: click.Context,
    input_: str,
    store: str,
    columns: str | None,
    label: str,
    bins: str,
    bounds: str | None,
    periodic: bool | None,
    chunks: str,
    strategy: str,
    strict: bool,
    max_classes: int,
    overwrite: bool,
) -> None:
    """Bin the labeled points of INPUT into per-class counts in the Zarr STORE."""
    from gridflow.binning import bin_points

    t0 = time.perf_counter()
    with _cluster(ctx):
        ds = bin_points(
            input_,
            store,
            columns=columns,
            label=label,
            bins=bins,
            bounds=bounds,
            periodic=periodic,
            chunks=chunks,
            strategy=strategy,
            strict=strict,
            max_classes=max_classes,
            overwrite=overwrite,
        )
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    from gridflow.binning import BinReport

    click.echo(BinReport(**report).summary())
    click.echo(f"wrote {store} in {time.perf_counter() - t0:.1f} s")


def _filter_options(weights: str, steps: str) -> Callable[[Callable[..., Any]], Any]:
    """The filter's options (--kernel, --window, --sigma, --iterations) of a command."""
    options = [
        click.option(
            "--kernel",
            default="inverse_distance",
            show_default=True,
            type=click.Choice(["inverse_distance", "box", "gaussian"]),
            help=weights,
        ),
        click.option(
            "--window",
            type=int,
            default=10,
            show_default=True,
            help="Window radius w (10 means 21 cells wide).",
        ),
        click.option(
            "--sigma", type=float, default=None, help="Gaussian sigma (default: window / 2)."
        ),
        click.option("--iterations", default="3", show_default=True, help=f"{steps}, or 'auto'."),
    ]

    def apply(fn: Callable[..., Any]) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


_BOUNDARY = click.option(
    "--boundary",
    type=click.Choice(["periodic", "open"]),
    default=None,
    help="Edges of the grid: periodic wraps, open has nothing beyond. "
    "Default: the store's own (periodic when every dim wraps).",
)


@main.command("classify")
@click.argument("store", type=click.Path())
@_filter_options("Window weights.", "Vote steps")
@click.option(
    "--tol",
    type=float,
    default=1e-4,
    show_default=True,
    help="With --iterations auto: stop when at most this fraction of cells changes.",
)
@click.option(
    "--max-iter",
    type=int,
    default=100,
    show_default=True,
    help="With --iterations auto: the most steps (a warning says when it stops there).",
)
@_BOUNDARY
@click.option(
    "--seed",
    "seed_",
    type=click.Choice(["labels", "counts"]),
    default="labels",
    show_default=True,
    help="First step votes with cell labels or with point counts.",
)
@click.option("--clamp", is_flag=True, help="Keep cells holding training points at their class.")
@click.option("--probabilities", is_flag=True, help="Also store per-class vote fractions.")
@click.option("--resume", is_flag=True, help="Continue from the last complete round.")
@click.option(
    "--tune",
    is_flag=True,
    help="Pick --window and --iterations by accuracy on held-out training points.",
)
@click.pass_context
@_errors
def classify_(
    ctx: click.Context,
    store: str,
    kernel: str,
    window: int,
    sigma: float | None,
    iterations: str,
    tol: float,
    max_iter: int,
    boundary: str | None,
    seed_: str,
    clamp: bool,
    probabilities: bool,
    resume: bool,
    tune: bool,
) -> None:
    """Fill STORE's grid with labels by iterating the vote filter."""
    from gridflow.classify import classify
    from gridflow.classify import tune as tune_grid

    t0 = time.perf_counter()
    iters: int | str = iterations if iterations == "auto" else _int_option("iterations", iterations)
    with _cluster(ctx):
        if tune:
            best, results = tune_grid(
                store, kernel=kernel, sigma=sigma, boundary=boundary, seed=seed_, clamp=clamp
            )
            for r in results:
                click.echo(
                    f"  window {r['window']:>3}  iterations {r['iterations']:>3}  "
                    f"held-out accuracy {r['accuracy']:.2%}"
                )
            window, iters = best["window"], best["iterations"]
            click.echo(f"tuned: window {window}, iterations {iters}")
        ds = classify(
            store,
            kernel=kernel,
            window=window,
            sigma=sigma,
            iterations=iters,
            tol=tol,
            max_iter=max_iter,
            boundary=boundary,
            seed=seed_,
            clamp=clamp,
            probabilities=probabilities,
            resume=resume,
        )
    stage = ds.attrs["gridflow_stages"]["classify"]
    last = stage["history"][-1]
    click.echo(
        f"classified {store}: {stage['steps']} steps, {last['labeled']:.2%} of cells "
        f"labeled, {last['changed']:.4%} changed in the last step "
        f"({time.perf_counter() - t0:.1f} s)"
    )


@main.command("cluster")
@click.argument("store", type=click.Path())
@_filter_options("Density filter weights.", "Density steps")
@_BOUNDARY
@click.option(
    "--seed",
    "seed_",
    type=click.Choice(["labels", "counts"]),
    default="labels",
    show_default=True,
    help="First density step counts occupied cells (labels) or points (counts).",
)
@click.option(
    "--levels",
    default="0.08,0.18,0.28,0.42,0.62,0.80,0.95",
    show_default=True,
    help="Number of equalized levels (16) or the cut quantiles (0.1,0.5,0.9).",
)
@click.option(
    "--method",
    type=click.Choice(["cells", "distinct"]),
    default="cells",
    show_default=True,
    help="Equalize over cells, or over distinct densities (the reference's rule).",
)
@click.option(
    "--level",
    default="auto",
    show_default=True,
    help="Level whose components are the clusters, or 'auto' (most persistent).",
)
@click.option(
    "--min-cells",
    type=int,
    default=20,
    show_default=True,
    help="Components with fewer cells are noise.",
)
@click.option(
    "--connectivity",
    type=int,
    default=1,
    show_default=True,
    help="1: cells sharing a face connect; up to the number of dims.",
)
@click.option("--fill", is_flag=True, help="Give every cell a cluster (no noise).")
@click.option(
    "--resume", is_flag=True, help="Do nothing if the stage is finished with these parameters."
)
@click.pass_context
@_errors
def cluster_(
    ctx: click.Context,
    store: str,
    kernel: str,
    window: int,
    sigma: float | None,
    iterations: str,
    boundary: str | None,
    seed_: str,
    levels: str,
    method: str,
    level: str,
    min_cells: int,
    connectivity: int,
    fill: bool,
    resume: bool,
) -> None:
    """Cluster STORE's grid: density, equalized levels, connected components."""
    from gridflow.cluster import cluster

    t0 = time.perf_counter()
    iters: int | str = iterations if iterations == "auto" else _int_option("iterations", iterations)
    cut: int | str = level if level == "auto" else _int_option("level", level)
    with _cluster(ctx):
        ds = cluster(
            store,
            kernel=kernel,
            window=window,
            sigma=sigma,
            iterations=iters,
            boundary=boundary,
            seed=seed_,
            levels=levels,
            method=method,
            level=cut,
            min_cells=min_cells,
            connectivity=connectivity,
            fill=fill,
            resume=resume,
        )
    stage = ds.attrs["gridflow_stages"]["cluster"]
    nlevels = len(stage["levels"]) + 1
    filled = f", filled in {stage['fill_steps']} steps" if stage["fill"] else ""
    click.echo(
        f"clustered {store}: {stage['clusters']} clusters at level {stage['cut_level']} of "
        f"0..{nlevels - 1}, {stage['noise']:.2%} of cells noise{filled} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    click.echo("clusters per level: " + " ".join(map(str, stage["clusters_per_level"])))


def _int_option(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        from gridflow.errors import ParameterError

        raise ParameterError(f"{name}: expected an integer or 'auto', got {value!r}") from None


@main.command("fractal")
@click.argument("store", type=click.Path())
@click.option("--iterations", type=int, default=250, show_default=True, help="Iterations in all.")
@click.option(
    "--burn-in",
    type=int,
    default=50,
    show_default=True,
    help="First iterations in which only unlabeled cells copy a neighbour.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random choices.")
@click.option(
    "--start",
    type=click.Choice(["auto", "label", "counts"]),
    default="auto",
    show_default=True,
    help="Start from classify's labels or from the counts' majority classes "
    "(auto: the labels when the store has them).",
)
@_BOUNDARY
@click.option(
    "--record",
    type=int,
    default=None,
    metavar="K",
    help="Keep the labels every K iterations, for `gridflow render --animate`.",
)
@click.option("--resume", is_flag=True, help="Continue from the last complete round.")
@click.pass_context
@_errors
def fractal_(
    ctx: click.Context,
    store: str,
    iterations: int,
    burn_in: int,
    seed: int,
    start: str,
    boundary: str | None,
    record: int | None,
    resume: bool,
) -> None:
    """Run the fractal classifier on STORE: every cell copies a random neighbour, many times."""
    from gridflow.fractal import fractal

    t0 = time.perf_counter()
    with _cluster(ctx):
        ds = fractal(
            store,
            iterations=iterations,
            burn_in=burn_in,
            seed=seed,
            start=start,
            boundary=boundary,
            record=record,
            resume=resume,
        )
    stage = ds.attrs["gridflow_stages"]["fractal"]
    frames = ds.sizes.get("fractal_iteration", 0)
    click.echo(
        f"fractal {store}: {iterations} iterations ({burn_in} burn-in) from the "
        f"{'classify labels' if stage['start'] == 'label' else 'counts'}, "
        f"{stage['history'][-1]['unlabeled']:.2%} of cells unlabeled"
        + (f", {frames} frames recorded" if frames else "")
        + f" ({time.perf_counter() - t0:.1f} s)"
    )


@main.command("render")
@click.argument("store", type=click.Path())
@click.option(
    "--var",
    default="label",
    show_default=True,
    type=click.Choice(["label", "fractal", "cluster", "density", "level", "confidence"]),
    help="Variable to show.",
)
@click.option("--out", type=click.Path(), default=None, help="PNG image to write.")
@click.option(
    "--slice",
    "slices",
    multiple=True,
    metavar="DIM=INDEX",
    help="Cut an N-D grid at a cell, e.g. z=10 (repeatable).",
)
@click.option(
    "--dims",
    default=None,
    help="The two dims shown, across then up, e.g. x,y (default: the first two not sliced).",
)
@click.option(
    "--project",
    type=click.Choice(["max", "mode"]),
    default=None,
    help="Projection of the other dims (default: mode for label/fractal, else max).",
)
@click.option("--scale", type=int, default=None, help="Pixels per cell (default: up to 512 px).")
@click.option(
    "--animate",
    "animation",
    type=click.Path(),
    default=None,
    help="Also write the recorded frames as an animation (.gif, or .mp4 with imageio-ffmpeg).",
)
@click.option("--fps", type=float, default=10.0, show_default=True, help="Animation frame rate.")
@click.option(
    "--all",
    "all_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Instead: write every variable's PNG (and fractal.gif) into this directory.",
)
@_errors
def render_(
    store: str,
    var: str,
    out: str | None,
    slices: tuple[str, ...],
    dims: str | None,
    project: str | None,
    scale: int | None,
    animation: str | None,
    fps: float,
    all_dir: str | None,
) -> None:
    """Draw STORE's variables as PNG images and animations."""
    from gridflow.render import render, render_all

    if all_dir is not None:
        written = list(render_all(store, all_dir, scale=scale, fps=fps).values())
    else:
        written = render(
            store,
            var,
            out,
            slices=list(slices),
            dims=dims,
            project=project,
            scale=scale,
            animation=animation,
            fps=fps,
        )
    for path in written:
        click.echo(f"wrote {path}")


@main.command("predict")
@click.argument("store", type=click.Path())
@click.argument("points")
@click.option("--out", required=True, type=click.Path(), help="Output Parquet path.")
@click.option("--columns", default=None, help="Coordinate columns (default: the grid's dims).")
@click.option(
    "--probabilities/--no-probabilities",
    default=None,
    help="Write probability_<class> columns (default: when the store has them).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
@_errors
def predict_(
    ctx: click.Context,
    store: str,
    points: str,
    out: str,
    columns: str | None,
    probabilities: bool | None,
    overwrite: bool,
) -> None:
    """Label the rows of POINTS from STORE's classified grid into --out (Parquet)."""
    from gridflow.predict import predict_to_parquet

    t0 = time.perf_counter()
    with _cluster(ctx):
        report = predict_to_parquet(
            store, points, out, columns=columns, probabilities=probabilities, overwrite=overwrite
        )
    click.echo(
        f"predicted {report['predicted']:,} of {report['rows']:,} rows "
        f"({report['no_cell']:,} outside the grid, {report['unlabeled_cell']:,} in "
        f"unlabeled cells) into {out} in {time.perf_counter() - t0:.1f} s"
    )


@main.command("evaluate")
@click.argument("store", type=click.Path())
@click.argument("test_points")
@click.option("--label", default="label", show_default=True, help="Label column.")
@click.option("--columns", default=None, help="Coordinate columns (default: the grid's dims).")
@click.option(
    "--baseline",
    type=click.Choice(["knn"]),
    default=None,
    help="Also score a k-nearest-neighbours classifier (needs scikit-learn and --train).",
)
@click.option(
    "--train", default=None, help="The training points the grid was built from (for --baseline)."
)
@click.option("--neighbors", type=int, default=15, show_default=True, help="k of the knn baseline.")
@click.option(
    "--max-train",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Fit the baseline on a random subsample of at most this many training rows.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(),
    default=None,
    help="Also write JSON here (replacing only a JSON file gridflow wrote).",
)
@click.pass_context
@_errors
def evaluate_(
    ctx: click.Context,
    store: str,
    test_points: str,
    label: str,
    columns: str | None,
    baseline: str | None,
    train: str | None,
    neighbors: int,
    max_train: int,
    json_out: str | None,
) -> None:
    """Score STORE's classified grid on the labeled TEST_POINTS: accuracy, per-class
    precision / recall / F1, confusion matrix, Bayes rate, and an optional baseline."""
    from gridflow._staging import check_output, write_json
    from gridflow.evaluate import evaluate

    if json_out is not None:  # before the work: a user's file is never replaced, nor an input
        inputs = {"the grid": store, "the test points": test_points, "the training points": train}
        check_output(json_out, overwrite=True, inputs=inputs, option="json")
    with _cluster(ctx):
        ev = evaluate(
            store,
            test_points,
            label=label,
            columns=columns,
            baseline=baseline,
            train=train,
            neighbors=neighbors,
            max_train=max_train,
        )
    click.echo(ev.format())
    if json_out is not None:
        write_json(json_out, ev.to_dict())
        click.echo(f"wrote {json_out}")


@main.command("run")
@click.argument("pipeline_file", metavar="PIPELINE.yaml", type=click.Path())
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a value of the file, e.g. --set stages.classify.window=5 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Skip finished stages, continue the last round.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that exist.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory relative paths of the file start from (default: the current one).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Validate the file, print the stages (and a slurm/pbs job script); run nothing.",
)
@click.pass_context
@_errors
def run_(
    ctx: click.Context,
    pipeline_file: str,
    overrides: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    workdir: str | None,
    check: bool,
) -> None:
    """Run the whole pipeline of PIPELINE.yaml (inputs, grid, stages, outputs, scheduler).

    Global options (--scheduler, --workers, --memory-limit, ...) override the
    file's scheduler section; the whole file is validated before any work.
    """
    from gridflow.pipeline import check_outputs, load_pipeline, run_pipeline

    t0 = time.perf_counter()
    pipeline = load_pipeline(
        pipeline_file, workdir=workdir, overrides=overrides, scheduler=ctx.obj["scheduler"]
    )
    check_outputs(pipeline, resume=resume, overwrite=overwrite)
    if check:
        click.echo(f"ok: {pipeline.describe()}")
        from gridflow.runtime import JOBQUEUE, job_script

        if pipeline.scheduler.scheduler in JOBQUEUE:
            click.echo(f"each of the {pipeline.scheduler.jobs or 1} worker job(s) would run:")
            click.echo(job_script(pipeline.scheduler))
        return
    with _cluster(ctx, pipeline.scheduler):
        results = run_pipeline(pipeline, resume=resume, overwrite=overwrite)
    for r in results:
        head, *rest = r.summary.splitlines() or [""]
        took = "" if r.skipped else f" ({r.seconds:.1f} s)"
        click.echo(f"{r.name}: {head}{took}")
        for line in rest:
            click.echo(f"  {line}")
    click.echo(f"pipeline {pipeline.source} done in {time.perf_counter() - t0:.1f} s")


@main.command()
@click.argument("store", type=click.Path())
@_errors
def info(store: str) -> None:
    """Summarise STORE: dims, bins, classes, counts per class, stages present."""
    from gridflow.store import open_grid, summary

    click.echo(summary(open_grid(store)))


@main.command()
@click.option(
    "--out",
    "out_dir",
    default="demo-output",
    show_default=True,
    help="Directory for the demo's outputs.",
)
@click.option("--points", "n_points", type=int, default=1_000_000, show_default=True)
@click.option("--bins", type=int, default=400, show_default=True)
@click.pass_context
@_errors
def demo(ctx: click.Context, out_dir: str, n_points: int, bins: int) -> None:
    """Run the main job on the reference data, every stage, into one folder.

    Generates the reference data, bins it, classifies the grid, runs the
    fractal classifier, predicts held-out points and draws the results.
    """
    import os

    import numpy as np
    import pandas as pd

    from gridflow.binning import bin_points
    from gridflow.classify import classify
    from gridflow.cluster import cluster
    from gridflow.fractal import fractal
    from gridflow.predict import predict_to_parquet
    from gridflow.render import render_all
    from gridflow.store import summary
    from gridflow.synth import write_points

    os.makedirs(out_dir, exist_ok=True)
    points = os.path.join(out_dir, "points.parquet")
    test = os.path.join(out_dir, "test.parquet")
    store = os.path.join(out_dir, "grid.zarr")
    predictions = os.path.join(out_dir, "predictions.parquet")
    timings: dict[str, float] = {}
    stages = ["synth", "bin", "classify", "cluster", "fractal", "predict", "render"]

    def stage(name: str, what: str) -> None:
        click.echo(f"[{stages.index(name) + 1}/{len(stages)}] {what}", err=True)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]

    with _cluster(ctx):
        stage("synth", f"generating {n_points:,} training and 100,000 held-out points")
        write_points(points, n_points, dims=2, classes=5, scale=0.15, seed=82431, overwrite=True)
        # Held-out points: the same classes (same shifts), other draws (another seed).
        write_points(
            test,
            100_000,
            dims=2,
            classes=5,
            scale=0.15,
            seed=82432,
            bayes=True,
            overwrite=True,
            shifts=_shifts_of(points),
        )
        done("synth")
        stage("bin", f"binning into a {bins}x{bins} periodic grid")
        bin_points(points, store, bins=bins, overwrite=True)
        done("bin")
        stage("classify", "classifying every cell (window 10, 3 passes)")
        classify(store, window=10, iterations=3, probabilities=True)
        done("classify")
        stage("cluster", "clustering the density of all points (16 levels, filled)")
        clustered = cluster(store, window=5, iterations=3, levels=16, seed="counts", fill=True)
        done("cluster")
        stage("fractal", "fractal classifier (250 iterations, a frame every 5)")
        ds = fractal(store, iterations=250, burn_in=50, seed=1, record=5)
        done("fractal")
        stage("predict", "predicting the held-out points")
        predict_to_parquet(store, test, predictions, overwrite=True)
        done("predict")
        stage("render", "drawing the grids")
        images = render_all(store, out_dir)
        done("render")
        click.echo(summary(ds))
    frame = pd.read_parquet(predictions)
    truth = frame["label"].astype(str).to_numpy()
    accuracy = float(np.mean(frame["prediction"].astype(str).to_numpy() == truth))
    bayes = float(np.mean(frame["bayes"].astype(str).to_numpy() == truth))
    click.echo("")
    click.echo(
        f"accuracy on {len(frame):,} held-out points: {accuracy:.2%} (Bayes-optimal: {bayes:.2%})"
    )
    stage_info = clustered.attrs["gridflow_stages"]["cluster"]
    click.echo(
        f"clusters: {stage_info['clusters']} at level {stage_info['cut_level']} of the density"
    )
    click.echo("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    click.echo(f"outputs in {out_dir}/:")
    click.echo("  points.parquet       training points (x0, x1, label)")
    click.echo("  test.parquet         held-out points with their Bayes-optimal class")
    click.echo("  grid.zarr            the grid store: counts, label, confidence, density,")
    click.echo("                       probability, level, cluster, the cluster tree (node_*),")
    click.echo("                       fractal (and its recorded frames)")
    click.echo("  predictions.parquet  the held-out points with prediction, probability_*")
    for name, path in images.items():
        click.echo(f"  {os.path.relpath(path, out_dir):<20} {_IMAGE_NOTES.get(name, 'image')}")


_IMAGE_NOTES = {
    "label": "classify's label of every cell (one colour per class)",
    "fractal": "the fractal classifier's labels: fractal class boundaries",
    "density": "filtered density (grey levels)",
    "confidence": "winning vote / total vote (grey levels)",
    "cluster": "clusters of the density (one colour per cluster)",
    "level": "histogram-equalized density levels (grey levels)",
    "fractal.gif": "the fractal classifier's iterations, animated",
}


def _shifts_of(points: str) -> list:
    from gridflow.synth import read_synth_metadata

    return read_synth_metadata(points)["process"]["shifts"]


if __name__ == "__main__":  # pragma: no cover
    main()
