"""The chunk-type dispatch table (gridflow.backend)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import scipy.ndimage

from gridflow import backend
from gridflow.backend import backend_of, meta_like, ops, to_host
from gridflow.engine.correlate import correlate
from gridflow.engine.neighbour import run_reference
from gridflow.engine.vote import decide, fused_steps, pad, vote
from gridflow.kernels import parse_kernel
from tests.conftest import has_cuda_device
from tests.conftest import to_host as host


def test_numpy_is_registered_with_scipy():
    b = ops(np.zeros(3))
    assert (b.name, b.xp, b.ndimage, b.fft) == ("numpy", np, scipy.ndimage, scipy.fft)
    assert b.kernel("vote").__name__ == "gridflow._kernels.vote"
    assert b.kernel("fractal").__name__ == "gridflow._kernels.fractal"
    assert b.kernel("no such operation") is None


def test_a_dask_array_dispatches_on_its_meta():
    x = da.zeros((4, 4), chunks=2)
    assert ops(x) is ops(np.zeros(1))
    m = meta_like(x, 3, np.float64)
    assert isinstance(m, np.ndarray) and m.shape == (0, 0, 0) and m.dtype == np.float64


def test_sparse_is_registered_lazily_on_first_use():
    sparse = pytest.importorskip("sparse")
    backend._lookup.cache_clear()
    chunk = sparse.COO.from_numpy(np.eye(3))
    b = ops(chunk)
    assert b.name == "sparse" and b.xp is sparse
    assert b.ndimage is None and b.kernel("vote") is None
    np.testing.assert_array_equal(to_host(chunk), np.eye(3))
    assert ops(da.from_array(chunk, chunks=2)) is b


def test_mixed_chunk_types_raise_naming_both():
    sparse = pytest.importorskip("sparse")
    dense = np.zeros((3, 3))
    coo = sparse.COO.from_numpy(np.eye(3))
    assert backend_of(dense, None, dense) is ops(dense)
    with pytest.raises(TypeError, match=r"numpy\.ndarray and sparse.*COO"):
        backend_of(dense, coo)


def test_a_registered_type_serves_its_subclasses():
    class Sub(np.ndarray):
        pass

    assert ops(np.zeros(2).view(Sub)) is ops(np.zeros(2))


def test_an_unregistered_chunk_type_is_numpy():
    assert ops([1, 2, 3]).name == "numpy" and ops(3.0).name == "numpy"


# --- the engine on every backend (CuPy where a device exists) ------------------------


@pytest.mark.parametrize("method", ["direct", "separable", "box", "fft"])
def test_correlation_methods_agree_on_every_backend(xp, method):
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 2, size=(3, 40, 36)).astype(np.float64)
    name = "box" if method == "box" else "inverse_distance"
    kernel = parse_kernel(name, window=3, ndim=2)
    if method == "separable" and not kernel.separable:
        kernel = parse_kernel("box", window=3, ndim=2)
    ref = correlate(planes, kernel, "direct")
    got = correlate(xp.asarray(planes), kernel, method)
    assert type(got) is type(xp.asarray(planes))
    # Cells within the radius of the edge see only the block (FFT: wrap around it).
    inside = (slice(None), slice(3, -3), slice(3, -3))
    np.testing.assert_array_equal(host(got)[inside], ref[inside])


def test_array_code_equals_the_compiled_vote_kernels(xp, monkeypatch):
    """The backend-neutral vote code (what a backend without kernels runs) gives the kernels' bits."""
    rng = np.random.default_rng(5)
    kernel = parse_kernel("inverse_distance", window=2, ndim=2)
    labels = rng.integers(-1, 4, size=(30, 28)).astype(np.int32)
    labels[0, 0] = -2
    ref_votes = vote(labels, 4, kernel)
    want_labels, want_total = decide(ref_votes)

    def three_steps(a):
        return fused_steps(
            pad(a, (6, 6), "open"),
            None,
            nclasses=4,
            kernel=kernel,
            steps=3,
            first_step=1,
            final_votes=True,
        )

    ref = three_steps(labels)
    numpy_backend = ops(np.zeros(1))
    neutral = backend.Backend(**{**numpy_backend.__dict__, "kernels": {}})
    monkeypatch.setattr(backend, "_NUMPY", neutral)
    monkeypatch.setitem(backend._TABLE, np.ndarray, neutral)
    backend._lookup.cache_clear()
    try:
        x = xp.asarray(labels)
        np.testing.assert_array_equal(host(vote(x, 4, kernel)), ref_votes)
        got_labels, got_total = decide(xp.asarray(ref_votes))
        np.testing.assert_array_equal(host(got_labels), want_labels)
        np.testing.assert_array_equal(host(got_total), want_total)
        np.testing.assert_array_equal(host(three_steps(x)), ref)
    finally:
        backend._lookup.cache_clear()


