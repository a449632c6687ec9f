import os
import sys

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.core import get_dependencies

import gridflow.points
from gridflow import GridSpec, bin_points, open_grid, open_points
from gridflow.errors import InputDataError, ParameterError, StoreError
from gridflow.predict import predict, predict_to_parquet
from tests._stores import point_source
from tests.conftest import local_cluster

# gridflow.predict is also the name of the function gridflow exports.
predict_mod = sys.modules["gridflow.predict"]

CLASSES = np.array(["cat", "dog", "emu"])


def _with_labels(ds):
    """A synthetic classify output: the majority class where a cell holds
    points (else -1), and the class fractions as probabilities."""
    counts = ds["counts"]
    total = counts.sum("class")
    label = xr.where(total > 0, counts.argmax("class"), -1).astype(np.int32)
    probability = (counts / total.where(total > 0)).astype(np.float32)
    return ds.assign(label=label, probability=probability)


def _grid(tmp_path, spec, chunks, *, n=400, seed=0, classes=CLASSES, probability=True):
    """A store binned from random points, with label (and probability) added."""
    rng = np.random.default_rng(seed)
    pts = spec.lo + rng.random((n, spec.ndim)) * spec.width
    store = tmp_path / f"grid-{spec.ndim}-{chunks}.zarr"
    ds = bin_points(
        pts, store, spec=spec, labels=classes[rng.integers(0, len(classes), n)], chunks=chunks
    )
    extra = _with_labels(ds)[["label", "probability"] if probability else ["label"]]
    extra.attrs = ds.attrs
    extra.to_zarr(store, mode="a", consolidated=False)
    return store


def _queries(spec, n=500, seed=1):
    """Points inside, around and outside the grid, plus NaN and inf rows."""
    rng = np.random.default_rng(seed)
    pts = spec.lo + (rng.random((n, spec.ndim)) * 1.6 - 0.3) * spec.width
    pts[:3] = spec.hi  # the upper bound is in the last cell of a non-periodic dim
    pts[3:6] = spec.lo
    pts[6, 0] = np.nan
    pts[7, -1] = np.inf
    pts[8] = -np.inf
    return pts


def _expected(ds, pts):
    """Read the stored arrays at the points' cells with NumPy."""
    spec = GridSpec.from_dict(ds.attrs["gridflow_grid"])
    cells = spec.cell_index(pts)
    ok = cells[:, 0] >= 0
    codes = np.full(len(pts), -1, dtype=np.int64)
    codes[ok] = ds["label"].values[tuple(cells[ok].T)]
    probs = np.full((len(pts), ds.sizes["class"]), np.nan, dtype=np.float32)
    if "probability" in ds:
        probs[ok] = np.moveaxis(ds["probability"].values, 0, -1)[tuple(cells[ok].T)]
    return codes, probs, ok


def _check(result, ds, pts):
    codes, probs, ok = _expected(ds, pts)
    np.testing.assert_array_equal(result.codes, codes)
    assert len(result) == len(pts)
    r = result.report
    assert r["rows"] == len(pts)
    assert r["no_cell"] == int((~ok).sum())
    assert r["unlabeled_cell"] == int((ok & (codes < 0)).sum())
    assert r["predicted"] == int((codes >= 0).sum())
    if result.probability is not None:
        assert result.probability.dtype == np.float32
        np.testing.assert_array_equal(result.probability, probs)


SPECS = {
    "1d": GridSpec(("x",), bounds=(-2, 3), bins=7),
    "2d": GridSpec(("x", "y"), bounds=[(0, 1), (-5, 5)], bins=(8, 6)),
    "3d": GridSpec(("x", "y", "z"), bounds=(0, 1), bins=(5, 4, 3)),
}


