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

Stages are a registry: a name, a callable, a parameter schema and the
stage's own rules. The schema says what kind of YAML value each key takes,
its choices those of :mod:`gridflow._types`; the rules are the ``parse_*``
functions the stage itself calls (:class:`~gridflow.pipeline.schema.Rule`),
so a file accepts what the stage accepts, with the stage's message. A stage
working on the store in place, like ``classify``, is one :func:`grid_stage`
entry.

The package, by idea: :mod:`~gridflow.pipeline.schema` (the schema language
and the rules), :mod:`~gridflow.pipeline.stages` (the registry),
:mod:`~gridflow.pipeline.config` (a file, validated) and
:mod:`~gridflow.pipeline.run` (running it).
"""

from gridflow.pipeline.config import Pipeline, load_pipeline, parse_pipeline
from gridflow.pipeline.run import (
    PIPELINE_ATTR,
    StageResult,
    check_outputs,
    memory_plan,
    run_pipeline,
)
from gridflow.pipeline.schema import ConfigError
from gridflow.pipeline.stages import STAGES, Context, Stage, grid_stage

__all__ = [
    "PIPELINE_ATTR",
    "STAGES",
    "ConfigError",
    "Context",
    "Pipeline",
    "Stage",
    "StageResult",
    "check_outputs",
    "grid_stage",
    "load_pipeline",
    "memory_plan",
    "parse_pipeline",
    "run_pipeline",
]
