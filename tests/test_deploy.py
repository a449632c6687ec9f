"""deploy/: complete scripts where a user edits only account, partition and paths."""

import re
import subprocess

import pytest
import yaml

from tests._cli import ROOT

DEPLOY = ROOT / "deploy"
BATCH = ["slurm.sbatch", "pbs.sh", "gpu.sbatch"]


@pytest.mark.parametrize("name", [*BATCH, "jobqueue.sh"])
def test_scripts_are_valid_bash(name):
    subprocess.run(["bash", "-n", str(DEPLOY / name)], check=True)


@pytest.mark.parametrize("name", BATCH)
def test_only_account_partition_and_paths_are_marked_for_editing(name):
    text = (DEPLOY / name).read_text()
    edits = [line for line in text.splitlines() if "<- edit" in line]
    marked = " ".join(edits).lower()
    assert len(edits) == 3, edits
    assert "account" in marked and ("partition" in marked or "queue" in marked)
    assert "paths" in marked
    # Placeholders appear only on the marked lines.
    for line in text.splitlines():
        if re.search(r"YOUR_[A-Z_]+", line) and not line.lstrip().startswith("#  "):
            assert "<- edit" in line, line
    assert "--resume" in text and "gridflow" in text


def test_jobqueue_yaml_has_both_batch_systems():
    config = yaml.safe_load((DEPLOY / "jobqueue.yaml").read_text())["jobqueue"]
    for system in ("slurm", "pbs"):
        section = config[system]
        assert section["cores"] and section["memory"] and section["walltime"]
        assert section["account"] == "YOUR_ACCOUNT"
