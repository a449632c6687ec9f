"""The CUDA vote kernels (gridflow._kernels.cuda_vote) against the CPU kernels, bit for bit.

The checks live in ``_cuda_vote_checks``. With a CUDA device they run here
on CuPy arrays; without one, on NumPy arrays under numba's CUDA simulator,
which numba reads from ``NUMBA_ENABLE_CUDASIM`` when it is first imported:
so in subprocesses (tests/engine/_simulator.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import has_cuda_device
from tests.engine import _simulator as simulator

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


simulated = simulator.fixture("tests.engine._cuda_vote_checks", CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_kernel_equals_the_cpu_kernel(name, request):
    if not SIM:
        import cupy

        from tests.engine import _cuda_vote_checks

        getattr(_cuda_vote_checks, name)(cupy)
        return
    ok, out = simulator.result(request.getfixturevalue("simulated"), name)
    assert ok, f"{name} under the CUDA simulator:\n{out}"
