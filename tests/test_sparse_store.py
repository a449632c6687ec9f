"""Sparse variables in a store (gridflow/sparse_store.py): the format, chunk-by-chunk
reads, whole stages, info and render on sparse grids."""

import json
import os
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import sparse
import xarray as xr
from click.testing import CliRunner

from gridflow import bin_points, open_grid
from gridflow import sparse_store as ss
from gridflow import store as store_mod
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.errors import StoreError
from gridflow.render import image, plane
from gridflow.sparse_grid import densify, is_sparse, unravel_keys

BINS = (8, 7, 6, 5)
CHUNKS = (3, 7, 2, 5)  # split along x0 and x2 only


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(11)
    pts = rng.random((1500, 4))
    labels = (pts[:, 0] * 3).astype(int)
    return pts, labels


def _bin(points, path=None, layout="sparse", **kw):
    pts, labels = points
    return bin_points(
        pts,
        path,
        labels=labels,
        bins=BINS,
        bounds=(0, 1),
        periodic=True,
        chunks=CHUNKS,
        layout=layout,
        **kw,
    )


@pytest.fixture
def sparse_store(tmp_path, points):
    path = tmp_path / "s.zarr"
    _bin(points, path)
    return path


def _as_sparse(var: xr.DataArray, fill) -> xr.Variable:
    """A dense variable as COO chunks (the cells holding ``fill`` not stored)."""
    meta = sparse.COO(
        np.empty((var.ndim, 0), np.int64),
        np.empty(0, var.dtype),
        shape=(0,) * var.ndim,
        fill_value=fill,
    )
    data = var.data.map_blocks(lambda b: sparse.COO.from_numpy(b, fill_value=fill), meta=meta)
    return xr.Variable(var.dims, data, attrs=var.attrs)


def _same_block(a, b):
    assert isinstance(a, sparse.COO) and isinstance(b, sparse.COO)
    assert a.shape == b.shape and a.dtype == b.dtype and a.fill_value == b.fill_value
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.data, b.data)


# --- the format -------------------------------------------------------------------------


