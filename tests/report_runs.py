"""Run folders for the report tests, built from real text (../shared/data).

`make_inputs` writes a few hundred real documents (Chinese web news and reviews, English BBC
articles including byte-identical pairs) as jsonl; `run_pipeline_dict` runs a real two-stage
pipeline on them. `add_scoring_stage` then appends a third stage, written the way the
dedup, perplexity, bucketing, sensitive-word and tokenize_pack operators of kiln leave their
results (rejected rows, `stat.*` columns, the `extra` conventions, shards and a manifest),
computed from the real text by small stand-ins:

- exact dedup: identical texts form clusters (the BBC pairs are real duplicates);
- perplexity: a character unigram model fitted on the stage's own text, per language, cut
  at the 90th percentile (`keep_below`) with a `head_below` line at the 30th;
- rates: hits per 1,000 characters of real lexicons (LDNOOBW bad words for toxic, short
  lists of advertising and HTML function words, regexes for e-mails and phone numbers);
- buckets: perplexity tertiles; shards: the documents' UTF-8 bytes packed as token ids.

So every section of the report is exercised before the real operators land.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import storage

ZH_NEWS = "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt"
ZH_REVIEWS = "zh_uer_corpora/corpora/chnsenticorp.txt"
BBC = "en_bbc_news"

AD_WORDS = ["优惠", "免费", "点击", "促销", "折扣", "热线", "官网", "free", "discount", "offer", "buy now", "subscribe"]
HTML_WORDS = ["nbsp", "href", "div", "javascript", "&amp;", "<br", "</p>", "cookie", "click here", "点击这里", "版权所有"]
PRIVACY = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+|(?<!\d)1[3-9]\d{9}(?!\d)|\(?\d{3,4}\)?[- ]?\d{7,8}")


def make_inputs(shared_data: Path, folder: Path, zh_news: int = 200, zh_reviews: int = 100, en: int = 150) -> Path:
    """Real documents as jsonl: Chinese news and reviews, English BBC articles with several
    byte-identical pairs among them."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "zh.jsonl", "w") as f:
        for path, n in ((ZH_NEWS, zh_news), (ZH_REVIEWS, zh_reviews)):
            with open(shared_data / path, encoding="utf-8") as lines:
                for line in itertools.islice(lines, n):
                    f.write(json.dumps({"text": line.rstrip("\n")}, ensure_ascii=False) + "\n")
    bbc = shared_data / BBC
    pairs = [line.split("\t")[1].split() for line in (bbc / "EXACT_DUPLICATES.tsv").read_text().splitlines()
             if line and not line.startswith(("#", "md5"))]
    files = [p for pair in pairs[:6] for p in pair]
    chosen = set(files)
    others = [str(p.relative_to(bbc)) for p in sorted((bbc / "bbc").glob("*/*.txt"))]
    files += [p for p in others[::12] if p not in chosen][: max(0, en - len(files))]
    with open(folder / "en.jsonl", "w") as f:
        for rel in files:
            f.write(json.dumps({"text": (bbc / rel).read_text(encoding="utf-8", errors="replace"), "url": rel}) + "\n")
    return folder


def pipeline_dict(inputs: Path, output: Path) -> dict[str, Any]:
    return {
        "run": {"name": "report-test", "output": str(output)},
        "ray": {"num_cpus": 2, "batch_size": 128},
        "inputs": [{"path": str(inputs / "zh.jsonl"), "source": "web_zh", "lang": "zh"},
                   {"path": str(inputs / "en.jsonl"), "source": "news_en", "lang": "en"}],
        "stages": [
            {"name": "clean", "ops": [{"normalize": {}}, {"length_filter": {"min_chars": 60}}]},
            {"name": "quality", "ops": [{"length_filter": {"min_chars": 100, "max_chars": 4000}}]},
        ],
    }


