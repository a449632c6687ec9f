"""cluster on sparse grids: the dense grid's clusters on the occupied cells (docs/design.md §3.5).

The tests comparing a sparse grid with a dense one run the sparse engine
(gridflow.engine.sparse, through run_dask); the dense ``support="occupied"``
tests run the dense engine only.
"""

import dask.array as da
import numpy as np
import pytest
import sparse

from gridflow import bin_points
from gridflow.cluster import cluster
from gridflow.engine.components import level_set_tree
from gridflow.engine.equalize import density_keys, equalize
from gridflow.engine.vote import OUTSIDE, run_dask, run_numpy
from gridflow.errors import ParameterError
from gridflow.kernels import parse_kernel
from tests.conftest import same_partition

NAMES = ("level", "cluster", "cluster_density")
NODES = ("node_level", "node_parent", "node_cells", "node_mass", "node_cluster")


def _points(rng, n=1500, ndim=2):
    centres = rng.random((3, ndim))
    centres[0, 0] = 0.02  # crosses the seam
    pts = centres[rng.integers(0, 3, n)] + rng.normal(0, 0.05, (n, ndim))
    return pts % 1.0


def _grid(rng, bins=(24, 20), chunks=(7, 9), n=1500):
    pts = _points(rng, n, len(bins))
    return bin_points(
        pts, labels=rng.integers(0, 2, len(pts)), bins=bins, bounds=(0, 1), periodic=True,
        chunks=chunks,
    )  # fmt: skip


def _to_sparse(ds):
    """The same grid with COO chunks."""
    c = ds["counts"].data
    meta = sparse.COO.from_numpy(np.zeros((0,) * c.ndim, c.dtype))
    out = ds.copy()
    coo = c.map_blocks(sparse.COO.from_numpy, dtype=c.dtype, meta=meta)
    out["counts"] = (ds["counts"].dims, coo, ds["counts"].attrs)
    return out


def _occupied(ds):
    return ds["counts"].values.sum(axis=0) > 0


def _stored(x):
    """The computed COO of a sparse variable."""
    return x.data.compute()


@pytest.mark.parametrize(
    ("bins", "chunks", "kwargs"),
    [
        ((24, 20), (7, 9), {"boundary": "periodic"}),
        (
            (24, 20),
            (5, 20),
            {"boundary": "open", "fill": True, "method": "distinct", "seed": "counts"},
        ),
        ((10, 9, 8), (4, 9, 3), {"boundary": "periodic", "fill": True, "levels": 6}),
    ],
)
def test_a_sparse_grid_clusters_as_the_dense_grid_on_its_occupied_cells(rng, bins, chunks, kwargs):
    ds = _grid(rng, bins, chunks)
    occ = _occupied(ds)
    args = {"window": 1, "iterations": 3, "min_cells": 3, **kwargs}
    dense = cluster(ds, support="occupied", **args)
    sp = cluster(_to_sparse(ds), **args)  # "auto": occupied on a sparse grid
    rec_d, rec_s = (x.attrs["gridflow_stages"]["cluster"] for x in (dense, sp))
    assert rec_s["support"] == rec_d["support"] == "occupied"
    assert rec_s == rec_d
    assert rec_d["clusters"] >= 2
    for name in NODES:
        np.testing.assert_array_equal(sp[name].values, dense[name].values, err_msg=name)
    assert dense["node_cells"].values[0] == occ.sum()
    for name in NAMES:
        got = _stored(sp[name])
        assert isinstance(got, sparse.COO) and got.dtype == dense[name].dtype, name
        np.testing.assert_array_equal(got.todense()[occ], dense[name].values[occ], err_msg=name)
    # level and (unfilled) cluster store exactly the occupied cells.
    np.testing.assert_array_equal(_stored(sp["level"]).coords, np.stack(np.nonzero(occ)))
    if not kwargs.get("fill"):
        np.testing.assert_array_equal(_stored(sp["cluster"]).coords, np.stack(np.nonzero(occ)))
    else:
        # The fill reached occupied noise cells (the empty ones do not exist).
        plain = cluster(ds, support="occupied", **{**args, "fill": False})["cluster"].values
        filled = dense["cluster"].values
        assert (filled[occ] >= 0).sum() > (plain[occ] >= 0).sum()
        assert (filled[~occ] == -1).all()
    # The outputs keep the store's chunks.
    assert sp["cluster"].data.chunks == ds["counts"].data.chunks[1:]


