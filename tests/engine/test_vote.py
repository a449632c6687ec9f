"""The filter engine against the reference output and the in-memory NumPy run."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from gridflow.engine.correlate import choose_method, correlate, fft_exact
from gridflow.engine.vote import OUTSIDE, run_dask, run_numpy, vote
from gridflow.errors import ParameterError
from gridflow.kernels import parse_kernel
from tests.conftest import reference


@pytest.mark.parametrize("name", ["granville_gd_200_w5.npz", "granville_gd_400_w20.npz"])
def test_reproduces_the_reference_implementation(name):
    z = reference(name)
    w, nloop = int(z["params"][4]), int(z["params"][5])
    labels0 = z["input_bitmap"].astype(np.int32)
    labels0[labels0 == 255] = -1
    kernel = parse_kernel("inverse_distance", window=w, ndim=2)
    labels, density, votes = run_numpy(labels0, nclasses=5, kernel=kernel, iterations=nloop)
    top2 = np.sort(votes, axis=0)[-2:]
    unique = top2[1] > top2[0]
    ref = z["labels"].astype(np.int32)
    assert unique.mean() > 0.99
    np.testing.assert_array_equal(labels[unique], ref[unique])
    np.testing.assert_allclose(density, z["density"], rtol=1e-6)


def _random_labels(rng, shape, nclasses, fill=0.15):
    labels = rng.integers(0, nclasses, shape).astype(np.int32)
    labels[rng.random(shape) > fill] = -1
    return labels


def _plain_votes(labels, nclasses, weights, boundary):
    """Votes with scipy on the float weights, one class plane at a time."""
    mode = "wrap" if boundary == "periodic" else "constant"
    return np.stack(
        [ndi.correlate((labels == k).astype(float), weights, mode=mode) for k in range(nclasses)]
    )


@pytest.mark.parametrize("kernel", ["inverse_distance", "box", "gaussian"])
@pytest.mark.parametrize("boundary", ["periodic", "open"])
def test_one_step_equals_scipy(kernel, boundary, rng):
    labels = _random_labels(rng, (23, 31), 4)
    k = parse_kernel(kernel, window=3, ndim=2)
    got, density, votes = run_numpy(labels, nclasses=4, kernel=k, iterations=1, boundary=boundary)
    plain = _plain_votes(labels, 4, k.weights, boundary)
    np.testing.assert_allclose(votes, plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(density, plain.sum(0), rtol=1e-12)
    expect = np.where(plain.sum(0) > 0, plain.argmax(0), -1)
    top2 = np.sort(plain, axis=0)[-2:]
    unique = top2[1] > top2[0] + 1e-9
    np.testing.assert_array_equal(got[unique], expect[unique])


@pytest.mark.parametrize("kernel", ["inverse_distance", "box", "gaussian"])
def test_every_method_gives_the_same_bits(kernel, rng):
    labels = _random_labels(rng, (40, 36), 3, fill=0.4)
    k = parse_kernel(kernel, window=4, ndim=2)
    planes = (labels[None] == np.arange(3)[:, None, None]).astype(float)
    planes = np.pad(planes, [(0, 0), (4, 4), (4, 4)])
    methods = ["direct", "fft"] + (["separable"] if k.separable else [])
    methods += ["box"] if k.is_box else []
    results = [correlate(planes, k, m) for m in methods]
    for r in results[1:]:
        assert np.array_equal(r[:, 4:-4, 4:-4], results[0][:, 4:-4, 4:-4])


@pytest.mark.parametrize("kernel", ["inverse_distance", "box", "gaussian"])
@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((30, 40), (30, 40)),
        ((30, 40), (7, 11)),
        # Chunks of 2x3 cells, the last column of them 1 cell wide as on a 30x40
        # grid: on 12x16 cells, a fifth of the blocks.
        ((12, 16), (2, 3)),
        ((30, 40), (13, 40)),
    ],
)
def test_distributed_equals_in_memory_bit_for_bit(kernel, boundary, shape, chunks, rng):
    labels = _random_labels(rng, shape, 4, fill=0.05)
    k = parse_kernel(kernel, window=2, ndim=2)
    ref = run_numpy(labels, nclasses=4, kernel=k, iterations=5, boundary=boundary)
    got = run_dask(
        da.from_array(labels, chunks=chunks), nclasses=4, kernel=k, iterations=5, boundary=boundary
    )
    got = dask.compute(got.labels, got.density, got.votes)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kernel", ["inverse_distance", "box", "gaussian"])
@pytest.mark.parametrize("exact", [False, True])
def test_every_method_wraps_per_dim(kernel, exact, rng):
    # Dim 0 wraps, dim 1 has zeros beyond the block: the reference pads dim 0
    # with its own ends and dim 1 with zeros, and correlates with zeros beyond.
    labels = _random_labels(rng, (17, 21), 3, fill=0.5)
    k = parse_kernel(kernel, window=3, ndim=2)
    planes = (labels[None] == np.arange(3)[:, None, None]).astype(float)
    padded = np.pad(planes, [(0, 0), (3, 3), (0, 0)], mode="wrap")
    want = np.stack([ndi.correlate(p, k.weights, mode="constant") for p in padded])[:, 3:-3]
    methods = ["direct"] + (["fft"] if fft_exact(k, planes.shape[1:]) else [])
    methods += (["separable"] if k.separable else []) + (["box"] if k.is_box else [])
    direct = correlate(planes, k, "direct", wrap=(True, False), exact=exact)
    np.testing.assert_allclose(direct, want, rtol=0, atol=1e-9)
    # Without `exact` the FFT may wrap within the radius of the open edges.
    inside = slice(None) if exact else slice(3, -3)
    for m in methods:
        got = correlate(planes, k, m, wrap=(True, False), exact=exact)
        assert np.array_equal(got[:, :, inside], direct[:, :, inside]), m


def test_box_sums_of_counts_equal_the_float64_sums(rng):
    # Integer counts take a float32 path (exact below 2**24): the same bits.
    counts = rng.poisson(3.0, size=(3, 6, 5, 7, 4)).astype(np.uint32)
    k = parse_kernel("box", window=1, ndim=4)
    wrap = (True, False, True, False)
    got = correlate(counts, k, "box", wrap=wrap, exact=True)
    want = correlate(counts.astype(np.float64), k, "direct", wrap=wrap, exact=True)
    assert got.dtype == np.float64 and np.array_equal(got, want)


@pytest.mark.parametrize("kernel", ["inverse_distance", "box"])
@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.parametrize("chunks", [(3, 4, 5, 6, 5), (6, 2, 5, 6, 5), (6, 8, 5, 6, 5)])
def test_dims_held_whole_carry_no_halo_and_give_the_same_bits(kernel, boundary, chunks, rng):
    # A 5-D grid split along at most 3 dims (the others whole: they wrap, or
    # see nothing beyond their edge, inside the block) equals the in-memory run.
    labels = _random_labels(rng, (6, 8, 5, 6, 5), 3, fill=0.05)
    k = parse_kernel(kernel, window=1, ndim=5)
    ref = run_numpy(labels, nclasses=3, kernel=k, iterations=3, boundary=boundary)
    got = run_dask(
        da.from_array(labels, chunks=chunks), nclasses=3, kernel=k, iterations=3, boundary=boundary
    )
    got = dask.compute(got.labels, got.density, got.votes)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)


def test_fused_equals_unfused_in_3d(rng):
    labels = _random_labels(rng, (12, 14, 10), 3, fill=0.03)
    k = parse_kernel("inverse_distance", window=1, ndim=3)
    arr = da.from_array(labels, chunks=(6, 7, 5))
    fused = run_dask(arr, nclasses=3, kernel=k, iterations=6, boundary="open")
    unfused = run_dask(arr, nclasses=3, kernel=k, iterations=6, boundary="open", fuse=1)
    fused = dask.compute(fused.labels, fused.density, fused.votes)
    unfused = dask.compute(unfused.labels, unfused.density, unfused.votes)
    for a, b in zip(fused, unfused, strict=True):
        assert np.array_equal(a, b)


def test_open_boundary_cells_outside_never_vote():
    labels = np.full((3, 9), -1, np.int32)
    labels[1, 0] = 1
    k = parse_kernel("box", window=1, ndim=2)
    got, density, _ = run_numpy(labels, nclasses=2, kernel=k, iterations=1, boundary="open")
    # The labeled cell on the left edge reaches its neighbours inside the grid
    # only; on a periodic grid it also wraps to the last column.
    expect = np.full((3, 9), -1)
    expect[:, :2] = 1
    assert got.tolist() == expect.tolist()
    assert density.sum() == 6
    got, _, _ = run_numpy(labels, nclasses=2, kernel=k, iterations=1, boundary="periodic")
    expect[:, 8] = 1
    assert got.tolist() == expect.tolist()
    got, _, _ = run_numpy(labels, nclasses=2, kernel=k, iterations=8, boundary="open")
    assert OUTSIDE not in got and (got == 1).all()


def test_window_larger_than_the_grid():
    k = parse_kernel("box", window=5, ndim=2)
    with pytest.raises(ParameterError, match="larger than the grid"):
        run_numpy(np.zeros((8, 20), np.int32), nclasses=1, kernel=k, iterations=1)


def test_method_choice():
    assert choose_method(parse_kernel("box", window=30, ndim=2), (512, 512)) == "box"
    small = parse_kernel("inverse_distance", window=1, ndim=2)
    assert choose_method(small, (512, 512)) == "lines"
    assert choose_method(small, (512, 512), lines=False) == "direct"  # a backend without them
    assert choose_method(parse_kernel("inverse_distance", window=2, ndim=3), (165,) * 3) == "lines"
    assert choose_method(parse_kernel("inverse_distance", window=20, ndim=2), (512, 512)) == "fft"
    assert choose_method(parse_kernel("gaussian", window=10, ndim=2), (512, 512)) == "separable"


@pytest.mark.parametrize("fuse", [1, 2, None])
def test_auto_iterations_stop_where_stepping_one_by_one_stops(fuse, rng):
    labels = _random_labels(rng, (24, 30), 3, fill=0.01)
    k = parse_kernel("inverse_distance", window=2, ndim=2)
    history = []
    res = run_dask(
        da.from_array(labels, chunks=(12, 10)),
        nclasses=3,
        kernel=k,
        iterations=None,
        fuse=fuse,
        history=history,
    )
    n = res.step
    # Stepping one at a time: the first step that labels nothing new and
    # changes nothing.
    prev = labels
    for t in range(1, 100):
        cur = run_numpy(labels, nclasses=3, kernel=k, iterations=t)[0]
        if (cur >= 0).sum() == (prev >= 0).sum() and (cur == prev).all():
            break
        prev = cur
    assert n == t
    ref = run_numpy(labels, nclasses=3, kernel=k, iterations=n)
    got = dask.compute(res.labels, res.density, res.votes)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)
    assert [h["step"] for h in history] == list(range(1, n + 1))
    assert history[-1]["changed"] == 0 and history[-1]["labeled"] == 1.0


@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.parametrize("chunks", [(30, 40), (7, 11)])
def test_seed_counts_first_step(boundary, chunks, rng):
    counts = rng.poisson(0.3, (3, 30, 40)).astype(np.uint32)
    labels = np.where(counts.sum(0) > 0, counts.argmax(0), -1).astype(np.int32)
    k = parse_kernel("inverse_distance", window=2, ndim=2)
    ref = run_numpy(
        labels,
        nclasses=3,
        kernel=k,
        iterations=3,
        boundary=boundary,
        seed_counts=counts.astype(float),
    )
    plain = run_numpy(labels, nclasses=3, kernel=k, iterations=1, boundary=boundary)
    # Step 1 from the counts: its votes weigh each point, not each labeled cell.
    one = run_numpy(
        labels,
        nclasses=3,
        kernel=k,
        iterations=1,
        boundary=boundary,
        seed_counts=counts.astype(float),
    )
    assert one[1].sum() > plain[1].sum()
    got = run_dask(
        da.from_array(labels, chunks=chunks),
        nclasses=3,
        kernel=k,
        iterations=3,
        boundary=boundary,
        seed_counts=da.from_array(counts.astype(float), chunks=(3, *chunks)),
    )
    for a, b in zip(ref, dask.compute(got.labels, got.density, got.votes), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", [(50,), (24, 30), (9, 10, 11)])
@pytest.mark.parametrize("wrap", [True, False])
@pytest.mark.parametrize("kernel", ["inverse_distance", "gaussian"])
def test_sparse_update_gives_the_bits_of_a_new_correlation(shape, wrap, kernel, rng):
    from gridflow._kernels import vote as _votekernel
    from gridflow.engine.vote import vote

    k = parse_kernel(kernel, window=2, ndim=len(shape))
    before = _random_labels(rng, shape, 4, fill=0.6)
    after = before.copy()
    moved = rng.choice(after.size, after.size // 7, replace=False)
    after.flat[moved] = rng.integers(-1, 4, moved.size)
    votes = vote(before, 4, k, method="direct", wrap=wrap)
    cells = np.flatnonzero(after != before)
    _votekernel.scatter_changes(
        votes, k.weights, cells, before.flat[cells], after.flat[cells], wrap
    )
    expected = vote(after, 4, k, method="direct", wrap=wrap)
    # Without wrap, only cells whose window lies inside the block are defined.
    inside = (slice(None), *(slice(0, None) if wrap else slice(2, -2) for _ in shape))
    assert np.array_equal(votes[inside], expected[inside])


@pytest.mark.parametrize("boundary", ["periodic", "open"])
@pytest.mark.parametrize("chunks", [(48, 64), (16, 20)])
def test_fused_sparse_updates_equal_correlating_every_step(boundary, chunks, rng):
    # method="auto" updates the votes in place after the first step of a
    # round; method="fft" correlates every step: the bits must not differ.
    labels = _random_labels(rng, (48, 64), 5, fill=0.1)
    k = parse_kernel("inverse_distance", window=3, ndim=2)
    arr = da.from_array(labels, chunks=chunks)
    runs = [
        run_dask(arr, nclasses=5, kernel=k, iterations=5, boundary=boundary, method=m, clamp=c)
        for m in ("auto", "fft")
        for c in (False, True)
    ]
    auto, auto_clamped, fft, fft_clamped = (
        dask.compute(r.labels, r.density, r.votes) for r in runs
    )
    for a, b in zip(auto + auto_clamped, fft + fft_clamped, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["inverse_distance", "gaussian", "box"])
@pytest.mark.parametrize(("ndim", "window", "side"), [(1, 3, 23), (2, 2, 17), (3, 2, 9), (4, 1, 6)])
def test_line_sums_equal_the_direct_sums(rng, name, ndim, window, side):
    # The compiled line sums (grouped leading offsets, one pass per line) give the
    # direct sums' bits: from labels (any class, unlabeled and OUTSIDE cells), and
    # from integer count planes (seed="counts"), wrapped or not along each dim.
    from gridflow._kernels.vote import line_sums, window_votes

    k = parse_kernel(name, window=window, ndim=ndim)
    labels = rng.integers(OUTSIDE, 4, (side + 1,) + (side,) * (ndim - 1)).astype(np.int32)
    # (Small counts: every sum a multiple of the gaussian's quantum, 2**-48, below 2**53.)
    counts = rng.integers(0, 4, (3, *labels.shape)).astype(np.float64)
    for wrap in [(False,) * ndim, (True,) * ndim, (True,) + (False,) * (ndim - 1)]:
        want = vote(labels, 4, k, "direct", None, wrap, True)
        np.testing.assert_array_equal(window_votes(labels, k.weights, 4, wrap, True), want)
        np.testing.assert_array_equal(vote(labels, 4, k, "lines", None, wrap, True), want)
        np.testing.assert_array_equal(
            line_sums(counts, k.weights, wrap), correlate(counts, k, "direct", wrap, True)
        )
