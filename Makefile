# gridflow: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment .venv and install what they need on
# first use; nothing else needs to be installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test bench lint format clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per set of extras, rebuilt when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[test,viz]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[test,viz,bench]'
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/gridflow demo --out demo-output

test: $(VENV)/.installed-test
	$(BIN)/ruff check gridflow tests benchmarks examples
	$(BIN)/pytest -q

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_binning.py
	$(PY) benchmarks/bench_classify.py
	$(PY) benchmarks/bench_cluster.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gridflow tests benchmarks examples
	$(BIN)/ruff format --check gridflow tests benchmarks examples

format: $(VENV)/.installed-test
	$(BIN)/ruff format gridflow tests benchmarks examples
	$(BIN)/ruff check --fix gridflow tests benchmarks examples

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
