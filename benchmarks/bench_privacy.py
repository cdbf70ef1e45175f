"""Privacy and sensitive-topic operators: documents per second on one core, side by side with
what a user would otherwise write, on the same real text.

Corpora (../shared/data): Chinese = SMP2020 Weibo posts + CLUE web sample + ChnSentiCorp
reviews; English = BBC articles + Reuters-21578 bodies.

Rows:
- pii_mask (kiln): e-mail, phone, resident ID, IP, bank card, masked;
- datatrove PIIFormatter: e-mails and IPv4 only (datatrove's own PII step), run in the bench
  environment (.venv-bench, or --bench-python) when it is there;
- sensitive_filter (kiln) with the shipped lexicon, and with the user's big lexicons
  (konsheng Vocabulary/*.txt + LDNOOBW en/zh, about 50k terms);
- regex alternation: one `re` pattern of the same terms (escaped, longest first), counting
  matches: the usual hand-written alternative;
- ziya_rates (kiln).

Each row is one process on one core: operators run in process through `run_operators`, so
the figure is per-core throughput; a Ray run multiplies it by the cores it is given.

Usage: python benchmarks/bench_privacy.py [--limit N] [--bench-python PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from operators.base import run_operators  # noqa: E402
from operators.privacy import PII_TYPES, PiiMask  # noqa: E402
from operators.sensitive import LexiconSource, SensitiveFilter, ZiyaRates, read_lexicon  # noqa: E402

WORDS = SHARED / "wordlists"
BIG_LEXICONS = [
    {"path": str(WORDS / "konsheng_sensitive_lexicon/Vocabulary"), "files": ["*.txt"], "separators": ",|",
     "multi_term": "any"},
    {"path": str(WORDS / "ldnoobw"), "files": ["en", "zh"], "category": "obscene"},
]


def chinese(limit: int) -> list[str]:
    texts = []
    for part in ("usual", "virus"):
        lines = (SHARED / f"zh_uer_corpora/datasets/smp2020-ewect/{part}/train.tsv").read_text(encoding="utf-8").splitlines()[1:]
        texts += [line.split("\t", 1)[1] for line in lines if "\t" in line]
    for name in ("CLUECorpusSmall_sampled.txt", "chnsenticorp.txt"):
        texts += [t for t in (SHARED / "zh_uer_corpora/corpora" / name).read_text(encoding="utf-8").splitlines() if t]
    return texts[:limit]


def english(limit: int) -> list[str]:
    texts = [Path(f).read_text(encoding="latin-1") for f in sorted(glob.glob(str(SHARED / "en_bbc_news/bbc/*/*.txt")))]
    for f in sorted(glob.glob(str(SHARED / "en_reuters21578/*.sgm"))):
        sgml = Path(f).read_text(encoding="latin-1")
        texts += [re.sub(r"&#\d+;", "", b) for b in re.findall(r"<BODY>(.*?)</BODY>", sgml, re.S)]
    return texts[:limit]


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def run_op(op, table: pa.Table) -> tuple[float, pa.Table]:
    run_operators([op], table.slice(0, 10))  # build lexicons and automata outside the timing
    return timed(lambda: run_operators([op], table))


def regex_alternation(terms: list[str]):
    # Longest first, so the alternation prefers 法轮功 over 法轮 as Aho-Corasick's leftmost-longest does.
    pattern = re.compile("|".join(re.escape(t) for t in sorted(set(terms), key=len, reverse=True)))
    return lambda texts: sum(len(pattern.findall(t.lower())) for t in texts)


def lexicon_terms(sources: list[dict]) -> list[str]:
    terms = []
    for source in sources:
        for rules in read_lexicon(LexiconSource(**source)).values():
            terms += [p for r in rules if not r.exception for p in r.parts if len(p) >= 2]
    return terms


DATATROVE_SCRIPT = """
import json, sys, time
from datatrove.pipeline.formatters import PIIFormatter
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
fmt = PIIFormatter()
started = time.perf_counter()
out = [fmt.format(t) for t in texts]
seconds = time.perf_counter() - started
changed = sum(a != b for a, b in zip(texts, out))
print(json.dumps({"seconds": seconds, "changed": changed}))
"""


def datatrove_pii(python: str | None, texts: list[str]) -> dict | None:
    if not python or not os.path.exists(python):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    try:
        result = subprocess.run([python, "-c", DATATROVE_SCRIPT, f.name], capture_output=True, text=True, check=False)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        print(f"datatrove PIIFormatter skipped: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=60000, help="documents per corpus")
    parser.add_argument("--bench-python", default=str(REPO / ".venv-bench/bin/python"),
                        help="python of an environment with datatrove, for the peer row")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is missing: the benchmark runs on the shared test corpora")

    corpora = {"zh": chinese(args.limit), "en": english(args.limit)}
    results = []

    def row(corpus: str, what: str, seconds: float, texts: list[str], found: str = "") -> None:
        chars = sum(len(t) for t in texts)
        results.append({"corpus": corpus, "what": what, "docs": len(texts), "seconds": round(seconds, 2),
                        "docs_per_s": round(len(texts) / seconds), "mchars_per_s": round(chars / seconds / 1e6, 2),
                        "found": found})
        print(f"{corpus} {what:40s} {len(texts) / seconds:9.0f} docs/s {chars / seconds / 1e6:6.2f} Mchar/s  {found}",
              flush=True)

    shipped_terms = lexicon_terms([{"path": str(REPO / "configs/lexicons/sensitive")}])
    big_terms = lexicon_terms(BIG_LEXICONS)
    for corpus, texts in corpora.items():
        table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
        print(f"{corpus}: {len(texts)} documents, {sum(len(t) for t in texts) / 1e6:.1f}M characters", flush=True)

        seconds, out = run_op(PiiMask(), table)
        counts = {k: int(sum(out.column(f"stat.pii_{k}").to_pylist())) for k in PII_TYPES}
        row(corpus, "pii_mask (kiln)", seconds, texts, ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        peer = datatrove_pii(args.bench_python, texts)
        if peer:
            row(corpus, "datatrove PIIFormatter (email, IPv4)", peer["seconds"], texts, f"{peer['changed']} docs changed")

        for label, op, terms in (
            (f"sensitive_filter, shipped ({len(set(shipped_terms))} terms)", SensitiveFilter(), shipped_terms),
            (f"sensitive_filter, big ({len(set(big_terms))} terms)",
             SensitiveFilter(lexicons=BIG_LEXICONS, thresholds={}), big_terms),
        ):
            seconds, out = run_op(op, table)
            flagged = Counter(r for r in out.column("reject_reason").to_pylist() if r) if "reject_reason" in out.column_names else {}
            row(corpus, label + " (kiln)", seconds, texts, f"{sum(flagged.values())} rejected")
            count = regex_alternation(terms)
            # A 50k-term alternation scans at a few documents per second: time a sample.
            sample = texts if len(terms) < 1000 else texts[:300]
            seconds, matches = timed(lambda c=count, s=sample: c(s))
            row(corpus, label.replace("sensitive_filter", "regex alternation"), seconds, sample,
                f"{matches} matches" + ("" if sample is texts else f" (first {len(sample)} docs)"))

        seconds, out = run_op(ZiyaRates(), table)
        means = {c: sum(out.column(f"stat.rate_{c}").to_pylist()) / len(texts) for c in ("privacy", "toxic", "ad", "html")}
        row(corpus, "ziya_rates (kiln)", seconds, texts, "mean per 1000 chars: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
