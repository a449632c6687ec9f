import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from gridflow import bin_points, open_grid
from gridflow.classify import classify
from gridflow.engine.vote import run_numpy
from gridflow.errors import ParameterError
from gridflow.kernels import parse_kernel

# gridflow.classify is also the name of the function gridflow exports.
classify_mod = sys.modules["gridflow.classify"]


@pytest.fixture
def points(rng):
    n = 4000
    pts = rng.random((n, 2))
    labels = (pts[:, 0] * 3).astype(int) % 3  # three vertical bands
    flip = rng.random(n) < 0.1  # some noise across the bands
    labels[flip] = rng.integers(0, 3, flip.sum())
    return pts, labels


def _grid(points, path=None, chunks=16, bins=(48, 40)):
    pts, labels = points
    return bin_points(
        pts, path, labels=labels, bins=bins, bounds=(0, 1), periodic=True, chunks=chunks
    )


def _initial(ds):
    c = ds["counts"].values
    return np.where(c.sum(0) > 0, c.argmax(0), -1)


@pytest.mark.parametrize(
    ("chunks", "bins", "n"),
    [
        (48, (48, 40), 4000),
        (16, (48, 40), 4000),
        ((7, 9), (48, 40), 4000),
        # Chunks of 3 cells, as wide as the window: on 24x20 cells with a quarter of
        # the points (as many per cell, as many cells empty), a quarter of the blocks.
        (3, (24, 20), 1000),
    ],
)
def test_classify_equals_the_in_memory_run(points, chunks, bins, n):
    pts, labels = points
    ds = _grid((pts[:n], labels[:n]), chunks=chunks, bins=bins)
    out = classify(ds, window=3, iterations=4, probabilities=True)
    k = parse_kernel("inverse_distance", window=3, ndim=2)
    labels, density, votes = run_numpy(_initial(ds), nclasses=3, kernel=k, iterations=4)
    np.testing.assert_array_equal(out["label"].values, labels)
    assert out["label"].dtype == np.int16
    np.testing.assert_array_equal(out["density"].values, density.astype(np.float32))
    total = votes.sum(0)
    np.testing.assert_allclose(out["confidence"].values, votes.max(0) / total, rtol=1e-6)
    np.testing.assert_allclose(out["probability"].values, votes / total, rtol=1e-6)
    hist = out.attrs["gridflow_stages"]["classify"]["history"]
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["labeled"] == 1.0


@pytest.mark.parametrize("chunks", [48, (7, 9)])
def test_seed_counts(points, chunks):
    ds = _grid(points, chunks=chunks)
    out = classify(ds, window=3, iterations=2, seed="counts")
    k = parse_kernel("inverse_distance", window=3, ndim=2)
    counts = ds["counts"].values.astype(float)
    labels, density, _ = run_numpy(
        _initial(ds), nclasses=3, kernel=k, iterations=2, seed_counts=counts
    )
    np.testing.assert_array_equal(out["label"].values, labels)
    np.testing.assert_array_equal(out["density"].values, density.astype(np.float32))


def test_clamp_keeps_training_cells(points):
    ds = _grid(points)
    out = classify(ds, window=4, iterations=3, clamp=True)
    seeds = _initial(ds)
    held = seeds >= 0
    np.testing.assert_array_equal(out["label"].values[held], seeds[held])
    free = classify(ds, window=4, iterations=3)
    assert (free["label"].values[held] != seeds[held]).any()


def test_store_results_and_rounds(points, tmp_path):
    store = tmp_path / "g.zarr"
    _grid(points, store)
    out = classify(store, window=2, iterations=5, boundary="open", fuse=2)
    again = open_grid(store)
    xr.testing.assert_identical(out["label"].load(), again["label"].load())
    assert "classify" in again.attrs["gridflow_stages"]
    assert again.attrs["history"].splitlines()[-1].split()[3] == "classify"
    mem = classify(open_grid(store), window=2, iterations=5, boundary="open")
    np.testing.assert_array_equal(mem["label"].values, again["label"].values)
    assert not (store / "_gridflow_checkpoint" / "classify").exists()


class _Killed(Exception):
    pass


