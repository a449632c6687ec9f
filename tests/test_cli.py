import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gridflow import open_grid
from gridflow.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_synth_bin_info_round_trip(tmp_path):
    points = tmp_path / "pts.parquet"
    store = tmp_path / "grid.zarr"
    r = run("synth", points, "--points", 20000, "--dims", 2, "--classes", 3, "--seed", 4, "--bayes")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(points)
    assert len(df) == 20000 and set(df.columns) == {"x0", "x1", "label", "bayes"}

    r = run("bin", points, store, "--bins", "40,30", "--chunks", 16)
    assert r.exit_code == 0, r.output
    assert "binned 20,000 of 20,000 rows" in r.output
    ds = open_grid(store)
    # synth records the torus: bounds [0, 1) and periodic dims, and the
    # coordinate columns (the bayes column is not a coordinate).
    assert ds.attrs["gridflow_grid"]["periodic"] == [True, True]
    assert ds.attrs["gridflow_grid"]["bounds"] == [[0.0, 1.0], [0.0, 1.0]]
    counts = ds["counts"].values
    assert counts.shape == (3, 40, 30)
    assert ds["counts"].data.chunksize == (3, 16, 16)
    expect = np.zeros((3, 40, 30), int)
    np.add.at(
        expect,
        (df["label"], np.floor(df["x0"] * 40).astype(int), np.floor(df["x1"] * 30).astype(int)),
        1,
    )
    np.testing.assert_array_equal(counts, expect)

    r = run("info", store)
    assert r.exit_code == 0, r.output
    for text in ("x0", "40 bins", "periodic", "classes (3)", "stages: bin", "history:"):
        assert text in r.output
    per_class = np.bincount(df["label"], minlength=3)
    for n in per_class:
        assert f"{n:,} points" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--columns", "x0,zz"], "column 'zz' not found"),
        (["--bins", "0"], "bins"),
        (["--bounds", "1,0"], "lo < hi"),
        (["--label", "nope"], "label column 'nope' not found"),
    ],
)
def test_bin_errors_exit_2_with_one_line(tmp_path, args, message):
    points = tmp_path / "pts.parquet"
    run("synth", points, "--points", 1000)
    store = tmp_path / "g.zarr"
    base = ["bin", points, store]
    if "--bins" not in args:
        base += ["--bins", 10]
    r = CliRunner().invoke(main, [str(a) for a in base + args])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and message in r.output
    assert r.output.count("\n") == 1
    assert not store.exists()


def test_info_on_a_foreign_store_fails_cleanly(tmp_path):
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 2
    assert "not a gridflow store" in r.output


def test_synth_refuses_to_overwrite(tmp_path):
    points = tmp_path / "pts.parquet"
    assert run("synth", points, "--points", 100).exit_code == 0
    r = CliRunner().invoke(main, ["synth", str(points), "--points", "100"])
    assert r.exit_code == 2 and "overwrite" in r.output


