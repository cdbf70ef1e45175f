"""Cleaning benchmark: kiln's rule operators against datatrove's Gopher and C4 filters.

Both sides get the same documents from ../shared/data (English: BBC articles and Reuters
bodies; Chinese: CLUECorpusSmall and Weibo posts) and run in one process on one core:
kiln through `run_operators` (in process, no Ray), datatrove as its pipeline runs filters
(each document streams through GopherQualityFilter -> GopherRepetitionFilter ->
C4QualityFilter), in `.venv-bench` (`make bench-env`) as a subprocess, since datatrove
replaces the `fasttext` module and pins xxhash<4. For Chinese, datatrove gets its spaCy
tokenizer with the jieba segmenter, as kiln uses jieba words.

Reported per set: documents per second of wall time and per CPU second of the process
(docs/s per core; steadier than wall time on a shared machine), and the fraction kept. Each
configuration runs `--repeat` times after a warm-up; the fastest run counts.

    make bench-clean            # or: python benchmarks/bench_clean.py --docs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"


# --------------------------------------------------------------------------- datatrove side
# Runs in .venv-bench: imports only datatrove and the standard library.


def datatrove_worker(path: str, lang: str, repeat: int) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    # datatrove's language table maps zh to a spaCy tokenizer without the jieba segmenter;
    # SpaCyTokenizer("zh") itself sets jieba, the segmentation kiln uses too.
    tokenizer = SpaCyTokenizer(lang)

    def pipeline():
        return [GopherQualityFilter(language=tokenizer), GopherRepetitionFilter(language=tokenizer),
                C4QualityFilter(language=tokenizer)]

    def run_once(docs_texts):
        steps = pipeline()
        stream = (Document(text=t, id=str(i)) for i, t in enumerate(docs_texts))
        for step in steps:
            stream = step.run(stream, rank=0, world_size=1)
        return sum(1 for _ in stream)

    run_once(texts[:20])  # warm-up: spaCy and jieba load their models
    best = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        kept = run_once(texts)
        result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "kept": kept}
        if best is None or result["cpu_s"] < best["cpu_s"]:
            best = result
    best["docs"] = len(texts)
    return best


# --------------------------------------------------------------------------- kiln side


def load_sets(n: int) -> dict[str, tuple[str, list[str]]]:
    sys.path.insert(0, str(REPO / "tests"))
    from shared_text import bbc_articles, clue_docs, reuters_bodies, weibo_posts

    half = n // 2
    english = bbc_articles(SHARED, half) + reuters_bodies(SHARED, n - half, files=3)
    chinese = clue_docs(SHARED, half) + weibo_posts(SHARED, n - half)
    return {"en (BBC + Reuters)": ("en", english), "zh (CLUE + Weibo)": ("zh", chinese)}


def kiln_configs():
    from operators.rules import (
        ChineseQuality,
        GopherQuality,
        GopherRepetition,
        LineFilter,
        TextQuality,
    )

    return {
        # Everything in README "Cleaning rules" that judges documents or removes sentences.
        "kiln: all rules": lambda: [LineFilter(), TextQuality(), GopherQuality(), ChineseQuality(),
                                    GopherRepetition()],
        # The same checks as datatrove's three filters, for a like-for-like figure.
        "kiln: gopher + C4 rules": lambda: [
            LineFilter(split="lines", terminal_punct=True, min_words=3, policy=True, copyright=False,
                       share_buttons=False, click_here=False, navigation=False, zh_ads=False),
            TextQuality(max_digit_ratio=None, max_symbol_ratio=None, max_char_run=None,
                        max_url_char_ratio=None, max_javascript_line_ratio=None,
                        max_replacement_char_ratio=None),
            GopherQuality(langs=None), GopherRepetition()],
    }


def normalize_configs():
    from operators.language import LanguageId
    from operators.normalize import FixEncoding, Normalize, StripMarkup, TraditionalToSimplified

    return {"kiln: normalize + language_id": lambda: [FixEncoding(), StripMarkup(), Normalize(), LanguageId(),
                                                      TraditionalToSimplified()]}


def run_kiln(make_ops, texts: list[str], lang: str, repeat: int) -> dict:
    import pyarrow as pa

    from operators import _text
    from operators.base import run_operators, split_rejected

    def table(items):
        return pa.table({"id": [str(i) for i in range(len(items))], "text": items,
                         "source": ["bench"] * len(items), "lang": [lang] * len(items)})

    ops = make_ops()
    run_operators(ops, table(texts[:20]))  # warm-up: models and segmenter dictionaries
    batches = [table(texts[i:i + 1024]) for i in range(0, len(texts), 1024)]
    best = None
    for _ in range(repeat):
        _text.CACHE.clear()
        ops = make_ops()
        wall, cpu = time.perf_counter(), time.process_time()
        kept = 0
        for batch in batches:
            kept += split_rejected(run_operators(ops, batch))[0].num_rows
        result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "kept": kept}
        if best is None or result["cpu_s"] < best["cpu_s"]:
            best = result
    best["docs"] = len(texts)
    return best


def run_datatrove(texts: list[str], lang: str, repeat: int) -> dict | None:
    if not BENCH_PYTHON.exists():
        print(f"  (datatrove skipped: {BENCH_PYTHON} missing; run `make bench-env`)", file=sys.stderr)
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        path = f.name
    try:
        env = {**os.environ, "PYTHONPATH": "", "LOGURU_LEVEL": "ERROR", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([str(BENCH_PYTHON), __file__, "--worker", path, "--lang", lang,
                               "--repeat", str(repeat)], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"  (datatrove failed: {proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
            return None
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(path)


def row(name: str, r: dict) -> dict:
    return {"config": name, "docs": r["docs"], "docs_per_s": r["docs"] / r["wall_s"],
            "docs_per_cpu_s": r["docs"] / r["cpu_s"], "kept": r["kept"] / r["docs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents per language set")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="runs/bench/clean.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--lang", default="en", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(datatrove_worker(args.worker, args.lang, args.repeat)))
        return

    if not SHARED.is_dir():
        sys.exit(f"bench-clean: {SHARED} is missing (the benchmark reads ../shared/data)")
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {}
    for set_name, (lang, texts) in load_sets(args.docs).items():
        chars = sum(map(len, texts))
        print(f"\n{set_name}: {len(texts)} documents, {chars / len(texts):.0f} characters on average")
        rows = []
        for name, make_ops in {**kiln_configs(), **normalize_configs()}.items():
            rows.append(row(name, run_kiln(make_ops, texts, lang, args.repeat)))
        dt = run_datatrove(texts, lang, args.repeat)
        if dt is not None:
            rows.append(row("datatrove: Gopher quality + repetition + C4", dt))
        print(f"  {'configuration':<46} {'docs/s':>9} {'docs/CPU-s':>11} {'kept':>6}")
        for r in rows:
            print(f"  {r['config']:<46} {r['docs_per_s']:>9.0f} {r['docs_per_cpu_s']:>11.0f} {r['kept']:>6.1%}")
        results[set_name] = {"lang": lang, "docs": len(texts), "mean_chars": chars / len(texts), "rows": rows}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", "results": results}, indent=2))
    print(f"\nwritten to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
