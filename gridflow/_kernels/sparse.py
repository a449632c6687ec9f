"""Compiled kernels of the sparse vote step: votes from the neighbour pairs that exist.

The cells of a sparse block are rows of a ``(d, n)`` coordinate table in
row-major (lexicographic) order, so the cells sharing a prefix of
coordinates are one contiguous range: the table is a trie. :func:`gather`
walks the targets' trie and the sources' together: a range of targets whose
first ``j`` coordinates agree is paired with each range of sources within
the window on those dims, and a pair whose ranges are empty ends at once.
The work is the pairs of prefixes that exist, which at the last dim are the
neighbour pairs themselves; the window's ``(2w+1)**d`` offsets (59,049 for
w=1 in 10-D) are never enumerated.

Votes are sums of dyadic weights (see :mod:`gridflow.kernels`), so they are
exact in any order: bit for bit the dense engine's. Numba is imported on
first use only; the compiled code is cached on disk.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def _threads() -> int:
    """Threads of this task's parallel loops (set first: gridflow.backend.task_threads)."""
    import numba

    from gridflow.backend import limit_numba_threads

    limit_numba_threads()
    return numba.get_num_threads()


@functools.cache
def _compiled() -> Any:
    from numba import njit, prange

    @njit(cache=True, inline="always")
    def _bounds(col, lo, hi, v):  # pragma: no cover - compiled
        # [a, b): the rows of col[lo:hi] (sorted) equal to v.
        a, b = lo, hi
        while a < b:
            mid = (a + b) >> 1
            if col[mid] < v:
                a = mid + 1
            else:
                b = mid
        e = a
        b = hi
        while e < b:
            mid = (e + b) >> 1
            if col[mid] <= v:
                e = mid + 1
            else:
                b = mid
        return a, e

    @njit(cache=True, inline="always")
    def _coord(v, n, wrap):  # pragma: no cover - compiled
        # A window coordinate on a dim of n cells: wrapped, or -1 beyond the edge.
        if wrap:
            return v % n
        return v if 0 <= v < n else -1

    @njit(cache=True, inline="always")
    def _upper(col, lo, hi, v):  # pragma: no cover - compiled
        # First row of col[lo:hi] (sorted) greater than v.
        while lo < hi:
            mid = (lo + hi) >> 1
            if col[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(parallel=True, cache=True)
    def gather(
        scoords, slabels, srows, tcoords, radius, shape, wrap, weights, kstrides, out, nbatch
    ):  # pragma: no cover - compiled
        # out[t, k] = sum over sources s in the window of target t of
        # weights[offset(s - t)] * (labels[s] == k), or * srows[s, k] when
        # srows has rows (the first step of seed="counts").
        #
        # Both sets are tries (rows in row-major order): a frame pairs a range
        # of targets with a range of sources that agree within the window on
        # dims 0..j-1; it splits the targets by their coordinate j and pairs
        # each group with the source groups within the window on dim j.
        d, n = scoords.shape
        m = tcoords.shape[1]
        nclasses = out.shape[1]
        rows = srows.shape[0] > 0
        wmax = 0
        emax = 0
        for j in range(d):
            wmax = max(wmax, 2 * radius[j] + 1)
            emax = max(emax, shape[j])
        cap = d * (emax + 1) * wmax + 16
        for bi in prange(nbatch):
            t0 = bi * m // nbatch
            t1 = (bi + 1) * m // nbatch
            if t0 == t1:
                continue
            fj = np.empty(cap, np.int64)
            ftlo = np.empty(cap, np.int64)
            fthi = np.empty(cap, np.int64)
            fslo = np.empty(cap, np.int64)
            fshi = np.empty(cap, np.int64)
            fk = np.empty(cap, np.int64)
            top = 0
            fj[0] = 0
            ftlo[0] = t0
            fthi[0] = t1
            fslo[0] = 0
            fshi[0] = n
            fk[0] = 0
            top = 1
            while top > 0:
                top -= 1
                j = fj[top]
                tlo = ftlo[top]
                thi = fthi[top]
                slo = fslo[top]
                shi = fshi[top]
                k0 = fk[top]
                col = tcoords[j]
                scol = scoords[j]
                r = radius[j]
                if j == d - 1:
                    # The last dim: each target row is one cell, each source
                    # found is one cell: add its weight, with no frame.
                    for t in range(tlo, thi):
                        vt = col[t]
                        for step in range(2 * r + 1):
                            v = _coord(vt + step - r, shape[j], wrap[j])
                            if v < 0:
                                continue
                            sa, sb = _bounds(scol, slo, shi, v)
                            if sa == sb:
                                continue
                            w = weights[k0 + step * kstrides[j]]
                            if w == 0.0:
                                continue
                            for s in range(sa, sb):
                                if rows:
                                    for c in range(nclasses):
                                        out[t, c] += w * srows[s, c]
                                else:
                                    out[t, slabels[s]] += w
                    continue
                a = tlo
                while a < thi:
                    vt = col[a]
                    b = _upper(col, a, thi, vt)
                    for step in range(2 * r + 1):
                        v = _coord(vt + step - r, shape[j], wrap[j])
                        if v < 0:
                            continue
                        sa, sb = _bounds(scol, slo, shi, v)
                        if sa == sb:
                            continue
                        if top == cap:  # never with distinct cells; grow to be safe
                            cap2 = cap * 2
                            fj = _grow(fj, cap2)
                            ftlo = _grow(ftlo, cap2)
                            fthi = _grow(fthi, cap2)
                            fslo = _grow(fslo, cap2)
                            fshi = _grow(fshi, cap2)
                            fk = _grow(fk, cap2)
                            cap = cap2
                        fj[top] = j + 1
                        ftlo[top] = a
                        fthi[top] = b
                        fslo[top] = sa
                        fshi[top] = sb
                        fk[top] = k0 + step * kstrides[j]
                        top += 1
                    a = b

    @njit(cache=True)
    def _grow(a, size):  # pragma: no cover - compiled
        out = np.empty(size, a.dtype)
        out[: a.size] = a
        return out

    return gather


def gather(
    scoords: np.ndarray,
    slabels: np.ndarray,
    srows: np.ndarray | None,
    tcoords: np.ndarray,
    *,
    nclasses: int,
    radius: np.ndarray,
    shape: np.ndarray,
    wrap: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """``(m, nclasses)`` votes of the targets ``tcoords`` from the sources ``scoords``.

    ``scoords`` (d, n) must be in row-major order and distinct; ``srows``
    (n, nclasses), when given, replaces the sources' one-hot labels.
    """
    d = scoords.shape[0]
    side = 2 * np.asarray(radius, np.int64) + 1
    kstrides = np.ones(d, np.int64)
    for j in range(d - 2, -1, -1):
        kstrides[j] = kstrides[j + 1] * side[j + 1]
    out = np.zeros((tcoords.shape[1], nclasses))
    rows = np.zeros((0, nclasses)) if srows is None else np.ascontiguousarray(srows, np.float64)
    _compiled()(
        np.ascontiguousarray(scoords, np.int64),
        np.ascontiguousarray(slabels, np.int32),
        rows,
        np.ascontiguousarray(tcoords, np.int64),
        np.asarray(radius, np.int64),
        np.asarray(shape, np.int64),
        np.asarray(wrap, np.bool_),
        np.ascontiguousarray(weights, np.float64).reshape(-1),
        kstrides,
        out,
        max(1, min(tcoords.shape[1] // 64, 4 * _threads())),
    )
    return out


def decide(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and total vote of ``votes`` (m, nclasses): the dense kernel's decision."""
    from gridflow._kernels import vote

    return vote.decide(np.ascontiguousarray(votes.T))
