"""Level sets and equalization on sparse grids against the dense engine on the same cells."""

import itertools
import sys

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gridflow.cluster import hierarchy
from gridflow.engine.components import level_set_tree, parse_connectivity
from gridflow.engine.equalize import density_keys, equalize
from gridflow.errors import ParameterError
from tests.conftest import same_partition

equalize_mod = sys.modules["gridflow.engine.equalize"]

CUTS = (0.08, 0.18, 0.28, 0.42, 0.62, 0.80, 0.95)


def _coo(values, mask, fill=0):
    """A COO storing exactly the cells of ``mask`` (fill-valued ones too)."""
    coords = np.stack(np.nonzero(mask)).astype(np.int64).reshape(mask.ndim, -1)
    return sparse.COO(
        coords, values[mask], shape=mask.shape, fill_value=fill, has_duplicates=False,
        sorted=True, prune=False,
    )  # fmt: skip


def _sparse(values, mask, chunks, fill=0):
    return da.from_array(_coo(values, mask, fill), chunks=chunks, asarray=False)


def _levels(rng, shape, nlevels):
    noise = ndi.gaussian_filter(rng.random(shape), 1.0, mode="wrap")
    ranks = noise.ravel().argsort().argsort().reshape(shape)
    return (ranks * nlevels // noise.size).astype(np.uint8)


def _graph_components(inset, connectivity, periodic):
    """Components of a boolean set from a graph of every cell and its neighbours.

    Numbered by their first cell in C order; -1 off the set.
    """
    shape = inset.shape
    idx = np.arange(inset.size).reshape(shape)
    structure = ndi.generate_binary_structure(inset.ndim, connectivity)
    a, b = [], []
    for o in np.argwhere(structure) - 1:
        nb = np.indices(shape) + o.reshape((-1,) + (1,) * inset.ndim)
        if periodic:
            nb %= np.array(shape).reshape((-1,) + (1,) * inset.ndim)
            ok = np.ones(shape, bool)
        else:
            ok = ((nb >= 0) & (nb < np.array(shape).reshape((-1,) + (1,) * inset.ndim))).all(0)
        src = idx[ok]
        dst = np.ravel_multi_index(tuple(nb[:, ok]), shape)
        keep = inset.ravel()[src] & inset.ravel()[dst]
        a.append(src[keep])
        b.append(dst[keep])
    a, b = np.concatenate(a), np.concatenate(b)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(inset.size,) * 2)
    _, comp = connected_components(graph, directed=False)
    comp = comp[inset.ravel()]
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(comp.max() + 1 if len(comp) else 0, np.int64)
    rank[comp[np.sort(first)]] = np.arange(len(first))
    out = np.full(inset.size, -1, np.int64)
    out[inset.ravel()] = rank[comp]
    return out.reshape(shape)


def _check_tree(tree, lev, mask, mass, nlevels, connectivity, periodic, sparse_level):
    """The tree of a sparse (or masked dense) level equals the graph reference."""
    root = tree.levels[0]
    assert root.cells.tolist() == [int(mask.sum())] and root.mass.tolist() == [int(mass.sum())]
    previous = np.where(mask, 0, -1)
    for lv in range(1, nlevels):
        ref = _graph_components(mask & (lev >= lv), connectivity, periodic)
        comp = tree.levels[lv]
        n = int(ref.max()) + 1
        assert len(comp) == n
        cells = ref[ref >= 0]
        np.testing.assert_array_equal(comp.cells, np.bincount(cells, minlength=n))
        np.testing.assert_array_equal(comp.mass, np.bincount(cells, mass[ref >= 0], minlength=n))
        first = [int(np.flatnonzero(ref.ravel() == c)[0]) for c in range(n)]
        np.testing.assert_array_equal(comp.rep, first)
        np.testing.assert_array_equal(comp.parent, previous.ravel()[first])
        ids = 3 * np.arange(n, dtype=np.int32) + 1
        got = tree.label(sparse_level, lv, ids).compute()
        if hasattr(got, "todense"):
            assert got.fill_value == -1
            # Every existing cell is stored, and only those.
            np.testing.assert_array_equal(got.coords, np.stack(np.nonzero(mask)))
            got = got.todense()
        want = np.full(ref.shape, -1, np.int32)
        want[ref >= 0] = ids[ref[ref >= 0]]
        np.testing.assert_array_equal(got, want)
        previous = ref


