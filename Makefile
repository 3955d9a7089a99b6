# The two-command quickstart: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_FLAGS := --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test test-unit test-integration lint format clean formula-data latex

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The local mirror's index warns about every package it does not hold; hide only those lines.
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import torch, torchvision, timm, ray, cv2, pyclipper, shapely, pypdfium2, onnxruntime; print('ocrjobs environment ok: torch', torch.__version__, 'ray', ray.__version__)"
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

# Formula training shards (issue 15), rendered once and read by training as `format: im2latex` sources:
# the im2latex train formulas 4 times (LaTeX and mathtext cm/stix/dejavusans), 40 variants of each (formulas
# held out for validation excluded; ocrjobs.data.formulas.FormulaMutator), formulas_hs (all of it) and
# FORMULA_GRAMMAR grammar formulas, LaTeX where installed (auto) else mathtext. Smallest folders first, so
# training can start on them early; a folder with a _summary.json is done and skipped (delete it to redo).
SHARED_DATA ?= ../shared/data
FORMULA_DATA ?= data/formulas
FORMULA_WORKERS ?= 1
FORMULA_GRAMMAR ?= 20000
FORMULA_SYNTH = $(BIN)/ocrjobs synth formulas --workers $(FORMULA_WORKERS) --fontsets cm,stix,dejavusans
FORMULA_HS = --formulas-file $(SHARED_DATA)/formulas_hs/formulas.lst --renderers auto,auto,mathtext --handwriting 0.1
FORMULA_GRAMMAR_ARGS = --source grammar --seed 1 --renderers auto,mathtext --handwriting 0.1

# Real LaTeX renders for formula training (optional: without them formulas render with matplotlib's
# mathtext, which draws no environments and differs from im2latex's pdflatex images). Debian/Ubuntu, root.
latex:
	command -v latex >/dev/null && command -v dvipng >/dev/null || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends texlive-latex-base \
		texlive-fonts-recommended dvipng; }

formula-data: setup
	mkdir -p $(FORMULA_DATA) && echo '*' > $(FORMULA_DATA)/.gitignore  # generated data: never committed
	test -f $(FORMULA_DATA)/im2latex_train/_summary.json || $(FORMULA_SYNTH) --out $(FORMULA_DATA)/im2latex_train \
		--from-train $(SHARED_DATA)/im2latex --passes 4 --renderers auto,mathtext
	# 40 variants of each im2latex train formula outside the held-out 1 in 10 (symbols swapped, groups spliced),
	# in sixteen shards of other seeds (other variants).
	test -f $(FORMULA_DATA)/im2latex_mutated/_summary.json || $(FORMULA_SYNTH) --out $(FORMULA_DATA)/im2latex_mutated \
		--from-train $(SHARED_DATA)/im2latex --holdout-every 10 --mutate --passes 40 --seed 2 --renderers auto,auto,mathtext
	test -f $(FORMULA_DATA)/im2latex_mutated_s3/_summary.json || $(FORMULA_SYNTH) --out $(FORMULA_DATA)/im2latex_mutated_s3 \
		--from-train $(SHARED_DATA)/im2latex --holdout-every 10 --mutate --passes 40 --seed 3 --renderers auto,auto,mathtext
	for seed in 4 5 6 7 8 9 10 11 12 13 14 15 16 17; do out=$(FORMULA_DATA)/im2latex_mutated_s$$seed; test -f $$out/_summary.json || $(FORMULA_SYNTH) \
		--out $$out --from-train $(SHARED_DATA)/im2latex --holdout-every 10 --mutate --passes 40 --seed $$seed \
		--renderers auto,auto,mathtext; done
	# formulas_hs in parts (item i = line i): 5000 first, then the grammar's first half, then the rest.
	for part in hs:0:5000 grammar:0:$$(($(FORMULA_GRAMMAR) / 2)) hs:5000:10000 hs:15000:10000 hs:25000:10000 \
			hs:35000:10000 hs:45000: grammar:$$(($(FORMULA_GRAMMAR) / 2)):$$(($(FORMULA_GRAMMAR) - $(FORMULA_GRAMMAR) / 2)); do \
		IFS=: read -r kind start count <<< "$$part"; out=$(FORMULA_DATA)/$${kind}_$$(printf %05d $$start); \
		args=$$([ $$kind = hs ] && echo "$(FORMULA_HS)" || echo "$(FORMULA_GRAMMAR_ARGS)"); \
		test -f $$out/_summary.json || $(FORMULA_SYNTH) --out $$out $$args --start $$start $${count:+--count $$count}; \
	done
	$(BIN)/python -c 'import glob, json; [print("%s: %d rendered, %d skipped %s" % (p, s["rendered"], s["skipped"], s["skipped_by_reason"])) for p in sorted(glob.glob("$(FORMULA_DATA)/*/_summary.json")) for s in [json.load(open(p))]]'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