@pytest.mark.parametrize("chunks", [1, 2, 3, 64])
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("name", list(SPECS))
def test_predict_reads_the_label_at_each_cell(name, periodic, chunks, tmp_path):
    s = SPECS[name]
    spec = GridSpec(s.dims, s.bounds, s.bins, periodic=periodic)
    store = _grid(tmp_path, spec, chunks)
    ds = open_grid(store)
    pts = _queries(spec)
    result = predict(store, pts, probabilities=True)
    _check(result, ds, pts)
    assert result.report["no_cell"] >= (3 if periodic else 100)  # NaN/inf rows, and beyond
    np.testing.assert_array_equal(predict(ds, pts).codes, result.codes)  # Dataset or path


def _source(kind, pts, tmp_path):
    df = pd.DataFrame({"id": np.arange(len(pts)), "y": pts[:, 1], "x": pts[:, 0]})
    df["note"] = np.array(["a", "b", "c"])[np.arange(len(pts)) % 3]
    if kind == "numpy":
        return pts
    if kind == "npy":  # a plain (n, d) array, not the structured one of point_source
        path = tmp_path / "q.npy"
        np.save(path, pts)
        return str(path)
    if kind == "mapping":
        return {"x": pts[:, 0], "y": pts[:, 1]}
    return point_source(kind, df, tmp_path, stem="q", partitions=4, dask_partitions=5)


SOURCES = ["numpy", "pandas", "dask", "parquet", "csv", "npy", "mapping"]


@pytest.fixture(scope="module")
def grid2d(tmp_path_factory):
    """A 2-D store with chunks of 3 cells (several chunks per dim)."""
    tmp = tmp_path_factory.mktemp("grid")
    return _grid(tmp, SPECS["2d"], 3, n=600)


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_gives_the_same_predictions(kind, grid2d, tmp_path):
    pts = _queries(SPECS["2d"])
    result = predict(grid2d, _source(kind, pts, tmp_path), probabilities=True)
    _check(result, open_grid(grid2d), pts)


def test_row_order_is_kept_across_many_blocks(grid2d, monkeypatch):
    monkeypatch.setattr(gridflow.points, "BLOCK_ROWS", 37)
    pts = _queries(SPECS["2d"], n=1000)
    src = open_points(pts, columns=("x", "y"), label=None, require_label=False)
    assert src.npartitions > 20
    _check(predict(grid2d, pts, probabilities=True), open_grid(grid2d), pts)


def test_columns_map_other_names_to_the_dims(grid2d):
    pts = _queries(SPECS["2d"])
    df = pd.DataFrame({"b": pts[:, 1], "a": pts[:, 0]})
    result = predict(grid2d, df, columns=["a", "b"])
    _check(result, open_grid(grid2d), pts)
    np.testing.assert_array_equal(predict(grid2d, df, columns="a,b").codes, result.codes)


def test_labels_are_class_names_with_none_where_no_label(grid2d):
    pts = _queries(SPECS["2d"])
    result = predict(grid2d, pts, probabilities=True)
    codes = result.codes
    labels = result.labels
    assert labels.dtype == object
    assert all(v is None for v in labels[codes < 0])
    assert labels[codes >= 0].tolist() == CLASSES[codes[codes >= 0]].tolist()
    frame = result.to_frame()
    assert list(frame.columns) == [
        "prediction",
        "probability_cat",
        "probability_dog",
        "probability_emu",
    ]
    assert frame["prediction"].isna().tolist() == (codes < 0).tolist()


def test_integer_classes_and_unlabeled_cells(tmp_path):
    spec = GridSpec(("x", "y"), bounds=(0, 1), bins=(6, 6))
    # Few points: many cells are empty, so their label is -1.
    store = _grid(tmp_path, spec, 2, n=8, classes=np.array([10, 20]))
    ds = open_grid(store)
    pts = _queries(spec, n=400)
    result = predict(store, pts)
    _check(result, ds, pts)
    assert result.report["unlabeled_cell"] > 0
    assert result.classes.tolist() == [10, 20]
    labels = result.labels
    assert labels[result.codes == 1].tolist() == [20] * int((result.codes == 1).sum())
    assert result.to_frame()["prediction"].dtype == "Int64"


