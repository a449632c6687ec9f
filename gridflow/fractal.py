"""The fractal classifier: iterated random-neighbour copy (DESIGN §3.3).

Synchronous updates on the whole grid. At iteration ``t`` (from 1) every
cell picks one of its ``2·d`` face neighbours,

    c = counter_rng.integers(seed, t, flat_index, 2·d)

(axis ``c // 2``, the lower neighbour when ``c`` is even; ``flat_index`` is
the cell's C-order index in the whole grid), and copies the neighbour's
label if the neighbour is labeled, where during the first ``burn_in``
iterations only unlabeled cells copy. The choice is a pure function of
``(seed, t, flat_index)``, so the result is bit-identical for any chunking,
fusion, number of workers and backend.

Many iterations are fused into one ``map_overlap`` round with a halo as
deep as the iterations (a one-cell stencil); a grid held in one chunk needs
no halo at all. Blocks of NumPy chunks run a compiled kernel
(:mod:`gridflow._fractalkernel`); other chunk types (CuPy) run the array
reference, which the kernel equals bit for bit.

With a store, each round is checkpointed into it (two alternating slots
under ``_gridflow_checkpoint/fractal``; a JSON marker naming the complete
slot is replaced last), so ``resume=True`` continues a killed run from its
last complete round and gives the identical result.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

from gridflow import _fractalkernel
from gridflow import store as store_mod
from gridflow.checkpoint import CHECKPOINT, resume_point
from gridflow.counter_rng import integers
from gridflow.errors import ParameterError, StoreError
from gridflow.progress import Progress
from gridflow.stencil import OUTSIDE, UNLABELED

__all__ = ["fractal", "run_reference"]

log = logging.getLogger(__name__)


Start = Literal["auto", "label", "counts"]
Method = Literal["auto", "compiled", "reference"]

# Cost model of the fusion factor, per block: a step of the compiled kernel
# costs about this per cell updated (1.2-2.4 ns measured, BENCHMARKS.md),
# and a round about this much on top (dask tasks, halo exchange, persisting,
# scheduler wake-ups, as timed on a loaded 2-core machine). Seconds.
_CELL_SECONDS = 2.5e-9
_ROUND_SECONDS = 1e-2
# A grid in one chunk runs about this many cell updates per round.
_ROUND_CELLS = 1 << 28
# At most this many recorded frames per round.
_FRAMES_PER_ROUND = 32


def _parse_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ParameterError(f"{name}: expected an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ParameterError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return n


def _parse_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)):
        raise ParameterError(f"seed: expected an integer, got {seed!r}")
    try:
        return operator.index(seed)
    except TypeError:
        raise ParameterError(f"seed: expected an integer, got {seed!r}") from None


def _label_dtype(nclasses: int) -> np.dtype:
    return np.dtype(np.int16 if nclasses < 2**15 else np.int32)


# --- one block -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """What a block needs besides its labels."""

    seed: int
    burn_in: int
    shape: tuple[int, ...]
    periodic: bool
    method: str


def _block(
    block: Any,
    *,
    rule: _Rule,
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
    if rule.method == "compiled" or (rule.method == "auto" and isinstance(block, np.ndarray)):
        return _fractalkernel.run(
            padded,
            seed=rule.seed,
            first=first,
            marks=marks,
            burn_in=rule.burn_in,
            hashes=_fractalkernel.global_hashes(rule.shape, origin, padded.shape),
            wrap=wrap,
        )
    return _reference_steps(padded, rule, first, marks, origin, wrap)


def _pad(block: Any, periodic: bool) -> Any:
    xp = _namespace(block)
    if periodic:
        return xp.pad(block, 1, mode="wrap")
    return xp.pad(block, 1, mode="constant", constant_values=OUTSIDE)


def _namespace(a: Any) -> Any:
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _reference_steps(
    block: Any,
    rule: _Rule,
    first: int,
    marks: tuple[int, ...],
    origin: tuple[int, ...],
    wrap: tuple[bool, ...] | None,
) -> Any:
    """The array reference (NumPy or CuPy) of :func:`_fractalkernel.run`.

    Each step computes every cell of the block with rolled copies; the
    cells whose neighbours wrapped around the block are wrong, but they lie
    outside the shrinking valid region (haloed blocks) or in the one-cell
    pad refreshed before each step (whole grids).
    """
    xp = _namespace(block)
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
    boundary: Literal["periodic", "open"] = "periodic",
) -> Any:
    """In-memory reference of :func:`fractal` on a labels array (NumPy or CuPy).

    One iteration at a time with array operations and
    :func:`gridflow.counter_rng.integers`; the distributed, compiled path
    must equal it bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.full((6, 6), -1, np.int16)
    >>> labels[0, 0], labels[3, 3] = 0, 1
    >>> out = run_reference(labels, iterations=60, burn_in=30, seed=1)
    >>> bool((out >= 0).all())
    True
    """
    rule = _Rule(int(seed), int(burn_in), tuple(labels.shape), boundary == "periodic", "reference")
    return _block(labels, rule=rule, first=1, marks=(iterations,), offsets=(), halo=False)[0]


# --- rounds --------------------------------------------------------------------------


def _whole(chunks: tuple[tuple[int, ...], ...]) -> bool:
    return all(len(c) == 1 for c in chunks)


def _work(chunk: tuple[int, ...], f: int) -> int:
    """Cell updates of one round of ``f`` steps on a block haloed ``f`` deep."""
    return sum(math.prod(c + 2 * (f - s) for c in chunk) for s in range(1, f + 1))


def fusion_factor(chunks: tuple[tuple[int, ...], ...], remaining: int) -> int:
    """Iterations per round: at most the smallest chunk, by a cost model.

    A round of ``f`` iterations on a block haloed ``f`` deep updates more
    cells than the block holds (the halo shrinks by one cell a step); more
    iterations per round mean fewer rounds. ``f`` minimises the estimated
    seconds per iteration, ``(work(f) * cell + round) / f``. A grid in one
    chunk has no halo: its rounds only bound the time between checkpoints.
    """
    if _whole(chunks):
        ncells = math.prod(c[0] for c in chunks)
        return max(1, min(remaining, _ROUND_CELLS // ncells))
    return _best_fusion(tuple(min(c) for c in chunks), remaining)


def _best_fusion(block: tuple[int, ...], remaining: int) -> int:
    fmax = max(1, min(min(block), remaining))
    candidates = sorted({*np.unique(np.geomspace(1, fmax, 48).astype(int)).tolist(), fmax})
    cost = {f: (_work(block, f) * _CELL_SECONDS + _ROUND_SECONDS) / f for f in candidates}
    return min(cost, key=cost.get)


def run_chunks(chunks: tuple[tuple[int, ...], ...], iterations: int) -> tuple:
    """The chunks to run on: chunks smaller than the planned halo merged into a neighbour.

    The smallest chunk bounds the iterations per round (a halo cannot be
    deeper than a chunk), so a small last chunk (800 cells in chunks of 256
    leave 32) would cap every round; merging it costs one rechunk.
    """
    if _whole(chunks):
        return chunks
    f = _best_fusion(tuple(max(c) for c in chunks), iterations)
    return tuple(ensure_minimum_chunksize(min(f, sum(c)), c) if len(c) > 1 else c for c in chunks)


def _round(labels: da.Array, rule: _Rule, first: int, marks: tuple[int, ...]) -> da.Array:
    """One lazy round from iteration ``first``: ``(len(marks), *dims)``, the
    labels after each of ``marks`` steps (the last mark ends the round)."""
    kwargs = {
        "rule": rule,
        "first": first,
        "marks": marks,
        "dtype": labels.dtype,
        "new_axis": 0,
        "chunks": ((len(marks),), *labels.chunks),
        "meta": labels._meta[None],
    }
    if _whole(labels.chunks):
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


def _marks(step: int, steps: int, record: int | None) -> tuple[int, ...]:
    """Step counts in a round from ``step`` that end on a recorded iteration, and its end."""
    marks = []
    if record is not None:
        marks = [m for m in range(1, steps) if (step + m) % record == 0]
    return (*marks, steps)


def _unlabeled(labels: da.Array) -> da.Array:
    return (labels == UNLABELED).sum()


class _Persist:
    """Rounds of an in-memory run: persisted on the workers."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, da.Array]] = []

    def save(
        self, step: int, labels: da.Array, frames: list[tuple[int, da.Array]]
    ) -> tuple[da.Array, int]:
        labels, unlabeled, *kept = dask.persist(labels, _unlabeled(labels), *[f for _, f in frames])
        self.frames += [(t, f) for (t, _), f in zip(frames, kept, strict=True)]
        return labels, int(unlabeled.compute())