CASES = [
    ((13, 17), (13, 17), 1),
    ((13, 17), (4, 5), 1),
    ((7, 9), (1, 2), 2),
    ((7, 6, 9), (2, 6, 3), 1),
    ((5, 4, 6), (1, 2, 2), 3),
    ((4, 3, 5, 4, 3), (1, 2, 5, 4, 3), 1),
    ((4, 3, 5, 4, 3), (2, 1, 2, 4, 3), 2),
    ((2, 1, 5), (1, 1, 2), 1),  # dims of 1 and 2 cells wrap onto themselves
]


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize(("shape", "chunks", "connectivity"), CASES)
def test_sparse_components_equal_the_graph_of_the_existing_cells(
    rng, shape, chunks, connectivity, periodic
):
    lev = _levels(rng, shape, 5)
    mask = rng.random(shape) < 0.6
    mass = rng.integers(1, 5, shape) * mask
    level = _sparse(lev, mask, chunks)
    tree = level_set_tree(
        level, _sparse(mass, mask, chunks), nlevels=5, connectivity=connectivity,
        periodic=periodic,
    )  # fmt: skip
    assert tree.sparse
    _check_tree(tree, lev, mask, mass, 5, connectivity, periodic, level)
    # Level 0: the root's id on every existing cell.
    root = tree.label(level, 0, np.array([7])).compute()
    assert root.nnz == mask.sum()
    np.testing.assert_array_equal(root.todense(), np.where(mask, 7, -1))


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize(("shape", "chunks"), [((13, 17), (4, 5)), ((7, 6, 9), (2, 6, 3))])
def test_the_dense_mask_gives_the_sparse_tree_and_hierarchy(rng, shape, chunks, periodic):
    lev = _levels(rng, shape, 6)
    mask = rng.random(shape) < 0.5
    mass = rng.integers(1, 4, shape) * mask
    level = _sparse(lev, mask, chunks)
    sp = level_set_tree(level, _sparse(mass, mask, chunks), nlevels=6, periodic=periodic)
    dense_level = da.from_array(lev, chunks=chunks)
    dense = level_set_tree(
        dense_level, da.from_array(mass, chunks=chunks), nlevels=6, periodic=periodic,
        exists=da.from_array(mask, chunks=chunks),
    )  # fmt: skip
    _check_tree(dense, lev, mask, mass, 6, 1, periodic, dense_level)
    # Off the mask the dense grid is level 0: the unmasked tree of the masked
    # levels agrees above the root.
    plain = level_set_tree(da.from_array(np.where(mask, lev, 0), chunks=chunks), nlevels=6,
                           periodic=periodic)  # fmt: skip
    for a, b in zip(sp.levels[1:], plain.levels[1:], strict=True):
        np.testing.assert_array_equal(a.rep, b.rep)
        np.testing.assert_array_equal(a.cells, b.cells)
        np.testing.assert_array_equal(a.parent, b.parent)
    for min_cells in (1, 4, int(mask.sum()) + 1):
        hs, hd = hierarchy(sp, min_cells), hierarchy(dense, min_cells)
        for name in ("level", "parent", "cells", "mass"):
            np.testing.assert_array_equal(getattr(hs, name), getattr(hd, name), err_msg=name)
        for a, b in zip(hs.node_of, hd.node_of, strict=True):
            np.testing.assert_array_equal(a, b)
        assert (hs.cells >= min_cells).all()
    # The levels nest: each node's cells lie in its parent's, cell by cell.
    h = hierarchy(sp, 3)
    maps = [sp.label(level, lv, h.node_of[lv]).compute().todense() for lv in range(6)]
    for v in range(1, len(h)):
        inside = maps[h.level[v]] == v
        assert inside.sum() == h.cells[v]
        assert (maps[h.level[v] - 1][inside] == h.parent[v]).all()
    # Noise (-1 components) stays stored on existing cells.
    noisy = sp.label(level, 2, hierarchy(sp, 10).node_of[2]).compute()
    assert noisy.nnz == mask.sum()