def test_in_memory_grids(grid2d):
    pts = _queries(SPECS["2d"])
    ds = open_grid(grid2d).load()  # NumPy-backed variables
    _check(predict(ds, pts, probabilities=True), ds, pts)
    lazy = _with_labels(
        bin_points(
            _queries(SPECS["2d"], 300, seed=5),
            spec=SPECS["2d"],
            labels=np.arange(300) % 2,
            chunks=(3, 4),
        )
    )
    _check(predict(lazy, pts, probabilities=True), lazy.compute(), pts)


def test_irregular_chunks(grid2d):
    ds = open_grid(grid2d).chunk({"x": (1, 4, 3), "y": (2, 1, 1, 2)})
    pts = _queries(SPECS["2d"])
    _check(predict(ds, pts, probabilities=True), ds, pts)
    # probability chunked unlike the labels
    ds = ds.assign(probability=ds["probability"].chunk({"class": 1, "x": 5, "y": 6}))
    _check(predict(ds, pts, probabilities=True), ds, pts)


def test_label_dims_in_another_order(grid2d):
    ds = open_grid(grid2d)
    pts = _queries(SPECS["2d"])
    flipped = ds.assign(label=ds["label"].transpose("y", "x"))
    np.testing.assert_array_equal(predict(flipped, pts).codes, predict(ds, pts).codes)


def test_cluster_ids_are_kept_as_ids(grid2d):
    ds = open_grid(grid2d)
    ids = xr.DataArray(
        np.arange(ds["label"].size, dtype=np.int32).reshape(ds["label"].shape) - 5,
        dims=ds["label"].dims,
    ).chunk(3)
    pts = _queries(SPECS["2d"])
    result = predict(ds.assign(cluster=ids), pts, variable="cluster")
    assert result.classes is None
    spec = SPECS["2d"]
    cells = spec.cell_index(pts)
    ok = cells[:, 0] >= 0
    expected = np.where(ok, np.maximum(cells[:, 0] * 6 + cells[:, 1] - 5, -1), -1)
    np.testing.assert_array_equal(result.codes, expected)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.report["unlabeled_cell"] == int((ok & (expected < 0)).sum())


def test_empty_points(grid2d):
    result = predict(grid2d, np.empty((0, 2)), probabilities=True)
    assert result.codes.shape == (0,)
    assert result.probability.shape == (0, 3)
    assert result.report == {"rows": 0, "predicted": 0, "no_cell": 0, "unlabeled_cell": 0}


# --- errors ---------------------------------------------------------------------------


def test_points_of_the_wrong_dimension(grid2d, tmp_path):
    pts = np.zeros((5, 3))
    with pytest.raises(InputDataError, match=r"3 coordinates, the grid has 2 dims \(x, y\)"):
        predict(grid2d, pts)
    np.save(tmp_path / "p.npy", pts)
    with pytest.raises(InputDataError, match="3 coordinates"):
        predict(grid2d, str(tmp_path / "p.npy"))
    with pytest.raises(ParameterError, match="expected 2 names"):
        predict(grid2d, pd.DataFrame({"a": [0.5], "b": [0.5], "c": [0.5]}), columns="a,b,c")


def test_missing_coordinate_column(grid2d, tmp_path):
    df = pd.DataFrame({"x": [0.5], "z": [0.5]})
    with pytest.raises(InputDataError, match=r"'y' not found.*dims are \(x, y\)"):
        predict(grid2d, df)
    df.to_parquet(tmp_path / "q.parquet")
    with pytest.raises(InputDataError, match=r"'y' not found.*dims are \(x, y\)"):
        predict(grid2d, str(tmp_path / "q.parquet"))
    with pytest.raises(InputDataError, match="'w' not found"):
        predict(grid2d, df, columns=["x", "w"])


