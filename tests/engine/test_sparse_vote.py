"""The sparse vote engine (COO chunks) against the dense engine, bit for bit.

``support="reachable"`` must equal the dense run; ``support="occupied"``
must equal the dense in-memory reference with every unoccupied cell set to
OUTSIDE (docs/design.md §3.5).
"""

import dask
import dask.array as da
import numpy as np
import pytest
import sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridflow.engine import sparse as sparse_engine
from gridflow.engine.vote import OUTSIDE, UNLABELED, run_dask, run_numpy
from gridflow.errors import GridTooLargeError, ParameterError
from gridflow.kernels import parse_kernel
from gridflow.sparse_grid import densify, is_sparse


@pytest.fixture(params=["pairs", "dense"])
def votes_path(request, monkeypatch):
    """Each step's votes from the neighbour pairs, or from the block's dense
    window sums (the engine picks the cheaper per step: both must be exact)."""
    dense = request.param == "dense"
    calls = []

    def rule(*args):
        calls.append(args)
        return dense

    monkeypatch.setattr(sparse_engine, "dense_cheaper", rule)
    yield request.param
    assert calls, "the sparse engine never chose how to vote"


def _counts(rng, shape, nclasses, fill=0.05):
    counts = np.zeros((nclasses, *shape), np.uint32)
    n = max(3, int(np.prod(shape) * fill))
    cells = tuple(rng.integers(0, s, n) for s in shape)
    np.add.at(counts, (rng.integers(0, nclasses, n), *cells), 1)
    return counts


def _majority(counts):
    return np.where(counts.sum(0) > 0, counts.argmax(0), -1).astype(np.int32)


def _sparse(counts, chunks):
    coo = sparse.COO.from_numpy(counts)
    return da.from_array(coo, chunks=(counts.shape[0], *chunks), asarray=False)


def _run(labels, **kw):
    final = run_dask(labels, **kw)
    out = dask.compute(final.labels, final.density, final.votes)
    return [densify(x) for x in out]


CASES = [
    # shape, classes, window, chunks (chunks smaller than a round's halo included)
    ((20, 20), 3, 2, (20, 20)),
    ((20, 20), 3, 2, (7, 20)),
    ((20, 20), 3, 1, (5, 6)),
    ((10, 10, 10), 2, 1, (4, 10, 3)),
    ((6, 6, 6, 6, 6), 3, 1, (3, 6, 6, 6, 6)),
    ((6, 6, 6, 6, 6), 2, 1, (3, 4, 6, 6, 5)),
]


KERNEL_CASES = [
    (kernel, *case)
    for kernel in ("inverse_distance", "box", "gaussian")
    for case in CASES
    if kernel == "inverse_distance" or len(case[0]) < 5
]


@pytest.mark.parametrize("kernel,shape,nclasses,window,chunks", KERNEL_CASES)
@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.usefixtures("votes_path")
def test_reachable_equals_dense(kernel, shape, nclasses, window, chunks, boundary, rng):
    counts = _counts(rng, shape, nclasses)
    k = parse_kernel(kernel, window=window, ndim=len(shape))
    kw = {"nclasses": nclasses, "kernel": k, "iterations": 3, "boundary": boundary}
    dense = run_numpy(_majority(counts), **kw)  # == run_dask (tests/engine/test_vote.py)
    labels0 = sparse_engine.initial_labels(_sparse(counts, chunks))
    assert is_sparse(labels0)
    np.testing.assert_array_equal(densify(labels0), _majority(counts))
    got = _run(labels0, **kw)
    for g, d in zip(got, dense, strict=True):
        np.testing.assert_array_equal(g, d)


@pytest.mark.parametrize("shape,nclasses,window,chunks", CASES)
@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.usefixtures("votes_path")
def test_occupied_equals_dense_with_unoccupied_cells_outside(
    shape, nclasses, window, chunks, boundary, rng
):
    counts = _counts(rng, shape, nclasses, fill=0.2)
    k = parse_kernel("inverse_distance", window=window, ndim=len(shape))
    labels0 = _majority(counts)
    outside = np.where(labels0 == UNLABELED, OUTSIDE, labels0)
    ref_labels, ref_density, ref_votes = run_numpy(
        outside, nclasses=nclasses, kernel=k, iterations=3, boundary=boundary
    )
    ref_labels[ref_labels == OUTSIDE] = UNLABELED
    kw = {
        "nclasses": nclasses,
        "kernel": k,
        "iterations": 3,
        "boundary": boundary,
        "support": "occupied",
    }
    got = _run(sparse_engine.initial_labels(_sparse(counts, chunks)), **kw)
    np.testing.assert_array_equal(got[0], ref_labels)
    np.testing.assert_array_equal(got[1], ref_density)
    np.testing.assert_array_equal(got[2], ref_votes)
    if len(shape) < 5:  # the dense engine's own support="occupied" is the same run
        dense = _run(da.from_array(labels0, chunks=chunks), **kw)
        for g, d in zip(got, dense, strict=True):
            np.testing.assert_array_equal(g, d)
    # No cell without points is ever labeled or given a density.
    assert np.all(got[0][labels0 == UNLABELED] == UNLABELED)
    assert np.all(got[1][labels0 == UNLABELED] == 0)