def test_cost_follows_the_existing_cells_in_ten_dimensions(rng):
    # 64**10 = 2**60 cells: only the 400 that exist are ever touched.
    d, bins, n = 10, 64, 400
    walk = np.cumsum(rng.integers(-1, 2, (n, d)) * (rng.random((n, d)) < 0.15), axis=0)
    cells = np.unique(walk % bins, axis=0)  # sorted: C order
    lev = rng.integers(0, 3, len(cells)).astype(np.uint8)
    coo = sparse.COO(cells.T.astype(np.int64), lev, shape=(bins,) * d, prune=False)
    chunks = ((32,) * 2, (32,) * 2, (16,) * 4) + ((bins,),) * (d - 3)
    level = da.from_array(coo, chunks=chunks, asarray=False)
    for periodic in (False, True):
        tree = level_set_tree(level, nlevels=3, periodic=periodic)
        assert tree.levels[0].cells.tolist() == [len(cells)]
        for lv in (1, 2):
            # Reference: face neighbours by brute force over all pairs of cells.
            up = cells[lev >= lv]
            diff = np.abs(up[:, None, :] - up[None, :, :])
            if periodic:
                diff = np.minimum(diff, bins - diff)
            adjacent = (diff.sum(-1) == 1) & (diff.max(-1) == 1)
            ncomp, comp = connected_components(coo_matrix(adjacent), directed=False)
            assert len(tree.levels[lv]) == ncomp
            _, first = np.unique(comp, return_index=True)
            got = tree.label(level, lv, np.arange(ncomp)).compute()
            keys = np.ravel_multi_index(tuple(up.T), (bins,) * d)
            np.testing.assert_array_equal(tree.levels[lv].rep, np.sort(keys[first]))
            # Read the labels at the cells, never densifying 2**60 cells.
            stored = dict(zip(map(tuple, got.coords.T), got.data, strict=True))
            assert len(stored) == len(cells)
            ids = np.array([stored[tuple(c)] for c in up])
            assert same_partition(ids, comp)
            _, first_ids = np.unique(ids, return_index=True)
            assert np.all(np.diff(first_ids) > 0)  # numbered by first cell (C order)


def test_refusals_and_empty_grids(rng):
    with pytest.raises(ParameterError, match="neighbours to look up") as info:
        parse_connectivity(3, 10, sparse=True)
    assert "\n" not in str(info.value)
    assert parse_connectivity(2, 10, sparse=True) == 2  # 200 neighbours: fine
    lev = _levels(rng, (6, 5), 3)
    mask = rng.random((6, 5)) < 0.5
    level = _sparse(lev, mask, (3, 5))
    with pytest.raises(ParameterError, match="stored coordinates"):
        level_set_tree(level, nlevels=3, exists=mask)
    with pytest.raises(ParameterError, match="shape"):
        level_set_tree(da.from_array(lev), nlevels=3, exists=mask[:3])
    # No cell exists: an empty root and empty levels.
    none = _sparse(lev, np.zeros_like(mask), (3, 2))
    tree = level_set_tree(none, nlevels=3, periodic=True)
    assert tree.levels[0].cells.tolist() == [0] and [len(c) for c in tree.levels[1:]] == [0, 0]
    assert tree.label(none, 1, np.zeros(0)).compute().nnz == 0
    eq = equalize(_sparse(rng.random((6, 5)), np.zeros_like(mask), (3, 2)), levels=4)
    assert eq.n == 0 and eq.threshold_densities == [None] * 3
    assert eq.level.compute().nnz == 0


# --- chunking never changes a sparse result ---------------------------------------------


@st.composite
def _grids(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    seed = draw(st.integers(0, 2**32 - 1))
    split = draw(st.sets(st.integers(0, ndim - 1), max_size=3))
    chunks = tuple(draw(st.integers(1, n)) if d in split else n for d, n in enumerate(shape))
    periodic = draw(st.booleans())
    connectivity = draw(st.integers(1, ndim))
    return shape, seed, chunks, periodic, connectivity


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grids())
def test_chunking_never_changes_the_sparse_tree(grid):
    shape, seed, chunks, periodic, connectivity = grid
    rng = np.random.default_rng(seed)
    lev = rng.integers(0, 4, shape).astype(np.uint8)
    mask = rng.random(shape) < 0.7
    mass = rng.integers(1, 3, shape) * mask
    trees, labels = [], []
    for c in (shape, chunks):
        level = _sparse(lev, mask, c)
        tree = level_set_tree(
            level, _sparse(mass, mask, c), nlevels=4, connectivity=connectivity,
            periodic=periodic,
        )  # fmt: skip
        trees.append(tree)
        labels.append(
            [tree.label(level, lv, np.arange(len(tree.levels[lv]))).compute() for lv in range(4)]
        )
    for a, b in zip(trees[0].levels, trees[1].levels, strict=True):
        for name in ("rep", "cells", "mass", "parent"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for a, b in zip(*labels, strict=True):
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.data, b.data)
    # And it is the graph of the existing cells.
    _check_tree(trees[1], lev, mask, mass, 4, connectivity, periodic, _sparse(lev, mask, chunks))


# --- equalization over the existing cells -----------------------------------------------