def test_grid_without_labels_or_probabilities(tmp_path):
    spec = SPECS["2d"]
    store = tmp_path / "counts.zarr"
    bin_points(np.full((4, 2), 0.5), store, spec=spec, labels=[0, 1, 0, 1])
    with pytest.raises(StoreError, match=r"no 'label' variable.*run `gridflow classify` first"):
        predict(store, np.zeros((1, 2)))
    with pytest.raises(StoreError, match="run `gridflow cluster` first"):
        predict(store, np.zeros((1, 2)), variable="cluster")
    with pytest.raises(StoreError, match="choose one of its variables"):
        predict(store, np.zeros((1, 2)), variable="nonsense")
    with pytest.raises(StoreError, match="expected integers"):
        predict(open_grid(store).assign(label=lambda d: d["counts"][0] * 0.5), np.zeros((1, 2)))
    labeled = _grid(tmp_path, spec, 4, probability=False)
    assert predict(labeled, np.zeros((1, 2))).probability is None
    with pytest.raises(StoreError, match="no 'probability' variable"):
        predict(labeled, np.zeros((1, 2)), probabilities=True)
    with pytest.raises(ParameterError, match="expected a store path or an xarray Dataset"):
        predict(np.zeros((3, 3)), np.zeros((1, 2)))
    with pytest.raises(StoreError, match="does not exist"):
        predict(tmp_path / "nowhere.zarr", np.zeros((1, 2)))


def test_backend_numpy_reads_on_the_host(grid2d):
    pts = _queries(SPECS["2d"])
    want = predict(grid2d, pts, probabilities=True)
    got = predict(grid2d, pts, probabilities=True, backend="numpy")
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_array_equal(got.probability, want.probability)
    assert not predict_mod._Grid(open_grid(grid2d), "label", True, backend="numpy").locator.device
    with pytest.raises(ParameterError, match="backend: expected 'numpy' or 'cupy', got 'tpu'"):
        predict(grid2d, pts, backend="tpu")


# --- the grid is read one chunk at a time ----------------------------------------------


def test_each_task_reads_at_most_one_chunk(grid2d, monkeypatch):
    monkeypatch.setattr(gridflow.points, "BLOCK_ROWS", 50)
    ds = open_grid(grid2d)
    g = predict_mod._Grid(ds, "label", True)
    pts = _queries(SPECS["2d"], n=300) * 0.5  # in the lower-left chunks only
    src = open_points(pts, columns=("x", "y"), label=None, require_label=False)
    touched = predict_mod._first_pass(src.blocks, g.locator, src.columns)
    plan = predict_mod._plan(g, src.blocks, touched, src.columns)
    (opt,) = dask.optimize(dask.delayed(list)(plan))
    dsk = dict(opt.__dask_graph__())

    def chunk_keys(keys, name):
        return {k for k in keys if isinstance(k, tuple) and k[0] == name}

    needed = set().union(*(ids.tolist() for _, ids in touched))
    assert 0 < len(needed) < np.prod(g.locator.nchunks)
    # Only the touched chunks are in the graph, each one task read by many.
    assert len(chunk_keys(dsk, g.labels.name)) == len(needed)
    assert len(chunk_keys(dsk, g.probability.name)) == len(needed)
    lookups = 0
    for key in dsk:
        deps = get_dependencies(dsk, key)
        assert len(chunk_keys(deps, g.labels.name)) <= 1
        assert len(chunk_keys(deps, g.probability.name)) <= 1
        lookups += bool(chunk_keys(deps, g.labels.name))
    assert lookups == sum(len(ids) for _, ids in touched)
    codes = np.concatenate([r[0] for r in dask.compute(*plan)])
    np.testing.assert_array_equal(codes, _expected(ds, pts)[0])