class _Checkpoint:
    """Double-buffered per-round labels (and recorded frames) inside the store.

    The two slots are Zarr arrays written in place round after round; each
    recorded frame is an array of its own under ``frames/``.
    """

    def __init__(self, path: str, params: dict) -> None:
        self.root = os.path.join(path, CHECKPOINT, "fractal")
        self.params = json.loads(json.dumps(params))
        self.state: dict[str, Any] = {}

    @property
    def marker(self) -> str:
        return os.path.join(self.root, "state.json")

    def _read(self) -> dict | None:
        try:
            with open(self.marker) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def load(self) -> tuple[int, da.Array, list[dict]]:
        state = self._read()
        if state is None:
            raise StoreError(
                f"resume: no complete fractal round is checkpointed in "
                f"{os.path.dirname(os.path.dirname(self.root))}; run without --resume"
            )
        if state["params"] != self.params:
            raise StoreError(
                "resume: the checkpoint was made with other parameters "
                f"({state['params']}); rerun with those or without --resume"
            )
        self.state = state
        labels = da.from_zarr(os.path.join(self.root, state["slot"]))
        return state["step"], labels, list(state["history"])

    @property
    def frames(self) -> list[tuple[int, da.Array]]:
        return [(t, da.from_zarr(self._frame_path(t))) for t in self.state.get("frames", [])]

    def _frame_path(self, step: int) -> str:
        return os.path.join(self.root, "frames", f"{step:09d}")

    def start(self, labels: da.Array, record: bool) -> None:
        """A fresh checkpoint: empty slots, and the start labels as frame 0."""
        import zarr

        self.clear()
        # Zarr groups, so readers of the store see a valid hierarchy.
        for path in (os.path.dirname(self.root), self.root, os.path.join(self.root, "frames")):
            zarr.open_group(path, mode="a", zarr_format=3)
        chunks = tuple(c[0] for c in labels.chunks)
        for slot in ("a", "b"):
            zarr.create_array(
                os.path.join(self.root, slot),
                shape=labels.shape,
                chunks=chunks,
                dtype=labels.dtype,
                fill_value=UNLABELED,
                zarr_format=3,
            )
        if record:
            da.to_zarr(labels, self._frame_path(0))
        self.state = {"step": 0, "slot": None, "frames": [0] if record else [], "history": []}

    def save(
        self, step: int, labels: da.Array, frames: list[tuple[int, da.Array]]
    ) -> tuple[da.Array, int]:
        import zarr

        slot = "b" if self.state.get("slot") == "a" else "a"
        target = zarr.open_array(os.path.join(self.root, slot), mode="r+")
        writes = [da.store(labels, target, lock=False, compute=False)]
        writes += [
            da.to_zarr(f, self._frame_path(t), overwrite=True, compute=False) for t, f in frames
        ]
        *_, unlabeled = dask.compute(*writes, _unlabeled(labels))
        self._mark(
            {
                "step": step,
                "slot": slot,
                "frames": self.state["frames"] + [t for t, _ in frames],
                "history": [*self.state["history"], _entry(step, unlabeled, labels.size)],
            }
        )
        return da.from_zarr(target), int(unlabeled)

    def _mark(self, state: dict) -> None:
        tmp = self.marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**state, "params": self.params}, f)
        os.replace(tmp, self.marker)  # the round counts as done only now
        self.state = state