def test_the_fractal_reference_runs_on_every_backend(xp):
    rng = np.random.default_rng(8)
    labels = np.full((20, 18), -1, np.int16)
    labels[rng.integers(0, 20, 12), rng.integers(0, 18, 12)] = rng.integers(0, 3, 12)
    ref = run_reference(labels, iterations=30, burn_in=10, seed=4)
    got = run_reference(xp.asarray(labels), iterations=30, burn_in=10, seed=4)
    np.testing.assert_array_equal(host(got), ref)


# --- backend= on the stages ---------------------------------------------------------


def _points(rng, n=3000):
    return rng.random((n, 2)), rng.integers(0, 3, n)


def test_parse_backend_and_the_pipeline_key(tmp_path):
    from gridflow.errors import ParameterError
    from gridflow.pipeline.config import parse_pipeline
    from gridflow.pipeline.schema import ConfigError

    assert backend.parse_backend(None) is None
    assert backend.parse_backend("cupy") == "cupy"
    (tmp_path / "t.parquet").write_bytes(b"")  # the pipeline checks its inputs exist
    with pytest.raises(ParameterError, match="backend: expected 'numpy' or 'cupy', got 'tpu'"):
        backend.parse_backend("tpu")
    raw = {
        "inputs": {"train": "t.parquet"},
        "grid": {"bins": 8},
        "stages": {"bin": {}, "classify": {"window": 1}},
        "outputs": {"store": "g.zarr"},
    }
    assert parse_pipeline(raw, workdir=tmp_path).backend is None
    assert parse_pipeline({**raw, "scheduler": {"scheduler": "gpu"}}, workdir=tmp_path).backend == (
        "cupy"
    )
    both = {**raw, "scheduler": {"scheduler": "gpu"}, "backend": "numpy"}
    assert parse_pipeline(both, workdir=tmp_path).backend == "numpy"
    assert parse_pipeline(raw, workdir=tmp_path, backend="cupy").backend == "cupy"
    with pytest.raises(ConfigError, match="backend"):
        parse_pipeline({**raw, "backend": "tpu"}, workdir=tmp_path)


@pytest.mark.skipif(has_cuda_device(), reason="CuPy and a CUDA device are here: the gpu tests run")
def test_backend_cupy_without_cupy_is_refused_before_any_work(rng, tmp_path):
    from click.testing import CliRunner

    import gridflow as gf
    from gridflow.cli import main
    from gridflow.errors import MissingDependencyError

    X, y = _points(rng)
    store = tmp_path / "g.zarr"
    with pytest.raises(MissingDependencyError, match=r"gridflow\[gpu\]"):
        gf.bin_points(X, store, labels=y, bins=24, bounds=(0, 1), backend="cupy")
    assert not store.exists()  # nothing half-written
    gf.bin_points(X, store, labels=y, bins=24, bounds=(0, 1))
    with pytest.raises(MissingDependencyError, match=r"--backend numpy"):
        gf.classify(store, window=1, backend="cupy")
    assert "classify" not in gf.open_grid(store).attrs["gridflow_stages"]
    with pytest.raises(MissingDependencyError, match=r"gridflow\[gpu\]"):
        gf.GridClassifier(backend="cupy").fit(X, y)
    r = CliRunner().invoke(main, ["--backend", "cupy", "classify", str(store), "--window", "1"])
    assert r.exit_code == 2
    assert r.output.startswith("error: backend cupy: needs CuPy")
    assert r.output.count("\n") == 1
    assert "classify" not in gf.open_grid(store).attrs["gridflow_stages"]
    out = tmp_path / "p.parquet"
    with pytest.raises(MissingDependencyError, match=r"gridflow\[gpu\]"):
        gf.predict(tmp_path / "no such grid.zarr", X, backend="cupy")  # before reading it
    with pytest.raises(MissingDependencyError, match=r"gridflow\[gpu\]"):
        gf.predict_to_parquet(store, X, out, backend="cupy")
    assert not out.exists()
    pts = tmp_path / "pts.parquet"
    pd.DataFrame(X, columns=["x0", "x1"]).to_parquet(pts)
    r = CliRunner().invoke(
        main, ["--backend", "cupy", "predict", str(store), str(pts), "--out", str(out)]
    )
    assert (r.exit_code, r.output.count("\n")) == (2, 1)
    assert r.output.startswith("error: backend cupy: needs CuPy")
    assert not out.exists()


