import os

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from gridflow import GridSpec, bin_points, open_grid
from gridflow.binning import _add_dense, parse_chunks
from gridflow.errors import InputDataError, ParameterError, StoreError
from tests._stores import POINT_SOURCES, point_source
from tests.conftest import reference_counts

SPEC = GridSpec(("x", "y"), bounds=(0, 1), bins=(8, 6))


@pytest.fixture
def points(rng):
    n = 3000
    pts = rng.random((n, 2))
    labels = rng.integers(0, 3, n)
    return pts, labels


@pytest.fixture
def expected(points):
    pts, labels = points
    return reference_counts(pts, labels, SPEC, 3)


def _frame(pts, labels):
    return pd.DataFrame({"x": pts[:, 0], "y": pts[:, 1], "label": labels})


@pytest.mark.parametrize("kind", POINT_SOURCES)
def test_every_source_gives_the_same_counts(kind, points, expected, tmp_path):
    pts, labels = points
    src = point_source(kind, _frame(pts, labels), tmp_path)
    ds = bin_points(src, bins=SPEC.bins, bounds=(0, 1))
    assert ds["counts"].dims == ("class", "x", "y")
    assert ds["class"].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ds["counts"].values, expected)


def test_array_with_labels_and_column_names(points, expected):
    pts, labels = points
    ds = bin_points(pts, labels=labels, columns=["x", "y"], bins=SPEC.bins, bounds=(0, 1))
    np.testing.assert_array_equal(ds["counts"].values, expected)


def test_string_labels_keep_their_names(points, expected):
    pts, labels = points
    names = np.array(["cat", "dog", "emu"])[labels]
    df = _frame(pts, names)
    ds = bin_points(df, bins=SPEC.bins, bounds=(0, 1))
    assert ds["class"].values.tolist() == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(ds["counts"].values, expected)
    df["label"] = df["label"].astype("category")
    ds = bin_points(dd.from_pandas(df, npartitions=3), bins=SPEC.bins, bounds=(0, 1))
    assert ds["class"].values.tolist() == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(ds["counts"].values, expected)


def test_sparse_integer_labels_map_to_sorted_classes(points, expected):
    pts, labels = points
    ds = bin_points(_frame(pts, np.array([7, -2, 40])[labels]), bins=SPEC.bins, bounds=(0, 1))
    assert ds["class"].values.tolist() == [-2, 7, 40]
    np.testing.assert_array_equal(ds["counts"].values, expected[[1, 0, 2]])


def test_missing_and_unknown_labels_are_dropped_and_counted(points):
    pts, labels = points
    lab = labels.astype(float)
    lab[:10] = np.nan
    ds = bin_points(_frame(pts, lab), bins=SPEC.bins, bounds=(0, 1))
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert report["bad_label"] == 10
    assert ds["class"].values.tolist() == [0, 1, 2]
    ds = bin_points(_frame(pts, labels), bins=SPEC.bins, bounds=(0, 1), classes=[0, 1])
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert report["bad_label"] == int((labels == 2).sum())
    assert int(ds["counts"].sum()) == int((labels < 2).sum())


def test_classes_given_in_any_order(points, expected):
    pts, labels = points
    names = np.array([9, 5, 7])[labels]
    ds = bin_points(_frame(pts, names), bins=SPEC.bins, bounds=(0, 1), classes=[9, 5, 7])
    assert ds["class"].values.tolist() == [9, 5, 7]
    np.testing.assert_array_equal(ds["counts"].values, expected)
    strings = np.array(["b", "c", "a"])[labels]
    ds = bin_points(_frame(pts, strings), bins=SPEC.bins, bounds=(0, 1), classes=["b", "c"])
    assert ds.attrs["gridflow_stages"]["bin"]["report"]["bad_label"] == int((labels == 2).sum())
    np.testing.assert_array_equal(ds["counts"].values, expected[:2])


def test_non_integer_float_labels_are_refused(points):
    pts, labels = points
    with pytest.raises(InputDataError, match="integers or strings"):
        bin_points(_frame(pts, labels + 0.5), bins=4, bounds=(0, 1))


