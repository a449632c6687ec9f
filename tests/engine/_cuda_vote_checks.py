"""Checks of :mod:`gridflow._kernels.cuda_vote` against the CPU kernels, bit for bit.

Plain functions of the array module ``xp`` the CUDA kernels get their
arrays from: CuPy on a device, or NumPy under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, read when numba is first imported:
``tests/engine/test_cuda_vote.py`` runs each in a subprocess). Each
batches small cases (the simulator runs every thread in Python) and raises
AssertionError at the first difference.
"""

from __future__ import annotations

import itertools
from types import ModuleType

import numba
import numpy as np

from gridflow._kernels import cuda_vote as gpu
from gridflow._kernels import vote as cpu
from gridflow.kernels import parse_kernel

KERNELS = ["inverse_distance", "box", "gaussian"]

if numba.config.ENABLE_CUDASIM:
    # The simulator starts a Python thread per CUDA thread, block by block:
    # small blocks start fewer idle ones on these tiny grids, and spread
    # each launch over several blocks.
    gpu._THREADS = 32


def _wraps(ndim: int) -> list[tuple[bool, ...]]:
    """All-False, all-True and (from 2 dims) mixed per-dim wrap flags."""
    wraps = [(False,) * ndim, (True,) * ndim]
    if ndim > 1:
        wraps.append(tuple(d % 2 == 0 for d in range(ndim)))
    return wraps


def _labels(rng: np.random.Generator, shape: tuple[int, ...], nclasses: int) -> np.ndarray:
    """Labels of ``nclasses`` classes, with unlabeled (-1) and outside (-2) cells."""
    labels = rng.integers(0, nclasses, shape).astype(np.int32)
    labels[rng.random(shape) < 0.3] = -1
    labels[rng.random(shape) < 0.1] = -2
    return labels