def run_pipeline_dict(data: dict[str, Any], analyze: bool = False) -> Path:
    from pipeline.config import parse_config
    from pipeline.runner import RunRequest, run_pipeline

    config = parse_config(data)
    run_pipeline(config, RunRequest(progress=False, analyze=analyze), echo=lambda _: None)
    return Path(data["run"]["output"]) / ("analyze" if analyze else "")


# --------------------------------------------------------------------------- stand-ins


def _rate(hits: int, text: str) -> float:
    return 1000.0 * hits / max(1, len(text))


def rates(text: str, toxic_en: re.Pattern, toxic_zh: list[str]) -> dict[str, float]:
    lower = text.lower()
    toxic = len(toxic_en.findall(lower)) + sum(lower.count(w) for w in toxic_zh)
    return {
        "stat.rate_privacy": _rate(len(PRIVACY.findall(text)), text),
        "stat.rate_toxic": _rate(toxic, text),
        "stat.rate_ad": _rate(sum(lower.count(w) for w in AD_WORDS), text),
        "stat.rate_html": _rate(sum(lower.count(w) for w in HTML_WORDS), text),
    }


def toxic_lexicon(shared_data: Path) -> tuple[re.Pattern, list[str]]:
    base = shared_data / "wordlists" / "ldnoobw"
    en = [w.strip().lower() for w in (base / "en").read_text().splitlines() if w.strip()]
    zh = [w.strip() for w in (base / "zh").read_text().splitlines() if len(w.strip()) >= 2]
    return re.compile(r"\b(?:" + "|".join(map(re.escape, en)) + r")\b"), zh


def unigram_ppl(texts: list[str], langs: list[str]) -> np.ndarray:
    """Perplexity of each text under a character unigram model fitted per language on the
    texts themselves (add-one smoothed)."""
    out = np.zeros(len(texts))
    for lang in set(langs):
        idx = [i for i, lg in enumerate(langs) if lg == lang]
        counts = Counter(itertools.chain.from_iterable(texts[i] for i in idx))
        total, vocab = sum(counts.values()), len(counts) + 1
        for i in idx:
            logp = sum(math.log((counts[c] + 1) / (total + vocab)) for c in texts[i])
            out[i] = math.exp(-logp / max(1, len(texts[i])))
    return out


# --------------------------------------------------------------------------- the stage


