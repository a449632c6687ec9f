import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import sparse

from gridflow import GridSpec, bin_points
from gridflow.errors import ParameterError
from gridflow.pyramid import (
    coarsen,
    level_bins,
    level_coords,
    level_name,
    level_periodic,
    level_spec,
    parse_min_votes,
    parse_pyramid_levels,
)
from gridflow.sparse_grid import MAX_SPLIT_DIMS, is_sparse

# --- the reference: counts of cell indices, level 0 and level l --------------------------


def _cells(bins, n, rng, nclasses=3):
    """Random level-0 cells (clustered, so that many repeat) and their classes."""
    centre = np.array([rng.integers(0, b) for b in bins])
    spread = np.maximum(1, np.array(bins) // 3)
    cells = np.clip(centre + rng.integers(-1, 2, (n, len(bins))) * spread, 0, np.array(bins) - 1)
    cells[: n // 2] = rng.integers(0, bins, (n // 2, len(bins)))
    return cells, rng.integers(0, nclasses, n)


def _counts(cells, classes, shape, nclasses, dtype, weights=None):
    out = np.zeros((nclasses, *shape), dtype=dtype)
    w = np.ones(len(cells), dtype=dtype) if weights is None else weights.astype(dtype)
    np.add.at(out, (classes, *cells.T), w)
    return out


def _as_dask(counts, chunks, layout):
    if layout == "dense":
        return da.from_array(counts, chunks=(-1, *chunks))
    return da.from_array(
        sparse.COO.from_numpy(counts, fill_value=0), chunks=(-1, *chunks), asarray=False
    )


def _dense(result):
    """A computed coarsened array as NumPy, built from the COO's entries (no todense)."""
    if isinstance(result, sparse.COO):
        out = np.zeros(result.shape, dtype=result.dtype)
        out[tuple(result.coords)] = result.data
        return out
    return np.asarray(result)


CASES = {
    # d: (bins, chunkings) - bins not divisible by 2**level included
    2: ((13, 8), [(13, 8), (4, 4), (3, 5), (1, 8), ((5, 8), (3, 5))]),
    3: ((9, 6, 5), [(9, 6, 5), (2, 3, 5), (4, 4, 2)]),
    5: ((5, 4, 3, 6, 4), [(5, 4, 3, 6, 4), (2, 4, 3, 3, 4), (2, 2, 3, 3, 4)]),
}


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("d", sorted(CASES))
def test_coarsen_sums_the_cells_of_each_coarser_cell(d, layout, rng):
    bins, chunkings = CASES[d]
    cells, classes = _cells(bins, 400, rng)
    for dtype in (np.uint32, np.uint64):
        weights = None
        if dtype == np.uint64:
            # Counts past 2**32: the sums must stay exact integers.
            weights = rng.integers(1, 2**40, len(cells), dtype=np.uint64)
        level0 = _counts(cells, classes, bins, 3, dtype, weights)
        for chunks in chunkings:
            x = _as_dask(level0, chunks, layout)
            for level in (1, 2, 3):
                f = 2**level
                shape = level_bins(bins, level)
                expected = _counts(cells // f, classes, shape, 3, dtype, weights)
                got = coarsen(x, level)
                assert got.dtype == dtype
                assert got.shape == (3, *shape)
                assert is_sparse(got) == (layout == "sparse")
                computed = got.compute()
                assert isinstance(computed, sparse.COO if layout == "sparse" else np.ndarray)
                assert computed.dtype == dtype
                np.testing.assert_array_equal(_dense(computed), expected)
                if layout == "sparse":
                    assert computed.fill_value == 0
                    assert np.all(computed.data != 0)  # only cells that hold points


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_coarsen_chunks(layout, rng):
    bins = (40, 12, 7)
    counts = _counts(*_cells(bins, 200, rng), bins, 3, np.uint32)
    for chunks, level, expected in [
        ((8, 12, 7), 1, ((4, 4, 4, 4, 4), (6,), (4,))),  # divided by 2, whole dims stay whole
        ((8, 12, 7), 2, ((2,) * 5, (3,), (2,))),
        ((8, 12, 7), 4, ((1, 1, 1), (1,), (1,))),  # at least 1 cell
        ((5, 5, 7), 1, ((2,) * 10, (2, 2, 2), (4,))),  # 5 cells -> chunks of 4 at level 0
        ((12, 12, 7), 3, ((1, 1, 1, 1, 1), (2,), (1,))),
    ]:
        got = coarsen(_as_dask(counts, chunks, layout), level)
        assert got.chunks == ((3,), *expected)
        assert got.numblocks[0] == 1  # the class axis stays one chunk


def test_sparse_coarsen_keeps_at_most_three_split_dims(rng):
    bins = (6, 6, 6, 6, 6)
    cells, classes = _cells(bins, 300, rng)
    counts = _counts(cells, classes, bins, 3, np.uint32)
    x = _as_dask(counts, (2, 2, 3, 3, 6), "sparse")  # four split dims (against the rule)
    got = coarsen(x, 1)
    assert sum(len(c) > 1 for c in got.chunks[1:]) == MAX_SPLIT_DIMS
    np.testing.assert_array_equal(
        _dense(got.compute()), _counts(cells // 2, classes, level_bins(bins, 1), 3, np.uint32)
    )
    # A dense array keeps its chunking rule for every dim.
    dense = coarsen(_as_dask(counts, (2, 2, 3, 3, 6), "dense"), 1)
    assert [len(c) > 1 for c in dense.chunks[1:]] == [True, True, True, True, False]


def test_coarsen_is_lazy_and_never_densifies(rng, monkeypatch):
    bins = (16, 10)
    cells, classes = _cells(bins, 100, rng, nclasses=2)
    counts = _counts(cells, classes, bins, 2, np.uint32)
    x = _as_dask(counts, (4, 5), "sparse")

    def no_compute(*args, **kwargs):
        raise AssertionError("coarsen computed something")

    with dask.config.set(scheduler=no_compute):
        lazy = coarsen(x, 2)
        coarsen(_as_dask(counts, (4, 5), "dense"), 2)

    def no_todense(self, *args, **kwargs):
        raise AssertionError("a sparse chunk was densified")

    monkeypatch.setattr(sparse.COO, "todense", no_todense)
    np.testing.assert_array_equal(
        _dense(lazy.compute()), _counts(cells // 4, classes, (4, 3), 2, np.uint32)
    )


def test_level_zero_is_the_input():
    x = da.zeros((2, 4, 4), dtype=np.uint32, chunks=2)
    assert coarsen(x, 0) is x


def test_coarsen_rejects_bad_input():
    with pytest.raises(ParameterError, match="level: expected a pyramid level"):
        coarsen(da.zeros((1, 4), chunks=2), -1)
    with pytest.raises(ParameterError, match="expected a dask array"):
        coarsen(np.zeros((1, 4)), 1)
    with pytest.raises(ParameterError, match="2 or more dims"):
        coarsen(da.zeros(4, chunks=2), 1)


# --- against the binning at the coarser bins ---------------------------------------------


@pytest.mark.parametrize(
    ("bins", "periodic"),
    [((16, 8), False), ((16, 8), True), ((8, 4, 12), False), ((8, 4, 12), (True, False, True))],
)
def test_coarsen_equals_binning_at_the_coarser_bins(bins, periodic, rng):
    spec = GridSpec(tuple("xyz"[: len(bins)]), bounds=(-1.5, 2.0), bins=bins, periodic=periodic)
    n = 3000
    pts = spec.lo + (rng.random((n, spec.ndim)) * 1.2 - 0.1) * spec.width
    pts[:5] = spec.hi  # the upper bound is in the last cell
    pts[5:10] = spec.lo
    # Points on level-0 cell edges, where rounding would show first.
    edges = np.column_stack(
        [spec.edges(i)[rng.integers(0, b + 1, 200)] for i, b in enumerate(bins)]
    )
    pts = np.vstack([pts, edges])
    labels = rng.integers(0, 3, len(pts))
    ds0 = bin_points(pts, labels=labels, spec=spec, chunks=4)
    for level in (1, 2):
        coarse = GridSpec(spec.dims, spec.bounds, level_bins(bins, level), spec.periodic)
        dsl = bin_points(pts, labels=labels, spec=coarse, chunks=4)
        got = coarsen(ds0["counts"].data, level)
        assert got.dtype == dsl["counts"].dtype == np.uint32
        np.testing.assert_array_equal(got.compute(), dsl["counts"].values)
        # The level's coordinates are the coarser grid's, bit for bit.
        coords = level_coords(ds0, level)
        assert list(coords) == [level_name(d, level) for d in spec.dims]
        for dim in spec.dims:
            c = coords[level_name(dim, level)]
            assert c.dims == (level_name(dim, level),)
            np.testing.assert_array_equal(c.values, dsl[dim].values)
            assert c.attrs == dsl[dim].attrs
        assert level_spec(spec, level) == GridSpec(
            tuple(level_name(d, level) for d in spec.dims), spec.bounds, coarse.bins, periodic
        )


# --- geometry -----------------------------------------------------------------------------


def test_level_geometry():
    spec = GridSpec(("x", "y"), bounds=[(0, 13), (-4, 4)], bins=(13, 8), periodic=True)
    assert level_bins(spec.bins, 0) == (13, 8)
    assert level_bins(spec.bins, 1) == (7, 4)
    assert level_bins(spec.bins, 3) == (2, 1)
    assert level_bins(spec.bins, 5) == (1, 1)
    assert level_periodic(spec, 0) == (True, True)
    assert level_periodic(spec, 2) == (False, True)
    assert level_periodic(GridSpec(("x",), (0, 1), 8), 1) == (False,)
    assert [level_name("label", level) for level in range(3)] == ["label", "label_l1", "label_l2"]
    assert level_name("x", 2) == "x_l2"

    s = level_spec(spec, 1)
    assert s.dims == ("x_l1", "y_l1")
    assert s.bins == (7, 4)
    assert s.bounds == ((0.0, 14.0), (-4.0, 4.0))  # 7 cells of width 2 reach past 13
    assert s.periodic == (False, True)
    assert level_spec(spec, 0) is spec

    coords = level_coords(spec, 1)
    np.testing.assert_array_equal(coords["x_l1"].values, np.arange(7) * 2.0 + 1.0)
    np.testing.assert_array_equal(coords["y_l1"].values, [-3.0, -1.0, 1.0, 3.0])
    assert coords["x_l1"].attrs == {
        "long_name": "x",
        "bounds": [0.0, 14.0],
        "bins": 7,
        "periodic": 0,
    }
    assert coords["y_l1"].attrs["periodic"] == 1
    # Level 0: the GridSpec's own centres.
    np.testing.assert_array_equal(level_coords(spec, 0)["x"].values, spec.centers("x"))


def test_level_coords_keep_the_stored_attributes(rng):
    frame = pd.DataFrame(rng.random((50, 2)), columns=["x", "y"]).assign(label=0)
    ds = bin_points(frame, bins=(6, 4), bounds=(0, 1))
    ds["x"].attrs["units"] = "m"
    c = level_coords(ds, 1)["x_l1"]
    assert c.attrs["units"] == "m"
    assert c.attrs["bins"] == 3
    assert level_coords(ds, 0)["x"].attrs == ds["x"].attrs
    np.testing.assert_array_equal(level_coords(ds, 0)["y"].values, ds["y"].values)


# --- parameters ----------------------------------------------------------------------------


def test_parse_pyramid_levels():
    assert parse_pyramid_levels(1) == 1
    assert parse_pyramid_levels("3") == 3
    assert parse_pyramid_levels(np.int64(4)) == 4
    assert parse_pyramid_levels(2.0) == 2
    for bad in (0, -2, 1.5, "x", "", None, True, [2]):
        with pytest.raises(ParameterError, match=r"levels: expected an integer >= 1"):
            parse_pyramid_levels(bad)


def test_parse_min_votes():
    assert parse_min_votes(0) == 0.0
    assert parse_min_votes("2.5") == 2.5
    assert parse_min_votes(np.float32(1.5)) == 1.5
    assert isinstance(parse_min_votes(3), float)
    for bad in (-1, -0.5, float("nan"), float("inf"), "many", None, True, [1.0]):
        with pytest.raises(ParameterError, match=r"min_votes: expected a finite number >= 0"):
            parse_min_votes(bad)


def test_level_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, "a", None):
        with pytest.raises(ParameterError, match="level: expected a pyramid level"):
            level_bins((4, 4), bad)
