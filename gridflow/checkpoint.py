"""Per-round checkpoints of multi-round stages, inside their store (docs/design.md §4).

A stage that iterates in rounds (classify, fractal) saves its state after
every round into ``<store>/_gridflow_checkpoint/<stage>/``: two alternating
slots ``a`` and ``b`` of Zarr arrays, and a small JSON marker ``state.json``
naming the complete slot, replaced atomically (``os.replace``) only after
the slot is fully written. A run killed at any moment leaves either the
previous complete round or the new one; never a slot that reads as complete
but is not. ``resume`` continues from the marker's round, after checking
that it was made with the same parameters.

The marker also keeps the stage's per-step ``history`` and a ``rounds`` log
(``{"first", "last", "run"}`` per computed round, ``run`` counting the
attempts), so a resumed run can show that it recomputed no finished round.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da

from gridflow import sparse_store
from gridflow.errors import StoreError
from gridflow.sparse_grid import is_sparse

__all__ = ["CHECKPOINT", "RoundCheckpoint", "Saved", "has_checkpoint", "resume_point"]

log = logging.getLogger(__name__)

CHECKPOINT = "_gridflow_checkpoint"


@dataclass
class Saved:
    """A checkpointed round: ``step`` steps done, the stage's arrays after it."""

    step: int
    arrays: dict[str, da.Array]
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, int]] = field(default_factory=list)
    #: Names of the frames kept so far (see :meth:`RoundCheckpoint.add_frames`).
    frames: list[str] = field(default_factory=list)


def has_checkpoint(path: str | os.PathLike, stage: str) -> bool:
    """Whether ``path`` holds a complete checkpointed round of ``stage``."""
    marker = os.path.join(os.fspath(path), CHECKPOINT, stage, "state.json")
    return os.path.exists(marker)


def resume_point(
    path: str | os.PathLike,
    stage: str,
    params: Mapping[str, Any],
    *,
    resume: bool,
    result: Mapping[str, Any] | None = None,
) -> str:
    """What a run of ``stage`` on a store does: ``"start"``, ``"continue"`` or ``"finished"``.

    Without ``resume`` a run starts from the beginning. With it (safe to
    always pass, as batch scripts do on requeue) a stage already finished
    with the same ``params`` (and ``result`` settings, e.g. whether
    probabilities were stored) is ``"finished"``; else a checkpoint made
    with the same ``params`` is continued; else the run starts from the
    beginning, and says why.
    """
    from gridflow.store import _root_attrs

    if not resume:
        return "start"
    store = os.fspath(path)
    want = json.loads(json.dumps({**params, **(result or {})}, default=str))
    done = _root_attrs(store).get("gridflow_stages", {}).get(stage)
    if isinstance(done, dict) and all(done.get(k) == v for k, v in want.items()):
        log.info("resume: the %s stage of %s is finished; nothing to do", stage, store)
        return "finished"
    marker = os.path.join(store, CHECKPOINT, stage, "state.json")
    try:
        with open(marker) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = None
    if state is None:
        log.info(
            "resume: no %s round is checkpointed in %s; starting from the beginning", stage, store
        )
        return "start"
    if not isinstance(state.get("arrays"), list) or "slot" not in state:
        log.warning(
            "resume: the %s checkpoint in %s was written in an older layout; "
            "starting from the beginning",
            stage,
            store,
        )
        return "start"
    if state.get("params") != json.loads(json.dumps(dict(params), default=str)):
        log.warning(
            "resume: the %s checkpoint in %s was made with other parameters; "
            "starting from the beginning",
            stage,
            store,
        )
        return "start"
    return "continue"


