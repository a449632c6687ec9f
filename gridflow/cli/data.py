"""Points in, a grid out: ``gridflow synth`` and ``gridflow bin``."""

from __future__ import annotations

import math
import time

import click

from gridflow._types import BINNING_STRATEGIES, DISTRIBUTIONS, LAYOUTS
from gridflow.cli._client import connect, global_backend
from gridflow.cli._errors import one_line_errors
from gridflow.cli._options import LABEL, STORE, choice, overwrite_option, points_option


@click.command()
@click.argument("out", type=click.Path(dir_okay=True, writable=True))
@points_option("Number of points.")
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
    type=choice(DISTRIBUTIONS),
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
@overwrite_option("Replace OUT if it exists.")
@one_line_errors
def synth(
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
    with connect():
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


@click.command("bin")
@click.argument("input_", metavar="INPUT")
@STORE
@click.option(
    "--columns",
    default=None,
    help="Coordinate columns, e.g. x,y (default: every numeric column but the label).",
)
@LABEL
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
    type=choice(BINNING_STRATEGIES),
    default="auto",
    show_default=True,
    help="tree: sum per-partition grids; chunked: group by output chunk.",
)
@click.option(
    "--layout",
    type=choice(LAYOUTS),
    default="auto",
    show_default=True,
    help="dense: NumPy chunks; sparse: only the occupied cells (high dimensions); auto: sparse "
    "when the dense counts would not fit memory or fewer than 1 cell in 16 can be occupied.",
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
@overwrite_option("Replace STORE if it is a gridflow store.")
@one_line_errors
def bin_(
    input_: str,
    store: str,
    columns: str | None,
    label: str,
    bins: str,
    bounds: str | None,
    periodic: bool | None,
    chunks: str,
    strategy: str,
    layout: str,
    strict: bool,
    max_classes: int,
    overwrite: bool,
) -> None:
    """Bin the labeled points of INPUT into per-class counts in the Zarr STORE."""
    from gridflow.binning import BinReport, bin_points

    t0 = time.perf_counter()
    with connect():
        ds = bin_points(
            input_,
            store,
            backend=global_backend(),
            columns=columns,
            label=label,
            bins=bins,
            bounds=bounds,
            periodic=periodic,
            chunks=chunks,
            strategy=strategy,
            layout=layout,
            strict=strict,
            max_classes=max_classes,
            overwrite=overwrite,
        )
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    click.echo(BinReport(**report).summary())
    record = ds.attrs["gridflow_stages"]["bin"]
    if record.get("layout") == "sparse":
        cells = math.prod(ds["counts"].shape[1:])
        occupied = record.get("occupied", 0)
        click.echo(
            f"sparse layout: {occupied:,} of {cells:,} cells occupied "
            f"({100 * occupied / cells:.3g}%)"
        )
    click.echo(f"wrote {store} in {time.perf_counter() - t0:.1f} s")
