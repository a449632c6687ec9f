"""Invariants of binning: counts equal np.histogramdd exactly, whatever the
partitioning, row order, strategy or chunking."""

import dask.dataframe as dd
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridflow import bin_points
from gridflow.grid import GridSpec
from gridflow.sparse_grid import densify
from tests.conftest import reference_counts

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def binning_cases(draw):
    ndim = draw(st.integers(1, 5))
    nbins = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    lows = draw(st.lists(st.floats(-100, 100), min_size=ndim, max_size=ndim))
    widths = draw(st.lists(st.floats(0.01, 50), min_size=ndim, max_size=ndim))
    periodic = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    n = draw(st.integers(1, 400))
    nclasses = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    spec = GridSpec(
        tuple(f"d{i}" for i in range(ndim)),
        bounds=[(lo, lo + w) for lo, w in zip(lows, widths, strict=True)],
        bins=nbins,
        periodic=periodic,
    )
    # Points inside, outside, on the bounds and exactly on cell edges.
    pts = spec.lo + (rng.random((n, ndim)) * 1.4 - 0.2) * spec.width
    edges_pick = rng.random((n, ndim)) < 0.3
    for i in range(ndim):
        e = spec.edges(i)
        on_edge = e[rng.integers(0, len(e), n)]
        pts[:, i] = np.where(edges_pick[:, i], on_edge, pts[:, i])
    pts[0] = spec.lo + 0.5 * spec.width  # at least one row is binned
    labels = rng.integers(0, nclasses, n)
    return spec, pts, labels, nclasses, draw(st.integers(1, 6)), seed


def _frame(pts, labels, ndim):
    data = {f"d{i}": pts[:, i] for i in range(ndim)}
    data["label"] = labels
    return pd.DataFrame(data)


@SETTINGS
@given(binning_cases())
def test_counts_equal_histogramdd_for_any_partitioning(case):
    spec, pts, labels, nclasses, nparts, _ = case
    expect = reference_counts(pts, labels, spec, nclasses)
    ddf = dd.from_pandas(_frame(pts, labels, spec.ndim), npartitions=nparts)
    ds = bin_points(ddf, spec=spec, classes=range(nclasses))  # layout "auto": either
    counts = densify(ds["counts"])
    assert counts.dtype == np.uint32
    np.testing.assert_array_equal(counts, expect)
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert report["binned"] == int(expect.sum())
    assert report["rows"] == len(pts)


@SETTINGS
@given(binning_cases(), st.data())
def test_row_order_strategy_and_chunks_never_change_counts(case, data):
    spec, pts, labels, nclasses, nparts, seed = case
    base = bin_points(
        _frame(pts, labels, spec.ndim), spec=spec, classes=range(nclasses), layout="dense"
    )
    perm = np.random.default_rng(seed + 1).permutation(len(pts))
    chunks = [data.draw(st.integers(1, b)) for b in spec.bins]
    ddf = dd.from_pandas(_frame(pts[perm], labels[perm], spec.ndim), npartitions=nparts)
    other = bin_points(
        ddf, spec=spec, classes=range(nclasses), strategy="chunked", chunks=chunks, layout="dense"
    )
    assert other["counts"].data.chunksize[1:] == tuple(chunks)
    np.testing.assert_array_equal(other["counts"].values, base["counts"].values)


@SETTINGS
@given(binning_cases())
def test_kernel_cells_equal_gridspec_cells(case):
    """The compiled kernel and GridSpec.cell_index agree bit for bit."""
    spec, pts, _, _, _, _ = case
    n = len(pts)
    ds = bin_points(
        {**{f"d{i}": pts[:, i] for i in range(spec.ndim)}, "label": np.arange(n)},
        spec=spec,
        classes=range(n),
    )
    counts = densify(ds["counts"]).reshape(n, -1)
    flat = spec.flat_index(pts)
    got = np.where(counts.any(axis=1), counts.argmax(axis=1), -1)
    np.testing.assert_array_equal(got, flat)
