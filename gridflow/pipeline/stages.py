"""The stage registry: each stage's callable, parameter schema and own rules.

A stage working on the store in place, like ``classify``, is one
:func:`grid_stage` entry; its rules are the ``parse_*`` functions the
library function calls, their defaults the function's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gridflow._types import (
    BASELINES,
    BINNING_STRATEGIES,
    BOUNDARIES,
    CORRELATION_METHODS,
    DISTRIBUTIONS,
    EQUALIZE_METHODS,
    FRACTAL_METHODS,
    FRACTAL_STARTS,
    KERNEL_NAMES,
    LAYOUTS,
    SEEDS,
    SUPPORTS,
)
from gridflow.errors import GridflowError, ParameterError
from gridflow.pipeline.schema import (
    INTS,
    NAMES,
    POSITIVE,
    Bool,
    Check,
    Choice,
    Either,
    Float,
    Int,
    ListOf,
    MapOf,
    Null,
    Rule,
    Section,
    Str,
    defaults_of,
    resolve,
    rule,
)

if TYPE_CHECKING:
    from gridflow.pipeline.config import Pipeline

# Rules whose parse function needs more than the file's values.


def _window_kernel(kernel: str, window: int, sigma: float | None) -> None:
    """The window's kernel, as the stage builds it (sigma matters to "gaussian" only)."""
    from gridflow.kernels import parse_kernel

    parse_kernel(kernel, window=window, ndim=1, sigma=sigma)


def _cut_level(levels: Any, level: Any) -> None:
    """``level`` among the levels that ``levels`` makes."""
    from gridflow.cluster import parse_level
    from gridflow.engine.equalize import parse_levels

    parse_level(level, len(parse_levels(levels)) + 1)


def _fill_window(fill_window: int | None) -> None:
    from gridflow.kernels import parse_window

    if fill_window is not None:
        parse_window(fill_window)


def _partitions(points: Mapping[str, int], partitions: int | None = None) -> None:
    # synth's own rule (npartitions from 1 to n_points) has no public parse function.
    for name, n in points.items():
        if partitions is not None and partitions > n:
            raise ParameterError(
                f"partitions: expected at most the points of each input ({name}: {n:,}), "
                f"got {partitions}"
            )


def _bayes_inputs(points: Mapping[str, int], bayes: bool | list[str] = False) -> None:
    for name in bayes if isinstance(bayes, list) else ():
        if name not in points:
            raise ParameterError(
                f"bayes: {name!r} is not one of the generated inputs ({', '.join(points)}); "
                "name inputs of stages.synth.points, or give true for all"
            )


def _bayes(p: dict, name: str) -> bool:
    """Whether synth writes the Bayes-optimal class into input ``name``."""
    bayes = p.get("bayes", False)
    return name in bayes if isinstance(bayes, list) else bayes


#: The iterated filter of classify and cluster: its parameters and rules.
_FILTER_PARAMS = {
    "kernel": Choice(*KERNEL_NAMES),
    "window": POSITIVE,
    "sigma": Float(min=0),
    "iterations": Either(POSITIVE, Choice("auto")),
    "boundary": Choice(*BOUNDARIES),
    "seed": Choice(*SEEDS),
    "max_iter": POSITIVE,
    "support": Choice(*SUPPORTS),
}
_FILTER_RULES = (
    rule(_window_kernel, "kernel", "window", "sigma"),
    rule("gridflow.classify:parse_iterations", "iterations"),
    rule("gridflow.classify:parse_boundary", "boundary"),
)


