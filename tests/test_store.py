import json

import numpy as np
import pytest

from gridflow import bin_points, open_grid
from gridflow.errors import StoreError
from gridflow.store import FORMAT_VERSION, grid_spec, summary


@pytest.fixture
def store(tmp_path, rng):
    pts = rng.random((500, 3))
    labels = np.array(["a", "b"])[rng.integers(0, 2, 500)]
    path = tmp_path / "g.zarr"
    bin_points(
        pts,
        path,
        labels=labels,
        columns=["x", "y", "z"],
        bins=(4, 5, 6),
        bounds=(0, 1),
        periodic=[True, False, False],
        chunks=3,
    )
    return path


def test_schema(store):
    ds = open_grid(store)
    assert ds["counts"].dims == ("class", "x", "y", "z")
    assert ds["counts"].dtype == np.uint32
    assert ds["class"].values.tolist() == ["a", "b"]
    np.testing.assert_allclose(ds["y"].values, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert ds["x"].attrs["periodic"] == 1 and ds["y"].attrs["periodic"] == 0
    assert ds["z"].attrs["bins"] == 6 and ds["z"].attrs["bounds"] == [0.0, 1.0]
    assert ds.attrs["gridflow_format"] == FORMAT_VERSION
    spec = grid_spec(ds)
    assert spec.bins == (4, 5, 6) and spec.periodic == (True, False, False)
    assert ds["counts"].data.chunksize == (2, 3, 3, 3)
    assert len(ds.attrs["history"].splitlines()) == 1
    assert " bin " in ds.attrs["history"]


def test_summary_lists_what_info_promises(store):
    text = summary(open_grid(store))
    assert "x" in text and "4 bins" in text and "periodic" in text
    assert "classes (2)" in text and "stages: bin" in text
    ds = open_grid(store)
    for name, n in zip(["a", "b"], ds["counts"].sum(["x", "y", "z"]).values, strict=True):
        assert f"{name}" in text and f"{int(n):,} points" in text


def test_newer_format_is_refused(store):
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["gridflow_format"] = FORMAT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="upgrade gridflow"):
        open_grid(store)


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_grid(tmp_path / "nope.zarr")


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(StoreError, match="not a gridflow store"):
        open_grid(tmp_path / "x.zarr")
