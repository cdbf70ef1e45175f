"""`kiln ablate CONFIG`: does the cleaning pipeline make a better model? Train the same small
model on an equal token budget of the raw text and of the cleaned text, and compare them on
the same held-out clean text.

The steps, all under the config's `output` folder (which is also the clean arm's run folder,
so `kiln report OUTPUT` shows the cleaning *and* its Ablation section):

1. **Split** the raw corpus (the pipeline config's inputs, read by kiln's own readers) by a
   salted sha256 of each document's text, *before* any arm is built: about
   `heldout_fraction` of the documents go to `ablation/split-<digest>/heldout/`, the rest to
   `.../train/`, one jsonl per source with the document's hash. Exact duplicates share a
   hash, so a held-out text never has a copy in training. The held-out hashes are written to
   `ablation/heldout_hashes.txt`.
2. **Tokenizer**: the one given, or a SentencePiece model trained on the training split (raw,
   so it favours neither arm), shared by every arm.
3. **Arms**: `raw` is a pipeline run of the training split with only the `tokenize_pack`
   stage (`ablation/raw/`); `clean` is the pipeline config's own stages on the same split,
   then the same `tokenize_pack` (this run folder, `OUTPUT/`); `curriculum` trains on the
   clean arm's shards in curriculum (bucket) order instead of shuffled (it needs a bucketing
   stage in the pipeline). The held-out documents go through the cleaning stages too
   (`ablation/heldout/`): the evaluation text is the held-out text as cleaned.
4. **Leak check**: every document the arms kept carries its split hash; none may be a
   held-out hash (else the ablation stops).
5. **Train** the same model config on each arm for the same number of tokens
   (`budget_tokens`, default: the smallest arm's tokens, so no arm sees a token twice) with
   `trainer.train.train`, from one train config per arm written to `ablation/train/<arm>.yaml`.
6. **Evaluate** each arm's `final/` model on the held-out clean text (and the held-out raw
   text) with `trainer.evaluate`: perplexity and bits per byte, per language and source.
7. Write `ablation/results.json` (the comparison, loss curves, split and leak check) and
   print the table.

Finished pipeline stages are skipped on a rerun as usual, and so is an arm's training whose
train config and shards are unchanged (`--redo` trains again).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import Field, field_validator

from common import storage
from common.errors import ConfigError, KilnError
from common.yamlconf import Strict, read_yaml, validate_model
from pipeline.config import PipelineConfig, RayOptions, load_config, parse_config

RESULTS = "results.json"
ABLATION_DIR = "ablation"
ARMS = ("raw", "clean", "curriculum")
HASH_FIELD = "split_hash"


# --------------------------------------------------------------------------- config


class SplitOptions(Strict):
    heldout_fraction: float = Field(0.05, gt=0, lt=1, description="share of documents held out")
    salt: str = Field("kiln-ablate", description="salt of the split hash: change it for another split")
    max_heldout_docs: int | None = Field(None, ge=1, description="keep at most this many held-out documents")
    heldout_stages: list[str] | None = Field(
        None, description="the pipeline stages that clean the held-out text (default all); e.g. leave out "
                          "corpus-wide dedup and bucketing, which change nothing a model is scored on")


class TokenizerTrain(Strict):
    vocab_size: int = Field(8000, ge=100)
    model_type: Literal["bpe", "unigram"] = "bpe"
    max_sentences: int = Field(200_000, ge=1000)


class TokenizerOptions(Strict):
    path: str | None = Field(None, description="an existing tokenizer (HF folder, tokenizer.json or .model)")
    train: TokenizerTrain | None = Field(None, description="train one on the training split instead")

    def model_post_init(self, _: Any) -> None:
        if (self.path is None) == (self.train is None):
            raise ValueError("give exactly one of path and train")


class EvalOptions(Strict):
    batch_size: int = Field(16, ge=1)
    max_docs: int | None = Field(None, ge=1, description="evaluate at most this many held-out documents")
    device: str = "auto"


class AblateConfig(Strict):
    output: str = Field(description="run folder of the clean arm; the ablation lives in OUTPUT/ablation")
    pipeline: str = Field(description="pipeline config whose inputs are the raw corpus and whose stages clean it")
    ray: RayOptions | None = Field(None, description="overrides the pipeline config's ray options")
    split: SplitOptions = Field(default_factory=SplitOptions)
    tokenizer: TokenizerOptions
    pack: dict[str, Any] = Field(default_factory=dict, description="tokenize_pack parameters (not tokenizer)")
    arms: list[Literal["raw", "clean", "curriculum"]] = Field(default_factory=lambda: ["raw", "clean"])
    budget_tokens: int | None = Field(None, ge=1, description="trained tokens per arm; default the smallest arm's")
    train: dict[str, Any] = Field(description="train config without output and data.shards (see kiln train)")
    eval: EvalOptions = Field(default_factory=EvalOptions)

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or len(v) < 2:
            raise ValueError("list at least two different arms of raw, clean, curriculum")
        return v

    @field_validator("pack")
    @classmethod
    def _pack(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "tokenizer" in v:
            raise ValueError("the tokenizer is set under `tokenizer:`, not in pack")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "output" in v:
            raise ValueError("output is set per arm by kiln ablate; remove it")
        if "shards" in (v.get("data") or {}):
            raise ValueError("data.shards is set per arm by kiln ablate; remove it")
        return v


def load_ablate_config(path: str | os.PathLike) -> AblateConfig:
    return validate_model(AblateConfig, read_yaml(path, "ablation config"), [])  # type: ignore[return-value]


# --------------------------------------------------------------------------- split


def doc_hash(text: str, salt: str) -> str:
    return hashlib.sha256(salt.encode() + b"\0" + text.encode("utf-8")).hexdigest()


def is_heldout(digest: str, fraction: float) -> bool:
    return int(digest[:15], 16) < fraction * 16**15


@dataclass
class Split:
    folder: Path
    train_inputs: list[dict[str, Any]]  # pipeline inputs, one per source
    heldout_inputs: list[dict[str, Any]]
    heldout_hashes: set[str]
    stats: dict[str, Any]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "source"


def split_corpus(pipeline: PipelineConfig, options: SplitOptions, out_dir: Path) -> Split:
    """Hash every readable document of the pipeline's inputs and write the two sides, one jsonl
    per source, into a folder named by the split's digest (so a different split never reuses
    pipeline stages built from another)."""
    from common.readers import read_inputs
    from operators.base import REJECT_OP

    rows: dict[str, list[tuple[str, str, str]]] = {}  # source -> [(hash, id, text)]
    unreadable = 0
    for table in read_inputs(pipeline.inputs):
        data = table.select(["id", "text", "source", REJECT_OP]).to_pydict()
        for doc_id, text, source, rejected in zip(data["id"], data["text"], data["source"], data[REJECT_OP]):
            if rejected is not None or not text:
                unreadable += 1  # the reader's rejects: no arm would train on them
                continue
            rows.setdefault(source, []).append((doc_hash(text, options.salt), doc_id, text))
    if not rows:
        raise KilnError("the pipeline's inputs hold no readable documents to split")
    heldout_hashes = {h for docs in rows.values() for h, _, _ in docs if is_heldout(h, options.heldout_fraction)}
    if options.max_heldout_docs and len(heldout_hashes) > options.max_heldout_docs:
        # Keep the smallest hashes: still a uniform random choice, and stable under reruns.
        heldout_hashes = set(sorted(heldout_hashes)[: options.max_heldout_docs])
    which = [options.heldout_fraction, options.salt, options.max_heldout_docs]
    digest = hashlib.sha256(json.dumps([which, sorted(heldout_hashes),
                                        sum(len(d) for d in rows.values())]).encode()).hexdigest()[:12]
    folder = out_dir / f"split-{digest}"
    stats: dict[str, Any] = {"digest": digest, "unreadable": unreadable, "sources": {}}
    train_inputs, heldout_inputs = [], []
    if not (folder / storage.SUCCESS).exists():
        storage.remove_tree(folder)
        tmp = out_dir / f"{storage.TMP_PREFIX}split-{digest}"
        storage.remove_tree(tmp)
        for side in ("train", "heldout"):
            (tmp / side).mkdir(parents=True)
        for source, docs in sorted(rows.items()):
            lines: dict[str, list[bytes]] = {"train": [], "heldout": []}
            for h, doc_id, text in docs:
                side = "heldout" if h in heldout_hashes else "train"
                lines[side].append(orjson.dumps({"id": doc_id, "text": text, HASH_FIELD: h}) + b"\n")
            for side, content in lines.items():
                (tmp / side / f"{_slug(source)}.jsonl").write_bytes(b"".join(content))
        (tmp / storage.SUCCESS).write_text("")
        os.replace(tmp, folder)
    for source, docs in sorted(rows.items()):
        held = sum(1 for h, _, _ in docs if h in heldout_hashes)
        stats["sources"][source] = {"train": len(docs) - held, "heldout": held}
        for side, inputs, n in (("train", train_inputs, len(docs) - held), ("heldout", heldout_inputs, held)):
            if n:
                inputs.append({"path": str(folder / side / f"{_slug(source)}.jsonl"), "format": "jsonl",
                               "source": source, "id_field": "id"})
    stats["train_docs"] = sum(s["train"] for s in stats["sources"].values())
    stats["heldout_docs"] = sum(s["heldout"] for s in stats["sources"].values())
    if not stats["heldout_docs"] or not stats["train_docs"]:
        raise KilnError(f"the split left {stats['train_docs']} training and {stats['heldout_docs']} held-out "
                        "documents: change split.heldout_fraction")
    return Split(folder, train_inputs, heldout_inputs, heldout_hashes, stats)


# --------------------------------------------------------------------------- arms


def _pipeline_raw(base: PipelineConfig, ray: RayOptions | None) -> dict[str, Any]:
    raw = copy.deepcopy(base.raw)
    if ray is not None:
        raw["ray"] = ray.model_dump(exclude_none=True)
    return raw


def _run(raw: dict[str, Any], name: str, output: Path, echo: Callable[[str], None]) -> PipelineConfig:
    from pipeline.runner import RunRequest, run_pipeline

    raw = {**raw, "run": {"name": name, "output": str(output)}}
    config = parse_config(raw)
    run_pipeline(config, RunRequest(progress=False), echo=echo)
    return config


def _last_data(config: PipelineConfig) -> Path:
    from pipeline.runner import stage_dirs

    return stage_dirs(config)[-1] / storage.DATA


def leaked_hashes(data_dir: Path, heldout: set[str]) -> tuple[int, int]:
    """(documents checked, documents whose split hash is held out) in a stage's data/."""
    import pyarrow.parquet as pq

    checked = leaked = 0
    for file in storage.parquet_files(data_dir):
        for meta in pq.read_table(file, columns=["meta"]).column("meta").to_pylist():
            fields = orjson.loads(meta) if meta else {}
            h = fields.get(HASH_FIELD)
            if h is None:
                raise KilnError(f"{file}: a document without its split hash: cannot check for held-out leaks")
            checked += 1
            leaked += h in heldout
    return checked, leaked


