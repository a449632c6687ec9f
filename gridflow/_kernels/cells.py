"""Compiled flat cell index of points (NumPy input): one pass, all dims.

The same float64 operations in the same order as
:func:`gridflow.grid._cells_1d` (subtract, fmod for periodic dims, divide by
the width, multiply by the bins, floor), so both agree bit for bit; this one
makes a single pass over the points, in parallel, instead of a dozen array
passes. Numba is imported on first use only; the compiled code is cached.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _compiled() -> Any:
    import math

    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def flat_index(points, lo, hi, nbins, periodic, out):  # pragma: no cover - compiled
        n, d = points.shape
        for i in prange(n):
            flat = 0
            ok = True
            for j in range(d):
                v = points[i, j]
                width = hi[j] - lo[j]
                t = v - lo[j]
                if periodic[j]:
                    if not math.isfinite(t):
                        ok = False
                        break
                    t = np.fmod(t, width)
                    if t < 0:
                        t = t + width
                    if not math.isfinite(t):
                        ok = False
                        break
                elif not (v >= lo[j] and v <= hi[j]):
                    ok = False
                    break
                c = np.int64(math.floor(t / width * nbins[j]))
                if c >= nbins[j]:
                    c = nbins[j] - 1
                flat = flat * nbins[j] + c
            out[i] = flat if ok else -1

    return flat_index


def flat_index(points: np.ndarray, spec: Any) -> np.ndarray:
    """C-order flat cell index of each row of ``points`` (n, ndim), -1 where none."""
    from gridflow.backend import limit_numba_threads

    limit_numba_threads()  # the calling task's share of the cores
    pts = np.asarray(points, dtype=np.float64)  # any strides: no copy of F-order frames
    out = np.empty(pts.shape[0], np.int64)
    _compiled()(
        pts,
        np.array([b[0] for b in spec.bounds], np.float64),
        np.array([b[1] for b in spec.bounds], np.float64),
        np.asarray(spec.bins, np.int64),
        np.asarray(spec.periodic, np.bool_),
        out,
    )
    return out
