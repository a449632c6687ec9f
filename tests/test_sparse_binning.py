"""Sparse binning (docs/design.md §3.5): COO counts equal to the dense ones, the
layout rule, the refusals, and no dense allocation anywhere."""

import logging
import os
import subprocess
import sys
import textwrap

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gridflow.binning as binning
from gridflow import GridSpec, bin_points
from gridflow.binning import sparse_chunks
from gridflow.cli import main
from gridflow.engine.planner import check_keys, check_sparse_grid, choose_layout
from gridflow.errors import GridTooLargeError, ParameterError
from gridflow.runtime import ClusterMemory
from gridflow.sparse_grid import MAX_SPLIT_DIMS, densify, is_sparse
from tests._cli import cli_env
from tests.conftest import reference_counts
from tests.properties.test_binning_props import binning_cases

BIG = ClusterMemory(total=2**34, workers=1, smallest=2**34, threads=2)


def _points(rng, n, d, nclasses=3):
    """Points in [0, 1)^d with a few NaN, out-of-range and unknown-label rows."""
    pts = rng.random((n, d))
    labels = rng.integers(0, nclasses, n)
    pts[:5, 0] = np.nan
    pts[5:9, -1] = 1.5  # out of range where the dim is not periodic
    labels[9:12] = nclasses  # not a class of classes=range(nclasses)
    return pts, labels


def _reference(pts, labels, spec, nclasses):
    """np.add.at on GridSpec.cell_index: the counts every layout must give."""
    cells = spec.cell_index(pts)
    ok = (cells >= 0).all(axis=1) & (labels >= 0) & (labels < nclasses)
    out = np.zeros((nclasses, *spec.shape), np.int64)
    np.add.at(out, (labels[ok], *cells[ok].T), 1)
    return out


def _frame(pts, labels):
    df = pd.DataFrame(pts, columns=[f"x{i}" for i in range(pts.shape[1])])
    df["label"] = labels
    return df


def _record(ds):
    return ds.attrs["gridflow_stages"]["bin"]


@pytest.mark.parametrize(
    ("bins", "chunks"),
    [
        ((37, 23), "auto"),
        ((37, 23), (8, 5)),
        ((11, 9, 7), "auto"),
        ((11, 9, 7), (4, 9, 2)),
        ((11, 9, 7), 3),
        ((7, 6, 5, 4, 3), "auto"),
        ((7, 6, 5, 4, 3), (3, 6, 2, 4, 2)),  # 3 split dims, not the largest ones
        ((7, 6, 5, 4, 3), (1, 1, 1, 4, 3)),
    ],
)
def test_sparse_counts_equal_dense_and_reference(rng, bins, chunks):
    d = len(bins)
    pts, labels = _points(rng, 4000, d)
    spec = GridSpec(
        tuple(f"x{i}" for i in range(d)),
        bounds=(0, 1),
        bins=bins,
        periodic=[True] + [False] * (d - 1),
    )
    src = dd.from_pandas(_frame(pts, labels), npartitions=4)  # keys merged across partitions
    kw = {"spec": spec, "classes": range(3), "chunks": chunks}
    dense = bin_points(src, layout="dense", strategy="chunked", **kw)
    tree = bin_points(src, layout="dense", strategy="tree", **kw)
    sparse = bin_points(src, layout="sparse", **kw)
    assert is_sparse(sparse["counts"]) and not is_sparse(dense["counts"])
    assert sparse["counts"].dtype == dense["counts"].dtype == np.uint32
    expect = _reference(pts, labels, spec, 3)
    got = densify(sparse["counts"])
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(dense["counts"].values, expect)
    np.testing.assert_array_equal(tree["counts"].values, expect)
    # The same report (the keys path is the chunked strategy), the same coordinates.
    assert _record(sparse)["report"] == _record(dense)["report"]
    assert _record(sparse)["report"]["nonfinite"] == 5
    assert list(sparse.coords) == list(dense.coords)
    assert all(sparse[c].variable.identical(dense[c].variable) for c in sparse.coords)
    assert sparse.attrs["gridflow_grid"] == dense.attrs["gridflow_grid"]
    assert sparse["counts"].dims == dense["counts"].dims
    assert _record(sparse)["layout"] == "sparse" and _record(dense)["layout"] == "dense"
    assert _record(sparse)["occupied"] == int((expect.sum(axis=0) > 0).sum())
    # At most 3 split dims; every chunk a COO with fill 0 holding its cells only.
    data = sparse["counts"].data
    assert data.chunks[0] == (3,)
    assert sum(len(c) > 1 for c in data.chunks[1:]) <= MAX_SPLIT_DIMS
    block = data.blocks[(0,) * data.ndim].compute()
    assert block.fill_value == 0 and block.nnz == np.count_nonzero(
        expect[tuple(slice(0, c[0]) for c in data.chunks)]
    )
    if chunks != "auto":
        assert tuple(c[0] for c in data.chunks[1:]) == spec.parse_chunks(chunks)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binning_cases(), st.data())