def test_console_script_entry_point(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "gridflow")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for cmd in ("synth", "bin", "info", "demo"):
        assert cmd in out.stdout
    bad = subprocess.run(
        [exe, "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: store:")


def test_classify_and_predict_round_trip(tmp_path):
    points = tmp_path / "pts.parquet"
    store = tmp_path / "grid.zarr"
    out = tmp_path / "pred.parquet"
    assert run("synth", points, "--points", 5000, "--classes", 3, "--seed", 2).exit_code == 0
    assert run("bin", points, store, "--bins", 32, "--chunks", 16).exit_code == 0
    r = run("classify", store, "--window", 3, "--iterations", 2, "--probabilities")
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output
    ds = open_grid(store)
    assert {"label", "confidence", "density", "probability"} <= set(ds.data_vars)
    r = run("predict", store, points, "--out", out)
    assert r.exit_code == 0, r.output
    assert "predicted 5,000 of 5,000 rows" in r.output
    frame = pd.read_parquet(out)
    spec_cells = np.floor(frame[["x0", "x1"]].to_numpy() * 32).astype(int)
    expect = ds["label"].values[spec_cells[:, 0], spec_cells[:, 1]]
    np.testing.assert_array_equal(frame["prediction"].astype(int).to_numpy(), expect)
    assert {"probability_0", "probability_1", "probability_2"} <= set(frame.columns)


@pytest.fixture
def tiny(tmp_path):
    """500 points and their 8x8 store."""
    points = tmp_path / "pts.parquet"
    store = tmp_path / "grid.zarr"
    run("synth", points, "--points", 500)
    run("bin", points, store, "--bins", 8)
    return points, store


def test_classify_errors_exit_2(tmp_path, tiny):
    points, store = tiny
    r = CliRunner().invoke(main, ["classify", str(store), "--window", "10"])
    assert r.exit_code == 2 and "larger than the grid" in r.output
    r = CliRunner().invoke(main, ["classify", str(store), "--iterations", "lots"])
    assert r.exit_code == 2 and "iterations" in r.output
    r = CliRunner().invoke(main, ["predict", str(store), str(points), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "gridflow classify" in r.output


def test_classify_tune(tmp_path):
    points = tmp_path / "pts.parquet"
    store = tmp_path / "grid.zarr"
    run("synth", points, "--points", 4000, "--classes", 2, "--scale", 0.05)
    run("bin", points, store, "--bins", 24)
    r = run("classify", store, "--tune")
    assert r.exit_code == 0, r.output
    assert "tuned: window" in r.output and "held-out accuracy" in r.output
    assert "label" in open_grid(store)


def test_demo_end_to_end_at_reduced_size(tmp_path):
    from PIL import Image

    out = tmp_path / "demo"
    r = run("demo", "--out", out, "--points", 30000, "--bins", 60)
    assert r.exit_code == 0, r.output
    for name in (
        "points.parquet",
        "test.parquet",
        "predictions.parquet",
        "label.png",
        "fractal.png",
        "density.png",
        "fractal.gif",
        "cluster.png",
        "level.png",
    ):
        assert (out / name).exists(), name
    ds = open_grid(out / "grid.zarr")
    assert {"label", "density", "probability", "fractal", "level", "cluster"} <= set(ds.data_vars)
    assert (ds["cluster"].values >= 0).all()  # filled
    assert (ds["fractal"].values >= 0).all()  # the fractal stage leaves no cell unlabeled
    with Image.open(out / "label.png") as im:
        assert im.size[0] >= 60 and im.size[0] % 60 == 0
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 100_000
    accuracy = float(
        (predictions["prediction"].astype(str) == predictions["label"].astype(str)).mean()
    )
    assert f"accuracy on 100,000 held-out points: {accuracy:.2%}" in r.output


def test_cluster_command(tmp_path):
    from gridflow.cluster import cluster

    points = tmp_path / "pts.parquet"
    store = tmp_path / "grid.zarr"
    run("synth", points, "--points", 20000, "--classes", 3, "--scale", 0.05, "--seed", 3)
    run("bin", points, store, "--bins", 32, "--chunks", 16)
    args = ["--window", 2, "--iterations", 2, "--levels", 16, "--method", "distinct"]
    args += ["--seed", "counts", "--min-cells", 5]
    r = run("cluster", store, *args, "--fill")
    assert r.exit_code == 0, r.output
    ds = open_grid(store)
    stage = ds.attrs["gridflow_stages"]["cluster"]
    assert f"{stage['clusters']} clusters at level {stage['cut_level']} of 0..15" in r.output
    assert stage["clusters"] >= 2 and (ds["cluster"].values >= 0).all()  # filled
    # The same as the library call, on the periodic grid synth records.
    mem = cluster(
        open_grid(store), window=2, iterations=2, levels=16, method="distinct", seed="counts",
        min_cells=5, fill=True,
    )  # fmt: skip
    np.testing.assert_array_equal(mem["cluster"].values, ds["cluster"].values)
    r = run("cluster", store, *args, "--level", 3)
    assert r.exit_code == 0, r.output
    assert open_grid(store).attrs["gridflow_stages"]["cluster"]["cut_level"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--levels", "1"], "levels"),
        (["--levels", "0.5,0.2"], "increasing cut quantiles"),
        (["--level", "9"], "from 0 to 7"),
        (["--level", "top"], "level"),
        (["--connectivity", "3"], "connectivity"),
        (["--window", "10"], "larger than the grid"),
    ],
)
def test_cluster_errors_exit_2(tiny, args, message):
    _, store = tiny
    r = CliRunner().invoke(main, ["cluster", str(store), "--window", "1", *args])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and message in r.output
    assert r.output.count("\n") == 1
    assert "cluster" not in open_grid(store).attrs["gridflow_stages"]