def test_resume_gives_the_identical_result_and_skips_done_rounds(points, tmp_path, monkeypatch):
    store = tmp_path / "g.zarr"
    _grid(points, store)
    ref = classify(open_grid(store), window=2, iterations=9, fuse=2)

    saved = []
    real_save = classify_mod._Checkpoint.save

    def dying_save(self, state, stats):
        result = real_save(self, state, stats)
        saved.append(state.step)
        if len(saved) == 2:
            raise _Killed
        return result

    monkeypatch.setattr(classify_mod._Checkpoint, "save", dying_save)
    with pytest.raises(_Killed):
        classify(store, window=2, iterations=9, fuse=2)
    assert saved == [2, 4]
    assert "classify" not in open_grid(store).attrs["gridflow_stages"]

    saved.clear()
    monkeypatch.setattr(
        classify_mod._Checkpoint,
        "save",
        lambda self, s, st: (saved.append(s.step), real_save(self, s, st))[1],
    )
    out = classify(store, window=2, iterations=9, fuse=2, resume=True)
    assert saved == [6, 8]  # rounds 1-2 (steps 1-4) were not recomputed; 9 is the final write
    np.testing.assert_array_equal(out["label"].values, ref["label"].values)
    np.testing.assert_array_equal(out["density"].values, ref["density"].values)
    hist = out.attrs["gridflow_stages"]["classify"]["history"]
    assert hist == ref.attrs["gridflow_stages"]["classify"]["history"]


def test_resume_needs_a_store(points, tmp_path):
    store = tmp_path / "g.zarr"
    _grid(points, store)
    with pytest.raises(ParameterError, match="needs a store path"):
        classify(open_grid(store), window=2, iterations=3, resume=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window"),
        ({"window": -1}, "window"),
        ({"window": 30}, "larger than the grid"),
        ({"kernel": "nope"}, "kernel"),
        ({"kernel": np.ones((4, 4)), "window": None}, "odd sides"),
        ({"kernel": np.ones((3, 3, 3)), "window": None}, "2-D array"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": "often"}, "iterations"),
        ({"boundary": "reflect"}, "boundary"),
        ({"seed": "points"}, "seed"),
        ({"tol": 2}, "tol"),
    ],
)
def test_bad_parameters(points, kwargs, match):
    ds = _grid(points)
    with pytest.raises(ParameterError, match=match):
        classify(ds, **({"window": 2} | kwargs))


def test_initial_labels_ties_go_to_the_lowest_class():
    counts = da.from_array(np.array([[[2, 0]], [[2, 0]], [[1, 0]]]), chunks=(3, 1, 1))
    assert classify_mod.initial_labels(counts).compute().tolist() == [[0, -1]]


def test_tune_scores_each_candidate_on_held_out_points(points, tmp_path):
    from gridflow.classify import tune

    ds = _grid(points)
    best, results = tune(ds, windows=(1, 3, 30), iterations=(1, 3), holdout=0.3)
    assert [(r["window"], r["iterations"]) for r in results] == [(1, 1), (1, 3), (3, 1), (3, 3)]
    top = max(r["accuracy"] for r in results)
    assert best in [
        {"window": r["window"], "iterations": r["iterations"]}
        for r in results
        if r["accuracy"] == top
    ]
    # The split does not depend on the chunking.
    other = tune(_grid(points, chunks=(7, 9)), windows=(1, 3), iterations=(1, 3), holdout=0.3)
    assert other[1] == results
    # Scoring by hand: held-out points in cells labeled with their class.
    counts = ds["counts"].data
    held = counts.map_blocks(classify_mod._thin, 0.3, 0, counts.shape, dtype=counts.dtype)
    held = held.compute()
    assert 0 < held.sum() < counts.sum().compute() and (held <= ds["counts"].values).all()
    train = ds.assign(counts=(ds["counts"].dims, ds["counts"].values - held))
    lab = classify(train, window=3, iterations=3)["label"].values
    hits = sum(held[k][lab == k].sum() for k in range(3))
    assert results[-1]["accuracy"] == pytest.approx(hits / held.sum())
    assert 0.6 < top <= 1


