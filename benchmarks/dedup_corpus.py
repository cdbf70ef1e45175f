"""Planted-duplicate corpora for the dedup benchmark, made from ../shared/data text.

Base documents are random runs of sentences from real English (BBC, Reuters-21578) and
Chinese (CLUECorpusSmall, THUCNews, ChnSentiCorp, Douban reviews) text, so any number of
distinct documents can be made. A share of the documents are planted copies of an earlier
document with edits at known rates (English: words replaced, deleted or inserted; Chinese:
characters), some of them copies of copies (chains). Each row records its family, the
document it was copied from and the edit rate, for the accuracy tables; the tables
themselves are scored against exact Jaccard on kiln's shingles, not against these labels.

    python benchmarks/dedup_corpus.py --docs 100000 --out /tmp/dedup-100k.parquet
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EDIT_RATES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
_EN_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ZH_SPLIT = re.compile(r"(?<=[。！？])")


@dataclass
class SentencePool:
    en: list[str]
    zh: list[str]


def load_pool(shared: Path = SHARED) -> SentencePool:
    """English and Chinese sentences from the shared data (deterministic order)."""
    if not shared.is_dir():
        raise SystemExit(f"{shared} is missing: the dedup benchmark builds its corpora from ../shared/data")
    en_docs = [Path(f).read_text(encoding="latin-1") for f in sorted(glob.glob(str(shared / "en_bbc_news/bbc/*/*.txt")))]
    for path in sorted(glob.glob(str(shared / "en_reuters21578/reut2-*.sgm"))):
        raw = Path(path).read_text(encoding="latin-1")
        en_docs += [re.sub(r"&\w+;|&#\d+;", " ", body) for body in re.findall(r"<BODY>(.*?)</BODY>", raw, re.S)]
    en = []
    for doc in en_docs:
        for sentence in _EN_SPLIT.split(" ".join(doc.split())):
            if 6 <= len(sentence.split()) <= 60:
                en.append(sentence)
    zh_docs: list[str] = []
    corpora = shared / "zh_uer_corpora/corpora"
    for name in ("CLUECorpusSmall_sampled.txt", "chnsenticorp.txt", "book_review_cls.txt"):
        for line in (corpora / name).read_text(encoding="utf-8", errors="replace").splitlines():
            zh_docs.append(line.split("\t", 1)[-1])
    thuc = shared / "zh_thucnews_cnews_sample/data/cnews/cnews.val.txt"
    zh_docs += [line.split("\t", 1)[-1] for line in thuc.read_text(encoding="utf-8", errors="replace").splitlines()]
    zh = []
    for doc in zh_docs:
        for sentence in _ZH_SPLIT.split(doc.strip()):
            sentence = sentence.strip()
            if 12 <= len(sentence) <= 150:
                zh.append(sentence)
    return SentencePool(en=sorted(set(en)), zh=sorted(set(zh)))


def _base_document(pool: SentencePool, rng: np.random.Generator, lang: str) -> str:
    if lang == "en":
        target, text, words = int(rng.integers(120, 400)), [], 0
        while words < target:
            sentence = pool.en[int(rng.integers(len(pool.en)))]
            text.append(sentence)
            words += len(sentence.split())
        return " ".join(text)
    target, text, chars = int(rng.integers(200, 700)), [], 0
    while chars < target:
        sentence = pool.zh[int(rng.integers(len(pool.zh)))]
        text.append(sentence)
        chars += len(sentence)
    return "".join(text)


def edit(text: str, lang: str, rate: float, rng: np.random.Generator, vocabulary: list[str]) -> str:
    """Replace, delete or insert a `rate` share of the words (en) or characters (zh)."""
    units = text.split() if lang == "en" else list(text)
    n_edits = round(rate * len(units))
    for _ in range(n_edits):
        if not units:
            break
        position = int(rng.integers(len(units)))
        action = int(rng.integers(3))
        new = vocabulary[int(rng.integers(len(vocabulary)))]
        if action == 0:
            units[position] = new
        elif action == 1 and len(units) > 1:
            del units[position]
        else:
            units.insert(position, new)
    return " ".join(units) if lang == "en" else "".join(units)


def generate(n_docs: int, duplicate_share: float = 0.2, chain_share: float = 0.25, seed: int = 0,
             pool: SentencePool | None = None) -> pa.Table:
    """`n_docs` documents: distinct bases plus planted copies (edit rates from EDIT_RATES,
    `chain_share` of copies made from an earlier copy)."""
    pool = pool or load_pool()
    rng = np.random.default_rng(seed)
    en_vocab = sorted({w for s in pool.en[:20000] for w in s.split()})
    zh_vocab = sorted({c for s in pool.zh[:20000] for c in s if "\u4e00" <= c <= "\u9fff"})
    ids, texts, langs, family, parent, rates = [], [], [], [], [], []
    copies_of: list[int] = []  # rows that are copies, for chains
    for i in range(n_docs):
        is_copy = i > 10 and rng.random() < duplicate_share
        if is_copy:
            if copies_of and rng.random() < chain_share:
                source = copies_of[int(rng.integers(len(copies_of)))]
            else:
                source = int(rng.integers(i))
            rate = float(EDIT_RATES[int(rng.integers(len(EDIT_RATES)))])
            lang = langs[source]
            text = edit(texts[source], lang, rate, rng, en_vocab if lang == "en" else zh_vocab)
            fam, par = family[source], ids[source]
            copies_of.append(i)
        else:
            lang = "en" if rng.random() < 0.5 else "zh"
            text, fam, par, rate = _base_document(pool, rng, lang), i, None, None
        ids.append(f"bench:{i:08d}")
        texts.append(text)
        langs.append(lang)
        family.append(fam)
        parent.append(par)
        rates.append(rate)
    return pa.table({"id": ids, "text": texts, "lang": langs, "family": pa.array(family, pa.int64()),
                     "copy_of": pa.array(parent, pa.string()), "edit_rate": pa.array(rates, pa.float64())})


def write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=20000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duplicate-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = generate(args.docs, args.duplicate_share, seed=args.seed)
    write(table, args.out)
    print(json.dumps({"docs": table.num_rows, "path": str(args.out)}))


if __name__ == "__main__":
    main()