def test_a_huge_grid_reads_only_the_chunks_it_needs():
    """A 10**10-cell grid (40 GB of labels) that raises if a chunk nobody
    needs is computed; the chunks that are needed are computed once each."""
    n, c = 100_000, 1_000
    spec = GridSpec(("x", "y"), bounds=(0, n), bins=n)
    pts = np.array([[5.5, 7.5], [999.5, 0.5], [50_000.5, 99_999.5], [5.5, 2_000.5], [1.5, 2.5]])
    allowed = {(0, 0), (50, 99), (0, 2)}
    computed = []

    def block_label(block, block_info=None):
        loc = tuple(block_info[None]["chunk-location"])
        if loc not in allowed:
            raise AssertionError(f"chunk {loc} was read")
        computed.append(loc)
        return np.full(block.shape, loc[0] * 1000 + loc[1], dtype=np.int32)

    labels = da.zeros((n, n), chunks=c, dtype=np.int32).map_blocks(
        block_label, dtype=np.int32, meta=np.empty((0, 0), dtype=np.int32)
    )
    ds = xr.Dataset(
        {"label": (("x", "y"), labels)},
        coords={"class": ["a", "b"]},
        attrs={"gridflow_grid": spec.to_dict()},
    )
    result = predict(ds, pts)
    assert result.codes.tolist() == [0, 0, 50 * 1000 + 99, 2, 0]
    assert sorted(computed) == sorted(allowed)


# --- predict_to_parquet ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "csv", "pandas", "dask"])
def test_predict_to_parquet_round_trip(kind, grid2d, tmp_path):
    pts = _queries(SPECS["2d"])
    source = _source(kind, pts, tmp_path)
    out = tmp_path / "predicted.parquet"
    report = predict_to_parquet(grid2d, source, out)
    expected = predict(grid2d, pts, probabilities=True)
    assert report == expected.report
    got = pd.read_parquet(out)
    columns = ["id", "y", "x", "note"]
    assert list(got.columns) == [
        *columns,
        "prediction",
        "probability_cat",
        "probability_dog",
        "probability_emu",
    ]
    original = pd.DataFrame({"id": np.arange(len(pts)), "y": pts[:, 1], "x": pts[:, 0]})
    np.testing.assert_array_equal(got["id"].to_numpy(), original["id"].to_numpy())
    np.testing.assert_array_equal(got["x"].to_numpy(), pts[:, 0])
    assert got["note"].tolist() == (np.array(["a", "b", "c"])[np.arange(len(pts)) % 3]).tolist()
    labels = expected.labels
    assert got["prediction"].isna().tolist() == [v is None for v in labels]
    has = ~got["prediction"].isna().to_numpy()
    assert got["prediction"][has].tolist() == labels[has].tolist()
    probs = got[["probability_cat", "probability_dog", "probability_emu"]].to_numpy()
    np.testing.assert_array_equal(probs, expected.probability)
    # The part files sort in row order for any reader (which skips gridflow's marker).
    files = sorted(f for f in os.listdir(out) if not f.startswith("."))
    assert files == sorted(files, key=lambda f: int(f.split(".")[1]))


def test_predict_to_parquet_from_arrays_names_columns_after_the_dims(grid2d, tmp_path):
    pts = _queries(SPECS["2d"])
    predict_to_parquet(grid2d, pts, tmp_path / "a.parquet", probabilities=False)
    got = pd.read_parquet(tmp_path / "a.parquet")
    assert list(got.columns) == ["x", "y", "prediction"]
    np.testing.assert_array_equal(got[["x", "y"]].to_numpy(), pts)
    predict_to_parquet(grid2d, pts, tmp_path / "b.parquet", columns=["u", "v"])
    assert list(pd.read_parquet(tmp_path / "b.parquet").columns)[:3] == ["u", "v", "prediction"]


def test_predict_to_parquet_without_stored_probabilities(tmp_path):
    store = _grid(tmp_path, SPECS["2d"], 4, probability=False)
    pts = _queries(SPECS["2d"], n=50)
    predict_to_parquet(store, pts, tmp_path / "out")
    assert list(pd.read_parquet(tmp_path / "out").columns) == ["x", "y", "prediction"]
    with pytest.raises(StoreError, match="no 'probability'"):
        predict_to_parquet(store, pts, tmp_path / "out2", probabilities=True)
    assert not (tmp_path / "out2").exists()