def test_dense_occupied_support_clusters_the_occupied_cells_only(rng):
    ds = _grid(rng, chunks=(24, 20))
    occ = _occupied(ds)
    out = cluster(ds, window=1, iterations=3, levels=8, min_cells=3, support="occupied")
    rec = out.attrs["gridflow_stages"]["cluster"]
    # Density: the filter with every empty cell OUTSIDE.
    k = parse_kernel("inverse_distance", window=1, ndim=2)
    labels = np.where(occ, 0, OUTSIDE).astype(np.int32)
    _, density, _ = run_numpy(labels, nclasses=1, kernel=k, iterations=3)
    np.testing.assert_array_equal(
        out["cluster_density"].values[occ], density[occ].astype(np.float32)
    )
    assert (out["cluster_density"].values[~occ] == 0).all()
    # Levels: ranks among the occupied cells.
    keys = density_keys(density[occ])
    rank = np.searchsorted(np.sort(keys), keys, side="left") + 1
    cuts = np.array(rec["levels"])
    want = (rank[:, None] / occ.sum() >= cuts[None]).sum(1)
    np.testing.assert_array_equal(out["level"].values[occ], want)
    assert (out["level"].values[~occ] == 0).all()
    # Components: of the occupied cells; the root holds them all.
    lev = out["level"].values
    tree = level_set_tree(da.from_array(np.where(occ, lev, 0)), nlevels=8, periodic=True)
    cut = rec["cut_level"]
    ids = out["cluster"].values
    assert out["node_cells"].values[0] == occ.sum()
    assert (ids[~occ] == -1).all()
    big = tree.levels[cut].cells >= 3
    ref = tree.label(da.from_array(lev), cut, np.where(big, np.cumsum(big) - 1, -1)).compute()
    np.testing.assert_array_equal(ids, ref)
    assert rec["noise"] == pytest.approx((ids[occ] < 0).mean())


def test_auto_support_is_reachable_on_a_dense_grid(rng):
    ds = _grid(rng)
    auto = cluster(ds, window=1, iterations=2, min_cells=3)
    reach = cluster(ds, window=1, iterations=2, min_cells=3, support="reachable")
    assert auto.attrs["gridflow_stages"]["cluster"]["support"] == "reachable"
    for name in (*NAMES, *NODES):
        np.testing.assert_array_equal(auto[name].values, reach[name].values, err_msg=name)
    assert auto["node_cells"].values[0] == 24 * 20  # every cell exists
    assert auto["cluster_density"].dtype == np.float32
    with pytest.raises(ParameterError, match="support") as info:
        cluster(ds, window=1, support="everywhere")
    assert "\n" not in str(info.value)


def test_reachable_support_on_a_sparse_grid_still_clusters_the_occupied_cells(rng):
    ds = _grid(rng, chunks=(12, 10))
    occ = _occupied(ds)
    args = {"window": 1, "iterations": 3, "levels": 8, "min_cells": 3}
    sp = cluster(_to_sparse(ds), support="reachable", **args)
    assert sp.attrs["gridflow_stages"]["cluster"]["support"] == "reachable"
    # The dense reachable density, equalized and labelled on the occupied cells.
    k = parse_kernel("inverse_distance", window=1, ndim=2)
    labels = da.from_array(np.where(occ, 0, -1).astype(np.int32), chunks=(12, 10))
    density = run_dask(labels, nclasses=1, kernel=k, iterations=3).density.compute()
    got_density = _stored(sp["cluster_density"]).todense()
    np.testing.assert_array_equal(got_density, density.astype(np.float32))
    lev = equalize(density, levels=8, exists=occ).level.compute()
    np.testing.assert_array_equal(_stored(sp["level"]).todense(), lev)
    points = ds["counts"].values.sum(0)
    tree = level_set_tree(
        da.from_array(lev), da.from_array(points), nlevels=8, periodic=True,
        exists=da.from_array(occ),
    )  # fmt: skip
    assert sp["node_cells"].values[0] == occ.sum()
    cut = sp.attrs["gridflow_stages"]["cluster"]["cut_level"]
    ref = tree.label(da.from_array(lev), cut, np.arange(len(tree.levels[cut]))).compute()
    ref = np.where(tree.levels[cut].cells[np.maximum(ref, 0)] >= 3, ref, -1)
    assert same_partition(_stored(sp["cluster"]).todense(), ref)
