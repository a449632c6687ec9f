#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, Python 3.12, CuPy, numba and
# numba-cuda but no internet and no dask or zarr, install what is missing from the
# wheels in .whl/ (`make gpu-wheels` on a machine with PyPI; see
# benchmarks/gpu_wheels.sh), run the GPU tests, then benchmarks/bench_gpu.py, in at
# most 8 minutes, and write everything to one Markdown file.
#
#   bash benchmarks/gpu_check.sh [OUTFILE]      # default: $OUT/gpu_check.md, else ./gpu_check.md
#
# gridflow runs from this checkout (PYTHONPATH); nothing is installed outside /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
budget=${GPU_CHECK_SECONDS:-480}
out=${1:-${OUT:-.}/gpu_check.md}
py=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/gridflow-site}
mkdir -p "$(dirname "$out")"
left() { echo $((budget - ($(date +%s) - t0))); }

if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { echo "gpu_check: installing .whl/ failed" >&2; exit 2; }
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

{
    echo "# gridflow GPU check"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$py" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "numba", "numba.cuda", "scipy", "dask", "distributed", "zarr",
             "sparse", "xarray", "dask_cuda"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "ok"))
    except Exception as exc:  # a missing package is a line of the report, not a crash
        print(name, "MISSING:", exc)
import cupy
print("device", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
      "count", cupy.cuda.runtime.getDeviceCount())
PY
    echo '```'
    echo
    echo "## GPU tests"
    echo
    echo '```'
} >"$out" 2>&1

# The tests marked gpu (the engine tests' CuPy cases, the stores against the CPU's) and
# the device kernels against the CPU ones, in-process on the device.
timeout "$(( $(left) / 2 ))" "$py" -m pytest -q -p no:cacheprovider -o addopts="" -ra \
    -m gpu tests/ >>"$out" 2>&1
tests_rc=$?
timeout "$(( $(left) / 3 ))" "$py" -m pytest -q -p no:cacheprovider -o addopts="" -ra \
    tests/engine/test_cuda_vote.py tests/engine/test_cuda_cells.py >>"$out" 2>&1
kernels_rc=$?
{
    echo '```'
    echo
    echo "pytest -m gpu: exit $tests_rc; device kernels: exit $kernels_rc"
    echo
} >>"$out"

remaining=$(left)
if [ "$remaining" -gt 30 ]; then
    timeout "$((remaining - 10))" "$py" benchmarks/bench_gpu.py --seconds "$((remaining - 20))" \
        >>"$out" 2>>"$out.log"
    bench_rc=$?
else
    bench_rc=124
    echo "bench_gpu.py: not run, $remaining s left of $budget" >>"$out"
fi
echo "bench_gpu.py: exit $bench_rc; $(( $(date +%s) - t0 )) s in all" >>"$out"
cat "$out"
[ "$tests_rc" -eq 0 ] && [ "$kernels_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
