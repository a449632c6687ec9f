"""Compiled kernels of the vote step: one-hot planes, decisions, sparse updates, box
sums, and the summary of the last votes.

Votes are exact multiples of the kernel's quantum (see
:mod:`gridflow.kernels`), so they can be updated in place: when a few cells
change label between two steps, adding each change's weights to the new
class and taking them from the old one gives the very same float64 bits as
correlating the whole block again. :func:`scatter_changes` does that, in
parallel over stripes of the first dim (each thread writes only its own
rows, so no two threads touch the same cell).

Numba is imported on first use only; the compiled code is cached on disk.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _compiled() -> Any:
    import numba
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def onehot(labels, out):  # pragma: no cover - compiled
        # out[k, i] = labels[i] == k, for the first out.shape[0] classes.
        nplanes, n = out.shape
        for k in range(nplanes):
            for i in prange(n):
                out[k, i] = 1.0 if labels[i] == k else 0.0

    @njit(parallel=True, cache=True)
    def decide(votes, labels, total):  # pragma: no cover - compiled
        # Argmax (lowest class on ties) where the total vote is > 0, else -1.
        nclasses, n = votes.shape
        for i in prange(n):
            best = votes[0, i]
            arg = 0
            tot = best
            for k in range(1, nclasses):
                v = votes[k, i]
                tot += v
                if v > best:
                    best = v
                    arg = k
            total[i] = tot
            labels[i] = arg if tot > 0 else -1

    @njit(parallel=True, cache=True)
    def last_plane(votes, full):  # pragma: no cover - compiled
        # votes[-1] = full - sum(votes[:-1]): every cell of the block is
        # labeled, so the class votes add up to the kernel's sum.
        nclasses, n = votes.shape
        for i in prange(n):
            s = 0.0
            for k in range(nclasses - 1):
                s += votes[k, i]
            votes[nclasses - 1, i] = full - s

    @njit(parallel=True, cache=True)
    def scatter(
        votes, shape, cells, old, new, lead, lead_weights, radius_last, wrap, nstripes
    ):  # pragma: no cover - compiled
        # votes: (nclasses, ncells) flat, C order over `shape`; cells: flat
        # indices of the changed cells, with their old and new labels;
        # lead: (T, ndim - 1) offsets over the leading dims, lead_weights:
        # (T, 2 * radius_last + 1) the weights of each leading offset along
        # the last dim. A change at p moves weight w(u) at target p - u.
        ndim = shape.shape[0]
        nlast = shape[ndim - 1]
        n0 = shape[0]
        width = 2 * radius_last + 1
        reversed_weights = np.ascontiguousarray(lead_weights[:, ::-1])
        strides = np.empty(ndim, np.int64)
        acc = 1
        for d in range(ndim - 1, -1, -1):
            strides[d] = acc
            acc *= shape[d]
        for s in prange(nstripes):
            lo = s * n0 // nstripes
            hi = (s + 1) * n0 // nstripes
            coords = np.empty(ndim, np.int64)
            last = np.empty(width, np.int64)
            for i in range(cells.shape[0]):
                a = old[i]
                b = new[i]
                rem = cells[i]
                for d in range(ndim):
                    coords[d] = rem // strides[d]
                    rem -= coords[d] * strides[d]
                # Targets along the last dim (-1: outside the block).
                c = coords[ndim - 1]
                contiguous = c >= radius_last and c + radius_last < nlast
                for j in range(width):
                    t = c - (j - radius_last)
                    if wrap[ndim - 1]:
                        t %= nlast
                    elif t < 0 or t >= nlast:
                        t = -1
                    last[j] = t
                for tl in range(lead.shape[0]):
                    base = 0
                    ok = True
                    for d in range(ndim - 1):
                        t = coords[d] - lead[tl, d]
                        if wrap[d]:
                            t %= shape[d]
                        elif t < 0 or t >= shape[d]:
                            ok = False
                            break
                        if d == 0 and (t < lo or t >= hi):
                            ok = False
                            break
                        base += t * strides[d]
                    if not ok:
                        continue
                    if ndim == 1 and s != 0:
                        continue
                    if contiguous:
                        # Targets c + r down to c - r: one contiguous run,
                        # weights reversed (vectorised by the compiler).
                        start = base + c - radius_last
                        if a >= 0:
                            row = votes[a, start : start + width]
                            for j in range(width):
                                row[j] -= reversed_weights[tl, j]
                        if b >= 0:
                            row = votes[b, start : start + width]
                            for j in range(width):
                                row[j] += reversed_weights[tl, j]
                        continue
                    for j in range(width):
                        t = last[j]
                        if t < 0:
                            continue
                        w = lead_weights[tl, j]
                        if a >= 0:
                            votes[a, base + t] -= w
                        if b >= 0:
                            votes[b, base + t] += w

    @njit(parallel=True, cache=True)
    def box_axis(a, out, radius, wrap):  # pragma: no cover - compiled
        # out[o, i, j] = sum of a[o, i + u, j] for |u| <= radius along the
        # middle axis: wrapped, or zeros beyond its ends. Integer-valued
        # sums (float64, or float32 below 2**24): exact in any order.
        # The neighbour i + u is written out below rather than called: a
        # jitted helper captured here made numba miss its disk cache, so
        # every process compiled this kernel again (12 s). The window fits
        # the axis (2 * |u| < n): one wrap is enough.
        nouter, n, ninner = a.shape
        if ninner == 1:
            # The last dim: contiguous lines of n values.
            for o in prange(nouter):
                for i in range(n):
                    acc = out.dtype.type(a[o, i, 0])
                    for u in range(-radius, radius + 1):
                        t = i + u
                        if t < 0 or t >= n:
                            if not wrap:
                                continue
                            t += n if t < 0 else -n
                        if u != 0:
                            acc += a[o, t, 0]
                    out[o, i, 0] = acc
            return
        for o in prange(nouter):
            src = a[o]
            dst = out[o]
            for i in range(n):
                row = dst[i]
                centre = src[i]
                for j in range(ninner):
                    row[j] = centre[j]
                for u in range(-radius, radius + 1):
                    t = i + u
                    if t < 0 or t >= n:
                        if not wrap:
                            continue
                        t += n if t < 0 else -n
                    if u == 0:
                        continue
                    other = src[t]
                    for j in range(ninner):
                        row[j] += other[j]

    @njit(parallel=True, cache=True)
    def summarise(votes, out, probabilities):  # pragma: no cover - compiled
        # out[0]: winning vote / total (0 without votes), out[1]: the total,
        # out[2:]: each class's vote / total (probabilities only).
        nclasses, n = votes.shape
        for i in prange(n):
            tot = 0.0
            top = votes[0, i]
            for k in range(nclasses):
                v = votes[k, i]
                tot += v
                if v > top:
                    top = v
            safe = tot if tot > 0 else 1.0
            out[0, i] = top / safe if tot > 0 else 0.0
            out[1, i] = tot
            if probabilities:
                for k in range(nclasses):
                    out[2 + k, i] = votes[k, i] / safe

    return numba, onehot, decide, last_plane, scatter, box_axis, summarise


def onehot(labels: np.ndarray, nplanes: int) -> np.ndarray:
    """``(nplanes, *labels.shape)`` float64 indicators of classes ``0..nplanes-1``."""
    out = np.empty((nplanes, labels.size))
    _compiled()[1](np.ascontiguousarray(labels).reshape(-1), out)
    return out.reshape((nplanes, *labels.shape))


def decide(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and total vote of ``votes`` (nclasses, *shape)."""
    shape = votes.shape[1:]
    flat = np.ascontiguousarray(votes).reshape(votes.shape[0], -1)
    labels = np.empty(flat.shape[1], np.int32)
    total = np.empty(flat.shape[1])
    _compiled()[2](flat, labels, total)
    return labels.reshape(shape), total.reshape(shape)