def curriculum_coverage(manifest: Any, budget: int) -> dict[str, Any]:
    """Which buckets a budget of tokens read in curriculum order reaches, and what share of
    each: the trainer reads bucket after bucket, so a budget below the shards' tokens never
    sees the last ones."""
    left, reached = budget, []
    for b in manifest.curriculum:
        tokens = manifest.tokens_by_bucket.get(str(b), 0)
        if left <= 0 or not tokens:
            continue
        reached.append({"bucket": b, "tokens": tokens, "share_trained": round(min(1.0, left / tokens), 4)})
        left -= tokens
    complete = len(reached) == sum(1 for v in manifest.tokens_by_bucket.values() if v)
    return {"buckets": reached, "all_buckets": complete and bool(reached) and reached[-1]["share_trained"] == 1.0}


def _check_train_template(template: dict[str, Any]) -> None:
    """Validate the train section now, with the keys kiln ablate fills in, so a typo fails
    before minutes of pipeline work; messages name `train.<path>`."""
    from trainer.config import parse_train_config

    data = copy.deepcopy(template)
    data["output"] = "ablation-arm"
    data["data"] = {**(data.get("data") or {}), "shards": "shards"}
    data["train"] = {**(data.get("train") or {}), "max_tokens": 1}
    try:
        parse_train_config(data)
    except ConfigError as e:
        raise ConfigError(f"train.{e}") from None