def _leftovers(path):
    return sorted(p.name for p in path.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_predict_to_parquet_refuses_to_overwrite(grid2d, tmp_path):
    pts = _queries(SPECS["2d"], n=50)
    out = tmp_path / "out.parquet"
    predict_to_parquet(grid2d, pts, out)
    with pytest.raises(
        ParameterError, match=r"already exists; pass --overwrite \(overwrite=True\)"
    ):
        predict_to_parquet(grid2d, pts[:10], out)
    assert len(pd.read_parquet(out)) == 50
    predict_to_parquet(grid2d, pts[:10], out, overwrite=True)
    assert len(pd.read_parquet(out)) == 10
    assert _leftovers(tmp_path) == []
    with pytest.raises(ParameterError, match="does not exist; create it first"):
        predict_to_parquet(grid2d, pts, tmp_path / "no" / "out.parquet")


def test_predict_to_parquet_writes_nothing_on_error(grid2d, tmp_path, monkeypatch):
    pts = _queries(SPECS["2d"], n=200)
    df = pd.DataFrame({"x": pts[:, 0], "y": pts[:, 1]})
    with pytest.raises(InputDataError, match="already has a column 'prediction'"):
        predict_to_parquet(grid2d, df.assign(prediction=1), tmp_path / "a.parquet")
    with pytest.raises(InputDataError, match="'y' not found"):
        predict_to_parquet(grid2d, df[["x"]], tmp_path / "b.parquet")
    with pytest.raises(InputDataError, match="3 coordinates"):
        predict_to_parquet(grid2d, np.zeros((4, 3)), tmp_path / "c.parquet")

    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk on fire")
        return lookup(*args, **kwargs)

    lookup = predict_mod._lookup
    monkeypatch.setattr(predict_mod, "_lookup", boom)
    with pytest.raises(OSError, match="disk on fire"):
        predict_to_parquet(grid2d, dd.from_pandas(df, npartitions=4), tmp_path / "d.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["zarr", "npz", "npy-structured", "mapping"])
def test_predict_to_parquet_from_column_stores(kind, grid2d, tmp_path):
    pts = _queries(SPECS["2d"], n=300)
    cols = {"id": np.arange(len(pts)), "x": pts[:, 0], "y": pts[:, 1]}
    if kind == "mapping":
        source = cols
    else:
        kind = kind.removesuffix("-structured")
        source = point_source(kind, pd.DataFrame(cols), tmp_path, stem="q", zarr_chunk=70)
    predict_to_parquet(grid2d, source, tmp_path / "out.parquet")
    got = pd.read_parquet(tmp_path / "out.parquet")
    assert list(got.columns[:3]) == ["id", "x", "y"]
    np.testing.assert_array_equal(got["id"].to_numpy(), cols["id"])
    np.testing.assert_array_equal(got[["x", "y"]].to_numpy(), pts)
    expected = predict(grid2d, pts).labels
    assert got["prediction"].isna().tolist() == [v is None for v in expected]


def test_predict_to_parquet_when_the_projection_changes_the_partitions(
    grid2d, tmp_path, monkeypatch
):
    """If a reader merges partitions once projected to the coordinates, the
    first pass reads the full partitions instead."""
    real = predict_mod.open_points

    def merged(source, **kwargs):
        src = real(source, **kwargs)
        if isinstance(source, dd.DataFrame):
            src.blocks = src.blocks[:1]
        return src

    monkeypatch.setattr(predict_mod, "open_points", merged)
    pts = _queries(SPECS["2d"], n=400)
    frame = dd.from_pandas(pd.DataFrame({"x": pts[:, 0], "y": pts[:, 1]}), npartitions=4)
    report = predict_to_parquet(grid2d, frame, tmp_path / "out.parquet")
    assert report == predict(grid2d, pts).report
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "out.parquet")["x"], pts[:, 0])


def test_predict_on_a_distributed_cluster(grid2d, tmp_path):
    from distributed import Client

    pts = _queries(SPECS["2d"], n=2000)
    source = _source("parquet", pts, tmp_path)
    with local_cluster() as cluster, Client(cluster):
        result = predict(grid2d, source, probabilities=True)
        report = predict_to_parquet(grid2d, source, tmp_path / "out.parquet")
    _check(result, open_grid(grid2d), pts)
    assert report == result.report
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == len(pts)
