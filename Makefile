# Two commands on a fresh Debian machine (root, Python >= 3.10): `make run` and `make test`.
# Each sets up what it needs: a virtual environment with PyTorch (CPU wheel), the package, and the
# Fashion-MNIST files from Debian's dataset-fashion-mnist package, and Debian's Chromium for the explorer's browser test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On this project's CPU machines `torch==2.13.0` is a local CPU wheel; a plain `torch` may pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser run test test-serial lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,onnx,tensorboard]"
	touch $@

data:
	@if [ -z "$$INCEPTIONLAB_DATA" ] && [ ! -f "$(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz" ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# the explorer's browser test (tests/test_explorer_browser.py) runs the page in headless Chromium: `make test` only
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Chromium (Debian package chromium, for the explorer's browser test)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; \
	fi

setup: $(VENV)/.installed data

run: setup
	$(VENV)/bin/inceptionlab train --preset quick

# The whole suite on two pytest-xdist workers, one per core (docs/testing.md: 17 min in one process on this project's
# AVX2 box); CI runs exactly this (.ci/run). `make test-serial`: the same suite in one process, for debugging.
test: setup browser
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2

test-serial: setup browser
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks notebooks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

.PHONY: coverage mutation
COVERAGE_DIR ?= build/coverage
# An absolute data file, inherited by the subprocesses the suite starts (CLI runs, torchrun ranks) wherever they run.
COVERAGE_ENV = COVERAGE_FILE=$(CURDIR)/$(COVERAGE_DIR)/.coverage

# The whole suite under coverage, subprocesses included ([tool.coverage.*] in pyproject.toml); also prints the 10
# slowest tests. Report: terminal and $(COVERAGE_DIR)/html/index.html (also when a test fails; the exit status is
# pytest's).
coverage: setup
	$(PY) -m pip install --quiet "coverage>=7.10"
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	$(COVERAGE_ENV) $(PY) -m coverage run -m pytest -q --durations=10; status=$$?; \
	$(COVERAGE_ENV) $(PY) -m coverage combine --quiet && \
	$(COVERAGE_ENV) $(PY) -m coverage report && \
	$(COVERAGE_ENV) $(PY) -m coverage html --quiet -d $(COVERAGE_DIR)/html && exit $$status

# Mutation testing of the core modules with mutmut ([tool.mutmut] in pyproject.toml); slow, not part of `make test`.
# MUTANTS narrows the run (e.g. MUTANTS='inceptionlab.fileio*'); results stay in mutants/ (`mutmut results`,
# `mutmut show NAME`), so a second run only retries what changed.
MUTANTS ?=
MUTATION_JOBS ?= 1
mutation: setup
	$(PY) -m pip install --quiet "mutmut>=3.8,<4"
	nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(VENV)/bin/mutmut results