def _train_arm(arm: str, train_template: dict[str, Any], shards: Path, budget: int, out_dir: Path,
               redo: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    from trainer.shards import Manifest

    cfg = copy.deepcopy(train_template)
    cfg["output"] = str(out_dir / arm)
    cfg.setdefault("data", {})
    cfg["data"]["shards"] = str(shards)
    cfg["data"]["order"] = "curriculum" if arm == "curriculum" else "shuffle"
    cfg.setdefault("train", {})
    cfg["train"].pop("max_steps", None)  # the budget is in tokens, the same for every arm
    cfg["train"]["max_tokens"] = budget
    path = out_dir / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    key = hashlib.sha256(json.dumps([cfg, Manifest.load(shards).to_json()], sort_keys=True,
                                    default=str).encode()).hexdigest()
    key_file = out_dir / arm / "ablate.key"
    final = out_dir / arm / "final"
    if not redo and key_file.exists() and key_file.read_text().strip() == key and (final / "config.json").exists():
        echo(f"  skip training {arm}: finished with the same config and shards (--redo trains again)")
        return {"config": str(path), "skipped": True, **_train_summary(out_dir / arm)}
    from trainer.config import load_train_config

    load_train_config(path)  # a bad config fails here with its YAML path, before a process starts
    if (out_dir / arm).exists():
        shutil.rmtree(out_dir / arm)  # a changed config: no resuming from another run's checkpoints
    log = out_dir / f"{arm}.log"
    echo(f"> train {arm}: {budget:,} tokens from {shards} (`kiln train {path}`, log {log})")
    started = time.time()
    # `kiln train` in a process of its own: each arm starts from the same clean state (no
    # Ray, tokenizer or torch thread pools left over from the pipelines) and frees its memory.
    with open(log, "wb") as f:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(path),
                               "--set", "train.progress=false"], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  p for p in (str(Path(__file__).resolve().parents[1]),
                                              os.environ.get("PYTHONPATH")) if p)})
    if done.returncode != 0:
        tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-1:] or ["no output"]
        raise KilnError(f"training arm {arm} failed (exit {done.returncode}): {tail[0]} (see {log})")
    key_file.write_text(key + "\n")
    summary = _train_summary(out_dir / arm)
    summary.update({"config": str(path), "skipped": False, "seconds": round(time.time() - started, 1)})
    echo(f"  trained {summary.get('steps')} steps, {summary.get('tokens'):,} tokens, final loss "
         f"{summary.get('final_loss'):.3f} in {summary['seconds']:.0f} s")
    return summary


