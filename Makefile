# The two-command quickstart: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_FLAGS := --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test test-unit test-integration lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The local mirror's index warns about every package it does not hold; hide only those lines.
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import torch, torchvision, timm, ray, cv2, pyclipper, shapely; print('ocrjobs environment ok: torch', torch.__version__, 'ray', ray.__version__)"
	touch $@

demo: setup
	RAY_AUTH_MODE=disabled $(BIN)/ocrjobs demo

test: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests

test-unit: setup
	$(BIN)/python -m pytest tests/unit

test-integration: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests/integration

lint: setup
	$(BIN)/ruff check ocrjobs tests benchmarks
	$(BIN)/ruff format --check ocrjobs tests benchmarks
	$(BIN)/mypy ocrjobs

format: setup
	$(BIN)/ruff format ocrjobs tests benchmarks
	$(BIN)/ruff check --fix ocrjobs tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
