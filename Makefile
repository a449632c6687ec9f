# gridflow: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment .venv and install what they need on
# first use; nothing else needs to be installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test test-hpc bench gpu-wheels lint format clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per set of extras, rebuilt when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e .
	touch $@

# The hpc extra brings dask-jobqueue, dask-mpi, mpi4py and the mpich wheel
# (mpiexec included): the MPI tests need nothing from the system.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[test,viz,hpc]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[test,viz,hpc,bench]'
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/gridflow demo --out demo-output

test: $(VENV)/.installed-test
	$(BIN)/ruff check gridflow tests benchmarks examples
	$(BIN)/pytest -q

# SLURM for real (root only): installs Debian's slurm-wlm and munge, starts a
# single-node cluster on this machine, submits deploy/slurm.sbatch and runs a
# pipeline whose workers are SLURM jobs.
test-hpc: $(VENV)/.installed-test
	bash .ci/slurm-up
	GRIDFLOW_TEST_SLURM=1 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q -p no:cacheprovider \
		tests/test_slurm.py; status=$$?; bash .ci/slurm-down; exit $$status

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_binning.py
	$(PY) benchmarks/bench_classify.py
	$(PY) benchmarks/bench_fractal.py
	$(PY) benchmarks/bench_scaling.py
	$(PY) benchmarks/bench_cluster.py

# Wheels for benchmarks/gpu_check.sh on a GPU machine without internet (into .whl/).
gpu-wheels: $(VENV)/.installed-test
	PYTHON=$(PY) bash benchmarks/gpu_wheels.sh .whl

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gridflow tests benchmarks examples
	$(BIN)/ruff format --check gridflow tests benchmarks examples

format: $(VENV)/.installed-test
	$(BIN)/ruff format gridflow tests benchmarks examples
	$(BIN)/ruff check --fix gridflow tests benchmarks examples

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
