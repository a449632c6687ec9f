"""Checks of :mod:`gridflow._kernels.cuda_cells` against the CPU kernels.

Run by ``tests/engine/test_cuda_cells.py``: in a subprocess under numba's
CUDA simulator (NumPy arrays) when there is no CUDA device, in the test
process on CuPy arrays when there is one. Each check raises on the first
difference and prints one ``ok`` line naming the mode and the cases run.
The last two run the stages' device paths (the tree strategy of binning,
prediction) against their CPU paths.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

from gridflow import binning
from gridflow._kernels import cuda_cells
from gridflow._kernels.binning import BAD_LABEL, BINNED, NONFINITE, OUT_OF_RANGE
from gridflow._kernels.binning import kernel as cpu_kernel
from gridflow.backend import ops
from gridflow.binning import _Classes, _kernel_args
from gridflow.grid import GridSpec
from gridflow.points import Block, PointSource
from gridflow.pyramid import level_bins, level_name
from gridflow.store import counts_dataset
from tests.conftest import reference_counts

predict_mod = sys.modules["gridflow.predict"]  # gridflow.predict is also the function

# (bounds, bins, periodic): 1, 2, 3, 5 and 6 dims, open and periodic, bounds
# that are not dyadic (the cell arithmetic rounds).
SPECS = [
    ([(0.0, 1.0)], [7], [False]),
    ([(-2.5, 3.5)], [5], [True]),
    ([(0.1, 0.7)], [10], [False]),
    ([(0.0, 1.0), (-3.0, 5.0)], [4, 6], [False, True]),
    ([(0.1, 0.7), (0.3, 1.9)], [3, 7], [False, False]),
    ([(-1.0, 1.0), (0.0, 10.0), (100.0, 101.3)], [3, 5, 2], [True, False, False]),
    (
        [(0.0, 1.0), (-1.0, 2.0), (0.2, 0.9), (5.0, 6.0), (-7.0, -3.0)],
        [2, 3, 2, 3, 2],
        [
            False,
            True,
            False,
            True,
            False,
        ],
    ),
    ([(0.0, 1.0)] * 3 + [(-0.3, 0.4)] * 3, [2, 3, 2, 2, 3, 2], [True, False] * 3),
]

CODE_DTYPES = [np.int64, np.int8, np.uint64, np.int32]


def _xp() -> Any:
    """NumPy under the simulator, CuPy on a device."""
    return cuda_cells.array_module()


def _mode() -> str:
    return "simulator" if _xp() is np else "device"


def _dev(a: np.ndarray) -> Any:
    """A copy of ``a`` on the device (a copy under the simulator too)."""
    return _xp().array(a)


def _host(a: Any) -> np.ndarray:
    return a.get() if _xp() is not np else np.asarray(a)


def _spec(bounds: list, bins: list, periodic: list) -> GridSpec:
    return GridSpec(
        dims=tuple(f"x{j}" for j in range(len(bins))),
        bounds=bounds,
        bins=bins,
        periodic=periodic,
    )


def _points(spec: GridSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random points around the grid, a third of each column replaced by the
    hard values: NaN, +-inf, the bounds and the bin edges and their float64
    neighbours, and for periodic dims values whole periods away and just
    below ``lo`` (which wraps to ``hi``)."""
    pts = np.empty((n, spec.ndim))
    for j, (lo, hi) in enumerate(spec.bounds):
        w = hi - lo
        span = 3.0 if spec.periodic[j] else 0.3
        pts[:, j] = rng.uniform(lo - span * w, hi + span * w, n)
        edges = spec.edges(j)
        special = np.concatenate(
            [
                [np.nan, np.inf, -np.inf, lo, hi, -1e-300 + lo, lo - w, hi + 2 * w, -3 * w + lo],
                edges,
                np.nextafter(edges, -np.inf),
                np.nextafter(edges, np.inf),
            ]
        )
        pick = rng.random(n) < 0.33
        pts[pick, j] = rng.choice(special, pick.sum())
    return pts


def _codes(rng: np.random.Generator, n: int, nclasses: int, dtype: Any) -> np.ndarray:
    low = 0 if np.dtype(dtype).kind == "u" else -2
    return rng.integers(low, nclasses + 2, n).astype(dtype)


