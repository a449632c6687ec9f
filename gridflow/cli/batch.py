"""Whole pipelines: ``gridflow run PIPELINE.yaml``, and ``gridflow demo``, the built-in one."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import click

from gridflow.cli._client import connect, global_backend, global_scheduler
from gridflow.cli._errors import one_line_errors
from gridflow.cli._options import points_option


@click.command("run")
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
@one_line_errors
def run_(
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
        pipeline_file,
        workdir=workdir,
        overrides=overrides,
        scheduler=global_scheduler(),
        backend=global_backend(),
    )
    check_outputs(pipeline, resume=resume, overwrite=overwrite)
    if check:
        click.echo(f"ok: {pipeline.describe()}")
        from gridflow.runtime import JOBQUEUE, job_script

        if pipeline.scheduler.scheduler in JOBQUEUE:
            click.echo(f"each of the {pipeline.scheduler.jobs or 1} worker job(s) would run:")
            click.echo(job_script(pipeline.scheduler))
        return
    with connect(pipeline.scheduler):
        results = run_pipeline(pipeline, resume=resume, overwrite=overwrite)
    for r in results:
        head, *rest = r.summary.splitlines() or [""]
        took = "" if r.skipped else f" ({r.seconds:.1f} s)"
        click.echo(f"{r.name}: {head}{took}")
        for line in rest:
            click.echo(f"  {line}")
    click.echo(f"pipeline {pipeline.source} done in {time.perf_counter() - t0:.1f} s")


# --- the demo ------------------------------------------------------------------------------

#: The main job on the reference data: the demo's pipeline, paths relative to --out.
#: The held-out points are the second input: the same classes (the training
#: points' shifts), other draws (seed + 1), with their Bayes-optimal class.
DEMO_PIPELINE = """
inputs:
  train: points.parquet
  test: test.parquet
grid:
  bins: {bins}
stages:
  synth:
    points:
      train: {points}
      test: 100000
    dims: 2
    classes: 5
    scale: 0.15
    seed: 82431
    bayes: [test]
  bin:
    input: train
  classify:
    window: 10
    iterations: 3
    probabilities: true
  cluster:
    window: 5
    iterations: 3
    levels: 16
    seed: counts
    fill: true
  fractal:
    iterations: 250
    burn_in: 50
    seed: 1
    record: 5
  predict:
    input: test
outputs:
  store: grid.zarr
  predictions: predictions.parquet
"""

#: What each step of the demo says as it starts.
_STEPS = {
    "synth": "generating {train:,} training and {test:,} held-out points",
    "bin": "binning into a {bins}x{bins} periodic grid",
    "classify": "classifying every cell (window 10, 3 passes)",
    "cluster": "clustering the density of all points (16 levels, filled)",
    "fractal": "fractal classifier (250 iterations, a frame every 5)",
    "predict": "predicting the held-out points",
    "render": "drawing the grids",
}

#: The demo's options, by the key of its pipeline that each one sets: the
#: pipeline's errors about those keys name the option.
_OPTION_OF = {
    "grid.bins": "bins",
    "stages.synth.points.train": "n_points",
    "inputs.train": "out_dir",
    "inputs.test": "out_dir",
    "outputs.predictions": "out_dir",
    "outputs.store": "store",  # no option: named as bin_points names it
}

_IMAGE_NOTES = {
    "label": "classify's label of every cell (one colour per class)",
    "fractal": "the fractal classifier's labels: fractal class boundaries",
    "density": "filtered density (grey levels)",
    "confidence": "winning vote / total vote (grey levels)",
    "cluster": "clusters of the density (one colour per cluster)",
    "level": "histogram-equalized density levels (grey levels)",
    "fractal.gif": "the fractal classifier's iterations, animated",
}


@click.command()
@click.option(
    "--out",
    "out_dir",
    default="demo-output",
    show_default=True,
    help="Directory for the demo's outputs.",
)
@points_option()
@click.option("--bins", type=int, default=400, show_default=True)
@one_line_errors
def demo(out_dir: str, n_points: int, bins: int) -> None:
    """Run the main job on the reference data, every stage, into one folder.

    Generates the reference data, bins it, classifies the grid, runs the
    fractal classifier, predicts held-out points and draws the results.
    """
    import os

    from gridflow.pipeline import run_pipeline
    from gridflow.render import render_all
    from gridflow.store import open_grid, summary

    with _named_as_options():
        pipeline = _demo_pipeline(out_dir, n_points, bins)
    config = pipeline.config
    steps = [*(s.name for s in pipeline.stages), "render"]
    say = {"bins": bins, **config["stages"]["synth"]["points"]}

    def step(name: str) -> None:
        text = _STEPS[name].format(**say)
        click.echo(f"[{steps.index(name) + 1}/{len(steps)}] {text}", err=True)

    store = pipeline.path(config["outputs"]["store"])
    with connect(pipeline.scheduler):
        with _named_as_options():
            results = run_pipeline(pipeline, overwrite=True, on_stage=lambda s: step(s.name))
        step("render")
        t0 = time.perf_counter()
        images = render_all(store, out_dir)
        timings = {r.name: r.seconds for r in results}
        timings["render"] = time.perf_counter() - t0
        ds = open_grid(store)
        click.echo(summary(ds))
    _report(ds, pipeline.path(config["outputs"]["predictions"]))
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


def _demo_pipeline(out_dir: str, n_points: int, bins: int) -> Any:
    """The demo's pipeline at ``n_points`` training points and ``bins`` cells per dim."""
    import yaml

    from gridflow.pipeline import parse_pipeline

    raw = yaml.safe_load(DEMO_PIPELINE.format(points=n_points, bins=bins))
    return parse_pipeline(raw, workdir=out_dir, source="demo", scheduler=global_scheduler())


@contextlib.contextmanager
def _named_as_options() -> Iterator[None]:
    """The pipeline's errors about a key that a demo option sets name the option."""
    from gridflow.errors import ParameterError
    from gridflow.pipeline import ConfigError

    try:
        yield
    except ConfigError as exc:
        key, sep, rest = str(exc).partition(": ")
        if not sep or key not in _OPTION_OF:
            raise
        raise ParameterError(f"{_OPTION_OF[key]}: {rest}") from None


def _report(ds: Any, predictions: str) -> None:
    """Accuracy on the held-out points against the Bayes-optimal rate, and the clusters."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(predictions)
    truth = frame["label"].astype(str).to_numpy()
    accuracy = float(np.mean(frame["prediction"].astype(str).to_numpy() == truth))
    bayes = float(np.mean(frame["bayes"].astype(str).to_numpy() == truth))
    click.echo("")
    click.echo(
        f"accuracy on {len(frame):,} held-out points: {accuracy:.2%} (Bayes-optimal: {bayes:.2%})"
    )
    stage = ds.attrs["gridflow_stages"]["cluster"]
    click.echo(f"clusters: {stage['clusters']} at level {stage['cut_level']} of the density")