def _entry(step: int, unlabeled: int, ncells: int) -> dict[str, float]:
    return {"iteration": step, "unlabeled": float(unlabeled) / ncells}


# --- the stage -------------------------------------------------------------------------


def _start_labels(grid: Any, start: str, nclasses: int) -> tuple[da.Array, str]:
    from gridflow.classify import initial_labels

    if start not in ("auto", "label", "counts"):
        raise ParameterError(f"start: expected 'auto', 'label' or 'counts', got {start!r}")
    if start == "auto":
        # An interrupted classify is not silently replaced by the counts.
        have = "label" in grid or "classify" in store_mod.incomplete_stages(grid)
        start = "label" if have else "counts"
    if start == "label":
        if "label" not in grid:
            store_mod.require_stage(
                grid, "classify", needed_by="fractal's start='label' (--start label)"
            )
            raise StoreError(
                "start: the grid has no label; run `gridflow classify STORE` first "
                "or start from the counts (start='counts')"
            )
        labels = da.asarray(grid["label"].data)
    else:
        counts = da.asarray(grid["counts"].data)
        labels = initial_labels(counts)
    return labels.astype(_label_dtype(nclasses)), start


def parse_iterations_burn_in(iterations: Any, burn_in: Any) -> tuple[int, int]:
    """``iterations >= 1`` and ``0 <= burn_in <= iterations``, as integers."""
    iterations = _parse_count(iterations, "iterations", 1)
    burn_in = _parse_count(burn_in, "burn_in", 0)
    if burn_in > iterations:
        raise ParameterError(
            f"burn_in: expected at most iterations ({iterations}), got {burn_in}; "
            "lower it or run more iterations"
        )
    return iterations, burn_in


