"""Supervised classification: fill the space with labels (docs/design.md §3.1).

:func:`classify` seeds every cell that holds training points with its
majority class, then iterates the vote filter of :mod:`gridflow.engine.vote`
until the requested number of steps (or, with ``iterations="auto"``, until a
step labels no new cell and changes at most ``tol`` of the cells). It writes
``label``, ``confidence``, ``density`` and optionally ``probability``.

With a store, every round is checkpointed into the store
(:class:`gridflow.checkpoint.RoundCheckpoint`: two alternating slots under
``_gridflow_checkpoint/classify``; a small JSON marker naming the complete
slot is replaced last), so ``resume=True`` continues a killed run from its
last complete round and gives the identical result. The stage is recorded
in the store's attributes only after its variables are written, with a
``rounds`` log saying which attempt computed which steps.

The chunks and the steps fused per round come from the memory planner
(:func:`gridflow.engine.planner.plan_filter`): the store's chunks are kept when a
worker can hold their rounds, and made smaller when it cannot.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from gridflow import store as store_mod
from gridflow._types import (
    BOUNDARIES,
    CORRELATION_METHODS,
    SEEDS,
    SUPPORTS,
    Boundary,
    CorrelationMethod,
    Seed,
    Support,
    choices,
)
from gridflow.backend import meta_like, ops
from gridflow.checkpoint import RoundCheckpoint, resume_point
from gridflow.engine.vote import (
    FinalRound,
    RoundState,
    check_window,
    decide,
    history_entries,
    persist_round,
    run_dask,
)
from gridflow.errors import BoundaryWarning, ConvergenceWarning, ParameterError
from gridflow.kernels import Kernel, parse_kernel
from gridflow.progress import Progress
from gridflow.sparse_grid import MAX_SPLIT_DIMS, is_sparse

__all__ = ["classify", "tune"]

log = logging.getLogger(__name__)


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


def parse_boundary(
    boundary: str | None,
    spec: Any = None,
    *,
    allowed: tuple[str, ...] = BOUNDARIES,
    stacklevel: int = 2,
) -> str:
    """One of ``allowed`` (the filters' :data:`~gridflow._types.BOUNDARIES`, or
    :data:`~gridflow._types.FILTER_BOUNDARIES` for window filters); None: the
    grid's own geometry.

    A grid is stepped as periodic only when every dim wraps. Asking for
    ``"periodic"`` on a grid whose dims do not wrap warns
    (:class:`~gridflow.errors.BoundaryWarning`, at ``stacklevel`` above the
    caller): its far edges would see each other.
    """
    if boundary is None:
        if spec is None:
            return "periodic"
        return "periodic" if all(spec.periodic) else "open"
    if boundary not in allowed:
        hint = "" if allowed == BOUNDARIES else " or None (the grid's own)"
        raise ParameterError(f"boundary: expected {choices(allowed)}{hint}, got {boundary!r}")
    if boundary == "periodic" and spec is not None and not all(spec.periodic):
        flat = [d for d, p in zip(spec.dims, spec.periodic, strict=True) if not p]
        warnings.warn(
            f"boundary: the grid's dims {', '.join(flat)} do not wrap, yet boundary='periodic' "
            "makes cells at opposite edges see each other; leave boundary (--boundary) unset "
            "to follow the grid (open here)",
            BoundaryWarning,
            stacklevel=stacklevel + 1,
        )
    return boundary


def parse_tol(tol: float) -> float:
    """The fraction of changed cells at which ``iterations="auto"`` stops: in [0, 1)."""
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float, np.floating, np.integer))
        or not (0 <= tol < 1)
    ):
        raise ParameterError(f"tol: expected a fraction in [0, 1), got {tol}")
    return tol


def filter_record(
    kernel: Any, k: Kernel, sigma: Any, iterations: Any, boundary: str, seed: str
) -> dict[str, Any]:
    """The vote filter's parameters as a stage records them (classify, cluster)."""
    return {
        "kernel": k.name if isinstance(kernel, (str, Kernel)) else "array",
        "window": list(k.radius),
        "sigma": sigma,
        "iterations": iterations,
        "boundary": boundary,
        "seed": seed,
    }


def parse_support(support: Any) -> str:
    """A vote support: ``"auto"``, ``"reachable"`` or ``"occupied"`` (docs/design.md §3.5)."""
    if support not in SUPPORTS:
        raise ParameterError(f"support: expected {choices(SUPPORTS)}, got {support!r}")
    return support


