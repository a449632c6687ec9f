"""Running a validated pipeline: outputs checked first, stages recorded in the store."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridflow.errors import ParameterError
from gridflow.pipeline.config import Pipeline
from gridflow.pipeline.schema import ConfigError, defaults_of
from gridflow.pipeline.stages import STAGES, Context, Stage

# The package's logger: log lines say "gridflow.pipeline: stage ...", as they always have.
log = logging.getLogger("gridflow.pipeline")

#: Store attribute holding the pipeline's configuration and finished stages.
PIPELINE_ATTR = "gridflow_pipeline"


def _recorded(store: str) -> dict[str, Any]:
    import zarr

    from gridflow.store import is_gridflow_store

    if not is_gridflow_store(store):
        return {}
    return dict(zarr.open_group(store, mode="r").attrs.get(PIPELINE_ATTR, {}))


def _record(ctx: Context, done: dict[str, str], history: str | None = None) -> None:
    import zarr

    from gridflow.store import update_attrs

    p = ctx.pipeline
    group = zarr.open_group(ctx.store, mode="r")
    value = {
        "source": p.source,
        "config": p.config,
        "scheduler": p.scheduler.scheduler,
        "done": done,
    }
    attrs: dict[str, Any] = {PIPELINE_ATTR: json.loads(json.dumps(value))}
    if history is not None:
        attrs["history"] = (group.attrs.get("history", "") + "\n" + history).strip("\n")
    update_attrs(ctx.store, attrs)


@dataclass
class StageResult:
    name: str
    summary: str
    seconds: float
    skipped: bool = False


def check_outputs(pipeline: Pipeline, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, outputs whose writing would lose data.

    No output (the store, the generated inputs, predictions, evaluation)
    may be, contain or lie inside an input the pipeline reads. An existing
    output is replaced only when gridflow wrote it, and only with
    ``overwrite`` (or ``outputs.overwrite``) or ``resume``, which continues
    an earlier run of the same pipeline (its store records the same bin
    digest).
    """
    from gridflow._staging import check_output

    config = pipeline.config
    overwrite = overwrite or config["outputs"].get("overwrite", False)
    store = pipeline.path(config["outputs"]["store"])
    hint = "set outputs.overwrite: true or pass --overwrite"
    if resume and not overwrite and "bin" in config["stages"] and os.path.exists(store):
        recorded = _recorded(store).get("done", {})
        if recorded.get("bin") != pipeline.digests["bin"]:
            raise ConfigError(
                f"outputs.store: {store} was not made by this pipeline's bin stage, so "
                f"--resume cannot continue it; {hint}"
            )
    reads = {} if "bin" in config["stages"] else {"outputs.store": store}
    outputs = [("outputs.store", store)] if "bin" in config["stages"] else []
    for stage in pipeline.stages:
        params = config["stages"][stage.name]
        reads.update(
            {f"inputs.{n}": pipeline.path(config["inputs"][n]) for n in stage.inputs(params)}
        )
        outputs += [
            (f"inputs.{n}", pipeline.path(config["inputs"][n])) for n in stage.writes(params)
        ]
        outputs += [(f"outputs.{o}", pipeline.path(config["outputs"][o])) for o in stage.outputs]
    if "evaluation" in config["outputs"]:
        outputs.append(("outputs.evaluation", pipeline.path(config["outputs"]["evaluation"])))
    for key, path in outputs:
        try:
            check_output(
                path,
                overwrite=overwrite or resume,
                inputs={k: v for k, v in reads.items() if k != key},
                option=key,
                hint=f"{hint} (or --resume)",
                parents=True,
            )
        except ParameterError as exc:
            raise ConfigError(str(exc)) from None