def _count_both(cols, codes, nclasses, args, grid, stats):
    """The CPU kernel's counts and the CUDA kernel's, from copies of ``grid`` and ``stats``."""
    cpu_grid, cpu_stats = grid.copy(), stats.copy()
    cpu_kernel(len(cols), "dense")(cols, codes, nclasses, *args, cpu_grid, cpu_stats)
    dev_grid, dev_stats = _dev(grid), _dev(stats)
    cuda_cells.count(
        tuple(_dev(c) for c in cols), _dev(codes), nclasses, *args, dev_grid, dev_stats
    )
    return cpu_grid, cpu_stats, _host(dev_grid), _host(dev_stats)


def _check_stats_consistent(grid, stats, codes, nclasses, rows):
    per_class = grid.reshape(nclasses, -1).sum(axis=1, dtype=np.int64)
    np.testing.assert_array_equal(stats[4:], per_class)
    assert stats[BINNED] == per_class.sum()
    assert stats[:4].sum() == rows
    bad = int(((codes < 0) | (codes >= nclasses)).sum())
    assert stats[BAD_LABEL] == bad, (stats, bad)


def check_count() -> None:
    """Counts and stats equal the CPU kernel's and np.histogramdd's, every spec
    and code dtype, batches counted into one grid."""
    rng = np.random.default_rng(7)
    cases = 0
    for s, (bounds, bins, periodic) in enumerate(SPECS):
        spec = _spec(bounds, bins, periodic)
        args = _kernel_args(spec)
        nclasses = 1 + s % 4
        grid = np.zeros(nclasses * spec.ncells, np.uint32)
        stats = np.zeros(4 + nclasses, np.int64)
        all_pts, all_codes = [], []
        # Two blocks of threads; every other spec then counts a second batch
        # into the same grid (one block). The simulator's cost is per thread.
        for block, n in enumerate((300, 41) if s % 2 == 0 else (230,)):
            pts = _points(spec, rng, n)
            dtype = np.float32 if s % 3 == 2 else np.float64
            cols = tuple(np.ascontiguousarray(pts[:, j], dtype=dtype) for j in range(spec.ndim))
            codes = _codes(rng, n, nclasses, CODE_DTYPES[(s + block) % len(CODE_DTYPES)])
            cpu_grid, cpu_stats, grid, stats = _count_both(cols, codes, nclasses, args, grid, stats)
            np.testing.assert_array_equal(grid, cpu_grid)
            np.testing.assert_array_equal(stats, cpu_stats)
            assert grid.dtype == np.uint32 and stats.dtype == np.int64
            all_pts.append(np.column_stack(cols).astype(np.float64))
            all_codes.append(codes.astype(np.int64))
            cases += 1
        pts, codes = np.concatenate(all_pts), np.concatenate(all_codes)
        _check_stats_consistent(grid, stats, codes, nclasses, len(codes))
        assert stats[NONFINITE] > 0 and stats[BINNED] > 0
        assert any(periodic) or stats[OUT_OF_RANGE] > 0
        # np.histogramdd on the exact edges (for specs with no periodic dim).
        with np.errstate(invalid="ignore"):  # its fmod of inf
            ref = reference_counts(pts, codes, spec, nclasses)
        np.testing.assert_array_equal(grid.reshape(ref.shape), ref.astype(np.uint32))
    print(f"ok check_count ({_mode()}): {cases} batches over {len(SPECS)} specs")