def _dyadic(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Quarter-integer votes: many ties, and whole columns of zeros."""
    votes = rng.integers(0, 4, shape) * 0.25
    votes[:, rng.random(shape[1:]) < 0.25] = 0.0
    return votes


def _host(a: object) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _same(got: object, want: np.ndarray, xp: ModuleType, what: str) -> None:
    """``got`` is an ``xp`` array with ``want``'s dtype, shape and bits."""
    assert type(got) is type(xp.empty(0)), f"{what}: got a {type(got)}"
    np.testing.assert_array_equal(_host(got), want, err_msg=what, strict=True)


def check_onehot(xp: ModuleType = np) -> None:
    rng = np.random.default_rng(1)
    cases = [((11,), 2, 2), ((9, 7), 3, 3), ((9, 7), 3, 2), ((5, 6, 4), 4, 4), ((3, 4, 3, 5), 3, 2)]
    for shape, nclasses, nplanes in cases:
        labels = _labels(rng, shape, nclasses)
        want = cpu.onehot(labels, nplanes)
        assert want.any()
        _same(gpu.onehot(xp.asarray(labels), nplanes), want, xp, f"{shape} {nplanes} planes")
    labels = _labels(rng, (9, 7), 3).astype(np.int16)
    _same(gpu.onehot(xp.asarray(labels), 3), cpu.onehot(labels, 3), xp, "int16 labels")
    _same(gpu.onehot(xp.asarray(labels), 0), cpu.onehot(labels, 0), xp, "no planes")


def check_decide(xp: ModuleType = np) -> None:
    rng = np.random.default_rng(2)
    cases = [
        _dyadic(rng, s) for s in [(2, 11), (3, 9, 7), (4, 5, 6, 4), (3, 3, 4, 3, 5), (1, 9, 7)]
    ]
    # Votes whose total rounds (the order of its sum shows) and float32 votes.
    cases.append(rng.random((3, 9, 7)) * rng.integers(0, 2, (3, 9, 7)))
    cases.append((rng.random((4, 5, 6, 4)) * rng.integers(0, 2, (4, 5, 6, 4))).astype(np.float32))
    for votes in cases:
        labels, total = cpu.decide(votes)
        assert (labels == -1).any() and (labels >= 0).any()
        got_labels, got_total = gpu.decide(xp.asarray(votes))
        what = f"{votes.dtype} {votes.shape}"
        _same(got_labels, labels, xp, f"labels of {what}")
        _same(got_total, total, xp, f"total of {what}")


def check_complete_last_plane(xp: ModuleType = np) -> None:
    from gridflow.engine.vote import vote

    rng = np.random.default_rng(3)
    cases = [((11,), 2, 2), ((9, 7), 2, 3), ((5, 6, 4), 1, 4), ((3, 4, 3, 5), 1, 2)]
    for shape, w, nclasses in cases:
        kernel = parse_kernel("inverse_distance", window=w, ndim=len(shape))
        labels = rng.integers(0, nclasses, shape).astype(np.int32)
        votes = vote(labels, nclasses, kernel, "direct", None, True, True)
        votes[-1] = rng.random(shape)  # to be overwritten
        want = votes.copy()
        cpu.complete_last_plane(want, kernel.weights.sum())
        assert not np.array_equal(want, votes)
        got = xp.asarray(votes)
        assert gpu.complete_last_plane(got, kernel.weights.sum()) is None
        _same(got, want, xp, f"{shape} {nclasses} classes")
    # Votes that are not C-contiguous are filled in place too.
    fortran = xp.asfortranarray(xp.asarray(votes))
    gpu.complete_last_plane(fortran, kernel.weights.sum())
    _same(fortran, want, xp, "Fortran order")


def check_summarise(xp: ModuleType = np) -> None:
    rng = np.random.default_rng(4)
    rounding = rng.random((3, 9, 7)) * rng.integers(0, 2, (3, 9, 7))  # rounding quotients
    cases = [
        (_dyadic(rng, (2, 11)), True),
        (_dyadic(rng, (4, 5, 6, 4)), False),
        (_dyadic(rng, (3, 3, 4, 3, 5)), True),
        (rounding, False),
        (rounding, True),
        (rng.integers(0, 3, (2, 6, 5)), True),  # integer votes, made float64
    ]
    for votes, probabilities in cases:
        want = cpu.summarise(votes, probabilities)
        assert (want[1] == 0).any() and (want[0] > 0).any()
        got = gpu.summarise(xp.asarray(votes), probabilities)
        _same(got, want, xp, f"{votes.dtype} {votes.shape} probabilities={probabilities}")


def check_box_sums(xp: ModuleType = np) -> None:
    # The reference is the CPU kernel on float64 planes. On integer planes
    # it sums in float32 and on float32 planes it reads them as they are:
    # three more parallel CPU kernels to compile (seconds each, in every
    # process: numba's cache misses them) for the same bits, since integer
    # sums are exact and float32 values are exact in float64.
    rng = np.random.default_rng(5)
    counts = [
        rng.integers(0, 5, s).astype(np.uint32) for s in [(2, 11), (2, 5, 6, 4), (1, 3, 4, 3, 5)]
    ]
    floats = [rng.random(s) for s in [(2, 9, 7), (2, 5, 6, 4), (1, 3, 4, 3, 5)]]
    cases = [
        (counts[0], (3,), (True,)),
        (counts[1], (1, 2, 1), (False, True, False)),
        (counts[2], (1, 1, 1, 2), (True, False, True, False)),
        (floats[0], (1, 2), (False, True)),  # rounding sums: the CPU's order
        (floats[0].astype(np.float32), (2, 2), (True, True)),
        (floats[1], (2, 0, 1), (True, True, False)),
        (floats[2], (1, 0, 1, 1), (False,) * 4),
        (counts[1], (0, 0, 0), (False,) * 3),
    ]
    for planes, radius, wrap in cases:
        want = _cpu_box_sums(planes, radius, wrap)
        what = f"{planes.dtype} {planes.shape} radius={radius} wrap={wrap}"
        _same(gpu.box_sums(xp.asarray(planes), radius, wrap), want, xp, what)
    # Into `out`, and a new array for an `out` that cannot take float64 sums.
    planes, radius, wrap = cases[1]
    want = _cpu_box_sums(planes, radius, wrap)
    out = xp.empty(planes.shape)
    assert gpu.box_sums(xp.asarray(planes), radius, wrap, out) is out
    _same(out, want, xp, "into out")
    other = xp.empty(planes.shape, np.float32)
    _same(gpu.box_sums(xp.asarray(planes), radius, wrap, other), want, xp, "out of float32")


def _cpu_box_sums(
    planes: np.ndarray, radius: tuple[int, ...], wrap: tuple[bool, ...]
) -> np.ndarray:
    return cpu.box_sums(planes.astype(np.float64), radius, wrap)


def check_scatter_changes(xp: ModuleType = np) -> None:
    from gridflow.engine.vote import vote

    rng = np.random.default_rng(6)
    cases = [((11,), 2, (True,)), ((11,), 1, (False,))]
    cases += [((9, 7), 2, wrap) for wrap in _wraps(2)]
    cases += [((5, 6, 4), 1, (False, True, True)), ((3, 4, 3, 5), 1, (True, False, True, False))]
    for (shape, w, wrap), name in zip(cases, itertools.cycle(KERNELS), strict=False):
        kernel = parse_kernel(name, window=w, ndim=len(shape))
        before = _labels(rng, shape, 4)
        after = before.copy()
        moved = rng.choice(after.size, min(8, after.size // 4), replace=False)
        after.flat[moved] = rng.integers(-2, 4, moved.size)
        cells = np.flatnonzero(after != before)
        votes = vote(before, 4, kernel, "direct", None, wrap, True)
        want = votes.copy()
        cpu.scatter_changes(
            want, kernel.weights, cells, before.flat[cells], after.flat[cells], wrap
        )
        # Exact moves: the votes of the new labels, from nothing beyond the edges.
        np.testing.assert_array_equal(want, vote(after, 4, kernel, "direct", None, wrap, True))
        got = xp.asarray(votes)
        changes = (xp.asarray(cells), xp.asarray(before.flat[cells]), xp.asarray(after.flat[cells]))
        assert gpu.scatter_changes(got, kernel.weights, *changes, wrap) is None
        _same(got, want, xp, f"{shape} {kernel.name} wrap={wrap}")
    # One flag for every dim; no changes at all.
    got = xp.asarray(votes)
    none = xp.zeros(0, np.int64)
    gpu.scatter_changes(got, kernel.weights, none, none, none, True)
    _same(got, votes, xp, "no changes")


def check_window_votes(xp: ModuleType = np) -> None:
    from gridflow.engine.vote import vote

    rng = np.random.default_rng(7)
    # Every kernel with every wrap set on the 2-D grid, window 2; the other
    # grids and window 1 with the kernels in turn.
    cases = [((9, 7), 2, wrap, name) for wrap in _wraps(2) for name in KERNELS]
    others = [((11,), 2, (False,)), ((11,), 1, (True,))]
    others += [((9, 7), 1, wrap) for wrap in _wraps(2)]
    others += [((5, 6, 4), 1, wrap) for wrap in _wraps(3)]
    others += [((3, 4, 3, 5), 1, (True, False, False, True))]
    cases += [(*c, name) for c, name in zip(others, itertools.cycle(KERNELS), strict=False)]
    for (shape, w, wrap, name), n in zip(cases, itertools.cycle((2, 3, 4)), strict=False):
        kernel = parse_kernel(name, window=w, ndim=len(shape))
        labels = _labels(rng, shape, n)
        want = vote(labels, n, kernel, "direct", None, wrap, True)
        assert want.any()
        what = f"{shape} {kernel.name} w={w} {n} classes wrap={wrap}"
        _same(gpu.window_votes(xp.asarray(labels), kernel.weights, n, wrap, True), want, xp, what)
    # Into `out`; into a view of planes (the engine's votes[:nplanes]), with
    # one wrap flag and without `exact` (documented: the same votes).
    kernel = parse_kernel("inverse_distance", window=2, ndim=2)
    labels = _labels(rng, (9, 7), 3)
    want = vote(labels, 3, kernel, "direct", None, False, True)
    out = xp.empty((3, 9, 7))
    assert gpu.window_votes(xp.asarray(labels), kernel.weights, 3, (False, False), True, out) is out
    _same(out, want, xp, "into out")
    stack = xp.zeros((4, 9, 7))
    gpu.window_votes(xp.asarray(labels), kernel.weights, 3, False, False, stack[1:])
    _same(stack[1:], want, xp, "into a view, not exact")
    _same(stack[0], np.zeros((9, 7)), xp, "the plane before the view")


def check_window_votes_planes(xp: ModuleType = np) -> None:
    from gridflow.engine.correlate import correlate

    rng = np.random.default_rng(8)
    cases = [((11,), 2, (True,))]
    cases += [((9, 7), w, wrap) for w in (1, 2) for wrap in _wraps(2)]
    cases += [((5, 6, 4), 1, (True, False, True))]
    for (shape, w, wrap), name in zip(cases, itertools.cycle(KERNELS), strict=False):
        kernel = parse_kernel(name, window=w, ndim=len(shape))
        counts = rng.integers(0, 4, (2, *shape)).astype(np.uint32)
        quarters = rng.integers(0, 9, (2, *shape)) * 0.25
        for planes in (counts, quarters)[: 1 + (w == 2)]:
            want = correlate(planes, kernel, "direct", wrap, True)
            assert want.any()
            what = f"{planes.dtype} {shape} {kernel.name} wrap={wrap}"
            got = gpu.window_votes_planes(xp.asarray(planes), kernel.weights, wrap, True)
            _same(got, want, xp, what)
    kernel = parse_kernel("gaussian", window=1, ndim=4)
    counts = rng.integers(0, 3, (1, 3, 4, 3, 5)).astype(np.int64)
    want = correlate(counts, kernel, "direct", False, True)
    out = xp.empty(counts.shape)
    assert gpu.window_votes_planes(xp.asarray(counts), kernel.weights, False, True, out) is out
    _same(out, want, xp, "4-D int64 counts into out")
