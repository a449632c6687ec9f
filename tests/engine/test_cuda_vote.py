"""The CUDA vote kernels (gridflow._kernels.cuda_vote) against the CPU kernels, bit for bit.

The checks live in ``_cuda_vote_checks``. With a CUDA device they run here
on CuPy arrays; without one, on NumPy arrays under numba's CUDA simulator,
which numba reads from ``NUMBA_ENABLE_CUDASIM`` when it is first imported:
so in a subprocess (numba is already imported here), one per check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import has_cuda_device

ROOT = Path(__file__).resolve().parents[2]


SIM = not has_cuda_device()

CHECKS = [
    "check_onehot",
    "check_decide",
    "check_complete_last_plane",
    "check_summarise",
    "check_box_sums",
    "check_scatter_changes",
    "check_window_votes",
    "check_window_votes_planes",
]


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_kernel_equals_the_cpu_kernel(name):
    if not SIM:
        import cupy

        from tests.engine import _cuda_vote_checks

        getattr(_cuda_vote_checks, name)(cupy)
        return
    proc = subprocess.run(
        [sys.executable, "-c", f"import tests.engine._cuda_vote_checks as c; c.{name}()"],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"{name} under the CUDA simulator:\n{proc.stderr}"


def test_importing_the_kernels_loads_neither_numba_cuda_nor_cupy():
    code = (
        "import sys, gridflow._kernels.cuda_vote; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cupy' or "
        "m.startswith('numba.cuda')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]"], proc.stdout