def test_boundary_defaults_to_the_grids_geometry(points):
    from gridflow.errors import BoundaryWarning

    pts, labels = points
    flat = bin_points(pts, labels=labels, bins=(48, 40), bounds=(0, 1), chunks=16)
    torus = _grid(points)
    assert classify(flat, window=2).attrs["gridflow_stages"]["classify"]["boundary"] == "open"
    assert classify(torus, window=2).attrs["gridflow_stages"]["classify"]["boundary"] == "periodic"
    # The default equals the explicit choice that matches the geometry, bit for bit.
    np.testing.assert_array_equal(
        classify(flat, window=2)["label"].values,
        classify(flat, window=2, boundary="open")["label"].values,
    )
    with pytest.warns(BoundaryWarning, match="x0, x1 do not wrap"):
        classify(flat, window=2, boundary="periodic")


def test_auto_iterations_warn_when_they_stop_at_max_iter(points):
    from gridflow.errors import ConvergenceWarning

    ds = _grid(points)
    with pytest.warns(ConvergenceWarning, match="stopped at max_iter=1 steps"):
        out = classify(ds, window=1, iterations="auto", max_iter=1)
    assert out.attrs["gridflow_stages"]["classify"]["steps"] == 1
    with pytest.raises(ParameterError, match="max_iter"):
        classify(ds, window=1, iterations="auto", max_iter=0)


def test_a_grid_without_points_warns(tmp_path):
    from gridflow.cluster import cluster
    from gridflow.errors import EmptyGridWarning
    from gridflow.fractal import fractal
    from gridflow.grid import GridSpec
    from gridflow.store import counts_dataset

    # `bin` refuses input of which no row lands in the grid; a grid made by hand can be empty.
    spec = GridSpec(dims=("x", "y"), bounds=[(0, 1), (0, 1)], bins=(8, 8))
    ds = counts_dataset(da.zeros((2, 8, 8), dtype=np.uint32, chunks=4), spec, ("a", "b"), {})
    for stage, run in (
        ("classify", lambda: classify(ds, window=1, iterations=1)),
        ("cluster", lambda: cluster(ds, window=1, iterations=1)),
        ("fractal", lambda: fractal(ds, iterations=2, burn_in=1)),
    ):
        with pytest.warns(EmptyGridWarning, match=f"{stage}: the grid holds no point"):
            run()


@pytest.mark.parametrize("probabilities", [False, True])
def test_compiled_vote_summary_equals_the_array_one(probabilities, monkeypatch):
    # confidence, total and probability from the compiled pass and from array
    # operations (the path of a backend without kernels): the same float32 bits.
    from gridflow._kernels import vote as kernels

    classify_mod = sys.modules["gridflow.classify"]

    rng = np.random.default_rng(3)
    votes = rng.integers(0, 9, size=(4, 13, 11)) * 2.0**-20
    votes[:, :3] = 0.0  # cells without votes
    compiled = kernels.summarise(votes, probabilities)
    monkeypatch.setattr(classify_mod, "ops", lambda a: _NoKernels(a))
    plain = classify_mod._summarise(votes, probabilities)
    assert compiled.dtype == plain.dtype == np.float32
    assert compiled.shape == plain.shape == (2 + 4 * probabilities, 13, 11)
    assert np.array_equal(compiled, plain)
    assert np.all(compiled[0, :3] == 0) and np.all(compiled[1] == votes.sum(axis=0))


class _NoKernels:
    """A backend view with NumPy's arrays and no compiled kernels."""

    def __init__(self, a):
        self.xp = np

    def kernel(self, operation):
        return None


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_a_stored_run_computes_each_block_of_its_last_round_once(
    points, tmp_path, monkeypatch, scheduler
):
    # The stage's writes and its per-step counts share the last round: its blocks
    # run once each (4 blocks of 24x20, one round of 3 steps), not once per output.
    import dask

    import gridflow.engine.vote as vote_mod

    calls = []
    original = vote_mod.fused_steps

    def counted(*args, **kwargs):
        calls.append(kwargs["steps"])
        return original(*args, **kwargs)

    monkeypatch.setattr(vote_mod, "fused_steps", counted)
    store = tmp_path / "g.zarr"
    _grid(points, store, chunks=(24, 20))
    with dask.config.set(scheduler=scheduler):
        out = classify(store, window=1, iterations=3)
    assert calls == [3] * 4
    assert len(out.attrs["gridflow_stages"]["classify"]["history"]) == 3