# --- stages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One entry of the stage registry.

    ``run(ctx, params)`` does the work and returns a summary line
    (``params`` checked by the ``params`` schema, defaults not filled in);
    ``inputs(params)`` names the pipeline inputs it reads, ``writes(params)``
    those it generates, ``outputs`` the ``outputs:`` entries it writes;
    ``needs_store`` is False for a stage that runs before the store exists;
    ``done(ctx, params)``, when given, tells a resumed run whether such a
    stage's outputs are already there.
    ``order`` places it in the pipeline; ``function`` is the library
    function a :func:`grid_stage` calls. ``rules`` are the stage's own
    checks (:class:`Rule`), their defaults those of ``library`` (default:
    ``function``).
    """

    name: str
    run: Callable[[Context, dict], str]
    params: Mapping[str, Check]
    order: int
    inputs: Callable[[dict], list[str]] = lambda params: []
    writes: Callable[[dict], list[str]] = lambda params: []
    needs_store: bool = True
    outputs: tuple[str, ...] = ()
    function: str | Callable[..., Any] | None = None
    rules: tuple[Rule, ...] = ()
    library: str | Callable[..., Any] | None = None
    done: Callable[[Context, dict], bool] | None = None

    def check(self, params: dict, key: str) -> None:
        """Apply the stage's own rules to the file's ``params`` (at ``key``)."""
        given = [r for r in self.rules if any(p in params for p in r.params)]
        if given:
            defaults = defaults_of(self.library or self.function)
            for r in given:
                r.check(params, defaults, key)

    def schema(self) -> Section:
        return Section(self.params, after=self.check)


@dataclass
class Context:
    """What a stage needs: the pipeline, resolved paths, and the resume state."""

    pipeline: Pipeline
    resume: bool

    def path(self, p: str) -> str:
        return self.pipeline.path(p)

    def input(self, name: str) -> str:
        return self.path(self.pipeline.config["inputs"][name])

    @property
    def store(self) -> str:
        return self.path(self.pipeline.config["outputs"]["store"])

    def output(self, name: str) -> str:
        return self.path(self.pipeline.config["outputs"][name])


def grid_stage(
    name: str,
    function: str | Callable[..., Any],
    params: Mapping[str, Check],
    *,
    order: int,
    rules: Sequence[Rule] = (),
) -> Stage:
    """A stage that runs ``function(store, **params)`` on the output store in place.

    ``rules`` are the function's own parameter checks, applied before any
    work (see :class:`Rule`).

    ``function`` is a callable or ``"module:name"`` (imported when the stage
    runs). When it takes ``resume``, the stage continues from a checkpoint
    (``gridflow.checkpoint``) whenever the pipeline resumes and one exists.

    Examples
    --------
    >>> STAGES["cluster"] = grid_stage(  # doctest: +SKIP
    ...     "cluster", "gridflow.cluster:cluster", {"window": Int(min=1)}, order=30)
    """

    def run(ctx: Context, p: dict) -> str:
        from gridflow.checkpoint import has_checkpoint

        fn = resolve(function)
        kwargs = dict(p)
        takes = inspect.signature(fn).parameters
        if "resume" in takes:
            kwargs["resume"] = ctx.resume and has_checkpoint(ctx.store, name)
        if "backend" in takes and ctx.pipeline.backend is not None:
            kwargs["backend"] = ctx.pipeline.backend
        ds = fn(ctx.store, **kwargs)
        record = ds.attrs.get("gridflow_stages", {}).get(name, {})
        steps = f"{record['steps']} steps" if "steps" in record else "done"
        return f"{steps} in {ctx.store}"

    return Stage(name, run, params, order, function=function, rules=tuple(rules))


def _synth(ctx: Context, p: dict) -> str:
    from gridflow.synth import read_synth_metadata, write_points

    process = {k: v for k, v in p.items() if k not in ("points", "bayes", "partitions")}
    seed = process.pop("seed", 0)
    shifts = None
    written = []
    for i, (name, n) in enumerate(p["points"].items()):
        path = ctx.input(name)
        # The first input draws the class shifts; the others reuse them with
        # their own draws (seed + i), like held-out data of the same classes.
        write_points(
            path,
            n,
            seed=seed + i,
            shifts=shifts,
            bayes=_bayes(p, name),
            npartitions=p.get("partitions"),
            overwrite=True,
            **process,
        )
        if shifts is None:
            shifts = read_synth_metadata(path)["process"]["shifts"]
        written.append(f"{n:,} points to {path}")
    return "wrote " + ", ".join(written)


def _synth_done(ctx: Context, p: dict) -> bool:
    from gridflow.synth import PointProcess, read_synth_metadata

    process = {k: v for k, v in p.items() if k not in ("points", "bayes", "partitions")}
    seed = process.pop("seed", 0)
    shifts = None
    for i, (name, n) in enumerate(p["points"].items()):
        path = ctx.input(name)
        try:
            meta = read_synth_metadata(path)
        except GridflowError:
            return False
        if meta is None:
            return False
        want = PointProcess(seed=seed + i, shifts=shifts, **process).to_dict()
        if shifts is None:
            shifts = meta["process"].get("shifts")
            want["shifts"] = shifts
        bayes = "bayes" if _bayes(p, name) else None
        if meta["n_points"] != n or meta["process"] != want or meta.get("bayes") != bayes:
            return False
    return True


def _bin(ctx: Context, p: dict) -> str:
    from gridflow.binning import BinReport, bin_points

    grid = dict(ctx.pipeline.config.get("grid", {}))
    ds = bin_points(
        ctx.input(p.get("input", "train")),
        ctx.store,
        overwrite=True,  # refused before the run where not allowed: check_outputs
        backend=ctx.pipeline.backend,
        **grid,
        **{k: v for k, v in p.items() if k != "input"},
    )
    return BinReport(**ds.attrs["gridflow_stages"]["bin"]["report"]).summary()


def _predict(ctx: Context, p: dict) -> str:
    from gridflow.predict import predict_to_parquet

    out = ctx.output("predictions")
    report = predict_to_parquet(
        ctx.store,
        ctx.input(p.get("input", "test")),
        out,
        overwrite=True,
        **{k: v for k, v in p.items() if k != "input"},
    )
    return f"predicted {report['predicted']:,} of {report['rows']:,} rows into {out}"


def _evaluate(ctx: Context, p: dict) -> str:
    from gridflow.evaluate import evaluate

    kwargs = {k: v for k, v in p.items() if k != "input"}
    if "train" in kwargs:
        kwargs["train"] = ctx.input(kwargs["train"])
    ev = evaluate(ctx.store, ctx.input(p.get("input", "test")), **kwargs)
    if "evaluation" in ctx.pipeline.config["outputs"]:
        from gridflow._staging import write_json

        write_json(ctx.output("evaluation"), ev.to_dict())  # checked by check_outputs
    return ev.format()


#: The stage registry, by name. ``order`` sets the pipeline order.
STAGES: dict[str, Stage] = {
    "synth": Stage(
        "synth",
        _synth,
        {
            "points": MapOf(POSITIVE),
            "dims": POSITIVE,
            "classes": POSITIVE,
            "scale": Float(min=0),
            "seed": Int(min=0),
            "distribution": Choice(*DISTRIBUTIONS),
            "extent": Int(min=0),
            "modulo": Bool(),
            "bayes": Either(Bool(), ListOf(Str())),
            "partitions": POSITIVE,
        },
        order=0,
        writes=lambda p: list(p.get("points", {})),
        needs_store=False,
        done=_synth_done,
        rules=(
            rule(
                "gridflow.synth:PointProcess",
                *("dims", "classes", "scale", "seed", "extent", "distribution", "modulo"),
            ),
            rule(_partitions, "points", "partitions"),
            rule(_bayes_inputs, "points", "bayes"),
        ),
    ),
    "bin": Stage(
        "bin",
        _bin,
        {
            "input": Str(),
            "strategy": Choice(*BINNING_STRATEGIES),
            "layout": Choice(*LAYOUTS),
            "strict": Bool(),
            "max_classes": POSITIVE,
        },
        order=10,
        inputs=lambda p: [p.get("input", "train")],
        rules=(rule("gridflow.binning:parse_max_classes", "max_classes"),),
    ),
    "classify": grid_stage(
        "classify",
        "gridflow.classify:classify",
        {
            **_FILTER_PARAMS,
            "tol": Float(min=0, max=1),
            "clamp": Bool(),
            "probabilities": Bool(),
            "method": Choice(*CORRELATION_METHODS),
            "fuse": POSITIVE,
            "chunks": Either(Choice("auto"), INTS),
            "levels": POSITIVE,
            "min_votes": Float(min=0),
        },
        order=20,
        rules=(
            *_FILTER_RULES,
            rule("gridflow.classify:parse_tol", "tol"),
            rule("gridflow.pyramid:parse_pyramid_levels", "levels"),
            rule("gridflow.pyramid:parse_min_votes", "min_votes"),
        ),
    ),
    "cluster": grid_stage(
        "cluster",
        "gridflow.cluster:cluster",
        {
            **_FILTER_PARAMS,
            "levels": Either(POSITIVE, ListOf(Float(min=0, max=1))),
            "method": Choice(*EQUALIZE_METHODS),
            "level": Either(Int(min=0), Choice("auto")),
            "min_cells": Int(),
            "connectivity": POSITIVE,
            "fill": Bool(),
            "fill_window": POSITIVE,
        },
        order=30,
        rules=(
            *_FILTER_RULES,
            rule("gridflow.engine.equalize:parse_levels", "levels"),
            rule(_cut_level, "levels", "level"),
            rule("gridflow.cluster:parse_min_cells", "min_cells"),
            rule("gridflow.engine.equalize:parse_method", "method"),
            rule(_fill_window, "fill_window"),
        ),
    ),
    "fractal": grid_stage(
        "fractal",
        "gridflow.fractal:fractal",
        {
            "iterations": POSITIVE,
            "burn_in": Int(min=0),
            "seed": Int(),
            "start": Choice(*FRACTAL_STARTS),
            "boundary": Choice(*BOUNDARIES),
            "record": POSITIVE,
            "fuse": POSITIVE,
            "method": Choice(*FRACTAL_METHODS),
        },
        order=40,
        rules=(
            rule("gridflow.fractal:parse_iterations_burn_in", "iterations", "burn_in"),
            rule("gridflow.classify:parse_boundary", "boundary"),
        ),
    ),
    "predict": Stage(
        "predict",
        _predict,
        {"input": Str(), "columns": NAMES, "probabilities": Bool()},
        order=50,
        inputs=lambda p: [p.get("input", "test")],
        outputs=("predictions",),
    ),
    "evaluate": Stage(
        "evaluate",
        _evaluate,
        {
            "input": Str(),
            "label": Str(),
            "columns": NAMES,
            "bayes": Either(Str(), Null()),
            "baseline": Choice(*BASELINES),
            "train": Str(),
            "neighbors": POSITIVE,
            "max_train": POSITIVE,
            "seed": Int(min=0),
        },
        order=60,
        inputs=lambda p: [p.get("input", "test")] + ([p["train"]] if "train" in p else []),
        rules=(
            rule(
                "gridflow.evaluate:_parse_baseline", "baseline", "train", "neighbors", "max_train"
            ),
        ),
        library="gridflow.evaluate:evaluate",
    ),
}
