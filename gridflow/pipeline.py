"""Whole pipelines from one YAML file: ``gridflow run PIPELINE.yaml``.

A pipeline file names its inputs, the grid, the stages with their
parameters, the outputs and the scheduler::

    inputs:                      # named point files (paths relative to the workdir)
      train: data/train.parquet
      test: data/test.parquet
    grid: {bins: 256, periodic: true, chunks: 128}
    stages:
      synth: {points: {train: 200000, test: 20000}, classes: 5, seed: 1}
      bin: {input: train}
      classify: {window: 5, iterations: 6}
      predict: {input: test}
      evaluate: {input: test}
    outputs: {store: out/grid.zarr, predictions: out/predictions.parquet}
    scheduler: {scheduler: local, workers: 2}

The whole file is checked before any work starts: unknown keys, wrong
types, missing inputs and outputs that would be clobbered are errors naming
the key (``stages.classify.window: expected ...``). Stages run in the
registry's order (:data:`STAGES`), whatever their order in the file. The
configuration used (after command-line overrides) is stored in the output
store's ``gridflow_pipeline`` attribute, with a digest of every finished
stage: with ``resume`` a stage whose digest matches is skipped, and a
multi-round stage continues from its last checkpointed round.

Stages are a registry: a name, a callable and a parameter schema. A stage
working on the store in place, like ``classify``, is one
:func:`grid_stage` entry.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gridflow.errors import GridflowError, ParameterError
from gridflow.runtime import SchedulerOptions

__all__ = [
    "STAGES",
    "Pipeline",
    "Stage",
    "grid_stage",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
]

log = logging.getLogger(__name__)

#: Store attribute holding the pipeline's configuration and finished stages.
PIPELINE_ATTR = "gridflow_pipeline"


class ConfigError(ParameterError):
    """A pipeline file has an unknown key, a wrong type or a missing input."""


# --- a small schema language ---------------------------------------------------------


class Check:
    """Validates one value; ``describe`` says what is expected."""

    describe = "a value"

    def __call__(self, value: Any, key: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, key: str) -> ConfigError:
        return ConfigError(f"{key}: expected {self.describe}, got {value!r}")


class Int(Check):
    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        self.min, self.max = min, max
        bounds = []
        if min is not None:
            bounds.append(f">= {min}")
        if max is not None:
            bounds.append(f"<= {max}")
        self.describe = "an integer" + (" " + " and ".join(bounds) if bounds else "")

    def __call__(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(value, key)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise self.fail(value, key)
        return value


class Float(Check):
    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min, self.max = min, max
        self.describe = "a number" + (f" in [{min}, {max}]" if min is not None else "")

    def __call__(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(value, key)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise self.fail(value, key)
        return float(value)


class Bool(Check):
    describe = "true or false"

    def __call__(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value, key)
        return value


class Str(Check):
    describe = "a string"

    def __call__(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(value, key)
        return value


class Choice(Check):
    def __init__(self, *values: Any) -> None:
        self.values = values
        self.describe = "one of " + ", ".join(repr(v) for v in values)

    def __call__(self, value: Any, key: str) -> Any:
        if isinstance(value, bool) or value not in self.values:
            raise self.fail(value, key)
        return value


class Either(Check):
    def __init__(self, *checks: Check) -> None:
        self.checks = checks
        self.describe = " or ".join(c.describe for c in checks)

    def __call__(self, value: Any, key: str) -> Any:
        for c in self.checks:
            try:
                return c(value, key)
            except ConfigError:
                pass
        raise self.fail(value, key)


class Null(Check):
    describe = "null"

    def __call__(self, value: Any, key: str) -> None:
        if value is not None:
            raise self.fail(value, key)
        return None


class ListOf(Check):
    def __init__(self, item: Check) -> None:
        self.item = item
        self.describe = f"a list of {item.describe.removeprefix('a ').removeprefix('an ')}s"

    def __call__(self, value: Any, key: str) -> list:
        if not isinstance(value, list) or not value:
            raise self.fail(value, key)
        return [self.item(v, f"{key}[{i}]") for i, v in enumerate(value)]


class Section(Check):
    """A mapping with known keys: unknown keys and missing required ones are errors.

    ``after(values)``, when given, runs on the checked mapping: the library's
    own rules for it (the ``parse_*`` functions the stage calls), so the file
    accepts exactly what the stage does; the ``ParameterError`` it raises
    (``"min_cells: ..."``) is reported at its key (``stages.cluster.min_cells``).
    """

    def __init__(
        self,
        fields: Mapping[str, Check],
        required: Sequence[str] = (),
        after: Callable[[dict], None] | None = None,
    ) -> None:
        self.fields = dict(fields)
        self.required = tuple(required)
        self.after = after
        self.describe = "a mapping"

    def __call__(self, value: Any, key: str) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(value, key)
        out = {}
        for k, v in value.items():
            where = f"{key}.{k}" if key else str(k)
            if k not in self.fields:
                raise ConfigError(
                    f"{where}: unknown key; expected one of {', '.join(sorted(self.fields))}"
                )
            out[k] = self.fields[k](v, where)
        for k in self.required:
            if k not in out:
                where = f"{key}.{k}" if key else k
                raise ConfigError(f"{where}: missing; it is required")
        if self.after is not None:
            library_rule(self.after, out, key)
        return out


#: Library parameter names that a pipeline spells differently.
_ALIASES = {"npartitions": "partitions", "n_points": "points"}


def library_rule(rule: Callable[[dict], None], values: dict, key: str) -> None:
    """Run ``rule(values)``; its ParameterError is reported at the key it names."""
    try:
        rule(values)
    except ParameterError as exc:
        if isinstance(exc, ConfigError):
            raise
        text, name = str(exc), exc.param
        if name is not None and text.startswith(f"{name}:"):
            text = text[len(name) + 1 :].lstrip()
            name = _ALIASES.get(name, name)
            where = f"{key}.{name}" if key else name
        else:
            where = key or "pipeline"
        raise ConfigError(f"{where}: {text}") from None


class MapOf(Check):
    """A mapping from names (strings) to values of one kind."""

    def __init__(self, item: Check) -> None:
        self.item = item
        self.describe = f"a mapping of names to {item.describe.removeprefix('a ')}"

    def __call__(self, value: Any, key: str) -> dict:
        if not isinstance(value, Mapping) or not value:
            raise self.fail(value, key)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}: expected names (strings) as keys, got {k!r}")
            out[k] = self.item(v, f"{key}.{k}")
        return out


POSITIVE = Int(min=1)
PATH = Str()
INTS = Either(POSITIVE, ListOf(POSITIVE))


# --- stages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One entry of the stage registry.

    ``run(ctx, params)`` does the work and returns a summary line
    (``params`` checked by the ``params`` schema, defaults not filled in);
    ``inputs(params)`` names the pipeline inputs it reads, ``writes(params)``
    those it generates, ``outputs`` the ``outputs:`` entries it writes;
    ``needs_store`` is False for a stage that runs before the store exists.
    ``order`` places it in the pipeline; ``function`` is the library
    function a :func:`grid_stage` calls.
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
    validate: Callable[[dict], None] | None = None


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
    validate: Callable[[dict], None] | None = None,
) -> Stage:
    """A stage that runs ``function(store, **params)`` on the output store in place.

    ``validate(params)`` applies the function's own parameter rules before
    any work (see :class:`Section`).

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

        fn = _resolve(function)
        kwargs = dict(p)
        if "resume" in inspect.signature(fn).parameters:
            kwargs["resume"] = ctx.resume and has_checkpoint(ctx.store, name)
        ds = fn(ctx.store, **kwargs)
        record = ds.attrs.get("gridflow_stages", {}).get(name, {})
        steps = f"{record['steps']} steps" if "steps" in record else "done"
        return f"{steps} in {ctx.store}"

    return Stage(name, run, params, order, function=function, validate=validate)


