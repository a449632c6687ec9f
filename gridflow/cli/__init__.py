"""The ``gridflow`` command line.

Every subcommand reads and writes files (Parquet points, Zarr stores) and
runs on a Dask cluster chosen by the global options. Bad input ends with a
one-line ``error:`` message on stderr and exit code 2; nothing half-written
is left behind.

One module per command group: :mod:`~gridflow.cli.data` (synth, bin),
:mod:`~gridflow.cli.stages` (classify, cluster, fractal, filter),
:mod:`~gridflow.cli.results` (predict, render, evaluate, info) and
:mod:`~gridflow.cli.batch` (run, demo). Nothing in gridflow imports this
package.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from gridflow._types import LOG_LEVELS
from gridflow.cli import batch, data, results, stages
from gridflow.cli._errors import OneLineGroup, exit_on_sigterm, one_line_warnings
from gridflow.cli._options import choice

__all__ = ["main"]


def _memory_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--memory-limit``, checked when the command line is parsed."""
    from gridflow.errors import ParameterError
    from gridflow.runtime import parse_memory_limit

    try:
        return parse_memory_limit(value)
    except ParameterError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], ctx=ctx, param=param) from None


@click.group(
    cls=OneLineGroup,
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
    "--backend",
    default=None,
    type=choice(("numpy", "cupy")),
    help="Where dense chunks are computed: numpy (host) or cupy (CUDA device, gridflow[gpu]). "
    "Default: cupy with --scheduler gpu, else numpy.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=choice(LOG_LEVELS, case_sensitive=False),
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress of long stages: always a bar / nothing. "
    "Default: a bar on a terminal, else a log line every 10 s.",
)
@click.pass_context
def main(
    ctx: click.Context,
    log_level: str,
    progress: bool | None,
    backend: str | None,
    **scheduler: Any,
) -> None:
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
    exit_on_sigterm()
    one_line_warnings()
    ctx.obj = {"scheduler": scheduler, "backend": backend}


for _command in (
    data.synth,
    data.bin_,
    stages.classify_,
    stages.cluster_,
    stages.fractal_,
    stages.filter_,
    results.render_,
    results.predict_,
    results.evaluate_,
    batch.run_,
    results.info,
    batch.demo,
):
    main.add_command(_command)