def check_count_edges() -> None:
    """uint64 grids past 2**32, more classes than the shared-memory slots,
    one block striding over all points, no points, and a periodic ``v - lo``
    that overflows (no cell, counted out of range)."""
    rng = np.random.default_rng(11)
    spec = _spec(*SPECS[3])
    args = _kernel_args(spec)
    pts = _points(spec, rng, 400)
    cols = tuple(np.ascontiguousarray(pts[:, j]) for j in range(spec.ndim))

    # uint64 counts: the atomics add to values above 2**32 without wrapping.
    nclasses = 3
    codes = _codes(rng, 400, nclasses, np.int64)
    grid = rng.integers(2**32 - 3, 2**33, nclasses * spec.ncells).astype(np.uint64)
    stats = np.arange(4 + nclasses, dtype=np.int64) * 1000
    cpu_grid, cpu_stats, out_grid, out_stats = _count_both(cols, codes, nclasses, args, grid, stats)
    np.testing.assert_array_equal(out_grid, cpu_grid)
    np.testing.assert_array_equal(out_stats, cpu_stats)
    assert out_grid.dtype == np.uint64 and (out_grid > grid).any()

    # Classes past CLASS_SLOTS add to the stats directly.
    nclasses = cuda_cells.CLASS_SLOTS + 6
    spec1 = _spec(*SPECS[0])
    pts1 = _points(spec1, rng, 600)
    codes1 = rng.integers(cuda_cells.CLASS_SLOTS - 4, nclasses + 2, 600).astype(np.int32)
    codes1[:50] = rng.integers(0, 4, 50)
    grid = np.zeros(nclasses * spec1.ncells, np.uint32)
    stats = np.zeros(4 + nclasses, np.int64)
    cpu_grid, cpu_stats, out_grid, out_stats = _count_both(
        (pts1[:, 0].copy(),), codes1, nclasses, _kernel_args(spec1), grid, stats
    )
    np.testing.assert_array_equal(out_grid, cpu_grid)
    np.testing.assert_array_equal(out_stats, cpu_stats)
    assert out_stats[4 + cuda_cells.CLASS_SLOTS :].sum() > 0
    _check_stats_consistent(out_grid, out_stats, codes1, nclasses, 600)

    # One block of threads striding over every point.
    saved = cuda_cells.MAX_BLOCKS
    cuda_cells.MAX_BLOCKS = 1
    try:
        nclasses = 2
        codes = _codes(rng, 400, nclasses, np.int8)
        grid = np.zeros(nclasses * spec.ncells, np.uint32)
        stats = np.zeros(4 + nclasses, np.int64)
        cpu_grid, cpu_stats, out_grid, out_stats = _count_both(
            cols, codes, nclasses, args, grid, stats
        )
        np.testing.assert_array_equal(out_grid, cpu_grid)
        np.testing.assert_array_equal(out_stats, cpu_stats)
        assert out_stats[:4].sum() == 400
        got = _host(cuda_cells.cells(tuple(_dev(c) for c in cols), *args))
        np.testing.assert_array_equal(got, spec.flat_index(pts))
    finally:
        cuda_cells.MAX_BLOCKS = saved

    # On a device, a launch follows CuPy's current stream, even a non-blocking one.
    xp = _xp()
    assert cuda_cells._stream(np.zeros(1)) == 0
    if xp is not np:
        nclasses = 3
        codes = _codes(rng, 400, nclasses, np.int64)
        cpu_grid = np.zeros(nclasses * spec.ncells, np.uint32)
        cpu_stats = np.zeros(4 + nclasses, np.int64)
        cpu_kernel(spec.ndim, "dense")(cols, codes, nclasses, *args, cpu_grid, cpu_stats)
        with xp.cuda.Stream(non_blocking=True) as stream:
            dev_grid = xp.zeros(nclasses * spec.ncells, np.uint32)
            dev_stats = xp.zeros(4 + nclasses, np.int64)
            dev_cols = tuple(xp.asarray(c) for c in cols)
            cuda_cells.count(dev_cols, xp.asarray(codes), nclasses, *args, dev_grid, dev_stats)
            got = cuda_cells.gather(dev_grid, cuda_cells.cells(dev_cols, *args), 0)
            stream.synchronize()
        np.testing.assert_array_equal(dev_grid.get(), cpu_grid)
        np.testing.assert_array_equal(dev_stats.get(), cpu_stats)
        flat = spec.flat_index(pts)
        np.testing.assert_array_equal(got.get(), np.where(flat < 0, 0, cpu_grid[flat]))

    # No points: nothing changes.
    grid = np.arange(2 * spec.ncells, dtype=np.uint32)
    stats = np.arange(6, dtype=np.int64)
    empty = (np.empty(0),) * spec.ndim
    dev_grid, dev_stats = _dev(grid), _dev(stats)
    cuda_cells.count(
        tuple(_dev(c) for c in empty), _dev(np.empty(0, np.int64)), 2, *args, dev_grid, dev_stats
    )
    np.testing.assert_array_equal(_host(dev_grid), grid)
    np.testing.assert_array_equal(_host(dev_stats), stats)
    assert _host(cuda_cells.cells(tuple(_dev(c) for c in empty), *args)).shape == (0,)

    # A periodic dim where v - lo overflows to inf: prediction gives it no
    # cell, and both kernels count it out of range.
    lo, hi = np.array([-1e308]), np.array([0.0])
    big = (lo, hi, hi - lo, np.array([4]), np.array([True]))
    v = np.array([1.7e308, 0.5e308, -5e307, np.nan, -1e308, 0.0, -1.5e308])
    codes = np.zeros(len(v), np.int64)
    grid = np.zeros(4, np.uint32)
    stats = np.zeros(5, np.int64)
    dev_grid, dev_stats = _dev(grid), _dev(stats)
    cuda_cells.count((_dev(v),), _dev(codes), 1, *big, dev_grid, dev_stats)
    cpu_grid, cpu_stats = grid.copy(), stats.copy()
    cpu_kernel(1, "dense")((v,), codes, 1, *big, cpu_grid, cpu_stats)
    np.testing.assert_array_equal(_host(dev_grid), cpu_grid)
    np.testing.assert_array_equal(_host(dev_stats), cpu_stats)
    assert cpu_stats[OUT_OF_RANGE] == 1
    from gridflow._kernels.cells import _compiled

    cpu_cells = np.empty(len(v), np.int64)
    _compiled()(v[:, None], lo, hi, np.array([4]), np.array([True]), cpu_cells)
    got = _host(cuda_cells.cells((_dev(v),), *big))
    np.testing.assert_array_equal(got, cpu_cells)
    assert got[0] == -1 and got[3] == -1
    print(f"ok check_count_edges ({_mode()})")


