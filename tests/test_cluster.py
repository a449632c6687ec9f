"""The cluster stage: reference levels, hierarchy, the cut, noise, fill, chunkings, the store."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from gridflow import bin_points, open_grid, predict
from gridflow.cluster import Hierarchy, choose_level, cluster, hierarchy
from gridflow.engine.components import level_set_tree
from gridflow.errors import ParameterError, StoreError
from gridflow.grid import GridSpec
from gridflow.store import counts_dataset
from tests.conftest import reference, same_partition

GRAY = np.array([0, 30, 55, 90, 120, 140, 170, 254])


def test_cluster_levels_on_the_reference_input():
    z = reference("granville_gd_200_w5.npz")
    bitmap = z["input_bitmap"]
    counts = np.stack([bitmap == k for k in range(5)]).astype(np.uint32)
    spec = GridSpec(("x", "y"), bounds=(0, 1), bins=200, periodic=True)
    ds = counts_dataset(da.from_array(counts, chunks=(5, 64, 64)), spec, tuple(range(5)), {})
    out = cluster(ds, window=5, iterations=3, method="distinct", boundary="periodic")
    level = out["level"].values
    ref = np.searchsorted(GRAY, z["gray_level"])
    # gridflow's weights are exact binary fractions (within 3e-8 of the
    # reference's): 7 pairs of the reference's 40,000 densities that differ
    # by less than that become equal, which moves a few cells by one level.
    differ = level != ref
    assert differ.sum() <= 10
    assert np.abs(level.astype(int) - ref)[differ].max() == 1


def test_the_occupancy_density_is_the_classify_density_bit_for_bit(rng):
    from gridflow.engine.vote import run_numpy
    from gridflow.kernels import parse_kernel

    counts = _blob_grid(rng)["counts"].values  # two classes
    labels = np.where(counts.sum(0) > 0, counts.argmax(0), -1)
    k = parse_kernel("inverse_distance", window=3, ndim=2)
    _, by_class, _ = run_numpy(labels, nclasses=2, kernel=k, iterations=3)
    _, occupancy, _ = run_numpy(np.where(labels >= 0, 0, -1), nclasses=1, kernel=k, iterations=3)
    np.testing.assert_array_equal(by_class, occupancy)


# --- the hierarchy and the cut ----------------------------------------------------------------


def test_choose_level_prefers_the_most_persistent_clusters():
    # root(0) -> 1 -> {2: big, 3: fragment}; 2 -> {4, 5} at level 3; 4 -> 6, 5 -> 7 at level 4.
    h = Hierarchy(
        level=np.array([0, 1, 2, 2, 3, 3, 4, 4], np.uint8),
        parent=np.array([-1, 0, 1, 1, 2, 2, 4, 5], np.int32),
        cells=np.array([100, 90, 80, 25, 40, 30, 30, 20]),
        mass=np.array([1000, 900, 800, 5, 400, 300, 300, 200]),
        node_of=[],
    )
    # Level 2's clusters: the root's (scores 0) and a 5-point fragment. Level 3:
    # node 5's cluster lives two levels with 300 + 200 points; node 4 carries on
    # the root's. Level 4 holds the same clusters: the lower level wins the tie.
    assert choose_level(h, 5) == 3
    # A single cluster all the way up: level 1.
    single = Hierarchy(
        np.array([0, 1, 2], np.uint8), np.array([-1, 0, 1], np.int32), np.ones(3), np.ones(3), []
    )
    assert choose_level(single, 3) == 1


def _blob_points(rng, n=6000):
    centres = np.array([[0.02, 0.5], [0.5, 0.25], [0.55, 0.75]])  # the first crosses the seam
    pts = centres[rng.integers(0, 3, n)] + rng.normal(0, 0.04, (n, 2))
    return pts % 1.0


def _blob_grid(rng, path=None, chunks=48):
    pts = _blob_points(rng)
    return bin_points(
        pts,
        path,
        labels=rng.integers(0, 2, len(pts)),  # classes are merged
        bins=(48, 40),
        bounds=(0, 1),
        periodic=True,
        chunks=chunks,
    )


def test_hierarchy_is_a_tree_whose_children_lie_inside_their_parents(rng):
    ds = _blob_grid(rng)
    out = cluster(ds, window=2, iterations=2, levels=8, min_cells=4)
    level = np.asarray(out["node_level"].values)
    parent = np.asarray(out["node_parent"].values)
    cells = np.asarray(out["node_cells"].values)
    mass = np.asarray(out["node_mass"].values)
    assert level[0] == 0 and parent[0] == -1 and (parent[1:] >= 0).all()
    assert cells[0] == 48 * 40 and mass[0] == 6000
    assert (level[parent[1:]] == level[1:] - 1).all()
    assert (cells[1:] <= cells[parent[1:]]).all() and (mass[1:] <= mass[parent[1:]]).all()
    assert (cells >= 4).all()
    # Containment, cell by cell: each node's cells lie in its parent's.
    lev = out["level"].data
    tree = level_set_tree(lev, nlevels=8, periodic=True)
    h = hierarchy(tree, 4)
    np.testing.assert_array_equal(h.parent, parent)
    maps = [tree.label(lev, lv, h.node_of[lv]).compute() for lv in range(8)]
    for v in range(1, len(level)):
        inside = maps[level[v]] == v
        assert inside.sum() == cells[v]
        assert (maps[level[v] - 1][inside] == parent[v]).all()


def test_clusters_join_across_the_seam(rng):
    ds = _blob_grid(rng)
    per = cluster(ds, window=2, iterations=2, levels=8, min_cells=10, fill=False)
    ids = per["cluster"].values
    assert per.attrs["gridflow_stages"]["cluster"]["clusters"] == 3
    # The blob at x = 0.02 spans both edges and is one cluster.
    left, right = ids[0, 20], ids[-1, 20]
    assert left >= 0 and left == right
    cut = per.attrs["gridflow_stages"]["cluster"]["cut_level"]
    opened = cluster(ds, window=2, iterations=2, levels=8, min_cells=10, boundary="open", level=cut)
    ids = opened["cluster"].values
    assert ids[0, 20] >= 0 and ids[-1, 20] >= 0 and ids[0, 20] != ids[-1, 20]


def test_min_cells_makes_small_components_noise(rng):
    # The blobs, and a few tight groups of points: small components.
    pts = np.concatenate([_blob_points(rng), rng.normal(0, 0.004, (60, 2)) + np.array([0.8, 0.1])])
    pts = np.concatenate([pts, rng.normal(0, 0.004, (30, 2)) + np.array([0.3, 0.9])]) % 1.0
    ds = bin_points(pts, labels=np.zeros(len(pts), int), bins=(48, 40), bounds=(0, 1))
    checked = 0
    for lv in range(1, 8):
        every = cluster(ds, window=2, iterations=2, levels=8, level=lv, min_cells=1)
        ids = every["cluster"].values
        sizes = np.bincount(ids[ids >= 0])
        if not sizes.min() < 10 < sizes.max():
            continue
        checked += 1
        big = cluster(ds, window=2, iterations=2, levels=8, level=lv, min_cells=10)
        kept = big["cluster"].values
        # A cell is in a cluster exactly when its component has 10 cells or more.
        np.testing.assert_array_equal(kept >= 0, (ids >= 0) & (sizes >= 10)[np.maximum(ids, 0)])
        assert same_partition(kept, np.where(kept >= 0, ids, -1))
    assert checked > 0  # some level has small components


def test_fill_gives_every_cell_a_cluster_and_keeps_the_clusters(rng):
    ds = _blob_grid(rng)
    plain = cluster(ds, window=2, iterations=2, levels=8, min_cells=10)
    filled = cluster(ds, window=2, iterations=2, levels=8, min_cells=10, fill=True)
    before, after = plain["cluster"].values, filled["cluster"].values
    assert (before < 0).any() and (after >= 0).all()
    np.testing.assert_array_equal(after[before >= 0], before[before >= 0])
    steps = filled.attrs["gridflow_stages"]["cluster"]["fill_steps"]
    assert steps > 0
    # A wider fill window reaches every cell in fewer steps.
    wide = cluster(ds, window=2, iterations=2, levels=8, min_cells=10, fill=True, fill_window=6)
    assert wide.attrs["gridflow_stages"]["cluster"]["fill_steps"] < steps
    assert (wide["cluster"].values >= 0).all()
    np.testing.assert_array_equal(wide["cluster"].values[before >= 0], before[before >= 0])


@pytest.mark.parametrize("boundary", ["periodic", "open"])
def test_every_chunking_gives_the_same_clusters(rng, boundary):
    # Chunks of 1 to 3 cells are smaller than the fused halo (3 steps of w=1).
    pts = _blob_points(rng, 3000)
    runs = {}
    for chunks, fill in [((24, 20), True), ((7, 9), True), ((3, 2), False), ((1, 20), False)]:
        ds = bin_points(
            pts, labels=np.zeros(len(pts), int), bins=(24, 20), bounds=(0, 1), periodic=True,
            chunks=chunks,
        )  # fmt: skip
        runs[chunks] = cluster(
            ds, window=1, iterations=3, levels=8, min_cells=4, boundary=boundary, fill=fill
        )
        # The outputs keep the store's chunks.
        assert runs[chunks]["cluster"].data.chunks == ds["counts"].data.chunks[1:]
    whole = runs[(24, 20)]
    assert whole.attrs["gridflow_stages"]["cluster"]["clusters"] >= 3
    names = ["level", "cluster", "node_level", "node_parent", "node_cells", "node_mass"]
    for out in runs.values():
        ref = whole if out.attrs["gridflow_stages"]["cluster"]["fill"] else runs[(3, 2)]
        for name in names:  # the same ids, not only the same partitions
            np.testing.assert_array_equal(out[name].values, ref[name].values, err_msg=name)
    plain = runs[(3, 2)]["cluster"].values
    filled = whole["cluster"].values
    np.testing.assert_array_equal(filled[plain >= 0], plain[plain >= 0])


# --- the stage in a store ---------------------------------------------------------------------


def test_store_results_history_and_predict(rng, tmp_path):
    store = tmp_path / "g.zarr"
    _blob_grid(rng, store, chunks=16)
    out = cluster(store, window=2, iterations=2, levels=8, min_cells=10, fill=True)
    again = open_grid(store)
    for name in ["level", "cluster", "node_parent"]:
        xr.testing.assert_identical(out[name].load(), again[name].load())
    assert again["level"].dtype == np.uint8 and again["cluster"].dtype == np.int32
    assert again.attrs["history"].splitlines()[-1].split()[3] == "cluster"
    # A second run with another number of levels replaces the hierarchy.
    out = cluster(store, window=2, iterations=2, levels=16, min_cells=10, fill=True)
    again = open_grid(store)
    assert int(again["node_level"].max()) > 7 and again.sizes["node"] == out.sizes["node"]
    assert again.attrs["gridflow_stages"]["cluster"]["levels"][0] == 1 / 16
    pts = rng.random((500, 2))
    res = predict(store, pts, variable="cluster")
    cells = GridSpec.from_dict(again.attrs["gridflow_grid"]).cell_index(pts)
    np.testing.assert_array_equal(res.codes, again["cluster"].values[tuple(cells.T)])
    assert res.classes is None


def test_a_failed_write_leaves_no_cluster_stage(rng, tmp_path, monkeypatch):
    store = tmp_path / "g.zarr"
    _blob_grid(rng, store, chunks=16)
    cluster(store, window=2, iterations=2)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    before = open_grid(store)
    monkeypatch.setattr(xr.Dataset, "to_zarr", broken)
    with pytest.raises(StoreError, match="disk full"):
        cluster(store, window=2, iterations=2, levels=4)
    # The write failed before the swap: the previous cluster stage is intact.
    after = open_grid(store)
    assert after.attrs["gridflow_stages"]["cluster"] == before.attrs["gridflow_stages"]["cluster"]
    np.testing.assert_array_equal(after["level"].values, before["level"].values)
    assert not (store / "_gridflow_staging").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": 1}, "levels"),
        ({"levels": [0.5, 0.2]}, "increasing"),
        ({"levels": [0.0, 0.5]}, "levels"),
        ({"levels": "many"}, "levels"),
        ({"method": "median"}, "method"),
        ({"level": 8}, "from 0 to 7"),
        ({"level": "top"}, "level"),
        ({"min_cells": 0}, "min_cells"),
        ({"connectivity": 3}, "connectivity"),
        ({"window": 30}, "larger than the grid"),
        ({"seed": "points"}, "seed"),
        ({"boundary": "reflect"}, "boundary"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_bad_parameters(rng, kwargs, match):
    ds = _blob_grid(rng)
    with pytest.raises(ParameterError, match=match) as info:
        cluster(ds, **({"window": 2} | kwargs))
    assert "\n" not in str(info.value)


def test_grid_must_be_a_store_or_dataset():
    with pytest.raises(ParameterError, match="store path or an xarray Dataset"):
        cluster(np.zeros((3, 3)))


def test_a_clustered_dataset_can_be_clustered_again(rng):
    first = cluster(_blob_grid(rng), window=2, iterations=2, levels=8)
    again = cluster(first, window=2, iterations=2, levels=16)
    assert again.sizes["node"] != first.sizes["node"]
    assert int(again["node_level"].max()) > 7


def test_level_zero_is_the_whole_grid(rng):
    out = cluster(_blob_grid(rng), window=2, iterations=2, levels=4, level=0)
    assert out.attrs["gridflow_stages"]["cluster"]["clusters"] == 1
    assert (out["cluster"].values == 0).all()
