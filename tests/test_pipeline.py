import inspect
import json

import numpy as np
import pytest
from click.testing import CliRunner

from gridflow import open_grid
from gridflow.cli import main
from gridflow.errors import ParameterError
from gridflow.pipeline import STAGES, ConfigError, grid_stage, parse_pipeline
from gridflow.pipeline.schema import Int
from tests._cli import DROP, ROOT, pipeline_config, run_in_empty_workdir, small_pipeline


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _config(**changes):
    return pipeline_config(bins=32, chunks=16, iterations=3, fuse=2, **changes)


def test_pipeline_runs_every_stage_and_records_its_config(tmp_path):
    config = small_pipeline(tmp_path / "p.yaml", bins=32, chunks=16, iterations=3)
    r = run(
        "--workers",
        "1",
        "run",
        config,
        "--workdir",
        tmp_path,
        "--set",
        "stages.classify.window=3",
    )
    assert r.exit_code == 0, r.output
    for stage in ("synth:", "bin:", "classify: 3 steps", "predict: predicted 4,000", "evaluate:"):
        assert stage in r.output
    ds = open_grid(tmp_path / "out" / "grid.zarr")
    assert {"counts", "label", "probability"} <= set(ds.data_vars)
    recorded = ds.attrs["gridflow_pipeline"]
    assert recorded["config"]["stages"]["classify"]["window"] == 3  # the override
    assert recorded["config"]["scheduler"] == {"workers": 1}  # the global option
    assert recorded["scheduler"] == "local"
    assert list(recorded["done"]) == ["bin", "classify", "predict", "evaluate"]
    assert ds.attrs["gridflow_stages"]["classify"]["window"] == [3, 3]
    assert "gridflow 0" in ds.attrs["history"].splitlines()[-1]
    assert " run " in ds.attrs["history"].splitlines()[-1]
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert 0.3 < report["accuracy"] <= 1

    # Everything finished: a resumed run skips every stage and changes nothing.
    labels = ds["label"].values
    r = run("run", config, "--workdir", tmp_path, "--resume", "--set", "stages.classify.window=3")
    assert r.exit_code == 0, r.output
    assert r.output.count("done in an earlier run") == 5
    np.testing.assert_array_equal(open_grid(tmp_path / "out" / "grid.zarr")["label"].values, labels)
    # Another window is another classify: it runs again, and so does what follows.
    r = run("run", config, "--workdir", tmp_path, "--resume")
    assert r.exit_code == 0, r.output
    assert "bin: done in an earlier run" in r.output and "classify: 3 steps" in r.output
    assert "predict: predicted" in r.output


def test_existing_outputs_are_refused_before_any_work(tmp_path):
    config = small_pipeline(tmp_path / "p.yaml", bins=32, chunks=16, iterations=2)
    assert run("run", config, "--workdir", tmp_path).exit_code == 0
    before = (tmp_path / "out" / "grid.zarr" / "zarr.json").stat().st_mtime_ns
    r = run("run", config, "--workdir", tmp_path)
    assert r.exit_code == 2
    assert r.output.startswith("error: outputs.store: ") and "--overwrite" in r.output
    assert (tmp_path / "out" / "grid.zarr" / "zarr.json").stat().st_mtime_ns == before
    r = run("run", config, "--workdir", tmp_path, "--overwrite")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, "colour: unknown key; expected one of backend, grid, inputs, outputs"),
        ({"stages.classify.windw": 3}, "stages.classify.windw: unknown key; expected one of"),
        ({"stages.segment": {}}, "stages.segment: unknown key"),
        ({"stages.classify.window": "ten"}, "stages.classify.window: expected an integer >= 1"),
        ({"stages.classify.iterations": 0}, "stages.classify.iterations: expected"),
        ({"stages.classify.clamp": "yes"}, "stages.classify.clamp: expected true or false"),
        ({"grid.bins": [32, "x"]}, "grid.bins: expected"),
        ({"grid.bins": DROP}, "grid.bins: missing"),
        ({"outputs.store": DROP}, "outputs.store: missing; it is required"),
        ({"outputs.predictions": DROP}, "outputs.predictions: missing; stage predict writes it"),
        ({"stages.synth": DROP}, "inputs.train: "),
        ({"stages.bin.input": "training"}, "stages.bin.input: 'training' is not one of the inputs"),
        ({"stages.synth.points": {"valid": 10}}, "stages.synth.points.valid: not an input"),
        ({"scheduler.workers": 0}, "scheduler.workers: expected an integer >= 1"),
        ({"scheduler.scheduler": "yarn"}, "scheduler.scheduler: expected 'local', 'slurm'"),
        ({"scheduler.nodes": 2}, "scheduler.nodes: unknown key"),
    ],
)
def test_bad_config_fails_before_any_work_naming_the_key(tmp_path, changes, message):
    r = run_in_empty_workdir(run, tmp_path, _config(**changes))
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert message in r.output, r.output


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("stages: {bin: [\n")
    r = run("run", path)
    assert r.exit_code == 2 and "p.yaml at line" in r.output and "YAML" in r.output
    r = run("run", tmp_path / "nope.yaml")
    assert r.exit_code == 2 and "nope.yaml does not exist" in r.output
    r = run("run", ROOT / "examples" / "pipeline.yaml", "--set", "stages.classify")
    assert r.exit_code == 2 and "--set: expected KEY=VALUE" in r.output


