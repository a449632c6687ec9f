"""Stages that fill a store's grid in place: classify, cluster, fractal, filter."""

from __future__ import annotations

import time

import click

from gridflow._types import EQUALIZE_METHODS, FILTER_BOUNDARIES, FRACTAL_STARTS, SUPPORTS
from gridflow.cli._client import connect, global_backend
from gridflow.cli._errors import one_line_errors
from gridflow.cli._options import (
    BOUNDARY,
    STORE,
    choice,
    filter_options,
    int_or_auto,
    overwrite_option,
    resume_option,
    seed_option,
    window_options,
)

#: The cells a vote step is evaluated on (classify, cluster).
SUPPORT = click.option(
    "--support",
    type=choice(SUPPORTS),
    default="auto",
    show_default=True,
    help="Cells a step evaluates: reachable from a labeled cell, or occupied only.",
)


@click.command("classify")
@STORE
@filter_options("Window weights.", "Vote steps")
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
@BOUNDARY
@seed_option("First step votes with cell labels or with point counts.")
@click.option("--clamp", is_flag=True, help="Keep cells holding training points at their class.")
@click.option("--probabilities", is_flag=True, help="Also store per-class vote fractions.")
@resume_option()
@click.option(
    "--tune",
    is_flag=True,
    help="Pick --window and --iterations by accuracy on held-out training points.",
)
@SUPPORT
@click.option(
    "--levels",
    type=int,
    default=1,
    show_default=True,
    help="Levels of the resolution pyramid (each halves the bins).",
)
@click.option(
    "--min-votes",
    type=float,
    default=0.0,
    show_default=True,
    help="With --levels: total vote a level's cell needs to answer a point.",
)
@one_line_errors
def classify_(
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
    support: str,
    levels: int,
    min_votes: float,
) -> None:
    """Fill STORE's grid with labels by iterating the vote filter."""
    from gridflow.classify import classify
    from gridflow.classify import tune as tune_grid

    t0 = time.perf_counter()
    iters = int_or_auto("iterations", iterations)
    with connect():
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
            backend=global_backend(),
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
            support=support,
            levels=levels,
            min_votes=min_votes,
        )
    stage = ds.attrs["gridflow_stages"]["classify"]
    last = stage["history"][-1]
    click.echo(
        f"classified {store}: {stage['steps']} steps, {last['labeled']:.2%} of cells "
        f"labeled, {last['changed']:.4%} changed in the last step "
        f"({time.perf_counter() - t0:.1f} s)"
    )


@click.command("cluster")
@STORE
@filter_options("Density filter weights.", "Density steps")
@BOUNDARY
@seed_option("First density step counts occupied cells (labels) or points (counts).")
@click.option(
    "--levels",
    default="0.08,0.18,0.28,0.42,0.62,0.80,0.95",
    show_default=True,
    help="Number of equalized levels (16) or the cut quantiles (0.1,0.5,0.9).",
)
@click.option(
    "--method",
    type=choice(EQUALIZE_METHODS),
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
@resume_option("Do nothing if the stage is finished with these parameters.")
@SUPPORT
@one_line_errors
def cluster_(
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
    support: str,
) -> None:
    """Cluster STORE's grid: density, equalized levels, connected components."""
    from gridflow.cluster import cluster

    t0 = time.perf_counter()
    iters, cut = int_or_auto("iterations", iterations), int_or_auto("level", level)
    with connect():
        ds = cluster(
            store,
            backend=global_backend(),
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
            support=support,
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


@click.command("fractal")
@STORE
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
    type=choice(FRACTAL_STARTS),
    default="auto",
    show_default=True,
    help="Start from classify's labels or from the counts' majority classes "
    "(auto: the labels when the store has them).",
)
@BOUNDARY
@click.option(
    "--record",
    type=int,
    default=None,
    metavar="K",
    help="Keep the labels every K iterations, for `gridflow render --animate`.",
)
@resume_option()
@one_line_errors
def fractal_(
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
    with connect():
        ds = fractal(
            store,
            backend=global_backend(),
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


@click.command("filter")
@STORE
@click.argument("expression")
@window_options("Window weights.", kernel="box", window=1)  # window_filter's defaults
@click.option(
    "--boundary",
    type=choice(FILTER_BOUNDARIES),
    default=None,
    help="Edges of the grid: periodic wraps, open has nothing beyond, constant has --cval "
    "beyond. Default: the store's own (periodic when every dim wraps).",
)
@click.option(
    "--cval",
    type=float,
    default=0.0,
    show_default=True,
    help="With --boundary constant: the value beyond the edges.",
)
@click.option("--name", required=True, help="Variable of STORE to write the result into.")
@overwrite_option("Replace the variable --name if STORE has it.")
@one_line_errors
def filter_(
    store: str,
    expression: str,
    kernel: str,
    window: int,
    sigma: float | None,
    boundary: str | None,
    cval: float,
    name: str,
    overwrite: bool,
) -> None:
    """Correlate EXPRESSION of STORE's variables with a window kernel into the variable --name.

    EXPRESSION is arithmetic of the grid's variables, e.g. 'counts[0] - counts[1]'.
    """
    from gridflow.filters import window_filter

    t0 = time.perf_counter()
    with connect():
        window_filter(
            store,
            expression,
            kernel=kernel,
            window=window,
            sigma=sigma,
            boundary=boundary,
            cval=cval,
            name=name,
            overwrite=overwrite,
        )
    click.echo(f"filtered {store}: {name} = {expression} ({time.perf_counter() - t0:.1f} s)")
