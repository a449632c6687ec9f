"""The fractal classifier's step: copy a random face neighbour (docs/design.md §3.3).

At iteration ``t`` (from 1) every cell picks one of its ``2·d`` face
neighbours,

    c = counter_rng.integers(seed, t, flat_index, 2·d)

(axis ``c // 2``, the lower neighbour when ``c`` is even; ``flat_index`` is
the cell's C-order index in the whole grid), and copies the neighbour's
label if the neighbour is labeled, where during the first ``burn_in``
iterations only unlabeled cells copy. The choice is a pure function of
``(seed, t, flat_index)``, so the result is bit-identical for any chunking,
fusion, number of workers and backend.

Blocks run the backend's compiled kernel (``backend.kernel("fractal")``,
NumPy: :mod:`gridflow._kernels.fractal`) or, without one, the array
reference :func:`run_reference`, which the kernel equals bit for bit.
:func:`neighbour_round` runs a round of fused iterations with a halo as
deep as the iterations (a one-cell step); a grid held in one chunk needs no
halo at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from gridflow._types import Boundary
from gridflow.backend import meta_like, ops
from gridflow.counter_rng import integers
from gridflow.engine.rounds import StepCost
from gridflow.engine.vote import OUTSIDE, UNLABELED, pad

__all__ = ["STEP_COST", "Rule", "neighbour_round", "run_reference"]

#: A step of the compiled kernel costs about 2.5 ns per cell updated
#: (1.2-2.4 ns measured, BENCHMARKS.md); a step's region shrinks by a cell.
STEP_COST = StepCost(first=2.5e-9, later=2.5e-9, shrinking=True)


@dataclass(frozen=True)
class Rule:
    """What a block needs besides its labels."""

    seed: int
    burn_in: int
    shape: tuple[int, ...]
    periodic: bool
    method: str


def _block(
    block: Any,
    *,
    rule: Rule,
    first: int,
    marks: tuple[int, ...],
    offsets: tuple[tuple[int, ...], ...],
    halo: bool,
    block_id: tuple[int, ...] | None = None,
) -> Any:
    """Iterations ``first ..`` on one block; the labels after each of ``marks`` steps.

    A haloed block (``halo``) is ``marks[-1]`` cells deep on every side;
    otherwise the block is the whole grid. Returns ``(len(marks), *chunk)``.
    """
    if halo:
        # block_id[0] is the output's new (marks) axis.
        origin = tuple(o[i] - marks[-1] for o, i in zip(offsets, block_id[1:], strict=True))
        padded = block
    else:
        origin = (-1,) * block.ndim
        padded = _pad(block, rule.periodic)
    wrap = None if halo else (rule.periodic,) * block.ndim
    compiled = None if rule.method == "reference" else ops(block).kernel("fractal")
    if compiled is not None:
        return compiled.run(
            padded,
            seed=rule.seed,
            first=first,
            marks=marks,
            burn_in=rule.burn_in,
            hashes=compiled.global_hashes(rule.shape, origin, padded.shape),
            wrap=wrap,
        )
    return _reference_steps(padded, rule, first, marks, origin, wrap)


def _pad(block: Any, periodic: bool) -> Any:
    return pad(block, 1, "periodic" if periodic else "open")


def _reference_steps(
    block: Any,
    rule: Rule,
    first: int,
    marks: tuple[int, ...],
    origin: tuple[int, ...],
    wrap: tuple[bool, ...] | None,
) -> Any:
    """The array reference (any backend) of the compiled :func:`gridflow._kernels.fractal.run`.

    Each step computes every cell of the block with rolled copies; the
    cells whose neighbours wrapped around the block are wrong, but they lie
    outside the shrinking valid region (haloed blocks) or in the one-cell
    pad refreshed before each step (whole grids).
    """
    xp = ops(block).xp
    ndim = block.ndim
    strides = np.cumprod((1, *rule.shape[:0:-1]))[::-1]
    index = 0
    for axis, (o, p, n, stride) in enumerate(
        zip(origin, block.shape, rule.shape, strides, strict=True)
    ):
        g = (xp.arange(o, o + p) % n) * int(stride)
        index = index + g.reshape((-1,) + (1,) * (ndim - 1 - axis))
    d = 1 if wrap is not None else marks[-1]
    interior = tuple(slice(d, s - d) for s in block.shape)
    cur = block.copy()
    out = []
    for t in range(first, first + marks[-1] + 1):
        if t - first in marks:
            out.append(cur[interior])
        if t == first + marks[-1]:
            break
        if wrap is not None:
            cur = _pad(cur[interior], rule.periodic)
        choice = integers(rule.seed, t, index, 2 * ndim)
        nb = xp.full_like(cur, OUTSIDE)
        for axis in range(ndim):
            nb = xp.where(choice == 2 * axis, xp.roll(cur, 1, axis), nb)
            nb = xp.where(choice == 2 * axis + 1, xp.roll(cur, -1, axis), nb)
        take = (nb >= 0) & (cur >= UNLABELED)
        if t <= rule.burn_in:
            take &= cur < 0
        cur = xp.where(take, nb, cur)
    return xp.stack(out)


def run_reference(
    labels: Any,
    *,
    iterations: int,
    burn_in: int = 50,
    seed: int = 0,
    boundary: Boundary = "periodic",
) -> Any:
    """In-memory reference of :func:`fractal` on a labels array (NumPy or CuPy).

    One iteration at a time with array operations and
    :func:`gridflow.counter_rng.integers`; the distributed, compiled path
    (:func:`gridflow.fractal.fractal`) must equal it bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.full((6, 6), -1, np.int16)
    >>> labels[0, 0], labels[3, 3] = 0, 1
    >>> from gridflow.engine.neighbour import run_reference
    >>> out = run_reference(labels, iterations=60, burn_in=30, seed=1)
    >>> bool((out >= 0).all())
    True
    """
    rule = Rule(int(seed), int(burn_in), tuple(labels.shape), boundary == "periodic", "reference")
    return _block(labels, rule=rule, first=1, marks=(iterations,), offsets=(), halo=False)[0]


def neighbour_round(labels: da.Array, rule: Rule, first: int, marks: tuple[int, ...]) -> da.Array:
    """One lazy round from iteration ``first``: ``(len(marks), *dims)``, the
    labels after each of ``marks`` steps (the last mark ends the round)."""
    kwargs = {
        "rule": rule,
        "first": first,
        "marks": marks,
        "dtype": labels.dtype,
        "new_axis": 0,
        "chunks": ((len(marks),), *labels.chunks),
        "meta": meta_like(labels, labels.ndim + 1),
    }
    if all(len(c) == 1 for c in labels.chunks):
        return labels.map_blocks(_block, offsets=(), halo=False, **kwargs)
    offsets = tuple(tuple(np.cumsum((0, *c[:-1])).tolist()) for c in labels.chunks)
    return da.map_overlap(
        _block,
        labels,
        depth=marks[-1],
        boundary="periodic" if rule.periodic else OUTSIDE,
        trim=False,
        offsets=offsets,
        halo=True,
        **kwargs,
    )