def test_sparse_counts_equal_histogramdd_for_any_partitioning_and_chunks(case, data):
    spec, pts, labels, nclasses, nparts, _ = case
    # Chunks along at most 3 dims, the others whole.
    chunks = [data.draw(st.integers(1, b)) for b in spec.bins]
    split = [i for i, (c, b) in enumerate(zip(chunks, spec.bins, strict=True)) if c < b]
    for i in split[MAX_SPLIT_DIMS:]:
        chunks[i] = spec.bins[i]
    ddf = dd.from_pandas(_frame_named(pts, labels, spec.dims), npartitions=nparts)
    ds = bin_points(ddf, spec=spec, classes=range(nclasses), layout="sparse", chunks=chunks)
    np.testing.assert_array_equal(
        densify(ds["counts"]), reference_counts(pts, labels, spec, nclasses)
    )
    assert ds["counts"].data.chunksize[1:] == tuple(chunks)


def _frame_named(pts, labels, dims):
    df = pd.DataFrame({d: pts[:, i] for i, d in enumerate(dims)})
    df["label"] = labels
    return df


def test_counts_promote_to_uint64_in_both_layouts(rng, monkeypatch):
    pts, labels = _points(rng, 600, 3)
    spec = GridSpec(("x0", "x1", "x2"), bounds=(0, 1), bins=(6, 5, 4))
    monkeypatch.setattr(binning, "_U32_MAX", 100)  # more than 100 points: uint64
    dense = bin_points(pts, labels=labels, spec=spec, classes=range(3), layout="dense")
    sparse = bin_points(pts, labels=labels, spec=spec, classes=range(3), layout="sparse")
    assert dense["counts"].dtype == sparse["counts"].dtype == np.uint64
    assert sparse["counts"].data.blocks[0, 0, 0, 0].compute().dtype == np.uint64
    np.testing.assert_array_equal(densify(sparse["counts"]), dense["counts"].values)
    few = bin_points(pts[:50], labels=labels[:50] % 3, spec=spec, layout="sparse")
    assert few["counts"].dtype == np.uint32


# --- the layout rule ------------------------------------------------------------------


def test_layout_rule():
    # Sparse when fewer than 1 cell in 16 can be occupied, or the dense counts do not fit.
    assert choose_layout("auto", (400, 400, 400), 3, rows=3_999_999, memory=BIG)[0] == "sparse"
    assert choose_layout("auto", (400, 400, 400), 3, rows=4_000_000, memory=BIG)[0] == "dense"
    # Below 2**24 cells a grid of up to 3 dims stays dense however empty; not in 4.
    assert choose_layout("auto", (40, 40, 40), 3, rows=1, memory=BIG)[0] == "dense"
    assert choose_layout("auto", (10, 10, 10, 10), 3, rows=1, memory=BIG)[0] == "sparse"
    small = ClusterMemory(total=1e6, workers=1, smallest=1e6, threads=1)
    layout, why = choose_layout("auto", (400, 400), 3, rows=10**9, memory=small)
    assert layout == "sparse" and "would not fit" in why
    assert choose_layout("auto", (400, 400, 400), 3, rows=None, memory=BIG)[0] is None
    assert choose_layout("dense", (400,) * 4, 3, rows=1, memory=small)[0] == "dense"


def test_auto_layout_before_the_pass_both_ways(rng, caplog, monkeypatch):
    # Small grids here: let the occupancy rule apply below 2**24 cells.
    monkeypatch.setattr("gridflow.engine.planner.SPARSE_MIN_CELLS", 1)
    pts = rng.random((1000, 3))
    labels = rng.integers(0, 2, 1000)
    with caplog.at_level(logging.INFO, logger="gridflow.binning"):
        few = bin_points(pts, labels=labels, bins=40, bounds=(0, 1))  # 1000 * 16 < 64000
    assert is_sparse(few["counts"]) and _record(few)["layout"] == "sparse"
    assert "sparse layout: at most 1,000 of the 64,000 cells" in caplog.text
    many = bin_points(pts, labels=labels, bins=10, bounds=(0, 1))  # 16000 >= 1000 cells
    assert not is_sparse(many["counts"]) and _record(many)["layout"] == "dense"
    assert _record(many)["report"]["strategy"] == "tree"  # the dense path as before