def test_nan_inf_and_out_of_range_rows_are_reported(points, expected):
    pts, labels = points
    pts = np.vstack([pts, [[np.nan, 0.5], [0.5, np.inf], [2.0, 0.5], [0.5, -1.0], [-np.inf, 9]]])
    labels = np.concatenate([labels, [0, 1, 2, 0, 1]])
    ds = bin_points(_frame(pts, labels), bins=SPEC.bins, bounds=(0, 1))
    r = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert (r["nonfinite"], r["out_of_range"], r["binned"]) == (3, 2, len(pts) - 5)
    assert r["rows"] == len(pts)
    np.testing.assert_array_equal(ds["counts"].values, expected)
    with pytest.raises(InputDataError, match="--strict"):
        bin_points(_frame(pts, labels), bins=SPEC.bins, bounds=(0, 1), strict=True)


def test_bounds_default_to_the_data_range(points):
    pts, labels = points
    ds = bin_points(_frame(pts, labels), bins=4)
    spec = GridSpec.from_dict(ds.attrs["gridflow_grid"])
    assert spec.bounds == (
        (pts[:, 0].min(), pts[:, 0].max()),
        (pts[:, 1].min(), pts[:, 1].max()),
    )
    assert int(ds["counts"].sum()) == len(pts)  # the max lands in the last cell


def test_periodic_grid_wraps(points):
    pts, labels = points
    spec = GridSpec(("x", "y"), bounds=(0, 1), bins=(8, 6), periodic=True)
    shifted = pts + np.array([3.0, -2.0])
    ds = bin_points(_frame(shifted, labels), spec=spec)
    np.testing.assert_array_equal(ds["counts"].values, reference_counts(pts, labels, spec, 3))


@pytest.mark.parametrize("strategy", ["tree", "chunked"])
def test_a_periodic_coordinate_whose_offset_overflows_has_no_cell(strategy):
    # v - lo overflows to inf: it used to be cast to an undefined cell index
    # (a write outside the grid); now it is out of range, as prediction says.
    spec = GridSpec(("x", "y"), bounds=[(-1e308, 0.0), (0.0, 1.0)], bins=(4, 2), periodic=True)
    pts = np.array([[1.7e308, 0.5], [-0.5e308, 0.25], [-1.5e308, 0.75]])
    ds = bin_points(_frame(pts, np.array([0, 1, 2])), spec=spec, strategy=strategy)
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert (report["binned"], report["out_of_range"]) == (2, 1)
    assert int(ds["counts"].sum()) == 2
    assert ds["counts"].values[1].sum() == 1 and ds["counts"].values[2].sum() == 1


def test_both_strategies_write_identical_stores(points, tmp_path):
    pts, labels = points
    df = _frame(pts, labels)
    a = bin_points(
        df, tmp_path / "a.zarr", bins=SPEC.bins, bounds=(0, 1), chunks=(3, 4), strategy="tree"
    )
    b = bin_points(
        dd.from_pandas(df, npartitions=5),
        tmp_path / "b.zarr",
        bins=SPEC.bins,
        bounds=(0, 1),
        chunks=(3, 4),
        strategy="chunked",
    )
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a["counts"].encoding["chunks"] == b["counts"].encoding["chunks"] == (3, 3, 4)
    for key in ("gridflow_grid", "gridflow_format"):
        assert a.attrs[key] == b.attrs[key]


def test_counts_promote_to_uint64_instead_of_wrapping():
    big = np.array([2**32 - 1], dtype=np.uint32)
    stats = np.array([2**32 - 1, 0, 0, 0, 2**32 - 1])
    total, _ = _add_dense([(big, stats), (np.array([1], np.uint32), np.array([1, 0, 0, 0, 1]))])
    assert total.dtype == np.uint64
    assert total.tolist() == [2**32]
    total, _ = _add_dense([(np.array([5], np.uint32), np.array([5, 0, 0, 0, 5]))] * 2)
    assert total.dtype == np.uint32