def _resolve(function: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(function):
        return function
    import importlib

    module, _, attr = function.partition(":")
    return getattr(importlib.import_module(module), attr)


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
            bayes=p.get("bayes", False),
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
        bayes = "bayes" if p.get("bayes", False) else None
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


_KERNELS = Choice("inverse_distance", "box", "gaussian")


# --- each stage's own rules, checked before any stage runs --------------------------------
# They call the parse functions the stages call (same rules, same messages).


def _check_synth(p: dict) -> None:
    from gridflow.synth import PointProcess

    keys = ("dims", "classes", "scale", "seed", "extent", "distribution", "modulo")
    PointProcess(**{k: p[k] for k in keys if k in p})
    parts = p.get("partitions")
    for name, n in p.get("points", {}).items():
        if parts is not None and parts > n:
            raise ParameterError(
                f"partitions: expected at most the points of each input ({name}: {n:,}), "
                f"got {parts}"
            )


def _check_bin(p: dict) -> None:
    from gridflow.binning import parse_max_classes

    if "max_classes" in p:
        parse_max_classes(p["max_classes"])


def _check_filter(p: dict) -> None:
    from gridflow.classify import parse_iterations
    from gridflow.kernels import parse_kernel

    # The window's kernel, as the stage builds it (sigma matters to "gaussian" only).
    parse_kernel(
        p.get("kernel", "inverse_distance"),
        window=p.get("window", 10),
        ndim=1,
        sigma=p.get("sigma"),
    )
    parse_iterations(p.get("iterations", 3))


def _check_classify(p: dict) -> None:
    from gridflow.classify import parse_tol

    _check_filter(p)
    parse_tol(p.get("tol", 1e-4))


def _check_cluster(p: dict) -> None:
    from gridflow.cluster import parse_level, parse_min_cells
    from gridflow.equalize import DEFAULT_CUTS, parse_levels, parse_method
    from gridflow.kernels import parse_window

    _check_filter(p)
    cuts = parse_levels(p.get("levels", DEFAULT_CUTS))
    parse_level(p.get("level", "auto"), len(cuts) + 1)
    parse_min_cells(p.get("min_cells", 20))
    parse_method(p.get("method", "cells"))
    if "fill_window" in p:
        parse_window(p["fill_window"])


def _check_fractal(p: dict) -> None:
    from gridflow.fractal import parse_iterations_burn_in

    parse_iterations_burn_in(p.get("iterations", 250), p.get("burn_in", 50))


def _check_evaluate(p: dict) -> None:
    from gridflow.evaluate import _parse_baseline

    _parse_baseline(
        p.get("baseline"), p.get("train"), p.get("neighbors", 15), p.get("max_train", 1_000_000)
    )


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
            "distribution": Choice("logistic", "uniform", "cauchy"),
            "extent": Int(min=0),
            "modulo": Bool(),
            "bayes": Bool(),
            "partitions": POSITIVE,
        },
        order=0,
        writes=lambda p: list(p.get("points", {})),
        needs_store=False,
        validate=_check_synth,
    ),
    "bin": Stage(
        "bin",
        _bin,
        {
            "input": Str(),
            "strategy": Choice("auto", "tree", "chunked"),
            "strict": Bool(),
            "max_classes": POSITIVE,
        },
        order=10,
        inputs=lambda p: [p.get("input", "train")],
        validate=_check_bin,
    ),
    "classify": grid_stage(
        "classify",
        "gridflow.classify:classify",
        {
            "kernel": _KERNELS,
            "window": POSITIVE,
            "sigma": Float(min=0),
            "iterations": Either(POSITIVE, Choice("auto")),
            "tol": Float(min=0, max=1),
            "max_iter": POSITIVE,
            "boundary": Choice("periodic", "open"),
            "seed": Choice("labels", "counts"),
            "clamp": Bool(),
            "probabilities": Bool(),
            "method": Choice("auto", "direct", "separable", "box", "fft"),
            "fuse": POSITIVE,
            "chunks": Either(Choice("auto"), INTS),
        },
        order=20,
        validate=_check_classify,
    ),
    "cluster": grid_stage(
        "cluster",
        "gridflow.cluster:cluster",
        {
            "kernel": _KERNELS,
            "window": POSITIVE,
            "sigma": Float(min=0),
            "iterations": Either(POSITIVE, Choice("auto")),
            "levels": Either(POSITIVE, ListOf(Float(min=0, max=1))),
            "method": Choice("cells", "distinct"),
            "level": Either(Int(min=0), Choice("auto")),
            "min_cells": Int(),
            "connectivity": POSITIVE,
            "fill": Bool(),
            "fill_window": POSITIVE,
            "boundary": Choice("periodic", "open"),
            "seed": Choice("labels", "counts"),
            "max_iter": POSITIVE,
        },
        order=30,
        validate=_check_cluster,
    ),
    "fractal": grid_stage(
        "fractal",
        "gridflow.fractal:fractal",
        {
            "iterations": POSITIVE,
            "burn_in": Int(min=0),
            "seed": Int(),
            "start": Choice("auto", "label", "counts"),
            "boundary": Choice("periodic", "open"),
            "record": POSITIVE,
            "fuse": POSITIVE,
            "method": Choice("auto", "compiled", "reference"),
        },
        order=40,
        validate=_check_fractal,
    ),
    "predict": Stage(
        "predict",
        _predict,
        {
            "input": Str(),
            "columns": Either(Str(), ListOf(Str())),
            "probabilities": Bool(),
        },
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
            "columns": Either(Str(), ListOf(Str())),
            "bayes": Either(Str(), Null()),
            "baseline": Choice("knn"),
            "train": Str(),
            "neighbors": POSITIVE,
            "max_train": POSITIVE,
            "seed": Int(min=0),
        },
        order=60,
        inputs=lambda p: [p.get("input", "test")] + ([p["train"]] if "train" in p else []),
        validate=_check_evaluate,
    ),
}

