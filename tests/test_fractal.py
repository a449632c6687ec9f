import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from gridflow import open_grid
from gridflow._kernels import fractal as _fractalkernel
from gridflow.checkpoint import RoundCheckpoint
from gridflow.counter_rng import integers
from gridflow.engine.neighbour import run_reference
from gridflow.errors import ParameterError, StoreError
from gridflow.fractal import fractal
from gridflow.grid import GridSpec
from gridflow.store import counts_dataset, write_new_store

fractal_mod = sys.modules["gridflow.fractal"]


def _grid(labels, chunks=None, nclasses=None, path=None):
    """A grid whose initial labels (majority class of the counts) are ``labels``."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if nclasses is None else nclasses
    counts = (labels[None] == np.arange(k).reshape((-1,) + (1,) * labels.ndim)).astype(np.uint32)
    dims = tuple(f"x{i}" for i in range(labels.ndim))
    spec = GridSpec(dims, bounds=(0, 1), bins=labels.shape, periodic=True)
    chunks = labels.shape if chunks is None else chunks
    chunks = (chunks,) * labels.ndim if isinstance(chunks, int) else chunks
    data = da.from_array(counts, chunks=(k, *chunks))
    ds = counts_dataset(data, spec, tuple(range(k)), {})
    if path is not None:
        write_new_store(ds, path)
        return path
    return ds


def _sparse_labels(rng, shape, nclasses=4, empty=0.6):
    labels = rng.integers(0, nclasses, shape)
    labels[rng.random(shape) < empty] = -1
    return labels


# --- the random choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "origin", "size"),
    [((37,), (-3,), (43,)), ((13, 17), (5, -2), (11, 21)), ((5, 7, 6), (-1, -1, -1), (7, 9, 8))],
)
def test_compiled_hash_equals_counter_rng(shape, origin, size):
    # 2, 4 and 6 choices: powers of two take the top bits, 6 the high product.
    ndim = len(shape)
    got = _fractalkernel.choices(123, 9, shape, origin, size)
    grids = np.meshgrid(
        *[np.arange(o, o + s) % n for o, s, n in zip(origin, size, shape, strict=True)],
        indexing="ij",
    )
    index = np.ravel_multi_index(grids, shape)
    np.testing.assert_array_equal(got, integers(123, 9, index, 2 * ndim))


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_direction_is_chosen_with_frequency_one_over_2d(ndim):
    # Labels tell the neighbours apart: (i mod 3) * 3^k + ... differs along
    # every direction, so one post-burn-in step shows which one each cell copied.
    n = 24 if ndim == 2 else 12
    idx = np.indices((n,) * ndim)
    labels = sum((idx[k] % 3) * 3**k for k in range(ndim))
    out = fractal(_grid(labels, chunks=n // 2), iterations=1, burn_in=0, seed=11)
    new = out["fractal"].values
    counts = []
    for axis in range(ndim):
        for shift in (1, -1):  # the lower neighbour first, as choice 2 * axis
            counts.append(int((new == np.roll(labels, shift, axis)).sum()))
    total = labels.size
    assert sum(counts) == total  # every cell copied exactly one neighbour
    p = 1 / (2 * ndim)
    sigma = np.sqrt(total * p * (1 - p))
    for c in counts:
        assert abs(c - total * p) < 5 * sigma
    # The same frequencies straight from the hash over many iterations.
    index = np.arange(200_000)
    freq = np.bincount(integers(5, 3, index, 2 * ndim), minlength=2 * ndim) / index.size
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(p * (1 - p) / index.size))


# --- semantics ----------------------------------------------------------------------------


def test_burn_in_semantics_by_hand():
    # Six cells on a ring; with seed 0 the choices (1 = right, 0 = left) are
    # t=1: 1 1 0 0 0 1   t=2: 1 1 0 1 0 0   t=3: 1 0 0 1 1 1
    start = np.array([0, -1, 1, -1, -1, 2])
    assert integers(0, 1, np.arange(6), 2).tolist() == [1, 1, 0, 0, 0, 1]
    grid = _grid(start)
    # Burn-in: only unlabeled cells copy, and only a labeled neighbour.
    # t=1: cell 1 takes cell 2's 1, cell 3 takes cell 2's 1, cell 4 sees the
    # old -1 of cell 3 (synchronous) and stays unlabeled. t=2: cell 4 takes 1.
    out = fractal(grid, iterations=2, burn_in=2, seed=0)
    assert out["fractal"].values.tolist() == [0, 1, 1, 1, 1, 2]
    out = fractal(grid, iterations=3, burn_in=3, seed=0)
    assert out["fractal"].values.tolist() == [0, 1, 1, 1, 1, 2]
    # t=3 after the burn-in: every cell copies its neighbour (cell 5 wraps to cell 0).
    out = fractal(grid, iterations=3, burn_in=2, seed=0)
    assert out["fractal"].values.tolist() == [1, 0, 1, 1, 2, 0]
    # No burn-in: labeled cells copy too, but never an unlabeled neighbour.
    out = fractal(grid, iterations=1, burn_in=0, seed=0)
    assert out["fractal"].values.tolist() == [0, 1, 1, 1, -1, 0]
    # Open boundary: cell 5's right neighbour does not exist; it keeps its 2.
    out = fractal(grid, iterations=1, burn_in=0, seed=0, boundary="open")
    assert out["fractal"].values.tolist() == [0, 1, 1, 1, -1, 2]


def test_burn_in_keeps_labeled_cells_and_fills_the_space(rng):
    start = _sparse_labels(rng, (40, 30), empty=0.8)
    out = fractal(_grid(start, chunks=(16, 12)), iterations=60, burn_in=60, seed=3)["fractal"]
    held = start >= 0
    np.testing.assert_array_equal(out.values[held], start[held])
    assert (out.values >= 0).all()


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("boundary", ["periodic", "open"])
def test_compiled_path_equals_the_reference_bit_for_bit(rng, ndim, boundary):
    shape = {1: (61,), 2: (23, 19), 3: (9, 11, 8)}[ndim]
    start = _sparse_labels(rng, shape)
    ref = run_reference(start.astype(np.int16), iterations=16, burn_in=7, seed=5, boundary=boundary)
    for chunks in (shape, tuple(max(4, s // 2) for s in shape)):
        grid = _grid(start, chunks=chunks)
        for method in ("compiled", "reference"):
            out = fractal(grid, iterations=16, burn_in=7, seed=5, boundary=boundary, method=method)
            np.testing.assert_array_equal(out["fractal"].values, ref)


@pytest.mark.parametrize(
    ("chunks", "fuse"),
    [(None, None), (16, None), ((7, 9), None), (4, 8), ((5, 20), 2), (16, 1)],
)
def test_any_chunking_and_fusion_gives_identical_bits(rng, chunks, fuse):
    # (4, 8): rounds of 8 iterations would need a halo deeper than the chunks.
    start = _sparse_labels(rng, (24, 20))
    ref = fractal(_grid(start), iterations=20, burn_in=6, seed=9)["fractal"].values
    out = fractal(_grid(start, chunks=chunks), iterations=20, burn_in=6, seed=9, fuse=fuse)
    np.testing.assert_array_equal(out["fractal"].values, ref)
    assert out["fractal"].dtype == np.int16
    assert out["fractal"].data.chunks == _grid(start, chunks=chunks)["counts"].data.chunks[1:]


def test_worker_count_does_not_change_a_bit(rng):
    from distributed import Client, LocalCluster

    start = _sparse_labels(rng, (36, 30))
    grid = _grid(start, chunks=(10, 12))
    with dask.config.set(scheduler="sync"):
        ref = fractal(grid, iterations=30, burn_in=5, seed=2)["fractal"].values
    for workers in (1, 3):
        with (
            LocalCluster(
                processes=False, n_workers=workers, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            out = fractal(grid, iterations=30, burn_in=5, seed=2)["fractal"].values
        np.testing.assert_array_equal(out, ref)


def test_record_keeps_frames(rng):
    start = _sparse_labels(rng, (20, 18))
    grid = _grid(start, chunks=(7, 9))
    out = fractal(grid, iterations=23, burn_in=4, seed=1, record=5)
    frames = out["fractal_frames"]
    assert frames.dims == ("fractal_iteration", "x0", "x1")
    assert out["fractal_iteration"].values.tolist() == [0, 5, 10, 15, 20, 23]
    np.testing.assert_array_equal(frames.values[0], start)
    np.testing.assert_array_equal(frames.values[-1], out["fractal"].values)
    for t, frame in zip((5, 10, 15, 20), frames.values[1:-1], strict=True):
        expect = fractal(grid, iterations=t, burn_in=4, seed=1)["fractal"].values
        np.testing.assert_array_equal(frame, expect)


# --- the store ---------------------------------------------------------------------------


def test_store_results_stage_attrs_and_start_labels(rng, tmp_path):
    start = _sparse_labels(rng, (24, 20))
    store = _grid(start, chunks=8, path=tmp_path / "g.zarr")
    out = fractal(store, iterations=12, burn_in=12, seed=4, record=6)
    again = open_grid(store)
    xr.testing.assert_identical(out["fractal"].load(), again["fractal"].load())
    assert again["fractal"].dtype == np.int16
    stage = again.attrs["gridflow_stages"]["fractal"]
    assert stage["start"] == "counts" and stage["iterations"] == 12 and stage["burn_in"] == 12
    assert stage["history"][-1] == {"iteration": 12, "unlabeled": 0.0}
    assert again.attrs["history"].splitlines()[-1].split()[3] == "fractal"
    assert again["fractal_iteration"].values.tolist() == [0, 6, 12]
    assert not (store / "_gridflow_checkpoint" / "fractal").exists()
    # A rerun without recording drops the stale frames.
    fractal(store, iterations=5, burn_in=0, seed=4)
    assert "fractal_frames" not in open_grid(store)
    # With a label variable (classify's), "auto" starts from it.
    import zarr

    ds = open_grid(store).assign(label=(("x0", "x1"), np.zeros((24, 20), np.int16)))
    ds[["label"]].to_zarr(store, mode="a", zarr_format=3, consolidated=False)
    assert "label" in zarr.open_group(store)
    out = fractal(store, iterations=5, burn_in=0, seed=4)
    assert out.attrs["gridflow_stages"]["fractal"]["start"] == "label"
    assert (out["fractal"].values == 0).all()
    out = fractal(store, iterations=5, burn_in=5, seed=4, start="counts")
    expect = fractal(_grid(start), iterations=5, burn_in=5, seed=4)["fractal"].values
    np.testing.assert_array_equal(out["fractal"].values, expect)


class _Killed(Exception):
    pass


def test_resume_gives_the_identical_result(rng, tmp_path, monkeypatch):
    start = _sparse_labels(rng, (30, 26))
    store = _grid(start, chunks=(10, 13), path=tmp_path / "g.zarr")
    kwargs = {"iterations": 21, "burn_in": 6, "seed": 8, "record": 4, "fuse": 3}
    ref = fractal(open_grid(store), **kwargs)

    saved = []
    real_save = RoundCheckpoint.save

    def dying_save(self, step, *args, **kwargs):
        result = real_save(self, step, *args, **kwargs)
        saved.append(step)
        if len(saved) == 3:
            raise _Killed
        return result

    monkeypatch.setattr(RoundCheckpoint, "save", dying_save)
    with pytest.raises(_Killed):
        fractal(store, **kwargs)
    assert saved == [3, 6, 9]
    assert "fractal" not in open_grid(store).attrs["gridflow_stages"]
    assert "fractal" not in open_grid(store)

    saved.clear()
    monkeypatch.setattr(
        RoundCheckpoint,
        "save",
        lambda self, step, *args, **kwargs: (
            saved.append(step),
            real_save(self, step, *args, **kwargs),
        )[1],
    )
    out = fractal(store, resume=True, **kwargs)
    assert saved == [12, 15, 18]  # iterations 1-9 were not recomputed; 21 is the final write
    np.testing.assert_array_equal(out["fractal"].values, ref["fractal"].values)
    np.testing.assert_array_equal(out["fractal_frames"].values, ref["fractal_frames"].values)
    assert out["fractal_iteration"].values.tolist() == [0, 4, 8, 12, 16, 20, 21]
    stage, ref_stage = (d.attrs["gridflow_stages"]["fractal"] for d in (out, ref))
    assert stage["history"] == ref_stage["history"]


def test_resume_with_nothing_to_resume_starts_from_the_beginning(rng, tmp_path):
    start = _sparse_labels(rng, (12, 12))
    store = _grid(start, path=tmp_path / "g.zarr")
    out = fractal(store, iterations=3, burn_in=1, resume=True)
    expect = fractal(_grid(start), iterations=3, burn_in=1)
    np.testing.assert_array_equal(out["fractal"].values, expect["fractal"].values)
    with pytest.raises(ParameterError, match="needs a store path"):
        fractal(open_grid(store), iterations=3, burn_in=1, resume=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"burn_in": -1}, "burn_in"),
        ({"burn_in": 11}, "at most iterations"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"record": 0}, "record"),
        ({"fuse": 0}, "fuse"),
        ({"boundary": "reflect"}, "boundary"),
        ({"start": "zeros"}, "start"),
        ({"method": "fast"}, "method"),
    ],
)
def test_bad_parameters(rng, kwargs, match):
    grid = _grid(_sparse_labels(rng, (10, 10)))
    with pytest.raises(ParameterError, match=match):
        fractal(grid, **({"iterations": 10, "burn_in": 2} | kwargs))


def test_start_label_needs_classify(rng):
    with pytest.raises(StoreError, match="gridflow classify"):
        fractal(_grid(_sparse_labels(rng, (10, 10))), iterations=3, burn_in=1, start="label")


def test_cli_fractal(rng, tmp_path):
    from click.testing import CliRunner

    from gridflow.cli import main

    start = _sparse_labels(rng, (20, 16))
    store = _grid(start, chunks=8, path=tmp_path / "g.zarr")
    args = ["--no-progress", "fractal", str(store), "--iterations", "12", "--burn-in", "4"]
    r = CliRunner().invoke(main, [*args, "--seed", "3", "--record", "4"])
    assert r.exit_code == 0, r.output
    assert "12 iterations (4 burn-in) from the counts" in r.output and "4 frames" in r.output
    expect = fractal(_grid(start), iterations=12, burn_in=4, seed=3)
    np.testing.assert_array_equal(open_grid(store)["fractal"].values, expect["fractal"].values)
    r = CliRunner().invoke(main, [*args[:-1], "40"])
    assert (
        r.exit_code == 2 and r.output.startswith("error: --burn-in") and r.output.count("\n") == 1
    )
    # Other parameters (seed 0) and nothing checkpointed: --resume starts afresh.
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    expect = fractal(_grid(start), iterations=12, burn_in=4, seed=0)
    np.testing.assert_array_equal(open_grid(store)["fractal"].values, expect["fractal"].values)
