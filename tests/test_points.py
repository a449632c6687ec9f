"""Tests of gridflow.points: every source reads as the same columns and labels."""

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import gridflow.points
from gridflow import bin_points
from gridflow.errors import InputDataError
from gridflow.points import check_labels, open_points
from gridflow.synth import write_points
from tests._stores import POINT_SOURCES, point_source

N = 2500
#: The sources of point_source that are a path, and the format PointSource.format names.
FORMATS = {
    "parquet": "parquet",
    "csv": "csv",
    "csv-glob": "csv",
    "zarr": "zarr",
    "npz": "npz",
    "npy": "npy",
}


@pytest.fixture
def frame(rng):
    return pd.DataFrame(
        {"x": rng.random(N), "y": rng.random(N) * 10 - 5, "label": rng.integers(0, 4, N)}
    )


def _read(src):
    """Coordinates, shape (n, d), and labels (or None) of every block, in order."""
    blocks = dask.compute(*src.blocks)
    coords = np.concatenate([np.column_stack(b.columns) for b in blocks])
    if src.label is None:
        assert all(b.labels is None for b in blocks)
        return coords, None
    return coords, np.concatenate([b.labels for b in blocks])


def _mapping(df):
    return {c: df[c].to_numpy() for c in df}


# --- every source ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*POINT_SOURCES, "mapping", "numpy"])
def test_every_source_gives_the_same_coordinates_and_labels(kind, frame, tmp_path):
    if kind == "mapping":
        src = open_points(_mapping(frame))
    elif kind == "numpy":
        points, labels = frame[["x", "y"]].to_numpy(), frame["label"].to_numpy()
        src = open_points(points, columns=["x", "y"], labels=labels)
    else:
        src = open_points(point_source(kind, frame, tmp_path))
    assert (src.columns, src.label, src.ndim, src.label_kind) == (("x", "y"), "label", 2, "int")
    coords, labels = _read(src)
    np.testing.assert_array_equal(coords, frame[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(labels, frame["label"].to_numpy())
    assert src.format == FORMATS.get(kind, "")
    if kind in FORMATS:
        assert len(src.files) == (3 if kind in ("parquet", "csv-glob") else 1)


@pytest.mark.parametrize("kind", POINT_SOURCES)
def test_columns_choose_and_order_the_coordinates(kind, frame, tmp_path):
    source = point_source(kind, frame.assign(z=frame["x"] * 2), tmp_path)
    for columns in (["y", "z"], "y, z", ("y", "z")):
        src = open_points(source, columns=columns)
        assert src.columns == ("y", "z")
        coords, _ = _read(src)
        np.testing.assert_array_equal(coords, frame[["y", "x"]].to_numpy() * [1, 2])


@pytest.mark.parametrize("kind", ["parquet", "csv", "pandas", "dask"])
def test_default_columns_are_the_numeric_ones_but_label_and_bayes(kind, frame, tmp_path):
    df = frame.assign(note="a", bayes=frame["label"], w=frame["x"])
    src = open_points(point_source(kind, df, tmp_path))
    assert src.columns == ("x", "y", "w")


@pytest.mark.parametrize("kind", POINT_SOURCES)
def test_a_missing_column_names_the_available_ones(kind, frame, tmp_path):
    source = point_source(kind, frame, tmp_path)
    # A Zarr group does not order its arrays: they are listed by name.
    available = "label, x, y" if kind == "zarr" else "x, y, label"
    with pytest.raises(InputDataError) as info:
        open_points(source, columns=["x", "nope"])
    assert str(info.value) == (
        f"points: column 'nope' not found (given with --columns); available columns: {available}"
    )


def test_column_errors(frame):
    for source in (frame, dd.from_pandas(frame, npartitions=2), _mapping(frame)):
        with pytest.raises(InputDataError, match="'label' is the label column"):
            open_points(source, columns=["x", "label"])
        with pytest.raises(InputDataError, match=r"columns must be distinct, got \['x', 'x'\]"):
            open_points(source, columns=["x", "x"])
    for source in (frame.assign(note="a"), {**_mapping(frame), "note": np.array(["a"] * N)}):
        with pytest.raises(InputDataError, match="column 'note' is not numeric"):
            open_points(source, columns=["x", "note"])
    with pytest.raises(InputDataError, match="no numeric coordinate columns found"):
        open_points(pd.DataFrame({"s": ["a"], "label": [0]}))
    with pytest.raises(InputDataError, match="'label' has 2 rows, expected 3 like 'x'"):
        open_points({"x": np.zeros(3), "label": np.zeros(2)})
    with pytest.raises(InputDataError, match=r"expected an array of shape \(n, d\)"):
        open_points(np.zeros((2, 2, 2)), labels=[0, 1])
    with pytest.raises(InputDataError, match="1 column names for an array with 2 columns"):
        open_points(np.zeros((2, 2)), columns=["a"], labels=[0, 1])


# --- labels ---------------------------------------------------------------------------


def test_a_missing_label_column(frame, tmp_path):
    path = point_source("parquet", frame, tmp_path)
    with pytest.raises(InputDataError) as info:
        open_points(path, label="klass")
    assert str(info.value) == (
        f"points: label column 'klass' not found in {path}; available columns: x, y, label; "
        "pass --label NAME"
    )
    with pytest.raises(InputDataError) as info:
        open_points(frame, label="klass")
    assert str(info.value) == (
        "points: no labels: pandas DataFrame has no column 'klass' (available: x, y, label); "
        "pass labels= or --label NAME"
    )
    for source in (path, frame, _mapping(frame)):
        src = open_points(source, label="klass", require_label=False)
        assert src.label is None and src.label_kind is None
        assert _read(src)[1] is None
    # Unlabeled points: every numeric column is a coordinate.
    src = open_points(frame[["x", "y"]], label=None, require_label=False)
    assert src.columns == ("x", "y") and src.label is None


@pytest.mark.parametrize(
    ("values", "kind", "expected"),
    [
        (np.array([True, False, True]), "int", [True, False, True]),
        (np.array([1.0, 2.0, np.nan]), "float", [1.0, 2.0, np.nan]),
        (np.array(["a", "b", "c"]), "str", ["a", "b", "c"]),
        (np.array(["a", None, "c"], dtype=object), "str", ["a", None, "c"]),
    ],
)
def test_label_types(values, kind, expected):
    columns = {"x": np.array([0.1, 0.2, 0.3]), "label": values}
    df = pd.DataFrame(columns)
    for source in (df, dd.from_pandas(df, npartitions=2), columns):
        src = open_points(source)
        assert src.label_kind == kind
        labels = _read(src)[1]
        if kind == "str":
            assert labels.dtype == object and labels.tolist() == expected
        else:
            np.testing.assert_array_equal(labels, expected)


def test_nullable_integer_labels_of_a_pandas_frame_read_as_floats():
    df = pd.DataFrame({"x": [0.1, 0.2, 0.3], "label": pd.array([1, None, 3], dtype="Int64")})
    src = open_points(df)
    assert src.label_kind == "float"
    np.testing.assert_array_equal(_read(src)[1], [1.0, np.nan, 3.0])


def test_categorical_labels_are_read_as_codes(frame):
    names = pd.Categorical.from_codes(frame["label"], categories=["a", "b", "c", "d"])
    df = frame.assign(label=names)
    for source in (df, dd.from_pandas(df, npartitions=3)):
        src = open_points(source)
        assert (src.label_kind, src.categories) == ("category", ("a", "b", "c", "d"))
        np.testing.assert_array_equal(_read(src)[1], frame["label"].to_numpy())


def test_labels_that_are_not_one_value_per_row_are_refused():
    with pytest.raises(InputDataError, match=r"has dtype datetime64.*integers or strings"):
        open_points(dd.from_pandas(pd.DataFrame({"x": [0.5], "label": pd.to_datetime([0])}), 1))
    lists = np.empty(2, dtype=object)
    lists[:] = [[1], [2]]
    with pytest.raises(InputDataError, match=r"'label' holds list values \(e.g. \[1\]\)"):
        check_labels(lists, "label")
    check_labels(np.array(["a", None, 3], dtype=object))  # scalars: fine


# --- coordinates ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", POINT_SOURCES)
def test_nan_and_inf_coordinates_pass_through(kind, frame, tmp_path):
    df = frame.copy()
    df.loc[:2, "x"] = [np.nan, np.inf, -np.inf]
    df.loc[5, "y"] = np.nan
    coords, labels = _read(open_points(point_source(kind, df, tmp_path)))
    np.testing.assert_array_equal(coords, df[["x", "y"]].to_numpy())  # NaN == NaN here
    np.testing.assert_array_equal(labels, df["label"].to_numpy())


def test_nullable_floats_read_as_nan():
    df = pd.DataFrame({"x": pd.array([0.1, None, 0.3], dtype="Float64"), "label": [0, 1, 2]})
    for source in (df, dd.from_pandas(df, npartitions=2)):
        (coords,) = _read(open_points(source))[0].T
        assert coords.dtype == np.float64
        np.testing.assert_array_equal(coords, [0.1, np.nan, 0.3])


def test_in_memory_arrays_are_split_into_blocks_in_row_order(frame, monkeypatch):
    monkeypatch.setattr(gridflow.points, "BLOCK_ROWS", 1000)
    src = open_points(_mapping(frame))
    assert src.npartitions == 3
    coords, labels = _read(src)
    np.testing.assert_array_equal(coords, frame[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(labels, frame["label"].to_numpy())


# --- paths --------------------------------------------------------------------------------


def test_synthetic_points_bring_their_columns_and_geometry(tmp_path):
    path = tmp_path / "synth"
    process = write_points(path, 300, columns=["u", "v"], bayes=True, seed=1)
    src = open_points(path)
    assert src.columns == ("u", "v")  # not the bayes column
    assert src.hints["periodic"] == [True, True]
    assert src.hints["bounds"] == [list(b) for b in process.bounds]
    coords, labels = _read(src)
    expected = process.sample(0, 300, columns=["u", "v"])
    np.testing.assert_array_equal(coords, expected[["u", "v"]].to_numpy())
    np.testing.assert_array_equal(labels, expected["label"].to_numpy())
    assert open_points(path, columns="v,u").columns == ("v", "u")


def test_paths_that_cannot_be_read(tmp_path):
    with pytest.raises(InputDataError, match=r"nope\.parquet does not exist"):
        open_points(tmp_path / "nope.parquet")
    (tmp_path / "a.xyz").write_text("1")
    with pytest.raises(InputDataError, match=r"cannot tell the format of .*a\.xyz"):
        open_points(tmp_path / "a.xyz")
    (tmp_path / "e.csv").write_text("x,y,label\n")
    with pytest.raises(InputDataError, match="is empty; it holds no rows"):
        open_points(tmp_path / "e.csv")
    with pytest.raises(InputDataError, match="expected a path, DataFrame, NumPy array or"):
        open_points(5)


def test_missing_input_file(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        bin_points(str(tmp_path / "nope.parquet"), bins=4)
