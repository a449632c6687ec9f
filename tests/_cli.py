"""Running the gridflow CLI as a separate process, as a batch job does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def gridflow_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "gridflow.cli", *map(str, args)]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a child gridflow: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_pipeline(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SMALL = """
inputs:
  train: data/train.parquet
  test: data/test.parquet
grid: {{bins: {bins}, periodic: true, chunks: {chunks}}}
stages:
  synth: {{points: {{train: 20000, test: 4000}}, classes: 3, seed: 7, bayes: true}}
  bin: {{input: train}}
  classify: {{window: 2, iterations: {iterations}, fuse: {fuse}, probabilities: true}}
  predict: {{input: test}}
  evaluate: {{input: test}}
outputs:
  store: out/grid.zarr
  predictions: out/predictions.parquet
  evaluation: out/evaluation.json
"""


def small_pipeline(path: Path, *, bins=48, chunks=16, iterations=4, fuse=2) -> Path:
    return write_pipeline(
        path, SMALL.format(bins=bins, chunks=chunks, iterations=iterations, fuse=fuse)
    )


#: A value of :func:`pipeline_config`'s changes: remove the key.
DROP = object()


def pipeline_config(*, bins, chunks, iterations, fuse, **changes) -> dict:
    """SMALL as a mapping, with ``changes`` by dotted key (``DROP`` removes one)."""
    config = yaml.safe_load(
        SMALL.format(bins=bins, chunks=chunks, iterations=iterations, fuse=fuse)
    )
    for key, value in changes.items():
        node = config
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(last)
        else:
            node[last] = value
    return config


def run_in_empty_workdir(invoke, tmp_path: Path, config: dict):
    """``invoke("run", ...)`` of ``config`` in an empty --workdir, which it must leave empty."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    r = invoke("run", path, "--workdir", work)
    assert list(work.iterdir()) == [], r.output  # nothing generated, nothing created
    return r