def test_check_validates_without_running(tmp_path):
    r = run("run", "--check", ROOT / "examples" / "pipeline.yaml", "--workdir", tmp_path)
    assert r.exit_code == 0, r.output
    assert "synth -> bin -> classify -> cluster -> fractal -> predict -> evaluate" in r.output
    assert list(tmp_path.iterdir()) == []


def test_grid_stage_schemas_match_their_functions():
    from gridflow.pipeline.schema import resolve

    grid_stages = [s for s in STAGES.values() if s.function is not None]
    assert "classify" in {s.name for s in grid_stages}
    for stage in grid_stages:
        accepted = set(inspect.signature(resolve(stage.function)).parameters)
        assert set(stage.params) <= accepted, stage.name


def _toy(store, *, factor=2):
    """A stage in classify's style: reads the store, writes a variable into it."""
    import xarray as xr
    import zarr

    ds = open_grid(store)
    out = xr.Dataset({"toy": ds["counts"].sum("class") * factor}, attrs=ds.attrs)
    out.to_zarr(store, mode="a", zarr_format=3, consolidated=False)
    group = zarr.open_group(store, mode="r+")
    stages = dict(group.attrs["gridflow_stages"])
    stages["toy"] = {"factor": factor}
    group.attrs["gridflow_stages"] = stages
    return open_grid(store)


def test_a_new_stage_is_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "toy", grid_stage("toy", _toy, {"factor": Int(min=1)}, order=30))
    config = _config(**{"stages.toy": {"factor": 3}})
    config["stages"].pop("predict")
    config["stages"].pop("evaluate")
    pipeline = parse_pipeline(config, workdir=tmp_path)
    assert [s.name for s in pipeline.stages] == ["synth", "bin", "classify", "toy"]
    from gridflow.pipeline import run_pipeline
    from gridflow.runtime import client

    with client():
        results = run_pipeline(pipeline)
    assert [r.name for r in results][-1] == "toy"
    ds = open_grid(tmp_path / "out" / "grid.zarr")
    np.testing.assert_array_equal(ds["toy"].values, ds["counts"].values.sum(0) * 3)
    with pytest.raises(ConfigError, match=r"stages\.toy\.factor: expected an integer >= 1"):
        parse_pipeline(_config(**{"stages.toy": {"factor": 0}}), workdir=tmp_path)


def test_config_error_is_a_parameter_error():
    with pytest.raises(ParameterError, match="stages: missing"):
        parse_pipeline({"outputs": {"store": "x.zarr"}})


def test_memory_plan_before_any_work(tmp_path):
    from gridflow.errors import MemoryPlanWarning
    from gridflow.pipeline import memory_plan

    config = _config(**{"grid.bins": 4096, "grid.chunks": 1024, "stages.classify.window": 10})
    pipeline = parse_pipeline(config, workdir=tmp_path)
    plan = memory_plan(pipeline, memory=16e9, threads=4)
    assert plan.fits and plan.chunks == (1024, 1024) and plan.fuse == 3
    with pytest.warns(MemoryPlanWarning, match="memory: a worker needs about"):
        plan = memory_plan(pipeline, memory=1e5, threads=4)
    assert not plan.fits
    # Without a synth stage the classes are known only after binning.
    config["stages"].pop("synth")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").touch()
    (tmp_path / "data" / "test.parquet").touch()
    assert memory_plan(parse_pipeline(config, workdir=tmp_path), memory=1e6, threads=4) is None