def test_chunks_parsing():
    assert parse_chunks(3, SPEC, 5) == (3, 3)
    assert parse_chunks("100,2", SPEC, 5) == (8, 2)
    assert parse_chunks("auto", SPEC, 5) == (8, 6)
    with pytest.raises(ParameterError, match="chunks"):
        parse_chunks(0, SPEC, 5)
    with pytest.raises(ParameterError, match="chunks"):
        parse_chunks((1, 2, 3), SPEC, 5)


# --- bad input: a clear error, nothing written ------------------------------


def _assert_nothing_written(tmp_path, store):
    assert not os.path.exists(store)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"columns": ["x", "nope"]}, InputDataError, "'nope' not found"),
        ({"label": "klass"}, InputDataError, "label column 'klass' not found"),
        ({"bins": 0}, ParameterError, "bins"),
        ({"bins": -3}, ParameterError, "bins"),
        ({"bounds": (1, 0)}, ParameterError, "lo < hi"),
        ({"bounds": (5, 6)}, InputDataError, "none of the"),
        ({"bins": None}, ParameterError, "bins"),
        ({"strategy": "magic"}, ParameterError, "strategy"),
    ],
)
def test_bad_input_errors_and_writes_nothing(points, tmp_path, kwargs, error, match):
    pts, labels = points
    src = point_source("parquet", _frame(pts, labels), tmp_path)
    store = str(tmp_path / "out.zarr")
    args = {"bins": 4} | kwargs
    with pytest.raises(error, match=match):
        bin_points(src, store, **args)
    _assert_nothing_written(tmp_path, store)


def test_non_numeric_coordinates(tmp_path):
    df = pd.DataFrame({"x": ["a", "b"], "y": [0.1, 0.2], "label": [0, 1]})
    with pytest.raises(InputDataError, match="not numeric"):
        bin_points(df, columns=["x", "y"], bins=4)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(InputDataError, match="not numeric"):
        bin_points(str(path), tmp_path / "o.zarr", columns="x,y", bins=4)
    _assert_nothing_written(tmp_path, tmp_path / "o.zarr")


@pytest.mark.parametrize("kind", ["csv", "csv-header-only", "parquet-empty"])
def test_empty_input(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "e.csv"
        path.write_text("")
    elif kind == "csv-header-only":
        path = tmp_path / "e.csv"
        path.write_text("x,y,label\n")
    else:
        path = tmp_path / "e.parquet"
        pd.DataFrame({"x": [], "y": [], "label": []}).astype(
            {"x": float, "y": float, "label": int}
        ).to_parquet(path)
    with pytest.raises(InputDataError, match=r"empty|no rows"):
        bin_points(str(path), tmp_path / "o.zarr", bins=4)
    _assert_nothing_written(tmp_path, tmp_path / "o.zarr")


def test_existing_and_foreign_stores(points, tmp_path):
    pts, labels = points
    df = _frame(pts, labels)
    store = tmp_path / "g.zarr"
    bin_points(df, store, bins=4, bounds=(0, 1))
    with pytest.raises(StoreError, match="--overwrite"):
        bin_points(df, store, bins=4, bounds=(0, 1))
    again = bin_points(df, store, bins=5, bounds=(0, 1), overwrite=True)
    assert again["counts"].shape == (3, 5, 5)
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(foreign, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="gridflow did not write it"):
        bin_points(df, foreign, bins=4, overwrite=True)
    assert xr.open_zarr(foreign, consolidated=False)["a"].values.tolist() == [0, 1, 2]
    with pytest.raises(StoreError, match="another program"):
        open_grid(foreign)


def test_failure_while_writing_leaves_no_store(points, tmp_path, monkeypatch):
    pts, labels = points
    import gridflow.binning as binning

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(binning, "_dense_chunk", boom)
    store = tmp_path / "g.zarr"
    with pytest.raises(RuntimeError, match="disk full"):
        bin_points(_frame(pts, labels), store, bins=4, bounds=(0, 1), strategy="chunked")
    _assert_nothing_written(tmp_path, store)
