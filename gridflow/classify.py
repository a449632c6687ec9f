"""Supervised classification: fill the space with labels (DESIGN §3.1).

:func:`classify` seeds every cell that holds training points with its
majority class, then iterates the vote filter of :mod:`gridflow.stencil`
until the requested number of steps (or, with ``iterations="auto"``, until a
step labels no new cell and changes at most ``tol`` of the cells). It writes
``label``, ``confidence``, ``density`` and optionally ``probability``.

With a store, every round is checkpointed into the store (two alternating
slots under ``_gridflow_checkpoint/classify``; a small JSON marker naming the
complete slot is replaced last), so ``resume=True`` continues a killed run
from its last complete round and gives the identical result. The stage is
recorded in the store's attributes only after its variables are written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from gridflow.errors import ParameterError, StoreError
from gridflow.kernels import Kernel, parse_kernel
from gridflow.progress import Progress
from gridflow.stencil import FinalRound, RoundState, history_entries, run_dask

__all__ = ["classify", "tune"]

log = logging.getLogger(__name__)

CHECKPOINT = "_gridflow_checkpoint"


def parse_iterations(iterations: int | str) -> int | None:
    """A positive number of steps, or None for ``"auto"``."""
    if iterations == "auto":
        return None
    try:
        n = int(iterations)
    except (TypeError, ValueError):
        raise ParameterError(
            f"iterations: expected a positive integer or 'auto', got {iterations!r}"
        ) from None
    if (n != iterations and str(n) != str(iterations)) or n < 1:
        raise ParameterError(
            f"iterations: expected a positive integer or 'auto', got {iterations!r}"
        )
    return n


def parse_boundary(boundary: str) -> str:
    if boundary not in ("periodic", "open"):
        raise ParameterError(f"boundary: expected 'periodic' or 'open', got {boundary!r}")
    return boundary


def initial_labels(counts: da.Array) -> da.Array:
    """L0: the majority class of each cell holding points (lowest on ties), else -1."""
    return counts.map_blocks(_majority, drop_axis=0, dtype=np.int32)


def _majority(block: np.ndarray) -> np.ndarray:
    return np.where(block.sum(axis=0) > 0, block.argmax(axis=0), -1).astype(np.int32)


def classify(
    grid: Any,
    *,
    kernel: str | np.ndarray | Kernel = "inverse_distance",
    window: int | None = 10,
    iterations: int | Literal["auto"] = 3,
    boundary: Literal["periodic", "open"] = "periodic",
    seed: Literal["labels", "counts"] = "labels",
    clamp: bool = False,
    probabilities: bool = False,
    sigma: float | None = None,
    method: str = "auto",
    tol: float = 1e-4,
    max_iter: int = 100,
    fuse: int | None = None,
    resume: bool = False,
) -> Any:
    """Classify every cell of a grid by iterating the vote filter.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid from :func:`gridflow.bin_points` / :func:`gridflow.open_grid`,
        or the path of its store (results are then written into it).
    kernel : {"inverse_distance", "box", "gaussian"} or array
        Window weights; a user array has odd sides (``window`` may be None).
    window : int
        Radius ``w``: 10 means a cube 21 cells wide.
    iterations : int or "auto"
        Vote steps, or "auto": stop when a step labels no new cell and
        changes at most ``tol`` of the cells (at most ``max_iter`` steps).
    boundary : {"periodic", "open"}
        Periodic grids wrap; open grids have nothing beyond their edges.
    seed : {"labels", "counts"}
        What the first step votes with: each seeded cell's majority label
        (the reference method), or the counts themselves (every training
        point votes).
    clamp : bool
        Keep the cells holding training points at their majority class.
    probabilities : bool
        Also store the vote fractions ``probability`` (class, *dims).
    resume : bool
        Continue from the store's last complete round.

    Returns
    -------
    xarray.Dataset
        The grid with ``label``, ``confidence``, ``density`` (and
        ``probability``); ``attrs["gridflow_stages"]["classify"]`` holds the
        parameters and the fractions of cells labeled and changed per step.

    Examples
    --------
    >>> ds = classify("grid.zarr", window=5, iterations="auto")  # doctest: +SKIP
    >>> ds["label"].plot()  # doctest: +SKIP
    """
    from gridflow import store as store_mod

    path = None
    if isinstance(grid, (str, os.PathLike)):
        path = os.fspath(grid)
        grid = store_mod.open_grid(path)
    spec = store_mod.grid_spec(grid)
    counts = grid["counts"].data
    if not isinstance(counts, da.Array):  # an in-memory grid: one chunk
        counts = da.from_array(counts, chunks=counts.shape)
    nclasses = counts.shape[0]
    k = parse_kernel(kernel, window=window, ndim=spec.ndim, sigma=sigma)
    n = parse_iterations(iterations)
    boundary = parse_boundary(boundary)
    if seed not in ("labels", "counts"):
        raise ParameterError(f"seed: expected 'labels' or 'counts', got {seed!r}")
    if not (0 <= tol < 1):
        raise ParameterError(f"tol: expected a fraction in [0, 1), got {tol}")
    if method not in ("auto", "direct", "separable", "box", "fft"):
        raise ParameterError(
            f"method: expected 'auto', 'direct', 'separable', 'box' or 'fft', got {method!r}"
        )
    params = {
        "kernel": k.name if isinstance(kernel, (str, Kernel)) else "array",
        "window": list(k.radius),
        "sigma": sigma,
        "iterations": iterations,
        "boundary": boundary,
        "seed": seed,
        "clamp": bool(clamp),
        "tol": tol,
        "max_iter": max_iter,
        "weights_sha": _weights_digest(k),
    }

    labels0 = initial_labels(counts)
    history: list[dict[str, float]] = []
    start = None
    materialise = None
    if path is not None:
        ckpt = _Checkpoint(path, params, labels0.shape)
        if resume:
            start, history = ckpt.load()
            log.info("resuming classify from step %d", start.step)
        else:
            ckpt.clear()
        materialise = ckpt.save
    elif resume:
        raise ParameterError("resume: needs a store path; pass the store instead of a Dataset")

    bar = Progress("classify", total=n or max_iter, unit="step")
    final = run_dask(
        labels0,
        nclasses=nclasses,
        kernel=k,
        iterations=n,
        boundary=boundary,
        method=method,
        clamp=clamp,
        fuse=fuse,
        tol=tol,
        max_iter=max_iter,
        start=start,
        materialise=bar.rounds(materialise or _persist),
        history=history,
        seed_counts=counts.astype(np.float64) if seed == "counts" else None,
    )
    outputs = _outputs(final, nclasses, probabilities, grid)
    stage = {**params, "steps": final.step, "probabilities": bool(probabilities)}
    if path is None:
        computed = dask.persist(*outputs.values(), final.stats)
        stats = None if final.stats is None else dask.compute(computed[-1])[0]
        _record(history, final, stats, labels0.size)
        ds = grid.assign(dict(zip(outputs, computed[:-1], strict=True)))
        ds.attrs = _stage_attrs(grid.attrs, stage, history)
        bar.finish(final.step)
        return ds
    ds = _write(path, grid, outputs, final, history, stage, labels0.size, ckpt)
    bar.finish(final.step)
    return ds


def _persist(state: RoundState, stats: Any) -> tuple[RoundState, np.ndarray]:
    """A round of an in-memory run, persisted on the workers (as run_dask does)."""
    labels, density, stats = dask.persist(state.labels, state.density, stats)
    return RoundState(state.step, labels, density), np.asarray(dask.compute(stats)[0])


def _weights_digest(k: Kernel) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(k.weights).tobytes()).hexdigest()[:16]


def _outputs(final: FinalRound, nclasses: int, probabilities: bool, grid: Any) -> dict[str, Any]:
    import xarray as xr

    dims = grid["counts"].dims[1:]
    votes = final.votes
    total = votes.sum(axis=0)
    safe = da.where(total > 0, total, 1.0)
    confidence = da.where(total > 0, votes.max(axis=0) / safe, 0.0).astype(np.float32)
    label_dtype = np.int16 if nclasses < 2**15 else np.int32
    out = {
        "label": xr.Variable(
            dims,
            final.labels.astype(label_dtype),
            attrs={"long_name": "class index, -1 = unlabeled"},
        ),
        "confidence": xr.Variable(
            dims, confidence, attrs={"long_name": "winning vote / total vote"}
        ),
        "density": xr.Variable(
            dims, final.density.astype(np.float32), attrs={"long_name": "damped filtered density"}
        ),
    }
    if probabilities:
        prob = (votes / safe).astype(np.float32)
        out["probability"] = xr.Variable(
            ("class", *dims), prob, attrs={"long_name": "vote fraction per class"}
        )
    return out


def _record(history: list, final: FinalRound, stats: Any, ncells: int) -> None:
    if final.stats is not None:
        history.extend(history_entries(final.first_step, np.asarray(stats), ncells))


def _stage_attrs(attrs: dict, stage: dict, history: list) -> dict:
    from gridflow.store import history_line

    attrs = dict(attrs)
    stages = dict(attrs.get("gridflow_stages", {}))
    stages["classify"] = {**stage, "history": history}
    attrs["gridflow_stages"] = stages
    line = history_line("classify", stage)
    attrs["history"] = (attrs.get("history", "") + "\n" + line).strip("\n")
    return attrs


def _write(path, grid, outputs, final, history, stage, ncells, ckpt) -> Any:
    import xarray as xr
    import zarr

    from gridflow import store as store_mod

    group = zarr.open_group(path, mode="r+")
    # Mark the stage incomplete before touching its variables.
    stages = dict(group.attrs.get("gridflow_stages", {}))
    stages.pop("classify", None)
    attrs = {**dict(group.attrs), "gridflow_stages": stages}
    group.attrs.update(attrs)
    ds = xr.Dataset(outputs, coords={d: grid[d] for d in grid["counts"].dims[1:]}, attrs=attrs)
    if "probability" not in outputs and "probability" in grid:
        del group["probability"]  # stale from an earlier run with probabilities
    writes = ds.drop_vars(list(ds.coords)).to_zarr(
        path, mode="a", zarr_format=3, consolidated=False, compute=False
    )
    _, stats = dask.compute(writes, final.stats)
    _record(history, final, stats, ncells)
    group.attrs.update(_stage_attrs(attrs, stage, history))  # the marker, last
    ckpt.clear()
    log.info("classify: %d steps written to %s", final.step, path)
    return store_mod.open_grid(path)


class _Checkpoint:
    """Double-buffered per-round state inside the store."""

    def __init__(self, path: str, params: dict, shape: tuple[int, ...]) -> None:
        self.root = os.path.join(path, CHECKPOINT, "classify")
        self.params = json.loads(json.dumps(params))
        self.shape = shape
        self.history: list[dict[str, float]] = []

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

    def load(self) -> tuple[RoundState, list[dict[str, float]]]:
        state = self._read()
        if state is None:
            raise StoreError(
                f"resume: no complete classify round is checkpointed in {os.path.dirname(self.root)}; "
                "run without --resume"
            )
        if state["params"] != self.params:
            raise StoreError(
                "resume: the checkpoint was made with other parameters "
                f"({state['params']}); rerun with those or without --resume"
            )
        slot = os.path.join(self.root, state["slot"])
        labels = da.from_zarr(os.path.join(slot, "labels"))
        density = da.from_zarr(os.path.join(slot, "density"))
        self.history = list(state["history"])
        return RoundState(state["step"], labels, density), list(state["history"])

    def save(self, state: RoundState, stats: Any) -> tuple[RoundState, np.ndarray]:
        import zarr

        # Zarr groups, so readers of the store see a valid hierarchy.
        zarr.open_group(os.path.dirname(self.root), mode="a", zarr_format=3)
        zarr.open_group(self.root, mode="a", zarr_format=3)
        previous = self._read()
        slot = "b" if previous is not None and previous["slot"] == "a" else "a"
        base = os.path.join(self.root, slot)
        targets = {"labels": state.labels, "density": state.density}
        writes = [
            da.to_zarr(a, os.path.join(base, name), overwrite=True, compute=False)
            for name, a in targets.items()
        ]
        *_, counts = dask.compute(*writes, stats)
        counts = np.asarray(counts)
        first = state.step - counts.shape[1] + 1
        self.history = (previous or {}).get("history", []) + history_entries(
            first, counts, int(np.prod(self.shape))
        )
        tmp = self.marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"step": state.step, "slot": slot, "params": self.params, "history": self.history},
                f,
            )
        os.replace(tmp, self.marker)  # the round counts as done only now
        loaded = RoundState(
            state.step,
            da.from_zarr(os.path.join(base, "labels")),
            da.from_zarr(os.path.join(base, "density")),
        )
        return loaded, counts


def tune(
    grid: Any,
    *,
    windows: tuple[int, ...] = (1, 2, 3, 5, 8, 13),
    iterations: tuple[int, ...] = (1, 2, 3, 5, 8),
    holdout: float = 0.2,
    random_state: int = 0,
    **kwargs: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick ``window`` and ``iterations`` by accuracy on held-out training points.

    The store holds counts, not points, so each cell's points are split at
    random (binomially, with a counter-based draw per class and cell, so the
    split does not depend on the chunking): ``holdout`` of them are held
    out, the rest classified with each candidate, and a candidate scores the
    fraction of held-out points whose cell it labels with their class. Ties
    go to the smaller window, then fewer iterations; ``random_state`` seeds
    the split. Windows that do not fit
    the grid are skipped. Other keyword arguments go to :func:`classify`.

    Returns ``(best, results)``: the best ``{"window", "iterations"}`` and
    one ``{"window", "iterations", "accuracy"}`` per candidate.
    """
    from gridflow import store as store_mod

    grid = store_mod.as_grid(grid)
    if not 0 < holdout < 1:
        raise ParameterError(f"holdout: expected a fraction in (0, 1), got {holdout}")
    counts = da.asarray(grid["counts"].data)
    held = counts.map_blocks(_thin, holdout, random_state, counts.shape, dtype=counts.dtype)
    train = grid.assign(counts=(grid["counts"].dims, counts - held))
    (held,) = dask.persist(held)
    total = float(held.sum().compute())
    if total == 0:
        raise ParameterError("holdout: no point was held out; use more points or a larger holdout")
    spec = store_mod.grid_spec(grid)
    results = []
    for w in windows:
        if 2 * w + 1 > min(spec.bins):
            continue
        for n in iterations:
            out = classify(train, window=w, iterations=n, **kwargs)
            labels = out["label"].data
            hits = da.stack([(labels == k) * held[k] for k in range(counts.shape[0])]).sum()
            results.append(
                {"window": w, "iterations": n, "accuracy": float(hits.compute()) / total}
            )
    if not results:
        raise ParameterError("windows: no candidate window fits the grid; give smaller windows")
    best = max(results, key=lambda r: (r["accuracy"], -r["window"], -r["iterations"]))
    return {"window": best["window"], "iterations": best["iterations"]}, results


def _thin(
    block: np.ndarray, fraction: float, seed: int, shape: tuple, block_info=None
) -> np.ndarray:
    """Binomial(count, fraction) per class and cell, from a counter-based uniform."""
    from scipy.stats import binom

    from gridflow.counter_rng import uniform

    loc = block_info[0]["array-location"]
    index = np.ravel_multi_index(
        np.meshgrid(*[np.arange(a, b) for a, b in loc], indexing="ij"), shape
    )
    u = uniform(seed, 0, index)
    held = binom.ppf(u, block, fraction)
    return np.where(block > 0, held, 0).astype(block.dtype)