def check_cells_and_gather() -> None:
    """Cells equal the CPU prediction path's (the compiled kernel and the array
    code), on contiguous and strided columns; gather reads what NumPy indexing reads."""
    rng = np.random.default_rng(3)
    xp = _xp()
    assert cuda_cells._xp(xp.zeros(1)) is xp
    cases = 0
    for s, (bounds, bins, periodic) in enumerate(SPECS):
        spec = _spec(bounds, bins, periodic)
        args = _kernel_args(spec)
        pts = _points(spec, rng, 300 if s % 4 == 0 else 250)
        dev_pts = _dev(pts)
        strided = tuple(dev_pts[:, j] for j in range(spec.ndim))
        got = cuda_cells.cells(strided, *args)
        assert type(got) is type(dev_pts) and got.dtype == np.int64
        got = _host(got)
        np.testing.assert_array_equal(got, spec.flat_index(pts))  # compiled CPU kernel
        cells = spec.cell_index(pts)  # array code of the prediction path
        flat = np.ravel_multi_index(tuple(np.maximum(cells, 0).T), spec.shape)
        np.testing.assert_array_equal(got, np.where(cells[:, 0] < 0, -1, flat))
        assert (got == -1).any() and (got >= 0).any()
        if s % 3 == 2:
            cols32 = tuple(_dev(pts[:, j].astype(np.float32)) for j in range(spec.ndim))
            got32 = _host(cuda_cells.cells(cols32, *args))
            np.testing.assert_array_equal(got32, spec.flat_index(pts.astype(np.float32)))

        # One kind of values per spec, in turn: labels (-1 fill), float32
        # probabilities (NaN fill), uint32 counts, bools.
        values, fill = [
            (rng.integers(-1, 4, spec.ncells).astype(np.int8), -1),
            (rng.random(spec.ncells).astype(np.float32), np.nan),
            (rng.integers(0, 2**32, spec.ncells, dtype=np.uint64).astype(np.uint32), 0),
            (rng.random(spec.ncells) < 0.5, False),
        ][s % 4]
        expected = np.full(len(got), fill, dtype=values.dtype)
        ok = got >= 0
        expected[ok] = values[got[ok]]
        out = cuda_cells.gather(_dev(values), _dev(got), fill)
        assert type(out) is type(dev_pts) and out.dtype == values.dtype
        np.testing.assert_array_equal(_host(out), expected)
        cases += 1
    out = cuda_cells.gather(_dev(np.arange(3.0)), _dev(np.empty(0, np.int64)), 0.0)
    assert _host(out).shape == (0,) and out.dtype == np.float64
    print(f"ok check_cells_and_gather ({_mode()}): {len(SPECS)} specs, {cases} gathers")


# --- the stages' device paths -------------------------------------------------------


@contextlib.contextmanager
def _stage_launches() -> Iterator[None]:
    """The stages' tasks run one at a time (the simulator swaps a kernel's
    globals while it runs: two launches at once would race), in blocks of 32
    threads under the simulator (a stage launches once per block of points or
    chunk read, and the simulator's cost is per thread; on a device: 256)."""
    saved = cuda_cells.THREADS
    if _mode() == "simulator":
        cuda_cells.THREADS = 32
    try:
        with dask.config.set(scheduler="synchronous"):
            yield
    finally:
        cuda_cells.THREADS = saved


