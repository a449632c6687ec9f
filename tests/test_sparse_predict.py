"""Prediction on sparse grids and on pyramids, against NumPy reads of the cells.

The grids are built by hand (a dense Dataset, then the same arrays as dask
arrays of ``sparse.COO`` chunks), so nothing here depends on the sparse
binning or classify stages.
"""

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import sparse
import xarray as xr

from gridflow import GridSpec
from gridflow.errors import ParameterError, StoreError
from gridflow.predict import predict, predict_to_parquet
from gridflow.pyramid import level_bins, level_coords, level_name
from gridflow.sparse_grid import is_sparse

CLASSES = np.array(["a", "b", "c"])
FILL = {"label": -1}  # votes and probability: 0


def _pyramid(spec, nlevels, *, min_votes=0.0, seed=0, unlabeled=0.35, record=True):
    """A dense Dataset with ``nlevels`` levels of random label, votes and probability.

    Votes are in [0, 2) on labeled cells (0 elsewhere); a fraction
    ``unlabeled`` of each level's cells is -1, and so is the first cell of
    every level, so a point at ``lo`` is unlabeled at every level.
    """
    rng = np.random.default_rng(seed)
    data = {}
    coords = {"class": CLASSES}
    for level in range(nlevels):
        dims = tuple(level_name(d, level) for d in spec.dims)
        shape = level_bins(spec.bins, level)
        label = rng.integers(0, len(CLASSES), shape).astype(np.int16)
        label[rng.random(shape) < unlabeled] = -1
        label[(0,) * len(shape)] = -1
        votes = np.where(label >= 0, rng.random(shape) * 2, 0).astype(np.float32)
        prob = rng.random((len(CLASSES), *shape)).astype(np.float32)
        prob[:, label < 0] = 0
        data[level_name("label", level)] = (dims, label)
        data[level_name("votes", level)] = (dims, votes)
        data[level_name("probability", level)] = (("class", *dims), prob)
        coords.update(level_coords(spec, level))
    attrs = {"gridflow_grid": spec.to_dict(), "gridflow_format": 1}
    if record:
        attrs["gridflow_stages"] = {"classify": {"levels": nlevels, "min_votes": min_votes}}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _base(name):
    return name.split("_l")[0]


def _chunks_for(var, chunks):
    """Chunks of a variable: ``chunks`` maps a level-0 dim to its chunk size,
    divided by 2**level at coarser levels (at least 1); the class axis whole."""
    out = []
    for dim, size in zip(var.dims, var.shape, strict=True):
        if dim == "class":
            out.append(size)
            continue
        base, _, level = dim.partition("_l")
        c = chunks.get(base, size)
        out.append(max(1, c >> int(level or 0)) if isinstance(c, int) else c)
    return tuple(out)


def _sparse(ds, chunks):
    """The same grid as dask arrays of COO chunks (label fill -1, the rest 0)."""
    out = {}
    for name, var in ds.data_vars.items():
        fill = FILL.get(_base(name), 0)
        coo = sparse.COO.from_numpy(var.values, fill_value=fill)
        out[name] = xr.Variable(
            var.dims, da.from_array(coo, chunks=_chunks_for(var, chunks), asarray=False)
        )
    return xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)


def _dense(ds, chunks):
    out = {
        name: xr.Variable(var.dims, da.from_array(var.values, chunks=_chunks_for(var, chunks)))
        for name, var in ds.data_vars.items()
    }
    return xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)


def _queries(spec, n=600, seed=1):
    """Points inside, around and outside the grid, plus NaN and inf rows."""
    rng = np.random.default_rng(seed)
    pts = spec.lo + (rng.random((n, spec.ndim)) * 1.4 - 0.2) * spec.width
    pts[:3] = spec.hi
    pts[3:6] = spec.lo
    pts[6, 0] = np.nan
    pts[7, -1] = np.inf
    return pts


