# Two commands on a fresh Debian machine (root, Python >= 3.10): `make run` and `make test`.
# Each sets up what it needs: a virtual environment with PyTorch (CPU wheel), the package, and the
# Fashion-MNIST files from Debian's dataset-fashion-mnist package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On this project's CPU machines `torch==2.13.0` is a local CPU wheel; a plain `torch` may pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run test lint bench clean

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

setup: $(VENV)/.installed data

run: setup
	$(VENV)/bin/inceptionlab train --preset quick

test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks notebooks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