def test_round_trip_chunk_by_chunk_and_schema(sparse_store, points):
    memory = _bin(points)
    ds = open_grid(sparse_store)
    counts = ds["counts"]
    assert is_sparse(counts) and counts.dims == memory["counts"].dims
    assert counts.chunks == memory["counts"].chunks and counts.dtype == np.uint32
    for idx in np.ndindex(*counts.data.numblocks):
        _same_block(counts.data.blocks[idx].compute(), memory["counts"].data.blocks[idx].compute())
    for name in memory.coords:
        assert ds[name].variable.identical(memory[name].variable)
    assert ds.attrs["gridflow_grid"] == memory.attrs["gridflow_grid"]
    assert ds.attrs["gridflow_stages"]["bin"] == memory.attrs["gridflow_stages"]["bin"]
    assert counts.attrs == memory["counts"].attrs

    # On disk: sorted row-major keys per chunk, inside the chunk, and an offsets index.
    import zarr

    group = sparse_store / "counts"
    doc = json.loads((group / "zarr.json").read_text())["attributes"][ss.ATTR]
    assert doc["shape"] == [3, *BINS] and doc["dims"] == ["class", "x0", "x1", "x2", "x3"]
    assert doc["fill_value"] == 0 and doc["dtype"] == "<u4"
    keys = zarr.open_array(str(group / "keys"), mode="r")[:]
    values = zarr.open_array(str(group / "values"), mode="r")[:]
    offsets = zarr.open_array(str(group / "offsets"), mode="r")[:]
    nblocks = [len(c) for c in counts.chunks]
    assert offsets.size == np.prod(nblocks) + 1 and offsets[-1] == keys.size == doc["nnz"]
    assert int(values.sum()) == 1500
    starts = [np.cumsum([0, *c]) for c in counts.chunks]
    for cid, idx in enumerate(np.ndindex(*nblocks)):
        k = keys[offsets[cid] : offsets[cid + 1]]
        assert np.all(k[1:] > k[:-1])
        coords = unravel_keys(k, doc["shape"])
        for axis, i in enumerate(idx):
            assert np.all((coords[axis] >= starts[axis][i]) & (coords[axis] < starts[axis][i + 1]))
    # Consolidated like Zarr's nested nodes; xr.open_zarr opens the dense part, quietly.
    members = json.loads((sparse_store / "zarr.json").read_text())["consolidated_metadata"]
    assert {"counts", "counts/keys", "counts/values", "counts/offsets"} <= set(members["metadata"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(sparse_store)
    assert set(plain.coords) == set(ds.coords) and "counts" not in plain


def test_a_chunk_is_read_alone(tmp_path, points, monkeypatch):
    monkeypatch.setattr(ss, "ZARR_CHUNK", 8)  # keys and values in many Zarr chunks
    path = tmp_path / "s.zarr"
    _bin(points, path)
    data = open_grid(path)["counts"].data
    expect = data.blocks[0, 1, 0, 2, 0].compute()
    first = data.blocks[0, 0, 0, 0, 0].compute()
    import zarr

    offsets = zarr.open_array(str(path / "counts" / "offsets"), mode="r")[:]
    cid = int(np.ravel_multi_index((0, 1, 0, 2, 0), data.numblocks))
    a, b = int(offsets[cid]), int(offsets[cid + 1])
    assert b - a > 8  # the chunk spans several Zarr chunks of keys
    keep = set(range(a // 8, (b - 1) // 8 + 1))
    for what in ("keys", "values"):
        for f in (path / "counts" / what / "c").iterdir():
            if int(f.name) not in keep:
                f.unlink()  # as if lost: this chunk's read must not need them
    block = data.blocks[0, 1, 0, 2, 0]
    (culled,) = dask.optimize(block)
    reads = [k for k in dict(culled.__dask_graph__()) if "open-sparse" in str(k)]
    assert len(reads) <= 1  # one task reads this chunk (maybe fused with its selection)
    got = block.compute()
    _same_block(got, expect)
    lost = data.blocks[0, 0, 0, 0, 0].compute()  # its keys and values are gone
    assert first.nnz and not np.array_equal(lost.data, first.data)


def test_empty_sparse_variable_round_trips(sparse_store):
    def nothing(block_info=None):
        shape = block_info[None]["chunk-shape"]
        return sparse.COO(
            np.empty((4, 0), np.int64), np.empty(0, np.int16), shape=shape, fill_value=-1
        )

    meta = nothing({None: {"chunk-shape": (0,) * 4}})
    chunks = tuple(
        (c,) * (b // c) + ((b % c,) if b % c else ()) for b, c in zip(BINS, CHUNKS, strict=True)
    )
    none = xr.Variable(
        ("x0", "x1", "x2", "x3"), da.map_blocks(nothing, chunks=chunks, dtype=np.int16, meta=meta)
    )
    new, _ = store_mod.write_stage(sparse_store, "classify", {"label": none}, {"window": [1] * 4})
    assert is_sparse(new["label"]) and int(new["label"].encoding["nnz"]) == 0
    block = new["label"].data.blocks[0, 0, 0, 0].compute()
    assert block.nnz == 0 and block.fill_value == -1 and block.dtype == np.int16
    assert (densify(new["label"]) == -1).all()


def test_the_fill_value_is_the_chunks_own(sparse_store):
    counts = open_grid(sparse_store)["counts"].data
    # A meta as the backend table makes it (fill 0), chunks with fill -1.
    meta = sparse.empty((0,) * 4, dtype=np.int16)

    def labels(block, fill=-1):
        cells = np.unique(block.coords[1:], axis=1)  # the occupied cells, sorted
        return sparse.COO(
            cells, np.zeros(cells.shape[1], np.int16), shape=block.shape[1:], fill_value=fill
        )

    label = counts.map_blocks(labels, drop_axis=0, dtype=np.int16, meta=meta)
    new, _ = store_mod.write_stage(
        sparse_store, "classify", {"label": xr.Variable(("x0", "x1", "x2", "x3"), label)}, {}
    )
    assert new["label"].data.blocks[0, 0, 0, 0].compute().fill_value == -1
    assert (densify(new["label"]) == np.where(densify(counts).sum(axis=0) > 0, 0, -1)).all()
    # Chunks that disagree: refused, and the store keeps its stage.
    mixed = counts.map_blocks(
        lambda b, block_info=None: labels(b, -1 if block_info[0]["chunk-location"][1] else 7),
        drop_axis=0,
        dtype=np.int16,
        meta=meta,
    )
    with pytest.raises(ValueError, match="different fill values"):
        store_mod.write_stage(
            sparse_store, "classify", {"label": xr.Variable(("x0", "x1", "x2", "x3"), mixed)}, {}
        )
    assert open_grid(sparse_store)["label"].data.blocks[0, 0, 0, 0].compute().fill_value == -1
    assert not (sparse_store / store_mod.STAGING).exists()


# --- whole stages ------------------------------------------------------------------------


@pytest.fixture
def classified(tmp_path, points):
    """A sparse store classified densely (window 1), and its labels as COO (fill -1)."""
    path = tmp_path / "c.zarr"
    _bin(points, path)
    dense = classify(_bin(points, layout="dense"), window=1, iterations=1)
    store_mod.write_stage(path, "classify", {"label": dense["label"].variable}, {"window": [1] * 4})
    return path, dense


def test_a_failed_sparse_stage_write_leaves_the_store_as_it_was(classified, monkeypatch):
    path, dense = classified
    before = open_grid(path)
    old = before["label"].values
    new_label = _as_sparse((dense["label"] + 0).where(dense["label"] != 1, -1), -1)

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost")

    for target in ("_spool_chunk", "_copy_range"):  # while computing, and while copying
        monkeypatch.setattr(ss, target, boom)
        with pytest.raises(RuntimeError, match="worker lost"):
            store_mod.write_stage(path, "classify", {"label": new_label}, {"window": [2] * 4})
        monkeypatch.undo()
        ds = open_grid(path)
        assert (
            not is_sparse(ds["label"])
            and ds.attrs["gridflow_stages"]["classify"]["window"] == [1] * 4
        )
        np.testing.assert_array_equal(ds["label"].values, old)
        assert not (path / store_mod.STAGING).exists()
    # Sparse replaces dense, then dense replaces sparse.
    ds, _ = store_mod.write_stage(path, "classify", {"label": new_label}, {"window": [2] * 4})
    assert is_sparse(ds["label"])
    np.testing.assert_array_equal(densify(ds["label"]), np.where(old == 1, -1, old))
    ds, _ = store_mod.write_stage(
        path, "classify", {"label": dense["label"].variable}, {"window": [3] * 4}
    )
    assert not is_sparse(ds["label"]) and not ss.is_sparse_group(path / "label")
    np.testing.assert_array_equal(ds["label"].values, old)


@pytest.mark.parametrize("after", [0, 1, 2])
def test_an_interrupted_sparse_swap_reads_as_incomplete(classified, monkeypatch, after):
    path, dense = classified
    calls = {"n": 0}
    real = os.rename

    def rename(a, b):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        real(a, b)

    variables = {
        "label": _as_sparse(dense["label"], -1),
        "votes": _as_sparse(dense["density"], 0.0),
        # A pyramid level's variable (its own dims): the stage's too.
        "label_l1": xr.Variable(("y0", "y1"), np.zeros((4, 4), np.int16)),
    }
    monkeypatch.setattr(store_mod.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        store_mod.write_stage(path, "classify", variables, {"window": [2] * 4})
    monkeypatch.undo()
    ds = open_grid(path)
    assert store_mod.incomplete_stages(ds) == ["classify"]
    assert not {"label", "votes", "label_l1"} & set(ds.variables)  # never half read
    assert is_sparse(ds["counts"])
    with pytest.raises(StoreError, match="classify stage of the grid is incomplete"):
        store_mod.require_stage(ds, "classify")
    assert "classify (incomplete: rerun it, with --resume)" in store_mod.summary(ds)


def test_apply_stage_on_an_in_memory_sparse_grid(points):
    grid = _bin(points)
    dense = classify(_bin(points, layout="dense"), window=1, iterations=1)
    label = _as_sparse(dense["label"], -1)
    out = store_mod.apply_stage(grid, None, "classify", {"label": label}, {"window": [1] * 4})
    assert is_sparse(out["label"]) and is_sparse(out["counts"])
    assert out.attrs["gridflow_stages"]["classify"] == {"window": [1] * 4}
    np.testing.assert_array_equal(densify(out["label"]), dense["label"].values)


def test_write_new_store_of_an_in_memory_coo(tmp_path, points):
    grid = _bin(points)
    counts = grid["counts"].data.compute()  # one sparse.COO, no dask
    ds = grid.assign(counts=(grid["counts"].dims, counts, grid["counts"].attrs))
    store_mod.write_new_store(ds, tmp_path / "one.zarr")
    back = open_grid(tmp_path / "one.zarr")["counts"]
    assert back.data.numblocks == (1,) * 5
    _same_block(back.data.compute(), counts)


# --- info and render ------------------------------------------------------------------------


def test_info_on_a_sparse_store(sparse_store, points):
    expect = _bin(points, layout="dense")["counts"].values
    occupied = int((expect.sum(axis=0) > 0).sum())
    cells = int(np.prod(BINS))
    r = CliRunner().invoke(main, ["info", str(sparse_store)])
    assert r.exit_code == 0, r.output
    assert f"layout: sparse, {occupied:,} of {cells:,} cells occupied " in r.output
    assert f"({100 * occupied / cells:.3g}%)" in r.output
    assert f"{np.count_nonzero(expect):,} (class, cell) entries stored" in r.output
    assert "stages: bin" in r.output
    # In memory, from the chunks when the record lacks the count.
    ds = open_grid(sparse_store)
    del ds.attrs["gridflow_stages"]["bin"]["occupied"]
    assert f"{occupied:,} of {cells:,} cells occupied" in store_mod.summary(ds)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, points):
    """The same classified grid dense and sparse (label fill -1, density fill 0)."""
    dense = classify(_bin(points, layout="dense"), window=1, iterations=1)
    path = tmp_path_factory.mktemp("sr") / "s.zarr"
    _bin(points, path)
    variables = {
        "label": _as_sparse(dense["label"], -1),
        "density": _as_sparse(dense["density"], 0.0),
        "confidence": _as_sparse(dense["confidence"], 0.0),
    }
    store_mod.write_stage(path, "classify", variables, {"window": [1] * 4})
    return dense, path


@pytest.mark.parametrize(
    "kwargs",
    [
        {"var": "label"},  # the mode over x2, x3
        {"var": "label", "slices": "x2=3,x3=1"},
        {"var": "label", "dims": "x3,x1", "slices": "x0=2"},
        {"var": "density"},  # the max over x2, x3
        {"var": "density", "slices": {"x1": 4}, "dims": ("x2", "x0")},
        {"var": "confidence", "slices": "x3=4"},
    ],
)
def test_sparse_images_equal_the_dense_ones(rendered, kwargs):
    dense, path = rendered
    grid = open_grid(path)
    assert is_sparse(grid["label"]) and is_sparse(grid["density"])
    np.testing.assert_array_equal(image(grid, scale=1, **kwargs), image(dense, scale=1, **kwargs))


def test_sparse_planes_sum_and_max_from_the_stored_cells(rendered, points):
    dense_grid, path = rendered
    grid = open_grid(path)
    counts = _bin(points, layout="dense")
    for kwargs in (
        {"project": "sum"},
        {"project": "max", "dims": "x3,x1"},
        {"project": "sum", "slices": {"class": 2, "x0": 5}},
    ):
        got = plane(grid, "counts", **kwargs)
        np.testing.assert_array_equal(got, plane(counts, "counts", **kwargs))
    total = plane(grid, "counts", project="sum")
    assert total.shape == (8, 7) and total.dtype == np.uint64 and int(total.sum()) == 1500
    np.testing.assert_array_equal(total, counts["counts"].values.sum(axis=(0, 3, 4)))
    # max over cells not all stored takes the fill (0) in, as the dense grid holds it.
    np.testing.assert_array_equal(
        plane(grid, "density", project="max"), dense_grid["density"].values.max(axis=(2, 3))
    )
    np.testing.assert_array_equal(
        plane(grid, "label", dims="x1,x2", slices="x0=1,x3=2"),
        dense_grid["label"].values[1, :, :, 2],
    )


def test_cli_render_on_a_sparse_store(rendered, tmp_path):
    _, path = rendered
    out = tmp_path / "label.png"
    r = CliRunner().invoke(main, ["render", str(path), "--out", str(out), "--slice", "x3=2"])
    assert r.exit_code == 0, r.output
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] % 8 == 0 and im.size[1] % 7 == 0
