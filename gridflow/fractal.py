"""The fractal classifier: iterated random-neighbour copy (docs/design.md §3.3).

The step, its compiled kernel and its array reference are the engine's
(:mod:`gridflow.engine.neighbour`); this stage picks the starting labels,
runs the iterations in rounds (:func:`gridflow.engine.rounds.run_rounds`,
the same driver as the vote filter's) and writes the result.

With a store, each round is checkpointed into it
(:class:`gridflow.checkpoint.RoundCheckpoint`: two alternating slots under
``_gridflow_checkpoint/fractal``, recorded frames beside them, a JSON
marker naming the complete slot replaced last), so ``resume=True``
continues a killed run from its last complete round and gives the identical
result.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from gridflow import store as store_mod
from gridflow._types import (
    FRACTAL_METHODS,
    FRACTAL_STARTS,
    Boundary,
    FractalMethod,
    FractalStart,
    choices,
)
from gridflow.backend import move, ops
from gridflow.checkpoint import RoundCheckpoint, resume_point
from gridflow.engine.neighbour import STEP_COST, Rule, neighbour_round, run_reference
from gridflow.engine.rounds import fusion_factor, round_chunks, run_rounds
from gridflow.engine.vote import UNLABELED
from gridflow.errors import ParameterError, StoreError
from gridflow.progress import Progress

__all__ = ["fractal", "parse_iterations_burn_in", "run_reference"]

log = logging.getLogger(__name__)

# At most this many recorded frames per round (they are held until it is saved).
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


# --- the stage -------------------------------------------------------------------------


def _start_labels(grid: Any, start: str, nclasses: int) -> tuple[da.Array, str]:
    from gridflow.classify import initial_labels

    if start not in FRACTAL_STARTS:
        raise ParameterError(f"start: expected {choices(FRACTAL_STARTS)}, got {start!r}")
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
    start: FractalStart = "auto",
    boundary: Boundary | None = None,
    record: int | None = None,
    fuse: int | None = None,
    method: FractalMethod = "auto",
    resume: bool = False,
    backend: str | None = None,
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
        chunks by :func:`gridflow.engine.rounds.fusion_factor`). Never
        changes the result.
    method : {"auto", "compiled", "reference"}
        Block kernel: "auto" runs the compiled kernel on NumPy chunks and
        the array reference on others (CuPy). The result is the same.
    resume : bool
        Continue from the store's last complete round; safe to always pass
        (nothing checkpointed: start from the beginning; a stage finished
        with the same parameters: nothing to do).
    backend : {"numpy", "cupy"}, optional
        Where the dense chunks are computed: host memory, or the CUDA device
        (CuPy; gridflow[gpu]). Default: as the grid's chunks are. Results move
        to the host only to be written.

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

    path, grid, spec, _ = store_mod.stage_input(grid, backend)
    iterations, burn_in = parse_iterations_burn_in(iterations, burn_in)
    seed = _parse_seed(seed)
    boundary = parse_boundary(boundary, spec)
    if record is not None:
        record = _parse_count(record, "record", 1)
    if fuse is not None:
        fuse = _parse_count(fuse, "fuse", 1)
    if method not in FRACTAL_METHODS:
        raise ParameterError(f"method: expected {choices(FRACTAL_METHODS)}, got {method!r}")
    nclasses = grid.sizes["class"]
    store_mod.warn_if_empty(grid, "fractal")
    labels0, start = _start_labels(grid, start, nclasses)
    labels0 = move(labels0, backend)
    if method == "compiled" and ops(labels0).kernel("fractal") is None:
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
    if path is not None:
        todo = resume_point(path, "fractal", params, resume=resume)
        if todo == "finished":
            return grid
    elif resume:
        raise ParameterError("resume: needs a store path; pass the store instead of a Dataset")
    rounds = _Rounds(path, params, labels0, record)
    if path is not None and todo == "continue":
        rounds.load(iterations)
        log.info("resuming fractal after iteration %d", rounds.state.step)
    else:
        rounds.start()

    rule = Rule(seed, burn_in, spec.shape, boundary == "periodic", method)
    chunks = labels0.chunks
    whole = all(len(c) == 1 for c in chunks)
    run = (
        chunks if whole else round_chunks(chunks, (1,) * len(chunks), _planned(chunks, iterations))
    )

    def plan(done: int, remaining: int) -> int:
        steps = fusion_factor(run, (1,) * len(run), remaining, STEP_COST, whole=whole)
        if fuse is not None:
            steps = min(steps, fuse)
        if record is not None:
            steps = min(steps, record * _FRAMES_PER_ROUND - done % record)
        return steps

    def compute(state: _State, steps: int) -> tuple[da.Array, list[tuple[int, da.Array]]]:
        """A lazy round, in the grid's chunks (a store's are regular), and its frames."""
        marks = _marks(state.step, steps, record)
        out = neighbour_round(state.labels.rechunk(run), rule, state.step + 1, marks)
        out = out.rechunk((len(marks), *chunks))
        frames = [
            (state.step + m, out[i])
            for i, m in enumerate(marks)
            if record is not None
            and ((state.step + m) % record == 0 or state.step + m == iterations)
        ]
        return out[-1], frames

    with Progress("fractal", total=iterations) as bar:
        bar.update_to(rounds.state.step)

        def materialise(state: _State, steps: int) -> tuple[_State, None]:
            new = rounds.save(state.step + steps, *compute(state, steps))
            bar.update_to(new.step)
            return new, None

        state, steps = run_rounds(
            rounds.state,
            step=lambda st: st.step,
            limit=iterations,
            plan=plan,
            materialise=materialise,
        )
        final, recorded = compute(state, steps)
        stage = {**params, "rounds": len(rounds.history) + 1}
        frames = rounds.frames + recorded
        coords = {}
        if frames:
            coords["fractal_iteration"] = np.array([t for t, _ in frames], dtype=np.int64)

        def history(unlabeled: Any) -> dict[str, Any]:
            return {"history": [*rounds.history, _entry(iterations, unlabeled, final.size)]}

        result = store_mod.apply_stage(
            grid,
            path,
            "fractal",
            _variables(grid, final, frames),
            stage,
            coords=coords,
            extra=_unlabeled(final),
            record=history,
        )
        rounds.finish()
        bar.update_to(iterations)
    return result


def _planned(chunks: tuple[tuple[int, ...], ...], iterations: int) -> int:
    """Iterations per round the largest chunks would run (small chunks are merged to it)."""
    return fusion_factor(
        tuple((max(c),) for c in chunks), (1,) * len(chunks), iterations, STEP_COST
    )


def _marks(step: int, steps: int, record: int | None) -> tuple[int, ...]:
    """Step counts in a round from ``step`` that end on a recorded iteration, and its end."""
    marks = []
    if record is not None:
        marks = [m for m in range(1, steps) if (step + m) % record == 0]
    return (*marks, steps)


def _unlabeled(labels: da.Array) -> da.Array:
    return (labels == UNLABELED).sum()


def _entry(step: int, unlabeled: int, ncells: int) -> dict[str, float]:
    return {"iteration": step, "unlabeled": float(unlabeled) / ncells}


@dataclass
class _State:
    """The labels after ``step`` iterations."""

    step: int
    labels: da.Array


class _Rounds:
    """Every round but the last: persisted on the workers, or checkpointed into the store.

    Recorded frames are kept with the rounds (in the checkpoint's
    ``frames/`` for a store), so a resumed run returns all of them.
    """

    def __init__(self, path: str | None, params: dict, labels0: da.Array, record: int | None):
        self.ckpt = None if path is None else RoundCheckpoint(path, "fractal", params)
        self.labels0 = labels0
        self.record = record
        self.state = _State(0, labels0)
        self.frames: list[tuple[int, da.Array]] = []
        self.history: list[dict[str, float]] = []

    def start(self) -> None:
        if self.ckpt is not None:
            self.ckpt.clear()
        if self.record is not None:
            self.frames = self._keep([(0, self.labels0)])

    def load(self, iterations: int) -> None:
        saved = self.ckpt.load()
        if saved.step >= iterations:
            raise StoreError(
                f"resume: the checkpoint is already at iteration {saved.step} of {iterations}"
            )
        self.state = _State(saved.step, saved.arrays["labels"])
        self.history = saved.history
        self.frames = [(int(name), self.ckpt.frame(name)) for name in saved.frames]

    def _keep(self, frames: list[tuple[int, da.Array]]) -> list[tuple[int, da.Array]]:
        if self.ckpt is None:
            return list(
                zip([t for t, _ in frames], dask.persist(*[f for _, f in frames]), strict=True)
            )
        written = self.ckpt.add_frames({_frame_name(t): f for t, f in frames})
        return [(t, written[_frame_name(t)]) for t, _ in frames]

    def save(self, step: int, labels: da.Array, frames: list[tuple[int, da.Array]]) -> _State:
        ncells = labels.size
        if self.ckpt is None:
            labels, unlabeled, *kept = dask.persist(
                labels, _unlabeled(labels), *[f for _, f in frames]
            )
            self.frames += [(t, f) for (t, _), f in zip(frames, kept, strict=True)]
            self.history.append(_entry(step, int(unlabeled.compute()), ncells))
        else:
            arrays, _ = self.ckpt.save(
                step,
                {"labels": labels},
                _unlabeled(labels),
                history=lambda unlabeled: [_entry(step, unlabeled, ncells)],
                frames={_frame_name(t): f for t, f in frames},
            )
            labels = arrays["labels"]
            self.frames += [(t, self.ckpt.frame(_frame_name(t))) for t, _ in frames]
            self.history = list(self.ckpt.history)
        self.state = _State(step, labels)
        return self.state

    def finish(self) -> None:
        """The stage is written: its rounds are no longer needed."""
        if self.ckpt is not None:
            self.ckpt.clear()


def _frame_name(step: int) -> str:
    return f"{step:09d}"


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