# (spec, class names, label kind): 1 to 4 dims, open and periodic, each kind of
# labels binning maps to codes (the bad ones: out of range, unknown, missing).
BIN_CASES = [
    (SPECS[0], (0, 1, 2), "int"),
    (SPECS[3], ("a", "b", "c"), "str"),
    (SPECS[5], (0, 1), "float"),
    (
        ([(0.0, 1.0), (-1.0, 2.0), (0.2, 0.9), (5.0, 6.0)], [2, 3, 2, 3], [False, True] * 2),
        ("a", "b", "c"),
        "category",
    ),
]
#: Categories of the "category" case's codes ("d" is not a class; code -1 is missing).
CATEGORIES = ("b", "a", "c", "d")


def _labels(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "int":
        return rng.integers(-1, 4, n)
    if kind == "str":
        return rng.choice(np.array(["a", "b", "c", "zz", None], dtype=object), n)
    if kind == "float":
        return rng.choice(np.array([0.0, 1.0, 2.0, np.nan]), n)
    return rng.integers(-1, len(CATEGORIES), n).astype(np.int8)


def _source(spec: GridSpec, rng: np.random.Generator, kind: str, sizes: tuple) -> PointSource:
    """Blocks of points (one empty) as binning reads them, float32 columns in 3-D."""
    dtype = np.float32 if spec.ndim == 3 else np.float64
    blocks = []
    for n in sizes:
        pts = _points(spec, rng, n)
        cols = tuple(np.ascontiguousarray(pts[:, j], dtype=dtype) for j in range(spec.ndim))
        blocks.append(dask.delayed(Block)(cols, _labels(rng, n, kind)))
    return PointSource(columns=spec.dims, label="label", blocks=blocks)


def check_bin_tree_on_device() -> None:
    """The tree strategy on the device (``bin_points(backend="cupy")``): device
    chains, sums and chunks; counts and host stats equal the CPU's; uint64
    widening on the device."""
    rng = np.random.default_rng(21)
    saved = binning._total_threads
    binning._total_threads = lambda: 3  # three chains of the five blocks, then a sum
    xp = _xp()
    try:
        with _stage_launches():
            for case, names, kind in BIN_CASES:
                spec = _spec(*case)
                classes = _Classes(names, kind, CATEGORIES if kind == "category" else None)
                sizes = (30, 0, 25, 32, 20)
                src = _source(spec, rng, kind, sizes)
                chunks = tuple(max(1, b // 2) for b in spec.bins)
                cpu, cpu_stats = binning._bin_tree(src, classes, spec, chunks)
                got, stats = binning._bin_tree(src, classes, spec, chunks, device=True)
                assert got.dtype == cpu.dtype == np.uint32 and got.chunks == cpu.chunks
                assert type(got._meta) is type(xp.empty(0)) and ops(got) is ops(xp.empty(0))
                assert type(got.blocks[(0,) * got.ndim].compute()) is type(xp.empty(0))
                np.testing.assert_array_equal(_host(got.compute()), cpu.compute())
                assert type(stats) is np.ndarray and stats.dtype == np.int64
                np.testing.assert_array_equal(stats, cpu_stats)
                assert stats[:4].sum() == sum(sizes) and stats[BINNED] > 0
                assert stats[NONFINITE] > 0 and stats[BAD_LABEL] > 0
                assert all(spec.periodic) or stats[OUT_OF_RANGE] > 0
    finally:
        binning._total_threads = saved

    # A chain whose next block could wrap a uint32 cell widens its device grid
    # first, as the CPU's; the device sum widens (or narrows back) as the CPU's.
    spec, nclasses = _spec(*SPECS[3]), 3
    classes = _Classes(tuple(range(nclasses)), "int")
    pts = _points(spec, rng, 50)
    block = Block(tuple(pts[:, j].copy() for j in range(spec.ndim)), rng.integers(0, 3, 50))
    full = np.full(nclasses * spec.ncells, 2**32 - 1, np.uint32)
    stats = np.zeros(4 + nclasses, np.int64)
    stats[BINNED] = 2**32 - 20
    with _stage_launches():
        cpu = binning._count_into((full.copy(), stats.copy()), block, classes, spec)
        got = binning._count_into((_dev(full), stats.copy()), block, classes, spec, True)
    assert cpu[0].dtype == got[0].dtype == np.uint64 and (cpu[0] >= 2**32).any()
    assert type(got[0]) is type(xp.empty(0)) and type(got[1]) is np.ndarray
    np.testing.assert_array_equal(_host(got[0]), cpu[0])
    np.testing.assert_array_equal(got[1], cpu[1])
    ones = np.ones(nclasses * spec.ncells, np.uint32)
    few = np.array([5, 0, 0, 0, 5, 0, 0], np.int64)
    for parts in ([cpu, (ones, few)], [(ones, few), (ones.astype(np.uint64), few)]):
        want, want_stats = binning._add_dense([(g.copy(), s) for g, s in parts])
        total, total_stats = binning._add_dense([(_dev(g), s) for g, s in parts])
        assert total.dtype == want.dtype and type(total) is type(xp.empty(0))
        np.testing.assert_array_equal(_host(total), want)
        np.testing.assert_array_equal(total_stats, want_stats)
        shape = (nclasses, *spec.shape)
        grid = binning._as_grid(total, shape, want.dtype)
        np.testing.assert_array_equal(_host(grid), want.reshape(shape))
    assert want.dtype == np.uint32  # the second sum: widened on rows read, not binned
    print(f"ok check_bin_tree_on_device ({_mode()}): {len(BIN_CASES)} specs, widening")


def _classified(spec: GridSpec, chunks: tuple, nclasses: int, levels: int, rng) -> Any:
    """A grid as classify leaves it, chunked: per level labels (-1 unlabeled),
    votes and probabilities."""
    counts = da.zeros((nclasses, *spec.shape), np.uint32, chunks=(nclasses, *chunks))
    ds = counts_dataset(counts, spec, tuple(range(nclasses)), {"rows": 0})
    for level in range(levels):
        shape = level_bins(spec.bins, level)
        dims = tuple(level_name(d, level) for d in spec.dims)
        cs = tuple(min(c, b) for c, b in zip(chunks, shape, strict=True))
        labels = rng.integers(-1, nclasses, shape).astype(np.int16)
        probability = rng.random((nclasses, *shape)).astype(np.float32)
        ds[level_name("label", level)] = (dims, da.from_array(labels, chunks=cs))
        ds[level_name("votes", level)] = (dims, da.from_array(rng.random(shape) * 3, chunks=cs))
        ds[level_name("probability", level)] = (
            ("class", *dims),
            da.from_array(probability, chunks=(nclasses, *cs)),
        )
    return ds


def check_predict_on_device() -> None:
    """Prediction on the device (cells by ``cells``, values by ``gather``) equals
    the CPU's: codes, probabilities and report, one level and a pyramid."""
    rng = np.random.default_rng(5)
    cases = [
        # (spec, chunks, levels, min_votes, parts of the points)
        (_spec(*SPECS[3]), (2, 4), 1, None, 2),
        (_spec(*SPECS[5]), (2, 3, 2), 2, 1.5, 1),
    ]
    for spec, chunks, levels, min_votes, parts in cases:
        ds = _classified(spec, chunks, 3, levels, rng)
        pts = _points(spec, rng, 120 // parts * parts)
        frame = pd.DataFrame(pts, columns=list(spec.dims))
        points = dd.from_pandas(frame, npartitions=parts, sort=False)
        args = {"probabilities": True, "levels": levels, "min_votes": min_votes}
        assert not predict_mod._Grid(ds, "label", True).locator.device  # NumPy chunks
        with _stage_launches():
            cells = predict_mod._cell_index(pts, spec, device=True)
            np.testing.assert_array_equal(cells, spec.cell_index(pts))
            want = predict_mod.predict(ds, points, **args)
            saved = predict_mod._Grid
            predict_mod._Grid = functools.partial(saved, device=True)
            try:
                got = predict_mod.predict(ds, points, **args)
            finally:
                predict_mod._Grid = saved
        assert got.codes.dtype == np.int64 and got.probability.dtype == np.float32
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.probability, want.probability)
        assert got.report == want.report, (got.report, want.report)
        assert want.report["no_cell"] > 0 and want.report["predicted"] > 0
        assert (levels == 1) or min(want.report["levels"]) > 0
    print(f"ok check_predict_on_device ({_mode()}): {len(cases)} grids")