def resolve_support(
    support: str, labels0: da.Array, nclasses: int, kernel: Kernel, steps: int
) -> str:
    """The support a run uses: ``"auto"`` is reachable on a dense grid, and on a
    sparse one reachable while its active cells fit a worker (else occupied);
    a sparse support that cannot fit is refused with the numbers."""
    if not is_sparse(labels0):
        return "reachable" if support == "auto" else support
    from gridflow.engine import sparse as sparse_engine
    from gridflow.runtime import worker_resources

    chosen = sparse_engine.resolve_support(
        support,
        occupied=sparse_engine.occupied_cells(labels0),
        ncells=math.prod(labels0.shape),
        nclasses=nclasses,
        kernel=kernel,
        steps=steps,
        memory=worker_resources()["memory"] / 2,
    )
    if support == "auto":
        log.info("support: %s (the reachable cells %s a worker)", chosen,
                 "fit" if chosen == "reachable" else "would not fit")  # fmt: skip
    return chosen


def initial_labels(counts: da.Array) -> da.Array:
    """L0: the majority class of each cell holding points (lowest on ties), else -1."""
    if is_sparse(counts):
        from gridflow.engine import sparse as sparse_engine

        return sparse_engine.initial_labels(counts)
    return counts.map_blocks(_majority, drop_axis=0, dtype=np.int32)


def _majority(block: np.ndarray) -> np.ndarray:
    # The vote step's decision (argmax, lowest class on ties, -1 for no
    # count): compiled where the backend has it.
    return decide(block)[0].astype(np.int32, copy=False)


