"""Executor of `tokenize_pack` (Ray and Spark engines): encode on the workers, plan on the driver from small totals,
pack and write shards on the workers, write the manifest on the driver.

1. Encode: one pass over the stage's rows (`Engine.write_parts`, pipeline/engines/__init__.py),
   in the tasks that read them: on Ray one plain task per group of files, on Spark one
   `mapInArrow` partition. The runner hands the rows over as they come (read, stage start,
   per-batch operators; `reads_once`), not a scratch copy written first: this executor reads
   them once, and rows rejected earlier in the stage pass through untouched. Each task encodes
   its batches (the `tokenizers` encoder is loaded once per worker process), writes the rows
   with `stat.tokens` (documents without tokens rejected as `no_tokens`) to `work/rows/`, and
   the token lists sorted by (bucket, source) to one Arrow file in `work/tokens/`, and
   returns only per-group totals.
2. Plan: `plan_shards` cuts every group's stream into shard ranges from those totals.
3. Pack: a task per shard, or per run of shards when there are many (`Engine.map_files`), reads
   the token ranges it needs (memory-mapped), packs them and writes each shard into the
   stage's `shards/`, returning the ShardInfo.
4. Manifest: the driver adds up the shard infos and group totals into `shards/manifest.json`
   and copies the tokenizer into `shards/tokenizer/` (an AutoTokenizer folder).

The stage's rows come back from `work/rows/`, so every document is accounted for. In analyze
mode only the first pass runs: `stat.tokens` and would-be rejections, no shards.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from common import storage
from common.errors import ConfigError, KilnError, StageError
from operators.base import set_column
from operators.tokenize import (
    TOKENS_STAT,
    SpecialIds,
    TokenizePack,
    encode_batch_table,
    group_token_table,
    load_tokenizer,
    pack_shard,
    plan_shards,
    special_ids,
    write_token_file,
)
from pipeline.global_ops import (
    DECISION_DETAIL,
    DECISION_REASON,
    GlobalContext,
    apply_decisions,
    global_executor,
)
from trainer.shards import Manifest, ShardInfo, TokenizerInfo, sha256_tree

TOKENIZER_DIR = "tokenizer"
PARALLELISM = "TOKENIZERS_PARALLELISM"


def _encode_part(tables: Any, part: int, rows_dir: Path, token_dir: Path, op: TokenizePack, tokenizer_dir: str,
                 special: SpecialIds, analyze: bool, batch_size: int, parallel: bool) -> dict[str, Any]:
    """First pass, one write task of the engine (`Engine.write_parts`): encode its rows (those
    not rejected already), write all of them with `stat.tokens` and its token file, return the
    per-group totals. Files are named by the task's number (`part`, unique in the pass), so a
    retried task overwrites its own output."""
    # `tokenizers` reads this at every batch call; restored so that other work in this
    # (reused) worker process is not affected.
    previous = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "true" if parallel else "false"
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
        row_parts, token_parts = [], []
        for table in tables:
            for lo in range(0, table.num_rows, batch_size):
                batch = table.slice(lo, batch_size)
                encoded = encode_batch_table(batch, op.params, tokenizer, special)
                batch = set_column(batch, TOKENS_STAT, encoded.tokens_stat)
                batch = batch.append_column(DECISION_REASON, encoded.reasons)
                if encoded.details is not None:
                    batch = batch.append_column(DECISION_DETAIL, encoded.details)
                row_parts.append(apply_decisions(batch, op.label, analyze))
                token_parts.append(encoded.token_table)
        name = f"part-{part:05d}"
        if row_parts:
            storage.write_parquet_atomic(pa.concat_tables(row_parts, promote_options="permissive"),
                                         rows_dir / f"{name}.parquet")
        table, groups = group_token_table(token_parts)
        if groups and not analyze:
            write_token_file(table, token_dir / f"{name}.arrow")
        return {"file": f"{name}.arrow", "groups": groups}
    finally:
        if previous is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = previous


def _pack_one(plan: dict[str, Any], token_dir: str, shards_dir: str, seq_len: int, mode: str, pad_id: int,
              shuffle: bool, seed: int) -> dict[str, Any]:
    result = pack_shard(token_dir, shards_dir, plan, seq_len, mode, pad_id, shuffle, seed)
    return {"info": asdict(result.info) if result.info else None, "documents": result.documents,
            "content_tokens": result.content_tokens, "continued_segments": result.continued_segments,
            "documents_split": result.documents_split}


def _bucket_names(run_dir: Path) -> dict[str, str]:
    """Names the bucketing stage gave its buckets (ctx.extra[...]['buckets']), if any ran."""
    names: dict[str, str] = {}
    for path in sorted(run_dir.glob("[0-9][0-9]-*/stats.json")):
        try:
            extras = storage.read_json(path).get("extra", {})
        except (OSError, ValueError):
            continue
        for extra in extras.values():
            buckets = extra.get("buckets") if isinstance(extra, dict) else None
            if isinstance(buckets, list):
                for b in buckets:
                    if isinstance(b, dict) and "bucket" in b and b.get("name") is not None:
                        names[str(b["bucket"])] = str(b["name"])
    return names


def _add(into: dict[str, int], key: Any, value: int) -> None:
    into[str(key)] = into.get(str(key), 0) + int(value)


@global_executor("tokenize_pack", reads_once=True)
def run_tokenize_pack(op: TokenizePack, ds: Any, ctx: GlobalContext) -> Any:
    import functools

    from pipeline.tokenizer import prepare_hf_folder

    params = op.params
    shards_dir = ctx.output_dir / "shards"
    tokenizer_dir = (ctx.work_dir if ctx.analyze else shards_dir) / TOKENIZER_DIR
    try:
        prepare_hf_folder(params.tokenizer, tokenizer_dir)
        special = special_ids(tokenizer_dir)
    except KilnError as e:
        raise ConfigError(f"{op.label}.tokenizer: {e}") from None
    except Exception as e:  # a tokenizer.json that `tokenizers` cannot load
        raise ConfigError(f"{op.label}.tokenizer: cannot load {params.tokenizer}: {str(e).splitlines()[0]}") from None
    if params.add_eos and special.eos is None:
        raise ConfigError(f"{op.label}: the tokenizer has no EOS token; set add_eos: false")
    if params.add_bos and special.bos is None:
        raise ConfigError(f"{op.label}: the tokenizer has no BOS token; set add_bos: false")

    rows_dir, token_dir = ctx.work_dir / "rows", ctx.work_dir / "tokens"
    engine = ctx.get_engine()
    parts = engine.count_parts(ds)
    parallel = params.parallel_encode
    if parallel is None:
        # One encoder thread per task, as the engine runs a task per CPU; with fewer tasks
        # than CPUs (one big input file is one task) the Rust thread pool uses the idle cores.
        parallel = parts is not None and parts < ctx.num_cpus
    encode = functools.partial(_encode_part, rows_dir=rows_dir, token_dir=token_dir, op=op,
                               tokenizer_dir=str(tokenizer_dir), special=special, analyze=ctx.analyze,
                               batch_size=ctx.batch_size, parallel=parallel)
    phases: dict[str, float] = {}  # seconds per phase, for stats.json and the benchmark
    phase_started = time.perf_counter()
    results = engine.write_parts(ds, encode)
    phases["encode"] = round(time.perf_counter() - phase_started, 3)
    files = sorted(((r["file"], r["groups"]) for r in results if r["groups"]), key=lambda fg: fg[0])
    rows = engine.read_stage(rows_dir)

    by_bucket: dict[str, int] = {}
    by_source: dict[str, int] = {}
    by_lang: dict[str, int] = {}
    documents = truncated = 0
    for _, groups in files:
        for g in groups:
            _add(by_bucket, g["bucket"], g["tokens"])
            _add(by_source, g["source"], g["tokens"])
            for lang, n in g["tokens_by_lang"].items():
                _add(by_lang, lang, n)
            documents += g["docs"]
            truncated += g["truncated"]
    content = sum(by_bucket.values())
    ctx.extra.update({"mode": params.mode, "seq_len": params.seq_len, "documents": documents,
                      "encode_tasks": parts, "parallel_encode": parallel,
                      "content_tokens": content, "truncated_tokens": truncated,
                      "tokens_by_bucket": by_bucket, "tokens_by_source": by_source, "tokens_by_lang": by_lang})
    if ctx.analyze:
        ctx.extra["shards"] = 0  # analyze mode measures; it writes no shards
        return rows

    phase_started = time.perf_counter()
    plans = plan_shards(files, params.seq_len, params.mode, params.shard_tokens)
    results = []
    if plans:
        # Plain tasks (`map_files`: a task per shard, or runs of shards when there are many)
        # whose inputs are small plans; a Ray Data pipeline (its executor start, blocks and
        # stats) would only add fixed cost.
        pack = functools.partial(_pack_one, token_dir=str(token_dir), shards_dir=str(shards_dir),
                                 seq_len=params.seq_len, mode=params.mode, pad_id=special.pad,
                                 shuffle=params.shuffle, seed=params.seed)
        results = engine.map_files(pack, [(p,) for p in plans])
    phases["plan_and_pack"] = round(time.perf_counter() - phase_started, 3)
    phase_started = time.perf_counter()
    shards = sorted((ShardInfo(**r["info"]) for r in results if r["info"]), key=lambda s: (s.bucket, s.source, s.path))
    padding = sum(s.padding_tokens for s in shards)
    packed_content = sum(s.tokens for s in shards) - padding
    if packed_content != content or sum(r["documents"] for r in results) != documents:
        raise StageError(f"{op.label}: shards hold {packed_content:,} tokens of {documents:,} documents, "
                         f"the encoder produced {content:,} (a kiln bug; nothing was kept)")
    continued = sum(r["continued_segments"] for r in results)
    split = sum(r["documents_split"] for r in results)
    total = sum(s.tokens for s in shards)
    manifest = Manifest(
        seq_len=params.seq_len,
        tokenizer=TokenizerInfo(path=TOKENIZER_DIR, sha256=sha256_tree(tokenizer_dir),
                                vocab_size=special.vocab_size,
                                bos_id=special.bos, eos_id=special.eos if special.eos is not None else special.pad,
                                pad_id=special.pad),
        shards=shards,
        pack_mode=params.mode,
        curriculum=sorted(int(b) for b in by_bucket) or [0],
        bucket_names=_bucket_names(ctx.run_dir),
        tokens_by_bucket=dict(sorted(by_bucket.items(), key=lambda kv: int(kv[0]))),
        tokens_by_source=dict(sorted(by_source.items())),
        tokens_by_lang=dict(sorted(by_lang.items())),
        documents=documents,
        padding_tokens=padding,
        truncated_tokens=truncated,
        pipeline_config_sha256=ctx.config_sha256,
        extra={"add_bos": params.add_bos, "add_eos": params.add_eos, "shard_tokens": params.shard_tokens,
               "shuffle": params.shuffle, "seed": params.seed, "max_doc_tokens": params.max_doc_tokens,
               "non_padding_fraction": round(1 - padding / total, 6) if total else None,
               "continued_segments": continued, "documents_split": split,
               "stage": ctx.stage_name, "tokenizer_source": str(params.tokenizer)},
    )
    manifest.save(shards_dir)
    phases["manifest"] = round(time.perf_counter() - phase_started, 3)
    ctx.extra.update({"shards": len(shards), "sequences": sum(s.sequences for s in shards), "tokens": total,
                      "padding_tokens": padding,
                      "non_padding_fraction": manifest.extra["non_padding_fraction"],
                      "continued_segments": continued, "documents_split": split,
                      "manifest": "shards/manifest.json", "phase_seconds": phases,
                      "padding_per_sequence_mean": float(np.round(padding / max(1, sum(s.sequences for s in shards)), 3))})
    return rows