_SCHEDULER = Section(
    {
        "scheduler": Str(),
        "workers": POSITIVE,
        "threads": POSITIVE,
        "memory_limit": Either(Str(), POSITIVE, Float(min=0, max=1)),
        "cores": POSITIVE,
        "walltime": Str(),
        "queue": Str(),
        "account": Str(),
        "jobs": POSITIVE,
        "interface": Str(),
    }
)
_GRID = Section(
    {
        "bins": INTS,
        "bounds": Either(ListOf(Float()), ListOf(ListOf(Float()))),
        "periodic": Either(Bool(), ListOf(Bool())),
        "chunks": Either(Choice("auto"), INTS),
        "columns": Either(Str(), ListOf(Str())),
        "label": Str(),
    },
    after=lambda g: _check_grid(g),
)
_OUTPUTS = Section(
    {"store": PATH, "predictions": PATH, "evaluation": PATH, "overwrite": Bool()},
    required=("store",),
)


def _check_grid(g: dict) -> None:
    """The grid's own rules (one dim per entry of a list; the dims come later)."""
    from gridflow.grid import parse_bins, parse_bounds

    if "bins" in g:
        bins = g["bins"]
        parse_bins(bins, len(bins) if isinstance(bins, list) else 1)
    if "bounds" in g:
        bounds = g["bounds"]
        nested = bool(bounds) and isinstance(bounds[0], list)
        pairs = len(bounds) if nested else max(1, len(bounds) // 2)
        if nested and any(len(b) != 2 for b in bounds):
            raise ParameterError(f"bounds: expected [lo, hi] pairs, got {bounds!r}")
        parse_bounds(bounds, pairs)


def _grid_dims(config: dict) -> int | None:
    """The number of dims the file fixes, if any: grid.columns, or the synth stage's dims."""
    grid = config.get("grid", {})
    if isinstance(grid.get("columns"), list):
        return len(grid["columns"])
    if isinstance(grid.get("columns"), str):
        return len([c for c in grid["columns"].split(",") if c.strip()])
    synth = config["stages"].get("synth")
    if synth is not None and "bin" in config["stages"]:
        return synth.get("dims", 2)
    return None


def _check_dims(config: dict) -> None:
    """Per-dim grid entries and cluster's connectivity against the dims, when known."""
    from gridflow.components import parse_connectivity
    from gridflow.grid import parse_bins, parse_bounds, parse_periodic

    ndim = _grid_dims(config)
    if ndim is None:
        return
    grid = config.get("grid", {})
    checks = {
        "bins": parse_bins,
        "bounds": parse_bounds,
        "periodic": parse_periodic,
        "chunks": lambda v, n: v == "auto" or parse_bins(v, n),
    }
    for key, parse in checks.items():
        if key in grid:
            library_rule(lambda g, key=key, parse=parse: parse(g[key], ndim), grid, "grid")
    cluster = config["stages"].get("cluster") or {}
    if "connectivity" in cluster:
        library_rule(
            lambda p: parse_connectivity(p["connectivity"], ndim), cluster, "stages.cluster"
        )


def _schema() -> Section:
    stages = Section({name: Section(s.params, after=s.validate) for name, s in STAGES.items()})
    return Section(
        {
            "version": Choice(1),
            "inputs": MapOf(PATH),
            "grid": _GRID,
            "stages": stages,
            "outputs": _OUTPUTS,
            "scheduler": _SCHEDULER,
        },
        required=("stages", "outputs"),
    )


# --- the pipeline ------------------------------------------------------------------------


@dataclass
class Pipeline:
    """A validated pipeline: its configuration, where relative paths start, and its name."""

    config: dict[str, Any]
    workdir: str
    source: str = "<pipeline>"
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def stages(self) -> list[Stage]:
        return sorted((STAGES[n] for n in self.config["stages"]), key=lambda s: s.order)

    def path(self, p: str) -> str:
        return os.path.normpath(os.path.join(self.workdir, os.path.expanduser(p)))

    @property
    def scheduler(self) -> SchedulerOptions:
        return SchedulerOptions(**self.config.get("scheduler", {}))

    def describe(self) -> str:
        names = " -> ".join(s.name for s in self.stages)
        return f"{self.source}: {names}; store {self.path(self.config['outputs']['store'])}"


def _set(config: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (the value is parsed as YAML)."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"--set: expected KEY=VALUE (e.g. stages.classify.window=5), got {assignment!r}"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a mapping in the pipeline")
        node = child
    node[parts[-1]] = value


def parse_pipeline(
    raw: Any,
    *,
    workdir: str | os.PathLike | None = None,
    source: str = "<pipeline>",
    overrides: Sequence[str] = (),
    scheduler: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Validate a pipeline configuration (a mapping, as loaded from YAML).

    ``overrides`` are ``dotted.key=value`` strings applied first (``--set``);
    ``scheduler`` holds command-line scheduler options, which replace the
    file's where given (not None). Raises :class:`ConfigError` naming the
    offending key.
    """
    config = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        _set(config, assignment)
    given = {k: v for k, v in (scheduler or {}).items() if v is not None}
    if given:
        config["scheduler"] = {**(config.get("scheduler") or {}), **given}
    config = _schema()(config, "")
    if not config["stages"]:
        raise ConfigError(f"stages: no stage given; expected some of {', '.join(STAGES)}")
    _check_dims(config)
    pipeline = Pipeline(config, os.path.abspath(os.fspath(workdir or os.getcwd())), source)
    _check_references(pipeline)
    try:
        pipeline.scheduler  # noqa: B018  (validates the combination)
    except ParameterError as exc:
        raise ConfigError(f"scheduler.{exc}") from None
    pipeline.digests = _digests(pipeline)
    return pipeline


def load_pipeline(path: str | os.PathLike, **kwargs: Any) -> Pipeline:
    """Read and validate a pipeline YAML file (see :func:`parse_pipeline`)."""
    import yaml

    path = os.fspath(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"pipeline: {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"pipeline: {path}{where}: {problem}; fix the YAML syntax") from None
    return parse_pipeline(raw, source=os.path.basename(path), **kwargs)


def _check_references(p: Pipeline) -> None:
    config = p.config
    inputs = config.get("inputs", {})
    stages = config["stages"]
    generated: set[str] = set()
    for stage in p.stages:
        params = stages[stage.name]
        for name in stage.writes(params):
            if name not in inputs:
                raise ConfigError(
                    f"stages.{stage.name}.points.{name}: not an input; add inputs.{name}: PATH"
                )
            generated.add(name)
        for name in stage.inputs(params):
            if name not in inputs:
                raise ConfigError(
                    f"stages.{stage.name}.input: {name!r} is not one of the inputs "
                    f"({', '.join(inputs) or 'none given'}); add inputs.{name}: PATH"
                )
            if name not in generated and not os.path.exists(p.path(inputs[name])):
                raise ConfigError(
                    f"inputs.{name}: {p.path(inputs[name])} does not exist (and no synth "
                    "stage generates it); fix the path"
                )
        for out in stage.outputs:
            if out not in config["outputs"]:
                raise ConfigError(f"outputs.{out}: missing; stage {stage.name} writes it")
    if "bin" in stages and "bins" not in config.get("grid", {}):
        raise ConfigError("grid.bins: missing; the bin stage needs the cells per dim")
    if "bin" not in stages:
        store = p.path(config["outputs"]["store"])
        from gridflow.store import is_gridflow_store

        if not is_gridflow_store(store):
            raise ConfigError(
                f"outputs.store: {store} is not a gridflow store and no bin stage makes it; "
                "add stages.bin or fix the path"
            )
    for name in ("store", "predictions", "evaluation"):
        if name in config["outputs"]:
            parent = os.path.dirname(p.path(config["outputs"][name]))
            if parent and not os.path.isdir(parent):
                # Created at the start of the run; a path under a file cannot be.
                probe = parent
                while probe and not os.path.exists(probe):
                    probe = os.path.dirname(probe)
                if probe and not os.path.isdir(probe):
                    raise ConfigError(f"outputs.{name}: {probe} is a file, not a directory")


def _digests(p: Pipeline) -> dict[str, str]:
    """Per stage: a digest of everything its result depends on (chained)."""
    out = {}
    upstream = ""
    config = p.config
    for stage in p.stages:
        params = config["stages"][stage.name]
        doc = {
            "stage": stage.name,
            "params": params,
            "upstream": upstream,
            "inputs": {n: config["inputs"][n] for n in stage.inputs(params) + stage.writes(params)},
            "outputs": {n: config["outputs"][n] for n in stage.outputs},
        }
        if stage.name == "bin":
            doc["grid"] = config.get("grid", {})
        upstream = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
        out[stage.name] = upstream
    return out


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
    from gridflow.planner import plan_filter

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
    params = config["stages"]["classify"]
    window = params.get("window", 10)
    iterations = params.get("iterations", 3)
    chunks = grid.get("chunks") if "bin" in config["stages"] else None
    if chunks == "auto" or chunks is None:
        given = None
    else:
        given = chunks if isinstance(chunks, list) else [chunks] * ndim
    plan = plan_filter(
        shape,
        nclasses,
        [window] * ndim,
        iterations=params.get("max_iter", 100) if iterations == "auto" else iterations,
        chunks=given,
        memory=memory,
        threads=threads,
        seed_counts=params.get("seed") == "counts",
        clamp=params.get("clamp", False),
    )
    log.info("memory plan for classify: %s", plan.summary())
    return plan


def run_pipeline(
    pipeline: Pipeline, *, resume: bool = False, overwrite: bool = False
) -> list[StageResult]:
    """Run every stage on the active Dask scheduler; returns one result per stage.

    With ``resume``, stages recorded as finished with the same digest are
    skipped and a multi-round stage continues from its checkpoint.

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
    if stage.name == "synth":
        return _synth_done(ctx, params)
    if recorded.get(stage.name) != digest:
        return False
    outputs = list(stage.outputs)
    if stage.name == "evaluate" and "evaluation" in ctx.pipeline.config["outputs"]:
        outputs.append("evaluation")
    return all(os.path.exists(ctx.output(o)) for o in outputs)