def test_auto_layout_after_counting_when_the_rows_are_unknown(rng, caplog, monkeypatch):
    monkeypatch.setattr("gridflow.engine.planner.SPARSE_MIN_CELLS", 1)
    # Bounds and classes given and a dask source: nothing tells the rows before the pass.
    pts = rng.random((1000, 3))
    labels = rng.integers(0, 2, 1000)
    src = dd.from_pandas(_frame(pts, labels), npartitions=3)
    spec40 = GridSpec(("x0", "x1", "x2"), bounds=(0, 1), bins=40)
    with caplog.at_level(logging.INFO, logger="gridflow.binning"):
        few = bin_points(src, spec=spec40, classes=[0, 1])
    assert "undecided" in caplog.text and "layout: sparse" in caplog.text
    assert is_sparse(few["counts"])
    np.testing.assert_array_equal(densify(few["counts"]), _reference(pts, labels, spec40, 2))
    spec10 = GridSpec(("x0", "x1", "x2"), bounds=(0, 1), bins=10)
    many = bin_points(src, spec=spec10, classes=[0, 1])
    assert not is_sparse(many["counts"]) and _record(many)["layout"] == "dense"
    np.testing.assert_array_equal(many["counts"].values, _reference(pts, labels, spec10, 2))
    # Dense chunks of a sparse outcome split every dim: rechunked to at most 3.
    spec5d = GridSpec(tuple(f"x{i}" for i in range(5)), bounds=(0, 1), bins=12)
    pts5 = rng.random((500, 5))
    src5 = dd.from_pandas(_frame(pts5, labels[:500]), npartitions=2)
    out = bin_points(src5, spec=spec5d, classes=[0, 1], chunks=6)
    assert _record(out)["layout"] == "dense"  # given chunks split 5 dims: no sparse
    out = bin_points(src5, spec=spec5d, classes=[0, 1])
    assert is_sparse(out["counts"])
    assert sum(len(c) > 1 for c in out["counts"].chunks[1:]) <= MAX_SPLIT_DIMS
    np.testing.assert_array_equal(densify(out["counts"]), _reference(pts5, labels[:500], spec5d, 2))


def test_auto_is_sparse_when_the_dense_counts_do_not_fit(rng, monkeypatch):
    tiny = ClusterMemory(total=50_000, workers=1, smallest=50_000, threads=1)
    monkeypatch.setattr(binning, "cluster_memory", lambda: tiny)
    pts = rng.random((2000, 2))
    labels = rng.integers(0, 3, 2000)
    # 3 x 100 x 100 uint32 = 120 kB > 50 kB, though 2000 points may fill 1 cell in 5;
    # their keys (32 kB) fit.
    ds = bin_points(pts, labels=labels, bins=100, bounds=(0, 1))
    assert _record(ds)["layout"] == "sparse"
    with pytest.raises(GridTooLargeError, match=r"^bins: a dense grid of 100x100 cells x 3"):
        bin_points(pts, labels=labels, bins=100, bounds=(0, 1), layout="dense")


# --- chunks and refusals -----------------------------------------------------------------