@store_mod.writes_store
def fractal(
    grid: Any,
    *,
    iterations: int = 250,
    burn_in: int = 50,
    seed: int = 0,
    start: Start = "auto",
    boundary: Literal["periodic", "open"] | None = None,
    record: int | None = None,
    fuse: int | None = None,
    method: Method = "auto",
    resume: bool = False,
) -> Any:
    """Run the fractal classifier: many iterations of a random one-cell window.

    Every iteration, every cell picks one face neighbour at random and copies
    its label if it is labeled; during the first ``burn_in`` iterations only
    unlabeled cells copy (they fill the space), afterwards every cell does,
    and class boundaries turn fractal. See the module docstring for the
    exact random choice.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid from :func:`gridflow.bin_points` / :func:`gridflow.open_grid`,
        or the path of its store (the result is then written into it).
    iterations : int
        Iterations in all, burn-in included.
    burn_in : int
        Iterations at the start during which only unlabeled cells copy
        (``0 <= burn_in <= iterations``).
    seed : int
        Seed of the counter-based random choice.
    start : {"auto", "label", "counts"}
        Starting labels: the classify stage's ``label``, or each cell's
        majority class from the counts (-1 where empty, so the burn-in
        fills the space). "auto": ``label`` when the grid has it, else the
        counts.
    boundary : {"periodic", "open"}, optional
        Periodic grids wrap (the reference method's torus); on an open grid
        a cell that picks a neighbour beyond the edge keeps its label.
        Default: the grid's own (periodic when every dim wraps).
    record : int, optional
        Also keep the labels every ``record`` iterations (and the start and
        the end) as ``fractal_frames``, for :func:`gridflow.render.animate`.
    fuse : int, optional
        At most this many iterations per round (default: chosen from the
        chunks; see :func:`fusion_factor`). Never changes the result.
    method : {"auto", "compiled", "reference"}
        Block kernel: "auto" runs the compiled kernel on NumPy chunks and
        the array reference on others (CuPy). The result is the same.
    resume : bool
        Continue from the store's last complete round; safe to always pass
        (nothing checkpointed: start from the beginning; a stage finished
        with the same parameters: nothing to do).

    Returns
    -------
    xarray.Dataset
        The grid with ``fractal`` (and ``fractal_frames``, dims
        ``("fractal_iteration", *dims)``); ``attrs["gridflow_stages"]
        ["fractal"]`` holds the parameters and the fraction of unlabeled
        cells after each round.

    Examples
    --------
    >>> ds = fractal("grid.zarr", iterations=250, burn_in=50, seed=1)  # doctest: +SKIP
    >>> ds["fractal"].plot()  # doctest: +SKIP
    """
    from gridflow.classify import parse_boundary

    path = None
    if isinstance(grid, (str, os.PathLike)):
        path = os.fspath(grid)
    grid = store_mod.as_grid(grid)
    spec = store_mod.grid_spec(grid)
    iterations, burn_in = parse_iterations_burn_in(iterations, burn_in)
    seed = _parse_seed(seed)
    boundary = parse_boundary(boundary, spec)
    if record is not None:
        record = _parse_count(record, "record", 1)
    if fuse is not None:
        fuse = _parse_count(fuse, "fuse", 1)
    if method not in ("auto", "compiled", "reference"):
        raise ParameterError(f"method: expected 'auto', 'compiled' or 'reference', got {method!r}")
    nclasses = grid.sizes["class"]
    store_mod.warn_if_empty(grid, "fractal")
    labels0, start = _start_labels(grid, start, nclasses)
    if method == "compiled" and not isinstance(labels0._meta, np.ndarray):
        raise ParameterError(
            f"method: 'compiled' runs on NumPy chunks, not {type(labels0._meta).__name__}; "
            "use method='auto'"
        )
    params = {
        "iterations": iterations,
        "burn_in": burn_in,
        "seed": seed,
        "start": start,
        "boundary": boundary,
        "record": record,
    }
    rule = _Rule(seed, burn_in, spec.shape, boundary == "periodic", method)

    chunks = labels0.chunks
    run = run_chunks(chunks, iterations)
    step, cur, history = 0, labels0, []
    if path is not None:
        todo = resume_point(path, "fractal", params, resume=resume)
        if todo == "finished":
            return grid
        saver: _Persist | _Checkpoint = _Checkpoint(path, params)
        if todo == "continue":
            step, cur, history = saver.load()
            log.info("resuming fractal after iteration %d", step)
            if step >= iterations:
                raise StoreError(
                    f"resume: the checkpoint is already at iteration {step} of {iterations}"
                )
        else:
            saver.start(labels0, record is not None)
    else:
        if resume:
            raise ParameterError("resume: needs a store path; pass the store instead of a Dataset")
        saver = _Persist()
        if record is not None:
            saver.frames.append((0, labels0))

    with Progress("fractal", total=iterations) as bar:
        bar.update_to(step)
        while True:
            steps = fusion_factor(run, iterations - step)
            if fuse is not None:
                steps = min(steps, fuse)
            if record is not None:
                # Frames of a round are held in memory until it is saved.
                steps = min(steps, record * _FRAMES_PER_ROUND - step % record)
            marks = _marks(step, steps, record)
            # Saved and returned in the grid's chunks (a store's are regular).
            out = _round(cur.rechunk(run), rule, step + 1, marks).rechunk((len(marks), *chunks))
            recorded = [
                (step + m, out[i])
                for i, m in enumerate(marks)
                if record is not None and ((step + m) % record == 0 or step + m == iterations)
            ]
            step += steps
            if step == iterations:
                break
            cur, unlabeled = saver.save(step, out[-1], recorded)
            history.append(_entry(step, unlabeled, cur.size))
            bar.update_to(step)
        stage = {**params, "rounds": len(history) + 1}
        final, frames = out[-1], saver.frames + recorded
        if path is None:
            result = _in_memory(grid, final, frames, stage, history)
        else:
            result = _write(path, grid, final, frames, stage, history, saver)
        bar.update_to(step)
    return result