def _train_summary(run: Path) -> dict[str, Any]:
    curve = []
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                curve.append({k: m.get(k) for k in ("step", "tokens", "loss", "lr", "tokens_per_s")})
    summary: dict[str, Any] = {"run": str(run), "final": str(run / "final"), "curve": curve}
    if (run / "train.json").exists():
        info = json.loads((run / "train.json").read_text())
        for key in ("steps", "tokens", "final_loss", "wall_s", "parameters"):
            if key in info:
                summary[key] = info[key]
        if isinstance(info.get("summary"), dict):
            for key, value in info["summary"].items():
                summary.setdefault(key, value)
    if curve:
        summary.setdefault("steps", curve[-1]["step"])
        summary.setdefault("tokens", curve[-1]["tokens"])
        summary.setdefault("final_loss", curve[-1]["loss"])
    return summary


# --------------------------------------------------------------------------- the whole ablation


@dataclass
class AblateRequest:
    redo_training: bool = False
    echo: Callable[[str], None] = print


def run_ablation(config_path: str | os.PathLike, request: AblateRequest | None = None) -> dict[str, Any]:
    from trainer.shards import Manifest

    request = request or AblateRequest()
    echo = request.echo
    cfg = load_ablate_config(config_path)
    base = load_config(cfg.pipeline)
    pack_stages = [s.name for s in base.stages if any(op.name == "tokenize_pack" for op in s.ops)]
    if pack_stages:
        raise ConfigError(f"pipeline: {cfg.pipeline} already has a tokenize_pack stage ({pack_stages[0]}); "
                          "kiln ablate adds its own (set its parameters under `pack:`)")
    if "curriculum" in cfg.arms and not any(op.name == "difficulty_bucket" for s in base.stages for op in s.ops):
        raise ConfigError("arms: curriculum needs a difficulty_bucket operator in the pipeline's stages "
                          "(else every document is in bucket 0 and the order is the clean arm's)")
    _check_train_template(cfg.train)
    names = [s.name for s in base.stages]
    unknown = [n for n in cfg.split.heldout_stages or [] if n not in names]
    if unknown or cfg.split.heldout_stages == []:
        raise ConfigError(f"split.heldout_stages: {unknown[0] if unknown else 'empty'}: name stages of "
                          f"{cfg.pipeline} ({', '.join(names)})")
    output = Path(cfg.output)
    work = output / ABLATION_DIR
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    echo(f"> split {cfg.pipeline}'s inputs by document hash ({cfg.split.heldout_fraction:.0%} held out)")
    split = split_corpus(base, cfg.split, work)
    (work / "heldout_hashes.txt").write_text("".join(h + "\n" for h in sorted(split.heldout_hashes)))
    echo(f"  {split.stats['train_docs']:,} training and {split.stats['heldout_docs']:,} held-out documents "
         f"({split.stats['unreadable']:,} unreadable records skipped); {split.folder}")

    # The tokenizer: trained on the training split (raw) unless given.
    if cfg.tokenizer.path:
        tokenizer = cfg.tokenizer.path
    else:
        from pipeline.tokenizer import TrainOptions, read_texts, train_sentencepiece

        t = cfg.tokenizer.train
        assert t is not None
        tokenizer_dir = work / f"tokenizer-{split.stats['digest']}-{t.model_type}{t.vocab_size}"
        if not (tokenizer_dir / "tokenizer.json").exists():
            echo(f"> train a {t.model_type} tokenizer ({t.vocab_size:,} pieces at most) on the training split")
            tmp = tokenizer_dir.with_name(storage.TMP_PREFIX + tokenizer_dir.name)
            storage.remove_tree(tmp)
            train_sentencepiece(read_texts([i["path"] for i in split.train_inputs]), tmp,
                                TrainOptions(vocab_size=t.vocab_size, model_type=t.model_type,
                                             max_sentences=t.max_sentences, hard_vocab_limit=False))
            os.replace(tmp, tokenizer_dir)
        tokenizer = str(tokenizer_dir)
    pack_stage = {"name": "pack", "ops": [{"tokenize_pack": {**cfg.pack, "tokenizer": tokenizer}}]}

    base_raw = _pipeline_raw(base, cfg.ray)
    arms_shards: dict[str, Path] = {}
    data_dirs: dict[str, Path] = {}
    if "raw" in cfg.arms:
        echo("> arm raw: the training split, tokenized only")
        raw_cfg = _run({**base_raw, "inputs": split.train_inputs, "stages": [pack_stage]}, "ablate-raw",
                       work / "raw", echo)
        arms_shards["raw"] = work / "raw" / "shards"
        data_dirs["raw"] = _last_data(raw_cfg)
    if "clean" in cfg.arms or "curriculum" in cfg.arms:
        echo(f"> arm clean: the training split through {cfg.pipeline}'s stages, then tokenized")
        clean_cfg = _run({**base_raw, "inputs": split.train_inputs, "stages": [*base_raw["stages"], pack_stage]},
                         f"ablate-{output.name}", output, echo)
        for arm in ("clean", "curriculum"):
            if arm in cfg.arms:
                arms_shards[arm] = output / "shards"
                data_dirs[arm] = _last_data(clean_cfg)
    held_stages = base_raw["stages"]
    if cfg.split.heldout_stages is not None:
        held_stages = [s for s in held_stages if s.get("name") in cfg.split.heldout_stages]
    echo(f"> held-out text through the cleaning stages {', '.join(s['name'] for s in held_stages)}")
    held_cfg = _run({**base_raw, "inputs": split.heldout_inputs, "stages": held_stages}, "ablate-heldout",
                    work / "heldout", echo)
    heldout_clean = _last_data(held_cfg)

    # No training document may be a held-out one.
    leak_check: dict[str, Any] = {"heldout_hashes": len(split.heldout_hashes)}
    for arm, data_dir in data_dirs.items():
        checked, leaked = leaked_hashes(data_dir, split.heldout_hashes)
        leak_check[arm] = {"documents_checked": checked, "heldout_found": leaked}
        if leaked:
            raise KilnError(f"arm {arm}: {leaked} training documents are held out ({data_dir}): a kiln bug")
    echo(f"  leak check: no held-out hash in any arm's {sum(v['documents_checked'] for k, v in leak_check.items() if k != 'heldout_hashes'):,} "
         "training documents")

    manifests = {arm: Manifest.load(path) for arm, path in arms_shards.items()}
    arm_tokens = {arm: sum(s.target_tokens for s in m.shards) for arm, m in manifests.items()}
    budget = cfg.budget_tokens or min(arm_tokens.values())
    short = {arm: n for arm, n in arm_tokens.items() if n < budget}
    if short:
        raise ConfigError(f"budget_tokens: {budget:,} is more than arm {next(iter(short))} holds "
                          f"({next(iter(short.values())):,} target tokens); lower it so no arm repeats data")

    # In curriculum order a budget below the arm's tokens never reaches the last buckets: the
    # arm then differs from the clean one in *which* data it sees, not only in order.
    coverage: dict[str, Any] = {}
    if "curriculum" in cfg.arms:
        coverage = curriculum_coverage(manifests["curriculum"], budget)
        reached = coverage["buckets"]
        if not coverage["all_buckets"]:
            shares = ", ".join(f"{r['bucket']} ({r['share_trained']:.0%})" for r in reached)
            echo(f"  note: {budget:,} tokens in curriculum order reach buckets {shares} only: the curriculum "
                 "arm sees the easier documents, not the clean arm's data in another order")

    from trainer.evaluate import load_model, perplexity, read_eval_docs

    heldout_docs = read_eval_docs(heldout_clean, limit=cfg.eval.max_docs)
    raw_docs = [d for i in split.heldout_inputs for d in read_eval_docs(i["path"])]
    for d in raw_docs:
        d.file = "heldout_raw"
    for d in heldout_docs:
        d.file = "heldout_clean"
    if cfg.eval.max_docs:
        raw_docs = raw_docs[: cfg.eval.max_docs]
    arms: dict[str, Any] = {}
    for arm in cfg.arms:
        train_summary = _train_arm(arm, cfg.train, arms_shards[arm], budget, work / "train",
                                   request.redo_training, echo)
        echo(f"> evaluate {arm} on {len(heldout_docs):,} held-out clean and {len(raw_docs):,} raw documents")
        loaded = load_model(train_summary["final"], device=cfg.eval.device)
        rows = perplexity(loaded, heldout_docs, cfg.eval.batch_size) + \
            [r for r in perplexity(loaded, raw_docs, cfg.eval.batch_size) if r.group in ("file",)]
        m = manifests[arm]
        arms[arm] = {
            "shards": str(arms_shards[arm]), "documents": m.documents, "shard_tokens": m.total_tokens,
            "target_tokens": arm_tokens[arm], "tokens_by_lang": m.tokens_by_lang,
            "train": train_summary, "eval": [r.to_json() for r in rows],
        }
        if arm == "curriculum":
            arms[arm]["curriculum_coverage"] = coverage
    results = {
        "config": str(config_path), "pipeline": cfg.pipeline, "output": str(output), "tokenizer": tokenizer,
        "budget_tokens": budget, "arms": arms, "split": {**split.stats, "folder": str(split.folder),
                                                          "heldout_fraction": cfg.split.heldout_fraction,
                                                          "salt": cfg.split.salt,
                                                          "heldout_hashes_file": str(work / "heldout_hashes.txt")},
        "leak_check": leak_check, "heldout_clean": str(heldout_clean),
        "heldout_clean_docs": len(heldout_docs), "heldout_raw_docs": len(raw_docs),
        "model": cfg.train.get("model"), "seconds": round(time.time() - started, 1),
    }
    storage.write_json(work / RESULTS, results)
    return results


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm: trained tokens, final loss and the held-out numbers the table shows."""
    rows = []
    for arm, a in results.get("arms", {}).items():
        ev = {(r["group"], r["name"]): r for r in a.get("eval", [])}
        row = {"arm": arm, "documents": a.get("documents"), "target_tokens": a.get("target_tokens"),
               "trained_tokens": a["train"].get("tokens"), "final_loss": a["train"].get("final_loss"),
               "train_seconds": a["train"].get("wall_s") or a["train"].get("seconds")}
        for key, (group, name) in {"clean": ("all", "all"), "raw": ("file", "heldout_raw")}.items():
            r = ev.get((group, name))
            row[f"ppl_{key}"] = r["ppl"] if r else None
            row[f"bpb_{key}"] = r["bits_per_byte"] if r else None
        row["ppl_by_lang"] = {name: r["ppl"] for (group, name), r in ev.items() if group == "lang"}
        row["ppl_by_source"] = {name: r["ppl"] for (group, name), r in ev.items() if group == "source"}
        rows.append(row)
    return rows


def print_results(results: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = comparison_rows(results)
    langs = sorted({lang for r in rows for lang in r["ppl_by_lang"]})
    t = Table(title=f"ablation: {results['budget_tokens']:,} trained tokens per arm, held-out clean text "
                    f"({results['heldout_clean_docs']:,} docs)", title_justify="left")
    for name in ["arm", "docs", "tokens", "final loss", "ppl clean", "bits/byte clean",
                 *[f"ppl {lang}" for lang in langs], "ppl raw held-out"]:
        t.add_column(name, justify="left" if name == "arm" else "right")

    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        t.add_row(r["arm"], f(r["documents"], ","), f(r["target_tokens"], ","), f(r["final_loss"], ".3f"),
                  f(r["ppl_clean"]), f(r["bpb_clean"], ".4f"), *[f(r["ppl_by_lang"].get(lang)) for lang in langs],
                  f(r["ppl_raw"]))
    console.print(t)
    lc = results["leak_check"]
    console.print(f"held-out: {lc['heldout_hashes']:,} document hashes, none in any arm's training documents "
                  f"({results['split']['heldout_hashes_file']})", highlight=False)