def memory_plan(
    pipeline: Pipeline, *, memory: float | None = None, threads: int | None = None
) -> Any:
    """The planner's view of the pipeline's classification, before any work.

    Needs the grid's shape and classes from the file (``grid.bins`` and the
    synth stage's ``dims``/``classes``, or ``grid.columns``) or from an
    existing store; returns None when they are known only after binning
    (classify plans again when it starts). Warns with
    :class:`~gridflow.errors.MemoryPlanWarning` when nothing fits.
    ``memory`` and ``threads`` default to the active cluster's workers.
    """
    from gridflow.engine.planner import plan_filter

    config = pipeline.config
    if "classify" not in config["stages"]:
        return None
    grid = config.get("grid", {})
    synth = config["stages"].get("synth")
    ndim = nclasses = None
    if synth is not None:
        ndim, nclasses = synth.get("dims", 2), synth.get("classes", 5)
    elif isinstance(grid.get("columns"), list):
        ndim = len(grid["columns"])
    store = pipeline.path(config["outputs"]["store"])
    if "bin" not in config["stages"] or (ndim is not None and nclasses is None):
        from gridflow.store import is_gridflow_store

        if is_gridflow_store(store):
            import zarr

            counts = zarr.open_group(store, mode="r")["counts"]
            nclasses = counts.shape[0]
            if "bin" not in config["stages"]:
                ndim, bins = len(counts.shape) - 1, list(counts.shape[1:])
    if ndim is None or nclasses is None:
        return None
    if "bin" in config["stages"]:
        bins = grid["bins"]
    shape = bins if isinstance(bins, list) else [bins] * ndim
    if len(shape) != ndim:
        return None
    stage = STAGES["classify"]
    params = {**defaults_of(stage.function), **config["stages"]["classify"]}
    iterations = params["iterations"]
    chunks = grid.get("chunks") if "bin" in config["stages"] else None
    if chunks == "auto" or chunks is None:
        given = None
    else:
        given = chunks if isinstance(chunks, list) else [chunks] * ndim
    resources: dict[str, Any] = {"memory": memory, "threads": threads}
    if memory is None or threads is None:
        from gridflow.runtime import worker_resources

        resources = {**worker_resources(), **{k: v for k, v in resources.items() if v is not None}}
    plan = plan_filter(
        shape,
        nclasses,
        [params["window"]] * ndim,
        iterations=params["max_iter"] if iterations == "auto" else iterations,
        chunks=given,
        seed_counts=params["seed"] == "counts",
        clamp=params["clamp"],
        **resources,
    )
    log.info("memory plan for classify: %s", plan.summary())
    return plan


def run_pipeline(
    pipeline: Pipeline,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_stage: Callable[[Stage], None] | None = None,
) -> list[StageResult]:
    """Run every stage on the active Dask scheduler; returns one result per stage.

    With ``resume``, stages recorded as finished with the same digest are
    skipped and a multi-round stage continues from its checkpoint.
    ``on_stage(stage)``, when given, is called as each stage starts (or is
    skipped), e.g. to show where a long pipeline is.

    Examples
    --------
    >>> with gridflow.runtime.client():  # doctest: +SKIP
    ...     run_pipeline(load_pipeline("examples/pipeline.yaml"))
    """
    from gridflow.store import history_line

    check_outputs(pipeline, resume=resume, overwrite=overwrite)
    memory_plan(pipeline)  # warns before any work when a worker cannot hold a round
    config = pipeline.config
    for name in ("store", "predictions", "evaluation"):
        if name in config["outputs"]:
            os.makedirs(os.path.dirname(pipeline.path(config["outputs"][name])), exist_ok=True)
    for name in config.get("inputs", {}):
        os.makedirs(os.path.dirname(pipeline.path(config["inputs"][name])), exist_ok=True)
    ctx = Context(pipeline, resume)
    previous = (_recorded(ctx.store) if resume else {}).get("done", {})
    done: dict[str, str] = {}
    results = []
    for stage in pipeline.stages:
        params = config["stages"][stage.name]
        digest = pipeline.digests[stage.name]
        if on_stage is not None:
            on_stage(stage)
        t0 = time.perf_counter()
        if resume and _is_done(ctx, stage, params, previous, digest):
            log.info("stage %s: done in an earlier run, skipped", stage.name)
            results.append(StageResult(stage.name, "done in an earlier run", 0.0, skipped=True))
        else:
            log.info("stage %s: starting", stage.name)
            summary = stage.run(ctx, params)
            seconds = time.perf_counter() - t0
            log.info("stage %s: %s (%.1f s)", stage.name, summary.splitlines()[0], seconds)
            results.append(StageResult(stage.name, summary, seconds))
        if stage.needs_store:
            done[stage.name] = digest
            _record(ctx, done)
    line = history_line(
        "run",
        {
            "pipeline": pipeline.source,
            "ran": [r.name for r in results if not r.skipped],
            "skipped": [r.name for r in results if r.skipped],
        },
    )
    _record(ctx, done, history=line)
    return results


def _is_done(ctx: Context, stage: Stage, params: dict, recorded: dict, digest: str) -> bool:
    if stage.done is not None:
        return stage.done(ctx, params)
    if recorded.get(stage.name) != digest:
        return False
    outputs = list(stage.outputs)
    if stage.name == "evaluate" and "evaluation" in ctx.pipeline.config["outputs"]:
        outputs.append("evaluation")
    return all(os.path.exists(ctx.output(o)) for o in outputs)
