#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels benchmarks/gpu_check.sh installs on a GPU
# machine that has Python 3.12, CuPy, numba, numba-cuda, scipy, xarray, pandas, pyarrow,
# click, pyyaml, psutil, pytest and hypothesis but no internet: dask, distributed, zarr,
# sparse, dask-cuda and what they need beyond that list, at the versions of this
# checkout's .venv where it has them. They go to .whl/ (ignored by git).
#
#   make gpu-wheels        # or: bash benchmarks/gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
py=${PYTHON:-.venv/bin/python}
# What the GPU image already holds of gridflow's needs (tests/test_gpu_check.py checks
# that these and the wheels below cover every dependency in pyproject.toml).
# shellcheck disable=SC2034
ON_DEVICE="numpy scipy pandas pyarrow xarray numba click pyyaml psutil pillow tqdm cupy numba-cuda"
WHEELS="dask distributed zarr numcodecs donfig google-crc32c sparse partd locket tblib tornado zict"
mkdir -p "$dest"
# name==version from this checkout's venv (so the GPU run uses what the tests here use).
pinned() { "$py" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"; }
wheels=()
for name in $WHEELS; do
    wheels+=("$(pinned "$name")")
done
wheels+=("dask-cuda==${DASK_CUDA_VERSION:-26.10.0}")
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$dest" "${wheels[@]}"
# dask-cuda's own needs beyond dask and distributed (the GPU image has nvidia-ml-py, numba).
for w in "$dest"/dask_cuda-*.whl; do
    unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
ls -la "$dest"
du -sh "$dest"
