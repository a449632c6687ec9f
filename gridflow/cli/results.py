"""What a filled grid gives: predict, render, evaluate, info."""

from __future__ import annotations

import time

import click

from gridflow._types import BASELINES, PROJECTIONS, RENDER_VARIABLES
from gridflow.cli._client import connect, global_backend
from gridflow.cli._errors import one_line_errors
from gridflow.cli._options import COLUMNS, LABEL, STORE, choice, overwrite_option


@click.command("render")
@STORE
@click.option(
    "--var",
    default="label",
    show_default=True,
    type=choice(RENDER_VARIABLES),
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
    type=choice(PROJECTIONS),
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
@one_line_errors
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


@click.command("predict")
@STORE
@click.argument("points")
@click.option("--out", required=True, type=click.Path(), help="Output Parquet path.")
@COLUMNS
@click.option(
    "--probabilities/--no-probabilities",
    default=None,
    help="Write probability_<class> columns (default: when the store has them).",
)
@overwrite_option("Replace OUT if it exists.")
@one_line_errors
def predict_(
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
    with connect():
        report = predict_to_parquet(
            store,
            points,
            out,
            columns=columns,
            probabilities=probabilities,
            overwrite=overwrite,
            backend=global_backend(),
        )
    click.echo(
        f"predicted {report['predicted']:,} of {report['rows']:,} rows "
        f"({report['no_cell']:,} outside the grid, {report['unlabeled_cell']:,} in "
        f"unlabeled cells) into {out} in {time.perf_counter() - t0:.1f} s"
    )


@click.command("evaluate")
@STORE
@click.argument("test_points")
@LABEL
@COLUMNS
@click.option(
    "--baseline",
    type=choice(BASELINES),
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
@one_line_errors
def evaluate_(
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
    with connect():
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


@click.command()
@STORE
@one_line_errors
def info(store: str) -> None:
    """Summarise STORE: dims, bins, classes, counts per class, stages present."""
    from gridflow.store import open_grid, summary

    click.echo(summary(open_grid(store)))