def add_scoring_stage(run_dir: Path, shared_data: Path, seq_len: int = 256) -> dict[str, Any]:
    """Append `03-score` (dedup, perplexity cut, buckets, rates, shards) to a finished run;
    returns the stage's stats."""
    from trainer.shards import Manifest, ShardWriter, TokenizerInfo, sha256_file

    run = storage.read_json(run_dir / storage.STATS)
    previous = run_dir / run["stages"][-1]["folder"]
    table = storage.read_table(previous / storage.DATA)
    texts = table.column("text").to_pylist()
    langs = table.column("lang").to_pylist()
    n = table.num_rows
    folder = run_dir / storage.stage_folder_name(len(run["stages"]), "score")
    shutil.rmtree(folder, ignore_errors=True)

    toxic_en, toxic_zh = toxic_lexicon(shared_data)
    scores = [rates(t, toxic_en, toxic_zh) for t in texts]
    for column in scores[0]:
        table = table.append_column(column, pa.array([s[column] for s in scores], pa.float64()))
    ppl = unigram_ppl(texts, langs)
    table = table.append_column("stat.ppl", pa.array(ppl, pa.float64()))

    reasons: list[tuple[str, str, str] | None] = [None] * n
    first: dict[str, int] = {}
    clusters: Counter[str] = Counter()
    for i, text in enumerate(texts):
        key = hashlib.sha1(text.encode()).hexdigest()
        clusters[key] += 1
        if key in first:
            reasons[i] = ("dedup", "duplicate", f"dup_of {table.column('id')[first[key]].as_py()}")
        else:
            first[key] = i
    sizes = Counter(size for size in clusters.values() if size > 1)
    dup_rows = [i for i, r in enumerate(reasons) if r]
    dedup_extra = {"clusters": len([c for c in clusters.values() if c > 1]), "docs_removed": len(dup_rows),
                   "bytes_removed": sum(len(texts[i].encode()) for i in dup_rows),
                   "cluster_size_histogram": {str(k): v for k, v in sorted(sizes.items())}}

    cutoffs: dict[str, dict[str, float]] = {}
    for lang in sorted(set(langs)):
        values = np.array([ppl[i] for i in range(n) if langs[i] == lang and reasons[i] is None])
        cutoffs[lang] = {"keep_below": float(np.quantile(values, 0.9)), "head_below": float(np.quantile(values, 0.3))}
    ppl_rejected = 0
    for i in range(n):
        if reasons[i] is None and ppl[i] > cutoffs[langs[i]]["keep_below"]:
            reasons[i] = ("perplexity", "ppl_above_cutoff", f"ppl {ppl[i]:.1f}")
            ppl_rejected += 1

    kept_idx = [i for i in range(n) if reasons[i] is None]
    edges = np.quantile(ppl[kept_idx], [0, 1 / 3, 2 / 3, 1])
    bucket_of = {i: int(min(2, np.searchsorted(edges[1:-1], ppl[i], side="right"))) for i in kept_idx}
    names = ["easy", "medium", "hard"]
    buckets = [{"bucket": b, "name": names[b], "docs": sum(1 for i in kept_idx if bucket_of[i] == b),
                "chars": sum(len(texts[i]) for i in kept_idx if bucket_of[i] == b),
                "low": float(edges[b]), "high": float(edges[b + 1])} for b in range(3)]
    table = table.append_column("bucket", pa.array([bucket_of.get(i) for i in range(n)], pa.int32()))

    reject_op = pa.array([r[0] if r else None for r in reasons], pa.string())
    rejected_mask = pc.is_valid(reject_op)
    for name, k in (("reject_op", 0), ("reject_reason", 1), ("reject_detail", 2)):
        table = table.append_column(name, pa.array([r[k] if r else None for r in reasons], pa.string()))
    storage.write_parquet_atomic(table.filter(pc.invert(rejected_mask)).drop_columns(
        ["reject_op", "reject_reason", "reject_detail"]), folder / storage.DATA / "part-0.parquet")
    storage.write_parquet_atomic(table.filter(rejected_mask), folder / storage.REJECTED / "part-0.parquet")

    # Shards: each (bucket, source) packs its documents' UTF-8 bytes (+ an end token 256).
    shard_dir = folder / "shards"
    (shard_dir / "tokenizer").mkdir(parents=True)
    (shard_dir / "tokenizer" / "bytes.json").write_text(json.dumps({"type": "utf-8 bytes", "eos": 256}))
    infos, by_lang = [], Counter()
    sources = table.column("source").to_pylist()
    for b in range(3):
        for source in sorted({sources[i] for i in kept_idx}):
            docs = [i for i in kept_idx if bucket_of[i] == b and sources[i] == source]
            if not docs:
                continue
            stream = np.concatenate([np.append(np.frombuffer(texts[i].encode(), np.uint8).astype(np.int32), 256)
                                     for i in docs])
            for i in docs:
                by_lang[langs[i]] += len(texts[i].encode()) + 1
            rows = math.ceil(len(stream) / seq_len)
            pad = rows * seq_len - len(stream)
            ids = np.concatenate([stream, np.full(pad, 257, np.int32)]).reshape(rows, seq_len)
            mask = np.ones_like(ids, dtype=np.int8)
            if pad:
                mask[-1, -pad:] = 0
            writer = ShardWriter(shard_dir / f"b{b}-{source}.arrow", seq_len, b, source, relative_to=shard_dir)
            writer.write(ids, [[seq_len]] * (rows - 1) + [[seq_len - pad, pad] if pad else [seq_len]], mask,
                         [0] * (rows - 1) + [pad])
            infos.append(writer.close())
    tokens_by_bucket, tokens_by_source = Counter(), Counter()
    for info in infos:
        tokens_by_bucket[str(info.bucket)] += info.tokens
        tokens_by_source[info.source] += info.tokens
    manifest = Manifest(
        seq_len=seq_len, shards=infos, curriculum=[0, 1, 2], bucket_names={str(b): names[b] for b in range(3)},
        tokenizer=TokenizerInfo(path="tokenizer", sha256=sha256_file(shard_dir / "tokenizer" / "bytes.json"),
                                vocab_size=258, bos_id=None, eos_id=256, pad_id=257),
        tokens_by_bucket=dict(tokens_by_bucket), tokens_by_source=dict(tokens_by_source),
        tokens_by_lang=dict(by_lang), documents=len(kept_idx), padding_tokens=sum(i.padding_tokens for i in infos))
    manifest.save(shard_dir)
    storage.link(shard_dir, run_dir / "shards")

    rejected = Counter(f"{r[0]}/{r[1]}" for r in reasons if r)
    ops = []
    remaining = n
    for label, kind in (("dedup", "global"), ("perplexity", "global"), ("bucket", "global")):
        own = {k.split("/", 1)[1]: v for k, v in rejected.items() if k.startswith(label + "/")}
        ops.append({"label": label, "op": label, "kind": kind, "docs_in": remaining,
                    "docs_out": remaining - sum(own.values()), "rejected": sum(own.values()), "reasons": own,
                    "seconds": 0.01, "docs_per_s": None})
        remaining -= sum(own.values())
    stats = {
        "name": "score", "index": len(run["stages"]), "folder": folder.name, "analyze": False, "seconds": 0.5,
        "docs_in": n, "docs_out": len(kept_idx), "rejected_total": n - len(kept_idx),
        "rejected": dict(rejected.most_common()),
        "bytes_in": sum(len(t.encode()) for t in texts), "bytes_out": sum(len(texts[i].encode()) for i in kept_idx),
        "docs_per_s": None, "ops": ops,
        "extra": {"dedup": dedup_extra,
                  "perplexity": {"cutoffs": cutoffs, "column": "stat.ppl", "docs_scored": n},
                  "bucket": {"buckets": buckets, "curriculum": [0, 1, 2], "score": "stat.ppl"},
                  "tokenize_pack": {"shards": len(infos), "total_tokens": manifest.total_tokens}},
    }
    storage.write_json(folder / storage.STATS, stats)
    (folder / storage.SUCCESS).write_text("synthetic\n")
    run["stages"].append(stats)
    storage.write_json(run_dir / storage.STATS, run)
    return stats


# --------------------------------------------------------------------------- shared across test modules

_BUILT: dict[str, Path] = {}


def pipeline_run(tmp_root: Path, shared_data: Path) -> Path:
    """The real two-stage run, built once per test session (needs the `ray_local` fixture)."""
    key = f"pipeline:{tmp_root}"
    if key not in _BUILT:
        inputs = make_inputs(shared_data, tmp_root / "report-inputs")
        _BUILT[key] = run_pipeline_dict(pipeline_dict(inputs, tmp_root / "report-run"))
    return _BUILT[key]


def full_run(tmp_root: Path, shared_data: Path) -> Path:
    """A copy of `pipeline_run` with the synthesized scoring stage and shards appended."""
    key = f"full:{tmp_root}"
    if key not in _BUILT:
        target = tmp_root / "report-full-run"
        shutil.copytree(pipeline_run(tmp_root, shared_data), target, symlinks=True,
                        ignore=shutil.ignore_patterns("report", "analyze"))
        add_scoring_stage(target, shared_data)
        _BUILT[key] = target
    return _BUILT[key]