def _reference(ds, pts, nlevels, min_votes):
    """The pyramid rule, point by point, on the dense NumPy arrays."""
    spec = GridSpec.from_dict(ds.attrs["gridflow_grid"])
    cells = spec.cell_index(pts)
    label = [ds[level_name("label", lv)].values for lv in range(nlevels)]
    votes = [ds[level_name("votes", lv)].values for lv in range(nlevels)]
    prob = [np.moveaxis(ds[level_name("probability", lv)].values, 0, -1) for lv in range(nlevels)]
    n = len(pts)
    codes = np.full(n, -1, dtype=np.int64)
    answer = np.full(n, -1, dtype=np.int64)
    probs = np.full((n, len(CLASSES)), np.nan, dtype=np.float32)
    branch = {"finest": 0, "fallback": 0, "unlabeled": 0}
    for i in range(n):
        if cells[i, 0] < 0:
            continue
        at = [tuple(cells[i] // 2**lv) for lv in range(nlevels)]
        labeled = [lv for lv in range(nlevels) if label[lv][at[lv]] >= 0]
        good = [lv for lv in labeled if votes[lv][at[lv]] >= min_votes]
        if good:
            a = good[0]
            branch["finest"] += 1
        elif labeled:
            a = labeled[-1]  # the coarsest labeled level
            branch["fallback"] += 1
        else:
            branch["unlabeled"] += 1
            probs[i] = prob[0][at[0]]
            continue
        answer[i] = a
        codes[i] = label[a][at[a]]
        probs[i] = prob[a][at[a]]
    ok = cells[:, 0] >= 0
    report = {
        "rows": n,
        "predicted": int((codes >= 0).sum()),
        "no_cell": int((~ok).sum()),
        "unlabeled_cell": int((ok & (codes < 0)).sum()),
    }
    if nlevels > 1:
        report["levels"] = np.bincount(answer[answer >= 0], minlength=nlevels).tolist()
    return codes, probs, report, branch


def _check(result, expected):
    codes, probs, report, _ = expected
    np.testing.assert_array_equal(result.codes, codes)
    np.testing.assert_array_equal(result.probability, probs)
    assert result.report == report
    assert result.probability.dtype == np.float32
    if "levels" in report:
        assert sum(result.report["levels"]) == result.report["predicted"]


SPECS = {
    "2d": GridSpec(("x", "y"), bounds=[(0, 1), (-5, 5)], bins=(13, 8)),
    "3d": GridSpec(("x", "y", "z"), bounds=(0, 1), bins=(6, 5, 7), periodic=(True, False, True)),
    "5d": GridSpec(tuple("abcde"), bounds=(-1, 1), bins=(4, 5, 3, 4, 3)),
}
CHUNKS = {
    # (5, 8): a last chunk larger than the first is not a regular chunking
    "2d": [{}, {"x": (5, 8), "y": (3, 5)}, {"x": 4, "y": 3}, {"x": 1, "y": 8}],
    "3d": [{"x": 2, "y": 3}, {"x": 4, "y": 2, "z": 3}],
    "5d": [{}, {"a": 2, "b": 2, "c": 1}],
}


# --- sparse == dense == NumPy ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_sparse_prediction_equals_dense_and_numpy(name):
    spec = SPECS[name]
    ds = _pyramid(spec, 1)
    pts = _queries(spec)
    expected = _reference(ds, pts, 1, 0.0)
    assert expected[2]["unlabeled_cell"] > 0 and expected[2]["no_cell"] > 0
    for chunks in CHUNKS[name]:
        sp = _sparse(ds, chunks)
        assert is_sparse(sp["label"]) and is_sparse(sp["probability"])
        got = predict(sp, pts, probabilities=True)
        _check(got, expected)
        _check(predict(_dense(ds, chunks), pts, probabilities=True), expected)
        assert "levels" not in got.report  # one level: the plain report
        assert got.labels[got.codes >= 0].tolist() == CLASSES[got.codes[got.codes >= 0]].tolist()


def test_sparse_cells_missing_from_the_chunks_are_unlabeled():
    spec = SPECS["2d"]
    ds = _pyramid(spec, 1, unlabeled=0.9)
    sp = _sparse(ds, {"x": 5, "y": 4})
    assert sp["label"].data.compute().nnz < 0.2 * np.prod(spec.bins)  # mostly absent
    pts = _queries(spec)
    _check(predict(sp, pts, probabilities=True), _reference(ds, pts, 1, 0.0))
    # A grid with no labeled cell at all: every COO chunk is empty.
    empty = _sparse(ds.assign(label=ds["label"] * 0 - 1), {"x": 5, "y": 4})
    result = predict(empty, pts, probabilities=True)
    assert (result.codes == -1).all()
    assert result.report["unlabeled_cell"] == result.report["rows"] - result.report["no_cell"]


def test_sparse_prediction_never_densifies(monkeypatch):
    spec = SPECS["3d"]
    ds = _pyramid(spec, 3, min_votes=0.7)
    sp = _sparse(ds, {"x": 2, "y": 3})
    pts = _queries(spec)

    def no_todense(self, *args, **kwargs):
        raise AssertionError("a sparse chunk was densified")

    monkeypatch.setattr(sparse.COO, "todense", no_todense)
    _check(predict(sp, pts, probabilities=True), _reference(ds, pts, 3, 0.7))


def test_sparse_chunks_not_in_canonical_order():
    """A chunk whose coordinates are not sorted (or repeat) reads as COO defines it."""
    spec = GridSpec(("x", "y"), bounds=(0, 4), bins=(4, 4))
    coords = np.array([[3, 0, 2, 2], [1, 2, 0, 0]])
    data = np.array([1, 2, 1, 0], dtype=np.int16)
    chunk = sparse.COO(coords, data, shape=(4, 4), fill_value=-1)
    chunk.coords, chunk.data = coords, data  # unsorted, (2, 0) twice: 1 + 0
    labels = da.from_delayed(
        dask.delayed(lambda: chunk)(), shape=(4, 4), dtype=np.int16, meta=chunk[:0, :0]
    )
    ds = xr.Dataset(
        {"label": (("x", "y"), labels)},
        coords={"class": CLASSES},
        attrs={"gridflow_grid": spec.to_dict()},
    )
    pts = np.array([[3.5, 1.5], [0.5, 2.5], [2.5, 0.5], [1.5, 1.5]])
    expected = np.array([1, 2, 1, -1])
    np.testing.assert_array_equal(predict(ds, pts).codes, expected)


# --- the pyramid ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("name", ["2d", "3d"])
def test_pyramid_selection_rule(name, layout):
    spec = SPECS[name]
    pts = _queries(spec, n=800)
    make = _sparse if layout == "sparse" else _dense
    chunks = CHUNKS[name][-1]
    for nlevels, min_votes in [(3, 0.0), (3, 0.9), (4, 1.6), (2, 5.0)]:
        ds = _pyramid(spec, nlevels, min_votes=min_votes, seed=nlevels)
        expected = _reference(ds, pts, nlevels, min_votes)
        branch = expected[3]
        assert branch["unlabeled"] > 0
        assert (branch["finest"] > 0) == (min_votes < 2)  # votes are below 2
        assert (branch["fallback"] > 0) == (min_votes > 0)  # the coarsest labeled answers
        got = predict(make(ds, chunks), pts, probabilities=True)
        _check(got, expected)
        assert len(got.report["levels"]) == nlevels
        assert got.report["no_cell"] > 0  # out-of-range points are counted
        # Without probabilities, the same codes.
        np.testing.assert_array_equal(predict(make(ds, chunks), pts).codes, expected[0])


def test_min_votes_zero_is_the_finest_labeled_level():
    spec = SPECS["2d"]
    ds = _pyramid(spec, 3)
    pts = _queries(spec)
    got = predict(ds.drop_vars(["votes", "votes_l1", "votes_l2"]), pts)  # votes not needed
    codes, _, report, branch = _reference(ds, pts, 3, 0.0)
    np.testing.assert_array_equal(got.codes, codes)
    assert branch["fallback"] == 0
    assert got.report == report
    assert report["levels"][1] > 0 and report["levels"][2] > 0


def test_the_coarsest_levels_votes_are_never_needed():
    spec = SPECS["2d"]
    ds = _pyramid(spec, 3, min_votes=1.0)
    pts = _queries(spec)
    got = predict(_sparse(ds.drop_vars("votes_l2"), {"x": 4}), pts, probabilities=True)
    _check(got, _reference(ds, pts, 3, 1.0))


def test_levels_and_min_votes_arguments_override_the_record():
    spec = SPECS["2d"]
    ds = _pyramid(spec, 3, min_votes=0.8)
    pts = _queries(spec)
    plain = _reference(ds, pts, 1, 0.0)
    for grid in (ds, _sparse(ds, {"x": 4, "y": 3})):
        # levels=1 is the plain read of `label`, whatever min_votes.
        for mv in (None, 0.0, 1.9):
            _check(predict(grid, pts, probabilities=True, levels=1, min_votes=mv), plain)
        _check(
            predict(grid, pts, probabilities=True, levels=2, min_votes=1.2),
            _reference(ds, pts, 2, 1.2),
        )
        _check(predict(grid, pts, probabilities=True, min_votes=0), _reference(ds, pts, 3, 0.0))
    # No record: one level, as before pyramids existed.
    bare = _pyramid(spec, 3, record=False)
    _check(predict(bare, pts, probabilities=True), _reference(bare, pts, 1, 0.0))
    _check(predict(bare, pts, probabilities=True, levels=3), _reference(bare, pts, 3, 0.0))


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_chunking_never_changes_a_prediction(layout):
    spec = SPECS["3d"]
    ds = _pyramid(spec, 3, min_votes=0.6, seed=4)
    pts = _queries(spec, n=700)
    make = _sparse if layout == "sparse" else _dense
    first = predict(make(ds, {}), pts, probabilities=True)
    _check(first, _reference(ds, pts, 3, 0.6))
    for chunks in [{"x": 1, "y": 1}, {"x": 3, "z": 2}, {"x": 5, "y": 4, "z": 1}]:
        got = predict(make(ds, chunks), pts, probabilities=True)
        np.testing.assert_array_equal(got.codes, first.codes)
        np.testing.assert_array_equal(got.probability, first.probability)
        assert got.report == first.report
    # Each level chunked on its own, irregularly.
    base = make(ds, {"x": 2})
    mixed = base.assign(
        label_l1=base["label_l1"].chunk({"x_l1": (1, 2), "y_l1": (2, 1), "z_l1": (3, 1)}),
        votes_l1=base["votes_l1"].chunk({"y_l1": 1}),
        probability_l2=base["probability_l2"].chunk({"class": 1, "z_l2": 1}),
    )
    got = predict(mixed, pts, probabilities=True)
    np.testing.assert_array_equal(got.codes, first.codes)
    np.testing.assert_array_equal(got.probability, first.probability)


def test_pyramid_prediction_to_parquet(tmp_path):
    spec = SPECS["2d"]
    ds = _pyramid(spec, 3, min_votes=0.9)
    pts = _queries(spec)
    expected = _reference(ds, pts, 3, 0.9)
    for i, grid in enumerate([ds, _sparse(ds, {"x": 4, "y": 3})]):
        out = tmp_path / f"out{i}.parquet"
        report = predict_to_parquet(grid, pts, out)
        assert report == expected[2]
        got = pd.read_parquet(out)
        assert list(got.columns) == ["x", "y", "prediction", *(f"probability_{c}" for c in "abc")]
        has = expected[0] >= 0
        assert got["prediction"].isna().to_numpy().tolist() == (~has).tolist()
        assert got["prediction"][has].tolist() == CLASSES[expected[0][has]].tolist()
        np.testing.assert_array_equal(
            got[[f"probability_{c}" for c in "abc"]].to_numpy(), expected[1]
        )


def test_empty_points_on_a_pyramid():
    spec = SPECS["2d"]
    result = predict(_sparse(_pyramid(spec, 2), {}), np.empty((0, 2)), probabilities=True)
    assert result.codes.shape == (0,)
    assert result.report == {
        "rows": 0,
        "predicted": 0,
        "no_cell": 0,
        "unlabeled_cell": 0,
        "levels": [0, 0],
    }


# --- errors ---------------------------------------------------------------------------------


def test_missing_levels_and_votes_are_store_errors():
    spec = SPECS["2d"]
    ds = _pyramid(spec, 3, min_votes=0.5)
    pts = _queries(spec, n=20)
    with pytest.raises(StoreError, match=r"no 'label_l2' variable, which level 2 of its 3-level"):
        predict(ds.drop_vars("label_l2"), pts)
    with pytest.raises(StoreError, match=r"no 'votes_l1' variable"):
        predict(ds.drop_vars("votes_l1"), pts)
    with pytest.raises(StoreError, match=r"no 'probability_l1' variable"):
        predict(ds.drop_vars("probability_l1"), pts, probabilities=True)
    with pytest.raises(StoreError, match=r"'label_l1' has shape \(6, 4\), the grid has \(7, 4\)"):
        predict(ds.isel(x_l1=slice(0, 6)), pts)
    with pytest.raises(StoreError, match="has dims"):
        predict(ds.assign(label_l1=(("u", "y_l1"), ds["label_l1"].values)), pts)


def test_invalid_records_and_arguments():
    spec = SPECS["2d"]
    pts = _queries(spec, n=20)
    ds = _pyramid(spec, 2)
    bad = ds.copy()
    bad.attrs = {**ds.attrs, "gridflow_stages": {"classify": {"levels": 0}}}
    with pytest.raises(StoreError, match=r"records an invalid pyramid \(levels: expected"):
        predict(bad, pts)
    bad.attrs = {**ds.attrs, "gridflow_stages": {"classify": {"min_votes": -1}}}
    with pytest.raises(StoreError, match="min_votes: expected"):
        predict(bad, pts)
    with pytest.raises(ParameterError, match="levels: expected an integer >= 1"):
        predict(ds, pts, levels=0)
    with pytest.raises(ParameterError, match="min_votes: expected a finite number"):
        predict(ds, pts, min_votes=float("nan"))
    cluster = ds.assign(cluster=ds["label"].astype(np.int32))
    with pytest.raises(ParameterError, match="only classify's 'label' has a pyramid"):
        predict(cluster, pts, variable="cluster", levels=2)
    # Another labels variable ignores classify's pyramid.
    np.testing.assert_array_equal(
        predict(cluster, pts, variable="cluster").codes, _reference(ds, pts, 1, 0.0)[0]
    )