def summarise(votes: np.ndarray, probabilities: bool) -> np.ndarray:
    """float32 ``[confidence, total, *probability]`` planes of ``votes`` (nclasses, *shape)."""
    shape = votes.shape[1:]
    flat = np.ascontiguousarray(votes, dtype=np.float64).reshape(votes.shape[0], -1)
    out = np.empty((2 + votes.shape[0] * bool(probabilities), flat.shape[1]), np.float32)
    _compiled()[6](flat, out, bool(probabilities))
    return out.reshape((out.shape[0], *shape))


def complete_last_plane(votes: np.ndarray, full: float) -> None:
    """Fill ``votes[-1]`` in place as ``full`` minus the other planes."""
    _compiled()[3](votes.reshape(votes.shape[0], -1), float(full))


@functools.lru_cache(maxsize=32)
def _taps(weights_key: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    weights = np.frombuffer(weights_key).reshape(shape)
    radius = [s // 2 for s in shape]
    lead_shape = shape[:-1]
    if lead_shape:
        grids = np.indices(lead_shape).reshape(len(lead_shape), -1).T
        lead = (grids - np.asarray(radius[:-1])).astype(np.int64)
    else:
        lead = np.zeros((1, 0), np.int64)
    return np.ascontiguousarray(lead), np.ascontiguousarray(weights.reshape(len(lead), shape[-1]))


def scatter_changes(
    votes: np.ndarray,
    weights: np.ndarray,
    cells: np.ndarray,
    old: np.ndarray,
    new: np.ndarray,
    wrap: bool | tuple[bool, ...],
) -> None:
    """Update ``votes`` (nclasses, *shape) in place for label changes.

    ``cells`` are flat indices of the cells whose label went from ``old``
    to ``new`` (negative: no class). ``wrap``: per dim (or one flag for
    all), whether the block wraps around along it; along the others targets
    outside the block are dropped.
    """
    numba = _compiled()[0]
    shape = votes.shape[1:]
    lead, lead_weights = _taps(np.ascontiguousarray(weights).tobytes(), weights.shape)
    nstripes = min(shape[0], 4 * numba.get_num_threads())
    _compiled()[4](
        votes.reshape(votes.shape[0], -1),
        np.asarray(shape, np.int64),
        cells.astype(np.int64, copy=False),
        old.astype(np.int32, copy=False),
        new.astype(np.int32, copy=False),
        lead,
        lead_weights,
        weights.shape[-1] // 2,
        np.broadcast_to(np.asarray(wrap, np.bool_), (len(shape),)).copy(),
        max(1, nstripes),
    )


def box_sums(
    planes: np.ndarray,
    radius: tuple[int, ...],
    wrap: tuple[bool, ...],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Box sums of ``planes`` (nplanes, *shape), one axis at a time: along
    grid dim ``j`` the sum over ``|u| <= radius[j]``, wrapped where
    ``wrap[j]``, zeros beyond the block elsewhere. Exact on integer values;
    returns float64 (into ``out`` when given: C-contiguous float64).
    """
    box_axis = _compiled()[5]
    if out is None or out.dtype != np.float64 or not out.flags.c_contiguous:
        out = np.empty(planes.shape)
    axes = [j for j, r in enumerate(radius) if r > 0]
    if not axes:
        out[...] = planes
        return out
    # Integers below 2**24 are exact in float32: every partial sum is then
    # exact too, at half the memory traffic of float64. (Counts, an integer
    # dtype, take that path; float planes stay float64.) The first pass
    # reads the planes as they are and the last one writes float64 into
    # `out`; the passes between alternate between one float32 buffer and
    # the first half of `out`'s bytes, so that the second-to-last writes
    # the separate buffer.
    taps = float(np.prod([2 * r + 1 for r in radius]))
    exact32 = planes.dtype.kind in "ui" and float(planes.max(initial=0)) * taps < 2**24
    work = np.float32 if exact32 else np.float64
    own = np.empty(planes.shape, work)
    if exact32:
        half = out.reshape(-1).view(np.float32)[: planes.size].reshape(planes.shape)
    else:
        half = np.empty(planes.shape, work)
    cur = np.ascontiguousarray(planes)
    last = len(axes) - 1
    for k, j in enumerate(axes):
        dst = out if k == last else own if (last - 1 - k) % 2 == 0 else half
        n = cur.shape[j + 1]
        outer = int(np.prod(cur.shape[: j + 1]))
        box_axis(
            cur.reshape(outer, n, -1), dst.reshape(outer, n, -1), int(radius[j]), bool(wrap[j])
        )
        cur = dst
    return out


# --- grouped line sums: the direct window sum, per class, along contiguous lines ------


@functools.cache
def _lines_compiled() -> Any:
    from numba import njit, prange

    # fastmath: every product and partial sum here is exact (integer counts times
    # dyadic weights, multiples of the quantum below 2**53), so reassociating or
    # contracting them into FMAs cannot change a bit; it lets LLVM vectorize.
    @njit(parallel=True, cache=True, fastmath=True)
    def lines(
        planes, labels, pshape, shape, members, starts, profiles, out
    ):  # pragma: no cover - compiled
        # The block padded by the radius r on every side: `planes` (nplanes,
        # prod(pshape)) float64, or, when `planes` is empty, `labels`
        # (prod(pshape)) int32, whose plane k is `labels == k`. out: (nplanes,
        # prod(shape)). For each output line (all leading coords, the whole
        # last dim) and class: S_g = the sum of the padded lines at the leading
        # offsets of group g (flat offsets `members[starts[g]:starts[g + 1]]`),
        # then out += profiles[g] (the weights of those offsets along the last
        # dim) correlated with S_g.
        ndim = shape.shape[0]
        nplanes = out.shape[0]
        from_labels = planes.shape[1] == 0
        n = shape[ndim - 1]
        npad = pshape[ndim - 1]
        width = profiles.shape[1]
        nlines = 1
        for d in range(ndim - 1):
            nlines *= shape[d]
        pstrides = np.empty(ndim, np.int64)
        acc = 1
        for d in range(ndim - 1, -1, -1):
            pstrides[d] = acc
            acc *= pshape[d]
        ngroups = starts.shape[0] - 1
        for line in prange(nlines):
            # The padded index of the line's start (leading coords + r).
            rem = np.int64(line) + 0
            base = np.int64(0)
            for d in range(ndim - 2, -1, -1):
                c = rem % shape[d]
                rem = rem // shape[d]
                base += (c + (pshape[d] - shape[d]) // 2) * pstrides[d]
            s = np.empty(npad)
            for k in range(nplanes):
                a = out[k, line * n : line * n + n]
                a[:] = 0.0
                for g in range(ngroups):
                    for z in range(npad):
                        s[z] = 0.0
                    for m in range(starts[g], starts[g + 1]):
                        o = base + members[m]
                        if from_labels:
                            src = labels[o : o + npad]
                            for z in range(npad):
                                s[z] += 1.0 if src[z] == k else 0.0
                        else:
                            row = planes[k, o : o + npad]
                            for z in range(npad):
                                s[z] += row[z]
                    for t in range(width):
                        w = profiles[g, t]
                        if w != 0.0:
                            shifted = s[t : t + n]
                            for z in range(n):
                                a[z] += w * shifted[z]

    return lines


@functools.lru_cache(maxsize=32)
def line_groups(
    weights_key: bytes, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The window's leading offsets grouped by their weights along the last dim.

    Returns ``(offsets, starts, profiles, counts)``: the leading offsets
    (T, ndim - 1) of every non-zero row of the weights, ordered by group;
    group ``g`` holds ``offsets[starts[g]:starts[g + 1]]`` and weighs
    ``profiles[g]`` along the last dim. A symmetric window has few groups
    (inverse distance, 3-D, w=2: 25 offsets in 6 groups; a box: one), so a
    line of votes costs ``T`` line additions and ``sum(nnz(profiles))``
    multiply-adds, not ``(2w+1)**d``.
    """
    weights = np.frombuffer(weights_key).reshape(shape)
    rows = weights.reshape(-1, shape[-1])
    radius = np.asarray([s // 2 for s in shape[:-1]], np.int64)
    if len(shape) > 1:
        lead = np.indices(shape[:-1]).reshape(len(shape) - 1, -1).T - radius
    else:
        lead = np.zeros((1, 0), np.int64)  # one line: the last dim is the only one
    keep = np.flatnonzero(rows.any(axis=1))
    profiles, group = np.unique(rows[keep], axis=0, return_inverse=True)
    order = np.argsort(group.reshape(-1), kind="stable")
    counts = np.bincount(group.reshape(-1), minlength=len(profiles))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    offsets = np.ascontiguousarray(lead[keep][order], dtype=np.int64)
    return offsets, starts, np.ascontiguousarray(profiles), counts


def line_cost(weights: np.ndarray) -> int:
    """Operations per cell and plane of :func:`line_sums`: line additions plus
    multiply-adds (the ``counts`` and ``profiles`` of :func:`line_groups`)."""
    w = np.ascontiguousarray(weights, dtype=np.float64)
    offsets, _, profiles, _ = line_groups(w.tobytes(), w.shape)
    return int(len(offsets) + np.count_nonzero(profiles))


def line_sums(
    planes: np.ndarray,
    weights: np.ndarray,
    wrap: tuple[bool, ...],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Window correlation of ``planes`` (nplanes, *shape), float64: each cell
    gets the sum over the window offsets ``u`` of ``weights[r + u] *
    plane[p + u]``, wrapping along the dims where ``wrap``, zeros beyond the
    block elsewhere (into ``out`` when given).

    The sums run along contiguous lines of the last dim, per class, with the
    window's leading offsets grouped by their weights (:func:`line_groups`):
    every product is an integer count times a dyadic weight and every sum a
    multiple of the kernel's quantum, so the bits are those of any exact
    method.
    """
    radius = tuple(s // 2 for s in weights.shape)
    planes = pad_block(planes, radius, wrap, 0.0, lead=1)
    return _line_sums(planes, None, planes.shape[0], weights, out)


def _line_sums(
    planes: np.ndarray | None,
    labels: np.ndarray | None,
    nplanes: int,
    weights: np.ndarray,
    out: np.ndarray | None,
) -> np.ndarray:
    """The compiled line sums of padded ``planes``, or of the one-hot planes of
    padded ``labels`` (classes ``0..nplanes-1``) without making them."""
    w = np.ascontiguousarray(weights, dtype=np.float64)
    radius = tuple(s // 2 for s in w.shape)
    pshape = planes.shape[1:] if planes is not None else labels.shape
    shape = tuple(s - 2 * r for s, r in zip(pshape, radius, strict=True))
    lead, starts, profiles, _ = line_groups(w.tobytes(), w.shape)
    pstrides = np.cumprod((1, *pshape[:0:-1]))[::-1]  # C strides of the padded block
    members = (lead * np.asarray(pstrides[:-1], np.int64)).sum(axis=1).astype(np.int64)
    into = out
    if out is None or out.dtype != np.float64 or not out.flags.c_contiguous:
        into = np.empty((nplanes, *shape))
    flat_planes = (
        np.ascontiguousarray(planes, dtype=np.float64).reshape(nplanes, -1)
        if planes is not None
        else np.empty((nplanes, 0))
    )
    flat_labels = (
        np.ascontiguousarray(labels, dtype=np.int32).reshape(-1)
        if labels is not None
        else np.empty(0, np.int32)
    )
    _lines_compiled()(
        flat_planes,
        flat_labels,
        np.asarray(pshape, np.int64),
        np.asarray(shape, np.int64),
        members,
        starts,
        profiles,
        into.reshape(into.shape[0], -1),
    )
    if out is not None and into is not out:
        out[...] = into
        return out
    return into


def pad_block(
    a: np.ndarray, radius: tuple[int, ...], wrap: tuple[bool, ...], fill: Any, lead: int = 0
) -> np.ndarray:
    """``a`` grown by ``radius`` cells a side along its last ``len(radius)``
    dims (after ``lead`` leading ones): wrapped where ``wrap``, else ``fill``."""
    width = [(0, 0)] * lead + [(r, r) for r in radius]
    if not any(radius):
        return a
    if all(wrap):
        return np.pad(a, width, mode="wrap")
    out = np.pad(a, width, mode="constant", constant_values=fill)
    for j, (r, w) in enumerate(zip(radius, wrap, strict=True)):
        if w and r:
            ax = lead + j
            n = a.shape[ax]
            idx = [slice(None)] * out.ndim
            src = [slice(None)] * out.ndim
            idx[ax], src[ax] = slice(0, r), slice(n, n + r)
            out[tuple(idx)] = out[tuple(src)]
            idx[ax], src[ax] = slice(n + r, n + 2 * r), slice(r, 2 * r)
            out[tuple(idx)] = out[tuple(src)]
    return out


def window_votes(
    labels: np.ndarray,
    weights: np.ndarray,
    nclasses: int,
    wrap: bool | tuple[bool, ...],
    exact: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Votes ``(nclasses, *labels.shape)`` float64 of one step, straight from the labels.

    The CPU twin of :func:`gridflow._kernels.cuda_vote.window_votes`: the
    labels padded by the radius (wrapped, or a label that does not vote),
    then :func:`line_sums` of their one-hot planes, read from the labels
    as the lines are summed (no planes are made). Labels < 0 or >=
    ``nclasses`` do not vote; beyond an edge that does not wrap nothing
    votes, with or without ``exact``.
    """
    flags = tuple(np.broadcast_to(np.asarray(wrap, np.bool_), (labels.ndim,)).tolist())
    radius = tuple(s // 2 for s in weights.shape)
    padded = pad_block(np.ascontiguousarray(labels, np.int32), radius, flags, -1)
    return _line_sums(None, padded, nclasses, weights, out)