@pytest.mark.parametrize("support", ["reachable", "occupied"])
@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.usefixtures("votes_path")
def test_clamp_seed_counts_and_auto_iterations(support, boundary, rng):
    counts = _counts(rng, (24, 18), 3, fill=0.1)
    k = parse_kernel("inverse_distance", window=2, ndim=2)
    for extra in (
        {"clamp": True, "iterations": 4},
        {"seed_counts": True, "iterations": 3},
        {"iterations": None, "max_iter": 30},
    ):
        kw = dict(nclasses=3, kernel=k, boundary=boundary, support=support, **extra)
        seeded = kw.pop("seed_counts", False)
        dense_seed = da.from_array(counts.astype(np.float64), chunks=(3, 8, 9)) if seeded else None
        sparse_seed = _sparse(counts, (8, 9)).astype(np.float64) if seeded else None
        dh, sh = [], []
        dense = _run(
            da.from_array(_majority(counts), chunks=(8, 9)),
            seed_counts=dense_seed,
            history=dh,
            **kw,
        )
        got = _run(
            sparse_engine.initial_labels(_sparse(counts, (8, 9))),
            seed_counts=sparse_seed,
            history=sh,
            **kw,
        )
        for g, d in zip(got, dense, strict=True):
            np.testing.assert_array_equal(g, d)
        assert sh == dh  # the per-step fractions changed and labeled too


def test_fusion_never_changes_a_bit(rng):
    counts = _counts(rng, (30, 30), 4, fill=0.03)
    k = parse_kernel("box", window=1, ndim=2)
    labels0 = sparse_engine.initial_labels(_sparse(counts, (10, 15)))
    kw = {"nclasses": 4, "kernel": k, "iterations": 8, "boundary": "open"}
    one = _run(labels0, fuse=1, **kw)
    many = _run(labels0, **kw)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    cx=st.integers(1, 12),
    cy=st.integers(1, 9),
    boundary=st.sampled_from(["periodic", "open"]),
    support=st.sampled_from(["reachable", "occupied"]),
)
def test_chunk_invariance_property(seed, cx, cy, boundary, support):
    counts = _counts(np.random.default_rng(seed), (12, 9, 4), 3, fill=0.05)
    k = parse_kernel("inverse_distance", window=1, ndim=3)
    kw = {"nclasses": 3, "kernel": k, "iterations": 3, "boundary": boundary, "support": support}
    whole = _run(sparse_engine.initial_labels(_sparse(counts, (12, 9, 4))), **kw)
    split = _run(sparse_engine.initial_labels(_sparse(counts, (cx, cy, 4))), **kw)
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_array_equal(a, b)


def test_work_follows_the_cells_in_ten_dimensions(rng):
    # 16 bins in 10-D is 1.1e12 cells: a dense step could not even allocate.
    shape = (16,) * 10
    n = 2000
    cells = rng.integers(0, 16, (10, n))
    coo = sparse.COO(
        np.vstack([rng.integers(0, 2, n), cells]), np.ones(n, np.uint32), shape=(2, *shape)
    )
    counts = da.from_array(coo, chunks=(2, 8, *shape[1:]), asarray=False)
    labels0 = sparse_engine.initial_labels(counts)
    k = parse_kernel("inverse_distance", window=1, ndim=10)
    final = run_dask(labels0, nclasses=2, kernel=k, iterations=2, support="occupied")
    labels = final.labels.compute()
    occupied = labels0.compute()
    np.testing.assert_array_equal(labels.coords, occupied.coords)  # the same cells, labeled
    # Against a brute-force vote over every pair of occupied cells (periodic).
    pts, cls = occupied.coords.T, occupied.data
    diff = np.abs(pts[:, None, :] - pts[None, :, :])
    diff = np.minimum(diff, 16 - diff)
    near = diff.max(axis=2) <= 1
    weight = np.where(near, k.weights[tuple(np.minimum(diff, 1).transpose(2, 0, 1) + 1)], 0.0)
    cur = cls.copy()
    for _ in range(2):
        votes = np.stack([(weight * (cur[None, :] == c)).sum(axis=1) for c in range(2)], axis=1)
        cur = votes.argmax(axis=1)
    np.testing.assert_array_equal(labels.data, cur)


def test_auto_support_and_the_planner_refusal():
    k = parse_kernel("inverse_distance", window=1, ndim=8)
    kw = {"ncells": 16**8, "nclasses": 3, "kernel": k, "steps": 3}
    assert (
        sparse_engine.resolve_support(
            "auto", occupied=10**6, memory=2**40, **{**kw, "ncells": 10**6}
        )
        == "reachable"
    )
    assert sparse_engine.resolve_support("auto", occupied=10**6, memory=2**30, **kw) == "occupied"
    with pytest.raises(GridTooLargeError, match=r"support='occupied'.*more than the workers'"):
        sparse_engine.resolve_support("occupied", occupied=10**9, memory=2**30, **kw)
    with pytest.raises(GridTooLargeError, match="support='reachable'"):
        sparse_engine.resolve_support("reachable", occupied=10**6, memory=2**30, **kw)


def test_refuses_a_window_too_wide_for_the_dimension():
    k = parse_kernel("box", window=4, ndim=8)  # 9**8 = 4.3e7 offsets
    empty = sparse.COO(np.zeros((8, 0), np.int64), np.zeros(0, np.int32), (9,) * 8, fill_value=-1)
    labels = da.from_array(empty, asarray=False)
    with pytest.raises(ParameterError, match="offsets in 8-D"):
        run_dask(labels, nclasses=2, kernel=k, iterations=1)


def test_dense_votes_where_the_points_fill_the_block():
    k = parse_kernel("box", window=1, ndim=6)
    shape = (8, 8, 8, 24, 24, 24)
    # 38% of the cells hold points: the pairs cost more than the window sums.
    n = int(0.38 * np.prod(shape))
    assert sparse_engine.dense_cheaper(n, n // 3, k, shape, 5)
    # 1e5 points in 10**12 cells: the pairs, never the block's volume.
    assert not sparse_engine.dense_cheaper(10**5, 10**5, k, (10**4, 10**4, 10**4, 10, 10, 10), 5)
    assert sparse_engine.dense_block_cells(5) < 10**12
