"""The pipeline under ``mpiexec -n 4`` with dask-mpi equals the in-process run.

MPI comes from PyPI wheels (mpi4py and the mpich wheel, which ships
``mpiexec``) installed by ``make test``; nothing comes from the system.
Rank 0 is the scheduler, rank 1 runs the pipeline, ranks 2 and 3 work.
"""

import os
import shutil
import subprocess
import sys

import pandas as pd
from click.testing import CliRunner

from gridflow.cli import main
from gridflow.store import open_grid
from tests._cli import ROOT, cli_env, gridflow_command
from tests._stores import assert_same_store

EXAMPLE = ROOT / "examples" / "pipeline.yaml"


def _mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    assert found, "mpiexec not found: make test installs the mpich wheel (pip install mpich)"
    return found


def test_example_pipeline_under_mpiexec_equals_in_process(tmp_path):
    local = tmp_path / "local"
    mpi = tmp_path / "mpi"
    local.mkdir()
    mpi.mkdir()
    r = CliRunner().invoke(main, ["run", str(EXAMPLE), "--workdir", str(local)])
    assert r.exit_code == 0, r.output

    job = subprocess.run(
        [
            _mpiexec(),
            "-n",
            "4",
            *gridflow_command("--scheduler", "mpi", "run", EXAMPLE, "--workdir", mpi),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "dask-mpi: 2 workers" in job.stderr  # ranks 2 and 3
    assert job.stdout.count("pipeline pipeline.yaml done") == 1  # only rank 1 ran it

    assert_same_store(
        local / "pipeline-output" / "grid.zarr", mpi / "pipeline-output" / "grid.zarr"
    )
    ds = open_grid(mpi / "pipeline-output" / "grid.zarr")
    assert ds.attrs["gridflow_pipeline"]["scheduler"] == "mpi"
    for name in ("predictions.parquet", "evaluation.json"):
        a = sorted(p.name for p in (local / "pipeline-output" / name).rglob("*"))
        assert a == sorted(p.name for p in (mpi / "pipeline-output" / name).rglob("*"))
    assert (local / "pipeline-output" / "evaluation.json").read_text() != ""
    for part in (local / "pipeline-output" / "predictions.parquet").glob("*.parquet"):
        other = mpi / "pipeline-output" / "predictions.parquet" / part.name
        assert pd.read_parquet(part).equals(pd.read_parquet(other))


def test_mpi_needs_three_ranks(tmp_path):
    job = subprocess.run(
        gridflow_command("--scheduler", "mpi", "run", EXAMPLE, "--workdir", tmp_path),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 2
    assert "needs at least 3 MPI ranks" in job.stderr and "mpiexec -n 4" in job.stderr
    assert not (tmp_path / "pipeline-output" / "grid.zarr").exists()
