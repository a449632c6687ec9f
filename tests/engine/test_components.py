"""Level-set components against scipy.ndimage.label and a torus graph, for every chunking."""

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gridflow.engine.components import level_set_tree
from tests.conftest import same_partition


def _smooth_levels(rng, shape, nlevels):
    noise = ndi.gaussian_filter(rng.random(shape), 1.0)
    ranks = noise.ravel().argsort().argsort().reshape(shape)
    return (ranks * nlevels // noise.size).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "chunks", "connectivity"),
    [
        ((23, 31), (23, 31), 1),
        ((23, 31), (7, 5), 1),
        ((23, 31), (1, 31), 2),
        ((23, 31), (4, 3), 2),
        ((9, 10, 11), (4, 5, 3), 1),
        ((9, 10, 11), (2, 10, 11), 3),
    ],
)
def test_components_equal_scipy_label(rng, shape, chunks, connectivity):
    lev = _smooth_levels(rng, shape, 6)
    mass = rng.integers(0, 4, shape)
    tree = level_set_tree(
        da.from_array(lev, chunks=chunks),
        da.from_array(mass, chunks=chunks),
        nlevels=6,
        connectivity=connectivity,
    )
    structure = ndi.generate_binary_structure(len(shape), connectivity)
    for lv in range(1, 6):
        ref, n = ndi.label(lev >= lv, structure)
        comp = tree.levels[lv]
        assert len(comp) == n
        got = tree.label(da.from_array(lev, chunks=chunks), lv, np.arange(n)).compute()
        assert same_partition(np.where(ref > 0, ref, -1), got)
        # Components are numbered by their first cell in C order.
        first = [int(np.flatnonzero(got.ravel() == c)[0]) for c in range(n)]
        assert first == sorted(first) == comp.rep.tolist()
        np.testing.assert_array_equal(comp.cells, np.bincount(got[got >= 0], minlength=n))
        np.testing.assert_array_equal(
            comp.mass, np.bincount(got[got >= 0], weights=mass[got >= 0], minlength=n)
        )


@pytest.mark.parametrize("chunks", [(5, 6), (2, 3), (1, 1), (5, 1)])
def test_periodic_seam_by_hand(chunks):
    lev = np.zeros((5, 6), dtype=np.uint8)
    lev[0, 0] = lev[0, 5] = lev[4, 0] = 1  # wrap across both seams
    lev[2, 2] = lev[2, 3] = 1
    arr = da.from_array(lev, chunks=chunks)
    periodic = level_set_tree(arr, nlevels=2, periodic=True)
    assert periodic.levels[1].cells.tolist() == [3, 2]
    got = periodic.label(arr, 1, np.array([7, 9])).compute()
    assert got[0, 0] == got[0, 5] == got[4, 0] == 7 and got[2, 2] == got[2, 3] == 9
    assert (got == -1).sum() == 25
    assert level_set_tree(arr, nlevels=2).levels[1].cells.tolist() == [1, 1, 2, 1]
    # Only a corner touches across both seams: connected with connectivity 2.
    corner = np.zeros((5, 6), dtype=np.uint8)
    corner[0, 0] = corner[4, 5] = 1
    arr = da.from_array(corner, chunks=chunks)
    assert len(level_set_tree(arr, nlevels=2, periodic=True).levels[1]) == 2
    assert len(level_set_tree(arr, nlevels=2, periodic=True, connectivity=2).levels[1]) == 1
    assert len(level_set_tree(arr, nlevels=2, connectivity=2).levels[1]) == 2


def _torus_components(mask, connectivity):
    """Components of a mask on a torus, from a graph of every cell and its wrapped neighbours."""
    idx = np.arange(mask.size).reshape(mask.shape)
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    a, b = [], []
    for o in np.argwhere(structure) - 1:
        axes = tuple(range(mask.ndim))
        both = mask & np.roll(mask, tuple(-o), axis=axes)
        a.append(idx[both])
        b.append(np.roll(idx, tuple(-o), axis=axes)[both])
    a, b = np.concatenate(a), np.concatenate(b)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(mask.size,) * 2)
    _, comp = connected_components(graph, directed=False)
    return np.where(mask, comp.reshape(mask.shape), -1)


def test_periodic_components_match_a_torus_graph(rng):
    for shape, connectivity in [((12, 9), 1), ((12, 9), 2), ((6, 5, 7), 1), ((6, 5, 7), 3)]:
        lev = rng.integers(0, 3, shape).astype(np.uint8)
        trees = {}
        for chunks in [shape, tuple(max(1, s // 3) for s in shape)]:
            arr = da.from_array(lev, chunks=chunks)
            tree = level_set_tree(arr, nlevels=3, connectivity=connectivity, periodic=True)
            for lv in (1, 2):
                got = tree.label(arr, lv, np.arange(len(tree.levels[lv]))).compute()
                assert same_partition(_torus_components(lev >= lv, connectivity), got)
                trees.setdefault(lv, got)
                np.testing.assert_array_equal(trees[lv], got)  # same ids too