def test_sparse_chunks_split_the_largest_dims_at_most_three(monkeypatch):
    monkeypatch.setattr(binning, "_total_threads", lambda: 4)
    spec = GridSpec(tuple("abcdef"), bounds=(0, 1), bins=(10, 200, 30, 200, 100, 5))
    chunks = sparse_chunks("auto", spec, 3, rows=10**8)
    split = [d for d, c, b in zip(spec.dims, chunks, spec.bins, strict=True) if c < b]
    assert split == ["b", "d", "e"]  # the three dims with the most bins

    def nchunks(chunks):
        return int(np.prod([-(-b // c) for b, c in zip(spec.bins, chunks, strict=True)]))

    # About one chunk per 2**20 entries that can be occupied (96 for 10**8 points) ...
    assert 96 <= nchunks(chunks) < 2 * 96
    # ... at most about 512, at least one per thread, a single one when tiny.
    assert 512 <= nchunks(sparse_chunks("auto", spec, 3, rows=10**10)) < 2 * 512
    assert 4 <= nchunks(sparse_chunks("auto", spec, 3, rows=10**5)) < 8
    assert sparse_chunks("auto", spec, 3, rows=100) == spec.bins
    with pytest.raises(ParameterError, match=r"^chunks: a sparse grid is chunked along at most 3"):
        sparse_chunks(4, spec, 3)
    assert sparse_chunks((5, 50, 30, 50, 100, 5), spec, 3) == (5, 50, 30, 50, 100, 5)


def _no_store(tmp_path, store):
    assert not os.path.exists(store)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_refusals_are_one_line_and_write_nothing(rng, tmp_path, monkeypatch):
    pts = rng.random((300, 6))
    labels = rng.integers(0, 3, 300)
    store = tmp_path / "g.zarr"
    # 10**24 cells: no 64-bit key numbers them, whatever the layout says.
    for layout in ("auto", "sparse"):
        with pytest.raises(GridTooLargeError) as info:
            bin_points(pts, store, labels=labels, bins=10**4, bounds=(0, 1), layout=layout)
        msg = str(info.value)
        assert msg.startswith("bins: a grid of 10000x10000x10000x10000x10000x10000 cells")
        assert "64-bit key" in msg and "fewer bins or dims" in msg and "\n" not in msg
    with pytest.raises(ParameterError, match=r"^chunks: a sparse grid is chunked along at most 3"):
        bin_points(pts, store, labels=labels, bins=8, bounds=(0, 1), layout="sparse", chunks=4)
    with pytest.raises(ParameterError, match=r"^layout: expected 'auto', 'dense' or 'sparse'"):
        bin_points(pts, store, labels=labels, bins=8, bounds=(0, 1), layout="coo")
    tiny = ClusterMemory(total=4000, workers=1, smallest=4000, threads=1)
    monkeypatch.setattr(binning, "cluster_memory", lambda: tiny)
    with pytest.raises(GridTooLargeError) as info:
        bin_points(pts, store, labels=labels, bins=8, bounds=(0, 1), layout="sparse")
    assert str(info.value).startswith("bins: a sparse grid of 300 points keeps up to 4.7 KiB")
    assert "1 worker of 3.9 KiB" in str(info.value)
    _no_store(tmp_path, store)


def test_key_checks():
    check_keys((2**20,) * 3, 1)  # 2**60 keys
    with pytest.raises(GridTooLargeError, match=r"x 8 classes has 9\.22e"):
        check_keys((2**20,) * 3, 8)
    with pytest.raises(GridTooLargeError, match=r"^chunks: chunks of .* pad the grid"):
        check_keys((2**20 + 1, 2**20, 2**20), 7, (2**19, 2**20, 2**20))
    mem = ClusterMemory(total=1e9, workers=2, smallest=5e8, threads=1)
    assert check_sparse_grid(10**6, 3, (100,) * 6, memory=mem) == 16 * 10**6
    assert check_sparse_grid(None, 3, (100,) * 6, memory=mem) == 0
    with pytest.raises(GridTooLargeError, match=r"2 workers, 953.7 MiB together"):
        check_sparse_grid(10**8, 3, (100,) * 6, memory=mem)


# --- never dense ---------------------------------------------------------------------------

_NEVER_DENSE = """
import resource
import dask
import numpy as np
import psutil
from gridflow import bin_points

rng = np.random.default_rng(5)
n = 100_000
pts = rng.random((n, 6))
labels = rng.integers(0, 3, n)
cells = np.floor(pts * 100).astype(np.int64) @ (100 ** np.arange(5, -1, -1))
entries = np.unique(labels * 100**6 + cells).size
# 10**12 cells x 3 classes: dense uint32 counts would take 12 TB; the process
# gets 1.5 GB of address space above what it holds now.
held = psutil.Process().memory_info().vms
resource.setrlimit(resource.RLIMIT_AS, (held + 1500 * 2**20,) * 2)
for strategy in ("auto", "tree"):
    ds = bin_points(pts, labels=labels, bins=100, bounds=(0, 1), strategy=strategy)
    record = ds.attrs["gridflow_stages"]["bin"]
    blocks = dask.compute(*ds["counts"].data.to_delayed().ravel())
    total = sum(int(b.data.sum()) for b in blocks)
    nnz = sum(b.nnz for b in blocks)
    print(
        record["layout"], record["report"]["strategy"], total, nnz == entries,
        record["occupied"] == np.unique(cells).size,
    )
"""


def test_binning_1e12_cells_never_allocates_the_dense_grid(tmp_path):
    script = tmp_path / "never_dense.py"
    script.write_text(textwrap.dedent(_NEVER_DENSE))
    r = subprocess.run(
        [sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # strategy "auto" and "tree" alike: keys only, exact counts.
    assert r.stdout.split() == ["sparse", "chunked", "100000", "True", "True"] * 2


# --- the CLI -------------------------------------------------------------------------------


def test_cli_bin_layout(rng, tmp_path):
    pts = rng.random((2000, 4))
    df = _frame(pts, rng.integers(0, 3, 2000))
    points = tmp_path / "p.parquet"
    df.to_parquet(points)
    store = tmp_path / "g.zarr"
    runner = CliRunner()
    r = runner.invoke(main, ["bin", str(points), str(store), "--bins", "9", "--layout", "sparse"])
    assert r.exit_code == 0, r.output
    assert "binned 2,000 of 2,000 rows" in r.output
    assert "sparse layout: " in r.output and "of 6,561 cells occupied" in r.output
    from gridflow import open_grid

    ds = open_grid(store)
    assert is_sparse(ds["counts"]) and _record(ds)["layout"] == "sparse"
    bad = tmp_path / "h.zarr"
    r = runner.invoke(main, ["bin", str(points), str(bad), "--bins", "9", "--layout", "coo"])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "--layout" in r.output and "'coo'" in r.output
    assert not bad.exists()