def _variables(grid: Any, final: da.Array, frames: list[tuple[int, da.Array]]) -> dict:
    import xarray as xr

    dims = grid["counts"].dims[1:]
    out = {
        "fractal": xr.Variable(
            dims, final, attrs={"long_name": "fractal classifier label, -1 = unlabeled"}
        )
    }
    if frames:
        stack = da.stack([f for _, f in frames])
        out["fractal_frames"] = xr.Variable(
            ("fractal_iteration", *dims),
            stack,
            attrs={"long_name": "fractal classifier labels after each recorded iteration"},
        )
    return out


def _frame_coords(frames: list[tuple[int, da.Array]]) -> dict:
    if not frames:
        return {}
    return {"fractal_iteration": np.array([t for t, _ in frames], dtype=np.int64)}


def _in_memory(grid, final, frames, stage, history) -> Any:
    variables = _variables(grid, final, frames)
    persisted = dask.persist(*[v.data for v in variables.values()])
    for v, data in zip(variables.values(), persisted, strict=True):
        v.data = data
    unlabeled = int(_unlabeled(variables["fractal"].data).compute())
    history = [*history, _entry(stage["iterations"], unlabeled, final.size)]
    ds = grid.drop_vars([v for v in ("fractal_frames", "fractal_iteration") if v in grid])
    ds = ds.assign_coords(_frame_coords(frames)).assign(variables)
    ds.attrs = store_mod.stage_attrs(grid.attrs, "fractal", stage, history=history)
    return ds


def _write(path, grid, final, frames, stage, history, ckpt) -> Any:
    """The stage into the store, whole; then the checkpoint is removed."""

    def record(unlabeled: Any) -> dict[str, Any]:
        return {"history": [*history, _entry(stage["iterations"], unlabeled, final.size)]}

    ds, _ = store_mod.write_stage(
        path,
        "fractal",
        _variables(grid, final, frames),
        stage,
        coords=_frame_coords(frames),
        extra=_unlabeled(final),
        record=record,
    )
    ckpt.clear()
    log.info("fractal: %d iterations written to %s", stage["iterations"], path)
    return ds