def _brute_levels(x, cuts, method):
    """Levels of the values ``x`` (1-D: the existing cells) by their ranks among themselves."""
    keys = density_keys(x)
    u = np.unique(keys)
    if method == "distinct":
        rank, n = np.searchsorted(u, keys) + 1, len(u)
    else:
        rank, n = np.searchsorted(np.sort(keys), keys, side="left") + 1, len(keys)
    return np.array([sum(r / n >= q for q in cuts) for r in rank], dtype=np.uint8)


@pytest.mark.parametrize("method", ["cells", "distinct"])
@pytest.mark.parametrize(
    ("shape", "chunks"), [((30, 40), (30, 40)), ((30, 40), (7, 11)), ((6, 5, 4, 6), (1, 2, 4, 6))]
)
def test_sparse_equalization_ranks_the_existing_cells_only(rng, monkeypatch, method, shape, chunks):
    x = rng.random(shape) ** 3
    x[rng.random(shape) < 0.2] = 0.0  # a plateau
    x.reshape(-1)[: x.size // 6] = np.round(x.reshape(-1)[: x.size // 6], 2)  # and ties
    exists = rng.random(shape) < 0.5
    # The density is known on more cells than exist (a reachable set), and on
    # a few existing cells not at all (they have the fill value, 0).
    known = (exists | (rng.random(shape) < 0.3)) & ~(exists & (rng.random(shape) < 0.1))
    monkeypatch.setattr(equalize_mod, "RANGE_CELLS", 100)  # several merge ranges
    density = _sparse(x, known, chunks, 0.0)
    eq = equalize(density, levels=CUTS, method=method, exists=_sparse(exists, exists, chunks))
    got = eq.level.compute()
    assert got.dtype == np.uint8 and got.fill_value == 0
    np.testing.assert_array_equal(got.coords, np.stack(np.nonzero(exists)))  # level 0 kept
    values = np.where(known, x, 0.0)[exists]
    want = _brute_levels(values, CUTS, method)
    np.testing.assert_array_equal(got.data, want)
    # The dense path with the same cells as a mask agrees, thresholds included.
    dense = equalize(
        da.from_array(np.where(known, x, 0.0), chunks=chunks), levels=CUTS, method=method,
        exists=da.from_array(exists, chunks=chunks),
    )  # fmt: skip
    np.testing.assert_array_equal(dense.level.compute(), got.todense())
    np.testing.assert_array_equal(dense.thresholds, eq.thresholds)
    n = exists.sum() if method == "cells" else len(np.unique(density_keys(values)))
    assert dense.n == eq.n == n
    assert dense.threshold_densities == eq.threshold_densities


def test_sparse_equalization_defaults_to_the_stored_cells(rng):
    x = rng.random((9, 8))
    stored = rng.random((9, 8)) < 0.4
    eq = equalize(_sparse(x, stored, (4, 3), 0.0), levels=4, method="cells")
    got = eq.level.compute()
    np.testing.assert_array_equal(got.coords, np.stack(np.nonzero(stored)))
    np.testing.assert_array_equal(got.data, _brute_levels(x[stored], (0.25, 0.5, 0.75), "cells"))
    assert eq.n == stored.sum()
    # A bare COO (not a dask array) works too.
    np.testing.assert_array_equal(equalize(_coo(x, stored, 0.0), levels=4).level.compute().data,
                                  got.data)  # fmt: skip
    with pytest.raises(ParameterError, match=r"sparse\.COO"):
        equalize(_sparse(x, stored, (4, 3), 0.0), exists=stored)
    with pytest.raises(ParameterError, match="shape"):
        equalize(x, exists=stored[:4])


def test_equalization_and_components_compose_on_existing_cells(rng):
    # The sparse level from equalize feeds level_set_tree directly.
    shape, chunks = (12, 10, 3), (5, 4, 3)
    x = ndi.gaussian_filter(rng.random(shape), 1.0, mode="wrap")
    exists = rng.random(shape) < 0.6
    lev = equalize(_sparse(x, exists, chunks, 0.0), levels=5).level
    tree = level_set_tree(lev, nlevels=5, periodic=True)
    dense = equalize(x, levels=5, exists=exists).level.compute()
    _check_tree(tree, dense, exists, exists.astype(int), 5, 1, True, lev)


def test_every_connectivity_offset_is_in_the_binary_structure():
    from gridflow.engine.components import _positive_offsets, _sparse_offsets

    for ndim, c in itertools.product(range(1, 6), range(1, 6)):
        if c > ndim:
            continue
        want = _positive_offsets(ndi.generate_binary_structure(ndim, c))
        got = _sparse_offsets(ndim, c)
        assert sorted(map(tuple, got)) == sorted(map(tuple, want))