@pytest.mark.gpu
def test_cupy_backend_equals_numpy_bit_for_bit(rng, tmp_path):
    """On a device, every stage on CuPy chunks writes the store the CPU run writes;
    binning counts on the device and prediction reads there, with the CPU's results."""
    import gridflow as gf
    from gridflow.backend import move

    pytest.importorskip("cupy", reason="the gpu case needs CuPy (gridflow[gpu])")
    if not has_cuda_device():
        pytest.skip("the gpu case needs a CUDA device")
    X, y = _points(rng)
    X[:7] = np.nan  # dropped: non-finite
    X[7:20, 1] = 1.5  # dropped: out of range
    stores = {}
    for name in ("numpy", "cupy"):
        store = tmp_path / f"{name}.zarr"
        gf.bin_points(
            X, store, labels=y, bins=32, bounds=(0, 1), chunks=16, strategy="tree", backend=name
        )
        gf.classify(store, window=3, iterations=4, probabilities=True, backend=name)
        gf.cluster(store, window=2, backend=name)
        gf.fractal(store, iterations=40, backend=name)
        stores[name] = gf.open_grid(store)
    for var in ("counts", "label", "confidence", "density", "probability", "cluster", "fractal"):
        np.testing.assert_array_equal(stores["numpy"][var].values, stores["cupy"][var].values)
    report = stores["numpy"].attrs["gridflow_stages"]["bin"]["report"]
    assert stores["cupy"].attrs["gridflow_stages"]["bin"]["report"] == report

    # In memory: the tree strategy's counts are CuPy chunks counted on the
    # device, the chunked strategy's are moved there; both are the CPU's.
    for strategy in ("tree", "chunked"):
        ds = gf.bin_points(
            X, labels=y, bins=32, bounds=(0, 1), chunks=16, strategy=strategy, backend="cupy"
        )
        counts = ds["counts"].data
        assert ops(counts).name == "cupy" and ops(counts.blocks[0, 0, 0].compute()).name == "cupy"
        np.testing.assert_array_equal(host(counts.compute()), stores["numpy"]["counts"].values)
        assert ds.attrs["gridflow_stages"]["bin"]["report"]["strategy"] == strategy

    # Prediction on the device (asked for, or found from the labels' chunks).
    queries = rng.uniform(-0.2, 1.2, (2000, 2))
    queries[:5] = np.nan
    want = gf.predict(stores["numpy"], queries, probabilities=True)
    on_device = stores["cupy"].copy()
    for var in ("label", "probability"):
        on_device[var] = on_device[var].copy(data=move(on_device[var].data, "cupy"))
    for grid, kwargs in ((stores["cupy"], {"backend": "cupy"}), (on_device, {})):
        got = gf.predict(grid, queries, probabilities=True, **kwargs)
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.probability, want.probability)
        assert got.report == want.report
    outs = {}
    for name in ("numpy", "cupy"):
        outs[name] = tmp_path / f"{name}.parquet"
        gf.predict_to_parquet(stores[name], queries, outs[name], backend=name)
    pd.testing.assert_frame_equal(pd.read_parquet(outs["cupy"]), pd.read_parquet(outs["numpy"]))
