"""SLURM for real: a batch job under dask-mpi, and workers that are SLURM jobs.

These need a SLURM cluster: ``make test-hpc`` (root) installs Debian's
slurm-wlm and munge, starts a single-node cluster on this machine
(``.ci/slurm-up``) and runs this file with ``GRIDFLOW_TEST_SLURM=1``.
Without that variable they are skipped; with it, a missing cluster fails.
"""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gridflow.cli import main
from gridflow.store import open_grid
from tests._cli import ROOT, cli_env, gridflow_command
from tests._stores import assert_same_store

pytestmark = pytest.mark.skipif(
    os.environ.get("GRIDFLOW_TEST_SLURM") != "1",
    reason="needs a SLURM cluster: run `make test-hpc` (root)",
)

EXAMPLE = ROOT / "examples" / "pipeline.yaml"
STORE = ("pipeline-output", "grid.zarr")


def _env():
    # Batch jobs inherit this environment (sbatch --export=ALL): the
    # checkout's gridflow and the virtualenv's mpiexec and python.
    env = cli_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    r = CliRunner().invoke(main, ["run", str(EXAMPLE), "--workdir", str(work)])
    assert r.exit_code == 0, r.output
    return work.joinpath(*STORE)


def test_cluster_is_up():
    assert shutil.which("sbatch"), "sbatch not found: run .ci/slurm-up first"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0].startswith(("idle", "mixed", "allocated")), out.stdout


def test_deploy_sbatch_script_under_dask_mpi(tmp_path, in_process):
    work = tmp_path / "work"
    # Only what a user edits: account, partition and paths (here as
    # command-line overrides of the #SBATCH lines and --export).
    job = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--account=gridflow-ci",
            "--partition=debug",
            "--nodes=1",
            "--ntasks-per-node=4",
            "--cpus-per-task=1",
            "--mem-per-cpu=1G",
            f"--output={tmp_path}/job-%j.out",
            f"--export=ALL,PIPELINE={EXAMPLE},WORKDIR={work},GRIDFLOW_VENV={sys.prefix}",
            str(ROOT / "deploy" / "slurm.sbatch"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    logs = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert job.returncode == 0, job.stderr + logs[-3000:]
    assert "4 ranks on 1 node(s), 2 workers" in logs
    assert "dask-mpi: 2 workers" in logs
    assert "pipeline pipeline.yaml done" in logs
    assert_same_store(in_process, work.joinpath(*STORE))
    assert open_grid(work.joinpath(*STORE)).attrs["gridflow_pipeline"]["scheduler"] == "mpi"


def test_workers_are_slurm_jobs_started_by_dask_jobqueue(tmp_path, in_process, monkeypatch):
    from gridflow.runtime import client

    options = {
        "cores": 1,
        "memory_limit": "2GB",
        "jobs": 2,
        "walltime": "00:10:00",
        "queue": "debug",
        "account": "gridflow-ci",
        "interface": "lo",
    }
    monkeypatch.setenv("PATH", _env()["PATH"])  # sbatch passes it to the worker jobs
    monkeypatch.chdir(tmp_path)  # the worker jobs' slurm-<id>.out land here
    with client("slurm", **options) as c:
        c.wait_for_workers(2)
        job_ids = set(c.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
    assert len(job_ids) == 2 and None not in job_ids  # one worker per SLURM job

    work = tmp_path / "work"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    job = subprocess.run(
        gridflow_command("--scheduler", "slurm", *flags, "run", EXAMPLE, "--workdir", work),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "slurm: submitting 2 job(s)" in job.stderr
    assert_same_store(in_process, work.joinpath(*STORE))
    assert open_grid(work.joinpath(*STORE)).attrs["gridflow_pipeline"]["scheduler"] == "slurm"


def test_deploy_jobqueue_script_scales_to_n_jobs(tmp_path, in_process):
    # deploy/jobqueue.yaml as a user would edit it: account and partition,
    # and sizes that fit this small test node.
    text = (ROOT / "deploy" / "jobqueue.yaml").read_text()
    slurm = text.split("  pbs:")[0]
    for old, new in [
        ("queue: compute ", "queue: debug "),
        ("account: YOUR_ACCOUNT ", "account: gridflow-ci "),
        ("cores: 16 ", "cores: 1 "),
        ("memory: 64GB ", "memory: 2GB "),
        ("processes: 4 ", "processes: 1 "),
        ("interface: null ", "interface: lo "),
        ("local-directory: $TMPDIR", f"local-directory: {tmp_path}"),
    ]:
        assert old in slurm
        slurm = slurm.replace(old, new)
    config = tmp_path / "dask"
    config.mkdir()
    (config / "jobqueue.yaml").write_text(slurm)
    work = tmp_path / "work"
    work.mkdir()
    job = subprocess.run(
        ["bash", str(ROOT / "deploy" / "jobqueue.sh"), "2", "slurm", str(EXAMPLE)],
        env={**_env(), "DASK_CONFIG": str(config), "GRIDFLOW_VENV": sys.prefix},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "each of the 2 worker job(s) would run" in job.stdout
    assert "slurm: submitting 2 job(s)" in job.stderr
    assert len(list((work / "gridflow-worker-logs").glob("*.out"))) == 2
    assert_same_store(in_process, work.joinpath(*STORE))
