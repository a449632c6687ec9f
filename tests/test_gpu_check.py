"""benchmarks/gpu_check.sh, gpu_wheels.sh and bench_gpu.py: ready to run on a GPU machine.

CI has no GPU: these check what can be checked without one (the scripts parse,
the wheels cover what the GPU image lacks, bench_gpu.py's CPU columns run).
"""

import re
import subprocess
import sys
import tomllib

import pytest

from tests._cli import ROOT

BENCH = ROOT / "benchmarks"


@pytest.mark.parametrize("name", ["gpu_check.sh", "gpu_wheels.sh"])
def test_scripts_are_valid_bash(name):
    subprocess.run(["bash", "-n", str(BENCH / name)], check=True)


def _names(line: str, script: str) -> set[str]:
    found = re.search(rf'^{line}="([^"]*)"', script, re.M)
    assert found, f"{line}= is missing from gpu_wheels.sh"
    return set(found.group(1).split())


def test_the_wheels_and_the_gpu_image_cover_every_dependency():
    script = (BENCH / "gpu_wheels.sh").read_text()
    have = _names("ON_DEVICE", script) | _names("WHEELS", script)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower() for d in deps}
    assert needed <= have, f"neither carried nor on the GPU image: {sorted(needed - have)}"
    # dask's array, dataframe and distributed extras need these at import time.
    assert {"distributed", "partd", "tornado", "zict", "tblib", "numcodecs"} <= have


def test_bench_gpu_runs_its_cpu_columns_without_a_device():
    cases = "vote,reference,binning,predict,fractal"
    r = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py"), "--quick", "--cases", cases],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "failed:" not in r.stdout, r.stdout
    for title in ("One vote step", "The reference configuration", "Binning", "Prediction"):
        assert f"### {title}" in r.stdout
    # The CPU column holds a time on every row, the GPU columns say why they are empty.
    assert r.stdout.count("| 256x256 x 5 |") == 2
    assert "no GPU" in r.stdout or "equal" in r.stdout


def test_importing_gridflow_imports_no_gpu_package():
    code = (
        "import sys, gridflow, gridflow.cli, gridflow.estimators, gridflow.backend, "
        "gridflow._kernels.cuda_vote, gridflow._kernels.cuda_cells\n"
        "bad = [m for m in ('cupy', 'cupyx', 'dask_cuda', 'numba.cuda') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