@store_mod.writes_store
def classify(
    grid: Any,
    *,
    kernel: str | np.ndarray | Kernel = "inverse_distance",
    window: int | None = 10,
    iterations: int | Literal["auto"] = 3,
    boundary: Boundary | None = None,
    seed: Seed = "labels",
    clamp: bool = False,
    probabilities: bool = False,
    sigma: float | None = None,
    method: CorrelationMethod = "auto",
    tol: float = 1e-4,
    max_iter: int = 100,
    fuse: int | None = None,
    chunks: int | Sequence[int] | Literal["auto"] | None = None,
    resume: bool = False,
    support: Support = "auto",
    levels: int = 1,
    min_votes: float = 0.0,
    backend: str | None = None,
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
    boundary : {"periodic", "open"}, optional
        Periodic grids wrap; open grids have nothing beyond their edges.
        Default: the grid's own (periodic when every dim wraps).
    seed : {"labels", "counts"}
        What the first step votes with: each seeded cell's majority label
        (the reference method), or the counts themselves (every training
        point votes).
    clamp : bool
        Keep the cells holding training points at their majority class.
    probabilities : bool
        Also store the vote fractions ``probability`` (class, *dims).
    chunks : int, sequence of int or "auto", optional
        Spatial chunks of the run. Default: the grid's own, made smaller
        only when a worker cannot hold a round of them (see
        :mod:`gridflow.engine.planner`); ``"auto"``: the planner's choice. Chunking
        never changes the result.
    resume : bool
        Continue from the store's last complete round; safe to always pass:
        with nothing checkpointed the run starts from the beginning, and a
        stage already finished with the same parameters is not run again.
    support : {"auto", "reachable", "occupied"}
        The cells a step is evaluated on (docs/design.md §3.5): every cell a
        labeled cell can reach (the dense result exactly), or only the cells
        holding points (the others never vote). ``"auto"``: reachable on a
        dense grid; on a sparse grid reachable while its cells fit a worker.
    levels : int
        Levels of the resolution pyramid: level ``l`` halves the bins
        ``l`` times (counts summed exactly) and is classified with the same
        parameters; prediction answers a point from the finest level with
        at least ``min_votes`` votes at its cell.
    min_votes : float
        Total vote a level's cell needs to answer a point (with ``levels``).
    backend : {"numpy", "cupy"}, optional
        Where the dense chunks are computed: host memory, or the CUDA device
        (CuPy; gridflow[gpu]). Default: as the grid's chunks are. Results move
        to the host only to be written.

    Returns
    -------
    xarray.Dataset
        The grid with ``label``, ``confidence``, ``density`` (and
        ``probability``; with ``levels`` > 1 ``votes`` and the variables of
        every level, suffixed ``_l1``, ``_l2``, ...);
        ``attrs["gridflow_stages"]["classify"]`` holds the parameters and
        the fractions of cells labeled and changed per step.

    Examples
    --------
    >>> ds = classify("grid.zarr", window=5, iterations="auto")  # doctest: +SKIP
    >>> ds["label"].plot()  # doctest: +SKIP
    """
    path, grid, spec, counts = store_mod.stage_input(grid, backend)
    nclasses = counts.shape[0]
    k = parse_kernel(kernel, window=window, ndim=spec.ndim, sigma=sigma)
    n = parse_iterations(iterations)
    boundary = parse_boundary(boundary, spec)
    if seed not in SEEDS:
        raise ParameterError(f"seed: expected {choices(SEEDS)}, got {seed!r}")
    tol = parse_tol(tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ParameterError(f"max_iter: expected a positive integer, got {max_iter!r}")
    store_mod.warn_if_empty(grid, "classify")
    if method not in CORRELATION_METHODS:
        raise ParameterError(f"method: expected {choices(CORRELATION_METHODS)}, got {method!r}")
    from gridflow import pyramid

    support = parse_support(support)
    levels = pyramid.parse_pyramid_levels(levels)
    min_votes = pyramid.parse_min_votes(min_votes)
    level_specs = [pyramid.level_spec(spec, lvl) for lvl in range(1, levels)]
    for lvl, level in enumerate(level_specs, start=1):
        try:
            check_window(k, level.shape)
        except ParameterError as exc:
            raise ParameterError(
                f"levels: level {lvl} has bins {list(level.shape)}, too few for the window "
                f"({exc}); use fewer levels"
            ) from None
    sparse_ = is_sparse(counts)
    asked = support
    support = resolve_support(asked, initial_labels(counts), nclasses, k, n or max_iter)
    params = {
        **filter_record(kernel, k, sigma, iterations, boundary, seed),
        "clamp": bool(clamp),
        "tol": tol,
        "max_iter": max_iter,
        "weights_sha": k.digest,
        "support": support,
        "levels": levels,
        "min_votes": min_votes,
    }

    if path is not None:
        todo = resume_point(
            path, "classify", params, resume=resume, result={"probabilities": bool(probabilities)}
        )
        if todo == "finished":
            return grid
    elif resume:
        raise ParameterError("resume: needs a store path; pass the store instead of a Dataset")

    if sparse_:
        # Sparse rounds hold the cells that exist, not the blocks' volume: the
        # store's chunks are kept unless chunks are given.
        run_chunks, plan_fuse = tuple(c[0] for c in counts.chunks[1:]), None
        if chunks is not None and chunks != "auto":
            run_chunks = spec.parse_chunks(chunks)
    else:
        run_chunks, plan_fuse = _plan(counts, spec, k, boundary, n or max_iter, chunks, seed, clamp)
    if run_chunks != tuple(c[0] for c in counts.chunks[1:]):
        counts = counts.rechunk((nclasses, *run_chunks))
    if plan_fuse is not None:
        fuse = plan_fuse if fuse is None else min(fuse, plan_fuse)

    labels0 = initial_labels(counts)
    history: list[dict[str, float]] = []
    start = None
    materialise = None
    if path is not None:
        ckpt = _Checkpoint(path, params, labels0.shape)
        if todo == "continue":
            start, history = ckpt.load()
            log.info("resuming classify after step %d (attempt %d)", start.step, ckpt.rounds.run)
        else:
            ckpt.clear()
        materialise = ckpt.save

    run = {
        "nclasses": nclasses,
        "kernel": k,
        "iterations": n,
        "method": method,
        "clamp": clamp,
        "fuse": fuse,
        "tol": tol,
        "max_iter": max_iter,
        "support": support,
    }
    bar = Progress("classify", total=(n or max_iter) * levels, unit="step")
    final = run_dask(
        labels0,
        boundary=boundary,
        start=start,
        materialise=bar.rounds(materialise or persist_round),
        history=history,
        seed_counts=counts if seed == "counts" else None,
        **run,
    )
    if n is None and final.step >= max_iter:
        _warn_unsettled(history, tol, max_iter)
    dims = grid["counts"].dims[1:]
    outputs = _outputs(final, nclasses, probabilities, dims, votes=levels > 1)
    coords: dict[str, Any] = {}
    level_steps, level_supports = [], []
    for lvl, level in enumerate(level_specs, start=1):
        # Each level of the pyramid: its counts summed exactly, the same filter.
        counts_l = pyramid.coarsen(counts, lvl)
        if sparse_ and _dense_level(level.shape, nclasses, grid):
            # A coarse level the points fill: the dense engine is faster there
            # (the same bits; its variables are stored dense).
            # One block: no halo (a dense halo in d dims reaches 3**d - 1 blocks).
            counts_l = counts_l.rechunk(counts_l.shape).map_blocks(
                _todense, meta=np.empty((0,) * counts_l.ndim, counts_l.dtype)
            )
        labels_l = initial_labels(counts_l)
        # "auto" chooses per level: a coarse level may reach every cell cheaply.
        final_l_support = (
            resolve_support(asked, labels_l, nclasses, k, n or max_iter)
            if asked == "auto"
            else support
        )
        final_l = run_dask(
            labels_l,
            boundary=boundary if all(level.periodic) else "open",
            materialise=bar.rounds(persist_round),
            seed_counts=counts_l if seed == "counts" else None,
            **{**run, "support": final_l_support},
        )
        level_steps.append(final_l.step)
        level_supports.append(final_l_support)
        dims_l = tuple(pyramid.level_name(d, lvl) for d in dims)
        level_vars = _outputs(final_l, nclasses, probabilities, dims_l, votes=True)
        level_vars["counts"] = xr_variable(("class", *dims_l), counts_l, grid["counts"].attrs)
        outputs.update({pyramid.level_name(v, lvl): x for v, x in level_vars.items()})
        coords.update(pyramid.level_coords(spec, lvl))
    stage = {**params, "steps": final.step, "probabilities": bool(probabilities)}
    if level_steps:
        stage["level_steps"] = level_steps
        stage["level_supports"] = level_supports
    if path is not None:
        stage["rounds"] = ckpt.rounds.final_round(final.step)

    def record(stats: Any) -> dict[str, Any]:
        if final.stats is not None:
            history.extend(history_entries(final.first_step, np.asarray(stats), labels0.size))
        return {"history": history}

    ds = store_mod.apply_stage(
        grid, path, "classify", outputs, stage, coords=coords, extra=final.stats, record=record
    )
    if path is not None:
        ckpt.clear()  # the stage is written: its rounds are no longer needed
        log.info("classify: %d steps written to %s", final.step, path)
    bar.finish(final.step * levels)
    return ds


def _dense_level(shape: tuple[int, ...], nclasses: int, grid: Any) -> bool:
    """A pyramid level whose dense counts fit and that its points fill
    (docs/design.md §3.5's layout rule, with the points binned as the bound)."""
    from gridflow.engine.planner import choose_layout
    from gridflow.runtime import cluster_memory

    report = grid.attrs.get("gridflow_stages", {}).get("bin", {}).get("report", {})
    rows = report.get("binned")
    memory = cluster_memory()
    layout, _ = choose_layout("auto", shape, nclasses, rows=rows, memory=memory)
    # Held as one block by a worker, with a round's working copies.
    small = math.prod(shape) * max(nclasses, 1) * 64 <= memory.smallest
    return layout == "dense" and small


def _todense(block: Any) -> np.ndarray:
    return block.todense()


def xr_variable(dims: tuple[str, ...], data: Any, attrs: dict[str, Any]) -> Any:
    """An ``xarray.Variable`` (imported on use)."""
    import xarray as xr

    return xr.Variable(dims, data, attrs=dict(attrs))


def _warn_unsettled(history: list[dict[str, float]], tol: float, max_iter: int) -> None:
    """``iterations="auto"`` ran into its cap: say so unless its last step settled."""
    last = history[-1] if history else None
    before = history[-2]["labeled"] if len(history) > 1 else 0.0
    if last is not None and last["changed"] <= tol and last["labeled"] == before:
        return
    changed = last["changed"] if last is not None else float("nan")
    warnings.warn(
        f"iterations: 'auto' stopped at max_iter={max_iter} steps before the labels settled "
        f"({changed:.4%} of cells changed in the last step, tol {tol:g}); raise max_iter "
        "(--max-iter) or tol (--tol)",
        ConvergenceWarning,
        stacklevel=3,
    )


def _plan(
    counts: da.Array,
    spec: Any,
    k: Kernel,
    boundary: str,
    iterations: int,
    chunks: Any,
    seed: str,
    clamp: bool,
) -> tuple[tuple[int, ...], int | None]:
    """Chunks of the run and the most steps per round a worker can hold."""
    from gridflow.engine.planner import plan_filter

    nclasses = counts.shape[0]
    stored = tuple(c[0] for c in counts.chunks[1:])
    from gridflow.runtime import worker_resources

    task = {
        **worker_resources(),
        "iterations": iterations,
        "seed_counts": seed == "counts",
        "clamp": clamp,
        "counts_itemsize": counts.dtype.itemsize,
    }
    if chunks is None:
        one_block = all(len(c) == 1 for c in counts.chunks[1:])
        if one_block or spec.ndim > MAX_SPLIT_DIMS:
            # The whole grid in one block has no halo: it wraps (periodic) or
            # stops at its edges. In more than 3 dims, where a cut costs a
            # halo through a few bins, that is worth a rechunk when it fits.
            zero = (0,) * spec.ndim
            whole = plan_filter(
                spec.shape, nclasses, zero, chunks=spec.shape, keep_chunks=True, warn=False, **task
            )
            if whole.fits:
                return spec.shape, None
        plan = plan_filter(spec.shape, nclasses, k.radius, chunks=stored, **task)
    elif isinstance(chunks, str) and chunks == "auto":
        plan = plan_filter(spec.shape, nclasses, k.radius, **task)
    else:
        given = spec.parse_chunks(chunks)
        plan = plan_filter(spec.shape, nclasses, k.radius, chunks=given, keep_chunks=True, **task)
    # Said once per run where it matters: chunks changed to fit (tune calls this often).
    level = logging.INFO if plan.chunks != stored else logging.DEBUG
    log.log(
        level, "classify plan: %s (store chunks %s)", plan.summary(), "x".join(map(str, stored))
    )
    return plan.chunks, plan.fuse


#: What classify's variables hold (their ``long_name``).
_LONG_NAMES = {
    "label": "class index, -1 = unlabeled",
    "confidence": "winning vote / total vote",
    "density": "damped filtered density",
    "votes": "total vote of the last step",
    "probability": "vote fraction per class",
}


def _outputs(
    final: FinalRound, nclasses: int, probabilities: bool, dims: tuple[str, ...], votes: bool
) -> dict[str, Any]:
    """label, confidence, density (votes, probability) of a run, dense or sparse."""
    if is_sparse(final.labels):
        from gridflow.engine import sparse as sparse_engine

        data = sparse_engine.outputs(final, nclasses, probabilities)
    else:
        v = final.votes
        # One pass over the votes: [confidence, total, *probability] in float32.
        planes = 2 + nclasses * bool(probabilities)
        summary = v.map_blocks(
            _summarise,
            probabilities,
            chunks=((planes,), *v.chunks[1:]),
            dtype=np.float32,
            meta=meta_like(v, v.ndim, np.float32),
        )
        label_dtype = np.int16 if nclasses < 2**15 else np.int32
        data = {
            "label": final.labels.astype(label_dtype),
            "confidence": summary[0],
            "density": final.density.astype(np.float32),
            "votes": summary[1],
        }
        if probabilities:
            data["probability"] = summary[2:]
    if not votes:
        data.pop("votes")
    return {
        name: xr_variable(
            ("class", *dims) if name == "probability" else dims,
            array,
            {"long_name": _LONG_NAMES[name]},
        )
        for name, array in data.items()
    }


def _summarise(votes: Any, probabilities: bool) -> Any:
    """float32 ``[winning vote / total (0 without votes), total, *vote / total]`` of a block."""
    compiled = ops(votes).kernel("vote")
    if compiled is not None:
        return compiled.summarise(votes, probabilities)
    xp = ops(votes).xp
    total = votes.sum(axis=0)
    safe = xp.where(total > 0, total, 1.0)
    planes = [xp.where(total > 0, votes.max(axis=0) / safe, 0.0)[None], total[None]]
    if probabilities:
        planes.append(votes / safe)
    return xp.concatenate(planes).astype(np.float32)


class _Checkpoint:
    """classify's rounds (labels and density after each) in a :class:`RoundCheckpoint`."""

    def __init__(self, path: str, params: dict, shape: tuple[int, ...]) -> None:
        self.rounds = RoundCheckpoint(path, "classify", params)
        self.ncells = math.prod(shape)

    def clear(self) -> None:
        self.rounds.clear()

    def load(self) -> tuple[RoundState, list[dict[str, float]]]:
        saved = self.rounds.load()
        state = RoundState(saved.step, saved.arrays["labels"], saved.arrays["density"])
        return state, saved.history

    def save(self, state: RoundState, stats: Any) -> tuple[RoundState, np.ndarray]:
        def entries(counts: Any) -> list[dict[str, float]]:
            counts = np.asarray(counts)
            return history_entries(state.step - counts.shape[1] + 1, counts, self.ncells)

        arrays, counts = self.rounds.save(
            state.step, {"labels": state.labels, "density": state.density}, stats, entries
        )
        return RoundState(state.step, arrays["labels"], arrays["density"]), np.asarray(counts)


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
