"""gridflow.accessor: ds.gridflow.<stage>() equals the stage function, bit for bit."""

import doctest
import os

import numpy as np
import pytest
import xarray as xr

import gridflow
from gridflow import accessor, bin_points, open_grid
from gridflow.store import grid_spec

BINS = (16, 12)


def _points(seed=0, n=600):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.25, 0.3], [0.7, 0.7], [0.3, 0.8]])
    labels = rng.integers(0, 3, n)
    points = centres[labels] + rng.normal(scale=0.08, size=(n, 2))
    return np.clip(points, 0, 1), labels


def _grid(store=None):
    points, labels = _points()
    return bin_points(points, store, labels=labels, bins=BINS, bounds=(0, 1), chunks=(8, 5))


def _stores(tmp_path):
    """Two identical stores: one for the function, one for the accessor."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    _grid(a)
    _grid(b)
    return a, b


def _same(x, y, names):
    for name in names:
        assert x[name].dtype == y[name].dtype, name
        assert x[name].values.tobytes() == y[name].values.tobytes(), name


CLASSIFY = {"window": 2, "iterations": 3, "probabilities": True}
CLUSTER = {"window": 1, "iterations": 2, "min_cells": 3}
FRACTAL = {"iterations": 20, "burn_in": 5, "seed": 3}
FILTER = {"kernel": "inverse_distance", "window": 2, "boundary": "open", "name": "d"}
EXPRESSION = "counts[0]**2 - counts[1] * counts[2]"

STAGES = [
    ("classify", (), CLASSIFY, ("label", "confidence", "density", "probability")),
    ("cluster", (), CLUSTER, ("level", "cluster", "node_level", "node_parent", "node_cells")),
    ("fractal", (), FRACTAL, ("fractal",)),
    ("filter", (EXPRESSION,), FILTER, ("d",)),
]


def _function(stage):
    return gridflow.window_filter if stage == "filter" else getattr(gridflow, stage)


@pytest.mark.parametrize(("stage", "args", "kwargs", "names"), STAGES)
@pytest.mark.parametrize("opener", [open_grid, xr.open_zarr])
def test_stage_on_a_store(tmp_path, stage, args, kwargs, names, opener):
    a, b = _stores(tmp_path)
    _function(stage)(a, *args, **kwargs)
    ds = opener(b)
    assert ds.gridflow.store == os.fspath(b)
    got = getattr(ds.gridflow, stage)(*args, **kwargs)
    expect = open_grid(a)
    _same(got, expect, names)
    # written into the store, and the store is what came back
    written = open_grid(b)
    _same(written, expect, names)
    assert stage in written.attrs["gridflow_stages"]
    assert got.gridflow.store == os.fspath(b)


@pytest.mark.parametrize(("stage", "args", "kwargs", "names"), STAGES)
def test_stage_in_memory(stage, args, kwargs, names):
    ds = _grid()
    assert ds.gridflow.store is None
    expect = _function(stage)(ds, *args, **kwargs)
    got = getattr(ds.gridflow, stage)(*args, **kwargs)
    _same(got, expect, names)
    assert got.gridflow.store is None


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: ds.load(),
        lambda ds: ds.isel(x0=slice(0, 8)),
        lambda ds: ds.assign(counts=ds["counts"] * 2),
        lambda ds: ds.chunk({"x0": 4}),
    ],
    ids=["load", "isel", "assign", "rechunk"],
)
def test_a_changed_store_dataset_runs_in_memory(tmp_path, change):
    path = tmp_path / "g.zarr"
    _grid(path)
    ds = change(open_grid(path))
    assert ds.encoding.get("source") == os.fspath(path)  # xarray keeps it, yet
    assert ds.gridflow.store is None
    got = ds.gridflow.classify(**CLASSIFY)
    _same(got, gridflow.classify(ds, **CLASSIFY), ("label", "density"))
    assert "label" not in open_grid(path)  # the store is untouched


def test_a_store_dataset_from_before_a_stage_still_views_the_store(tmp_path):
    path = tmp_path / "g.zarr"
    _grid(path)
    ds = open_grid(path)
    ds.gridflow.classify(**CLASSIFY)
    # ds lacks label (it was opened before), but what it holds is the store's
    assert ds.gridflow.store == os.fspath(path)
    out = ds.gridflow.fractal(start="auto", **FRACTAL)
    assert out.attrs["gridflow_stages"]["fractal"]["start"] == "label"


def test_chained_stages_write_one_store(tmp_path):
    a, b = _stores(tmp_path)
    gridflow.classify(a, **CLASSIFY)
    gridflow.window_filter(a, "density * 2", name="e")
    gridflow.fractal(a, **FRACTAL)
    got = (
        open_grid(b)
        .gridflow.classify(**CLASSIFY)
        .gridflow.filter("density * 2", name="e")
        .gridflow.fractal(**FRACTAL)
    )
    _same(got, open_grid(a), ("label", "density", "e", "fractal"))
    assert set(open_grid(b).attrs["gridflow_stages"]) >= {"bin", "classify", "filter", "fractal"}


def test_predict_and_render(tmp_path):
    a, b = _stores(tmp_path)
    gridflow.classify(a, **CLASSIFY)
    gridflow.classify(b, **CLASSIFY)
    memory = gridflow.classify(_grid(), **CLASSIFY)
    points = _points(seed=1, n=200)[0]
    points[0] = [2.0, 0.5]  # out of range: -1, counted
    expect = gridflow.predict(a, points, probabilities=True)
    for ds in (open_grid(b), memory):
        got = ds.gridflow.predict(points, probabilities=True)
        assert got.codes.tobytes() == expect.codes.tobytes()
        assert got.probability.tobytes() == expect.probability.tobytes()
        assert got.report == expect.report and got.report["no_cell"] == 1
    from gridflow.render import image

    rgb = image(a, "label")
    assert open_grid(b).gridflow.render("label").tobytes() == rgb.tobytes()
    assert memory.gridflow.render("label").tobytes() == rgb.tobytes()
    pytest.importorskip("PIL")
    out = tmp_path / "label.png"
    assert open_grid(b).gridflow.render("label", out) == [str(out)]
    assert out.stat().st_size > 0


def test_spec_and_store(tmp_path):
    path = tmp_path / "g.zarr"
    _grid(path)
    for ds in (open_grid(path), xr.open_zarr(path), _grid()):
        assert ds.gridflow.spec == grid_spec(ds)
        assert ds.gridflow.spec.bins == BINS
    assert xr.open_zarr(path).gridflow.store == os.fspath(path)
    assert _grid().gridflow.store is None
    with pytest.raises(gridflow.StoreError, match="not a gridflow dataset"):
        _ = xr.Dataset().gridflow.spec
    assert xr.Dataset().gridflow.store is None


def test_errors_are_the_stages(tmp_path):
    path = tmp_path / "g.zarr"
    _grid(path)
    with pytest.raises(gridflow.ParameterError, match=r"^window: "):
        open_grid(path).gridflow.classify(window=0)
    with pytest.raises(gridflow.ParameterError, match=r"^expression: "):
        open_grid(path).gridflow.filter("nope")
    assert "label" not in open_grid(path)


def test_docstring_examples():
    failed, attempted = doctest.testmod(accessor)
    assert attempted >= 3 and failed == 0
