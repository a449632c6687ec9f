"""The CUDA binning and prediction kernels, and the stages' device paths that
run them, against the CPU kernels and paths, bit for bit.

The checks live in ``_cuda_cells_checks.py``. Without a CUDA device they run
under numba's CUDA simulator in a subprocess: ``NUMBA_ENABLE_CUDASIM`` is
read when numba is first imported, and this session may have imported it
already. With a device they run here, on CuPy arrays.
"""

import pytest

from tests.conftest import has_cuda_device
from tests.engine import _simulator as simulator

SIM = not has_cuda_device()


# Every other check runs in one of two simulator processes: in this order
# they take about as long (check_count is the longest).
CHECKS = [
    "check_count_edges",
    "check_count",
    "check_cells_and_gather",
    "check_predict_on_device",
    "check_bin_tree_on_device",
]


simulated = simulator.fixture("tests.engine._cuda_cells_checks", CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_kernels_match_the_cpu_kernels(name, request, capsys):
    if SIM:
        ok, out = simulator.result(request.getfixturevalue("simulated"), name)
        assert ok, f"{name} under the CUDA simulator:\n{out}"
    else:
        from tests.engine import _cuda_cells_checks as checks

        getattr(checks, name)()
        out = capsys.readouterr().out
    mode = "simulator" if SIM else "device"
    assert f"ok {name} ({mode})" in out, out
