"""A pipeline file, validated: its sections, its references, its stages' digests."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gridflow.errors import ParameterError
from gridflow.pipeline.schema import (
    INTS,
    NAMES,
    PATH,
    POSITIVE,
    Bool,
    Choice,
    ConfigError,
    Either,
    Float,
    Int,
    ListOf,
    MapOf,
    Section,
    Str,
    reported_at,
)
from gridflow.pipeline.stages import STAGES, Stage
from gridflow.runtime import SchedulerOptions

# --- the sections besides the stages --------------------------------------------------


def _check_grid(g: dict, key: str) -> None:
    """The grid's own rules (one dim per entry of a list; the dims come later)."""
    from gridflow.grid import parse_bins, parse_bounds

    with reported_at(key):
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
        # The cells per dim: any integers here, their rule is parse_bins's (_check_grid).
        "bins": Either(Int(), ListOf(Int())),
        "bounds": Either(ListOf(Float()), ListOf(ListOf(Float()))),
        "periodic": Either(Bool(), ListOf(Bool())),
        "chunks": Either(Choice("auto"), INTS),
        "columns": NAMES,
        "label": Str(),
    },
    after=_check_grid,
)
_OUTPUTS = Section(
    {"store": PATH, "predictions": PATH, "evaluation": PATH, "overwrite": Bool()},
    required=("store",),
)


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
    from gridflow.engine.components import parse_connectivity
    from gridflow.grid import parse_bins, parse_bounds, parse_periodic

    ndim = _grid_dims(config)
    if ndim is None:
        return
    grid = config.get("grid", {})
    # chunks: binning.parse_chunks needs the grid's bounds, known only after binning.
    checks = {
        "bins": parse_bins,
        "bounds": parse_bounds,
        "periodic": parse_periodic,
        "chunks": lambda v, n: v == "auto" or parse_bins(v, n),
    }
    for key, parse in checks.items():
        if key in grid:
            with reported_at("grid", (key,)):
                parse(grid[key], ndim)
    cluster = config["stages"].get("cluster") or {}
    if "connectivity" in cluster:
        with reported_at("stages.cluster"):
            parse_connectivity(cluster["connectivity"], ndim)


def _schema() -> Section:
    stages = Section({name: s.schema() for name, s in STAGES.items()})
    return Section(
        {
            "version": Choice(1),
            "inputs": MapOf(PATH),
            "grid": _GRID,
            "stages": stages,
            "outputs": _OUTPUTS,
            "scheduler": _SCHEDULER,
            "backend": Choice("numpy", "cupy"),
        },
        required=("stages", "outputs"),
    )


# --- the pipeline ---------------------------------------------------------------------


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

    @property
    def backend(self) -> str | None:
        """Where dense chunks are computed: the ``backend`` key, else ``"cupy"``
        on ``scheduler: gpu``, else as the stages' inputs are (None)."""
        given = self.config.get("backend")
        if given is None and self.config.get("scheduler", {}).get("scheduler") == "gpu":
            return "cupy"
        return given

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
    backend: str | None = None,
) -> Pipeline:
    """Validate a pipeline configuration (a mapping, as loaded from YAML).

    ``overrides`` are ``dotted.key=value`` strings applied first (``--set``);
    ``scheduler`` holds command-line scheduler options, which replace the
    file's where given (not None), and ``backend`` (``--backend``) the
    file's ``backend``. Raises :class:`ConfigError` naming the offending key.
    """
    config = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        _set(config, assignment)
    given = {k: v for k, v in (scheduler or {}).items() if v is not None}
    if given:
        config["scheduler"] = {**(config.get("scheduler") or {}), **given}
    if backend is not None:
        config["backend"] = backend
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
