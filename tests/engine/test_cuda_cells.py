"""The CUDA binning and prediction kernels against the CPU kernels, bit for bit.

The checks live in ``_cuda_cells_checks.py``. Without a CUDA device they run
under numba's CUDA simulator in a subprocess: ``NUMBA_ENABLE_CUDASIM`` is
read when numba is first imported, and this session may have imported it
already. With a device they run here, on CuPy arrays.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import has_cuda_device

ROOT = Path(__file__).resolve().parents[2]


SIM = not has_cuda_device()


CHECKS = ["check_count", "check_count_edges", "check_cells_and_gather"]


def _start(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def simulated():
    """The checks' subprocesses under the simulator, started together (each
    takes seconds, nearly all of it in the simulator and imports)."""
    procs = {
        name: _start(
            f"import tests.engine._cuda_cells_checks as c; c.{name}()", NUMBA_ENABLE_CUDASIM="1"
        )
        for name in CHECKS
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_kernels_match_the_cpu_kernels(name, request, capsys):
    if SIM:
        proc = request.getfixturevalue("simulated")[name]
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} under the CUDA simulator:\n{err}"
    else:
        from tests.engine import _cuda_cells_checks as checks

        getattr(checks, name)()
        out = capsys.readouterr().out
    mode = "simulator" if SIM else "device"
    assert f"ok {name} ({mode})" in out, out


def test_importing_the_module_imports_no_gpu_package():
    proc = _start(
        "import sys, gridflow._kernels.cuda_cells\n"
        "bad = [m for m in ('numba.cuda', 'cupy') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