class RoundCheckpoint:
    """Double-buffered per-round state of one stage inside its store.

    Parameters
    ----------
    path : path
        The store.
    stage : str
        Stage name (the checkpoint's folder).
    params : dict
        JSON-able parameters that determine the result; a checkpoint made
        with other parameters is refused on resume.

    Examples
    --------
    >>> ckpt = RoundCheckpoint("grid.zarr", "classify", {"window": 3})  # doctest: +SKIP
    >>> arrays, stats = ckpt.save(2, {"labels": labels}, stats)  # doctest: +SKIP
    >>> ckpt.load().step  # doctest: +SKIP
    2
    """

    def __init__(self, path: str | os.PathLike, stage: str, params: dict) -> None:
        self.store = os.fspath(path)
        self.stage = stage
        self.root = os.path.join(self.store, CHECKPOINT, stage)
        self.params = json.loads(json.dumps(params))
        self.history: list[dict[str, Any]] = []
        self.rounds: list[dict[str, int]] = []
        self.frames: list[str] = []
        self.run = 1
        self.step = 0

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
        """Forget every round (a fresh run, or the stage's results are written)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.history, self.rounds, self.frames, self.run, self.step = [], [], [], 1, 0

    def load(self) -> Saved:
        """The last complete round; this checkpoint continues from it."""
        state = self._read()
        if state is None:
            raise StoreError(
                f"resume: no complete {self.stage} round is checkpointed in {self.store}; "
                "run without --resume"
            )
        if state["params"] != self.params:
            raise StoreError(
                f"resume: the {self.stage} checkpoint was made with other parameters "
                f"({state['params']}); rerun with those or without --resume"
            )
        slot = os.path.join(self.root, state["slot"])
        arrays = {name: _read(slot, name) for name in state["arrays"]}
        self.history = list(state["history"])
        self.rounds = list(state.get("rounds", []))
        self.frames = list(state.get("frames", []))
        self.run = max((r["run"] for r in self.rounds), default=0) + 1
        self.step = int(state["step"])
        return Saved(self.step, arrays, list(self.history), list(self.rounds), list(self.frames))

    def frame(self, name: str) -> da.Array:
        """A kept frame, read back from the checkpoint."""
        return da.from_zarr(os.path.join(self.root, "frames", name))

    def _frame_writes(self, frames: Mapping[str, da.Array]) -> list[Any]:
        return [
            da.to_zarr(a, os.path.join(self.root, "frames", name), overwrite=True, compute=False)
            for name, a in frames.items()
        ]

    def _groups(self) -> None:
        # Zarr groups, so readers of the store see a valid hierarchy.
        import zarr

        for path in (os.path.dirname(self.root), self.root, os.path.join(self.root, "frames")):
            zarr.open_group(path, mode="a", zarr_format=3)

    def add_frames(self, frames: Mapping[str, da.Array]) -> dict[str, da.Array]:
        """Write frames now (e.g. the start of a run); the next :meth:`save`'s marker lists them.

        Frames are arrays kept beside the slots (recorded iterations): each
        is written once, under its own name, and read back by :meth:`frame`.
        """
        self._groups()
        dask.compute(*self._frame_writes(frames))
        self.frames = [*self.frames, *frames]
        return {name: self.frame(name) for name in frames}

    def save(
        self,
        step: int,
        arrays: Mapping[str, da.Array],
        extra: Any = None,
        history: Callable[[Any], list[dict[str, Any]]] | None = None,
        frames: Mapping[str, da.Array] | None = None,
    ) -> tuple[dict[str, da.Array], Any]:
        """Write the state after ``step`` steps, then mark it complete.

        ``extra`` (anything dask computes, e.g. per-step statistics) is
        computed in the same pass as the arrays, and so are ``frames`` (see
        :meth:`add_frames`); ``history(extra)`` gives the per-step entries
        this round adds. Returns the arrays read back from the checkpoint
        (their graphs start here) and ``extra`` computed.
        """
        self._groups()
        frames = dict(frames or {})
        previous = self._read()
        slot = "b" if previous is not None and previous["slot"] == "a" else "a"
        base = os.path.join(self.root, slot)
        dense = {name: a for name, a in arrays.items() if not is_sparse(a)}
        # Sparse arrays (COO chunks) are kept as the store keeps them (sorted keys).
        sparse_vars = {name: _variable(a) for name, a in arrays.items() if is_sparse(a)}
        writes = [
            da.to_zarr(a, os.path.join(base, name), overwrite=True, compute=False)
            for name, a in dense.items()
        ]
        writes += self._frame_writes(frames)
        spooled = sparse_store.spool(base, sparse_vars) if sparse_vars else {}
        *_, cells, extra = dask.compute(*writes, spooled, extra)
        if sparse_vars:
            sparse_store.finish(base, sparse_vars, sparse_store.spooled_cells(cells))
        self.frames = [*self.frames, *frames]
        self.history = self.history + (history(extra) if history is not None else [])
        self.rounds = [*self.rounds, {"first": self.step + 1, "last": step, "run": self.run}]
        self.step = step
        tmp = self.marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "stage": self.stage,
                    "step": step,
                    "slot": slot,
                    "arrays": list(arrays),
                    "params": self.params,
                    "history": self.history,
                    "rounds": self.rounds,
                    "frames": self.frames,
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.marker)  # the round counts as done only now
        loaded = {name: _read(base, name) for name in arrays}
        return loaded, extra

    def final_round(self, last: int) -> list[dict[str, int]]:
        """The rounds log with the stage's last (unsaved) round up to step ``last``."""
        if last <= self.step:
            return list(self.rounds)
        return [*self.rounds, {"first": self.step + 1, "last": last, "run": self.run}]


def _variable(a: da.Array) -> Any:
    import xarray as xr

    return xr.Variable(tuple(f"dim_{i}" for i in range(a.ndim)), a)


def _read(slot: str, name: str) -> da.Array:
    """An array of a checkpoint slot: a Zarr array, or a sparse group (COO chunks)."""
    if sparse_store.is_sparse_group(os.path.join(slot, name)):
        return sparse_store.read_variable(slot, name).data
    return da.from_zarr(os.path.join(slot, name))
