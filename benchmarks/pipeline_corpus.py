"""A gigabyte-scale zh+en corpus for the whole-pipeline benchmark, made from ../shared/data.

Four sources like the demo's (web, news, forum, books), each with its own real text: its
documents' lengths are drawn from the real documents of that source (so the length
distribution is real), and each document is a run of real sentences of that source and
language. On top, at fixed shares of all documents: exact copies of an earlier document,
near copies (edited at 1-5% of words or characters), markup residue, PII, ad lines, symbol
garbage, very short documents, other languages (Spanish and Russian customer messages) and a
few malformed JSON lines. Every file is plain JSONL (`id`, `text`, `url` for web pages), about
`--file-mb` each, written as `OUT/<source>/part-NNNN.jsonl`; the first file of every source
together is the "slice" (`--total-mb / files per source`).

    python benchmarks/pipeline_corpus.py --out /tmp/kiln-pipeline/corpus --total-mb 1024

Deterministic for a seed; streaming (memory stays flat whatever the size).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ("web", "news", "forum", "books")
# Share of Chinese documents per source (the rest English).
ZH_SHARE = {"web": 0.6, "news": 0.5, "forum": 0.7, "books": 0.5}
NOISE = {  # share of all documents
    "exact_copy": 0.04, "near_copy": 0.04, "markup": 0.03, "pii": 0.02, "ads": 0.02,
    "garbage": 0.01, "short": 0.01, "other_lang": 0.01, "malformed": 0.0005,
}
_EN_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ZH_SPLIT = re.compile(r"(?<=[。！？!?])")


@dataclass
class Pool:
    """Sentences of one source and language, and the lengths (in characters) of its real
    documents."""
    sentences: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def add(self, doc: str, lang: str) -> None:
        doc = doc.strip()
        if not doc:
            return
        self.lengths.append(len(doc))
        parts = _ZH_SPLIT.split(doc) if lang == "zh" else _EN_SPLIT.split(" ".join(doc.split()))
        self.sentences += [p.strip() for p in parts if len(p.strip()) >= 4]


def _lines(path: Path, field_index: int = -1) -> list[str]:
    return [line.split("\t")[field_index] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


def _zip_texts(name: str, pattern: str) -> list[str]:
    with zipfile.ZipFile(SHARED / "nltk_data_corpora/packages/corpora" / name) as zf:
        return [zf.read(n).decode("latin-1") for n in sorted(zf.namelist()) if re.search(pattern, n)]


def load_pools() -> dict[tuple[str, str], Pool]:
    """(source, lang) -> Pool, from the shared data (deterministic order)."""
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the pipeline benchmark builds its corpus from ../shared/data")
    pools = {(s, lang): Pool() for s in SOURCES for lang in ("zh", "en")}
    uer = SHARED / "zh_uer_corpora"
    for doc in _lines(uer / "corpora/CLUECorpusSmall_sampled.txt"):
        pools["web", "zh"].add(doc, "zh")
    for path in sorted(glob.glob(str(SHARED / "en_reuters21578/reut2-*.sgm"))):
        raw = Path(path).read_text(encoding="latin-1")
        for body in re.findall(r"<BODY>(.*?)</BODY>", raw, re.S):
            pools["web", "en"].add(re.sub(r"&\w+;|&#\d+;", " ", body), "en")
    for doc in _lines(SHARED / "zh_thucnews_cnews_sample/data/cnews/cnews.val.txt"):
        pools["news", "zh"].add(doc, "zh")
    for path in sorted(glob.glob(str(SHARED / "en_bbc_news/bbc/*/*.txt"))):
        pools["news", "en"].add(Path(path).read_text(encoding="latin-1"), "en")
    for path in sorted(glob.glob(str(uer / "datasets/smp2020-ewect/*/*.tsv"))):
        for doc in _lines(Path(path))[1:]:
            pools["forum", "zh"].add(doc, "zh")
    for text in _zip_texts("webtext.zip", r"\.txt$"):
        for line in text.splitlines():
            pools["forum", "en"].add(line, "en")
    for doc in _lines(uer / "corpora/book_review_cls.txt"):
        pools["books", "zh"].add(doc, "zh")
    for text in _zip_texts("movie_reviews.zip", r"\.txt$") + _zip_texts("state_union.zip", r"\.txt$"):
        pools["books", "en"].add(text, "en")
    for key, pool in pools.items():
        if not pool.sentences:
            raise SystemExit(f"no sentences for {key} in {SHARED}")
    return pools


def other_language_lines() -> list[str]:
    path = SHARED / "zh_thucnews_cnews_sample/data/cnews/multi_lang.val.txt"
    return [t for t in _lines(path, 1) if len(t) > 20]


class CorpusWriter:
    """Streams documents into per-source JSONL files of about `file_bytes` each."""

    def __init__(self, out: Path, file_bytes: int, files_per_source: int) -> None:
        self.out, self.file_bytes, self.files_per_source = out, file_bytes, files_per_source
        self.files: dict[str, tuple[int, int, object]] = {}
        self.done: set[str] = set()

    def write(self, source: str, line: str) -> bool:
        """Append a line to `source`'s current file; False once that source is full."""
        if source in self.done:
            return False
        index, size, handle = self.files.get(source, (-1, self.file_bytes, None))
        if size >= self.file_bytes:
            if handle is not None:
                handle.close()
            index += 1
            if index >= self.files_per_source:
                self.done.add(source)
                return False
            path = self.out / source / f"part-{index:04d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, size = open(path, "w", encoding="utf-8"), 0  # noqa: SIM115 (kept open across calls; closed by close())
        data = line + "\n"
        handle.write(data)
        self.files[source] = (index, size + len(data.encode("utf-8")), handle)
        return True

    def close(self) -> None:
        for _, _, handle in self.files.values():
            handle.close()


def _document(pool: Pool, lang: str, r: random.Random) -> str:
    target = max(40, pool.lengths[r.randrange(len(pool.lengths))])
    parts, size = [], 0
    while size < target:
        sentence = pool.sentences[r.randrange(len(pool.sentences))]
        parts.append(sentence)
        size += len(sentence) + 1
    if lang == "zh":
        # Paragraph breaks every few sentences, as in real articles.
        return "".join(p + ("\n" if r.random() < 0.2 else "") for p in parts).strip()
    return " ".join(parts)


def _near_copy(text: str, lang: str, r: random.Random) -> str:
    units = text.split() if lang == "en" else list(text)
    rate = r.choice((0.01, 0.02, 0.03, 0.05))
    for _ in range(max(1, round(rate * len(units)))):
        if len(units) < 2:
            break
        i = r.randrange(len(units))
        if r.random() < 0.5:
            del units[i]
        else:
            units[i] = units[r.randrange(len(units))]
    return " ".join(units) if lang == "en" else "".join(units)


def _pii(r: random.Random, lang: str) -> str:
    email = f"user{r.randrange(10**6)}@example{r.randrange(100)}.com"
    phone = f"1{r.choice('3578')}{r.randrange(10**9):09d}"
    return (f"联系人邮箱 {email}，电话 {phone}。" if lang == "zh"
            else f"Contact me at {email} or call {phone}.")


_ADS_ZH = ("点击领取优惠券，加微信 wx{n} 立享五折！", "限时抢购，全场包邮，扫码关注有惊喜 {n}", "免费领取 VIP 会员，仅限今天 {n}")
_ADS_EN = ("CLICK HERE to get 50% OFF today only! Code SAVE{n}", "Buy cheap pills online, free shipping {n}!!!",
           "Subscribe now and win a free iPhone {n}")


def noisy(kind: str, text: str, lang: str, r: random.Random, other: list[str]) -> str:
    if kind == "markup":
        paras = text.split("\n") if lang == "zh" else _EN_SPLIT.split(text)
        body = "".join(f"<p>{p}&nbsp;</p>" for p in paras)
        return f'<div class="nav"><a href="/">Home</a> | <a href="/news">News</a></div>{body}<script>var x={r.randrange(99)};</script>'
    if kind == "pii":
        return text + ("" if lang == "zh" else " ") + _pii(r, lang)
    if kind == "ads":
        lines = [(r.choice(_ADS_ZH) if lang == "zh" else r.choice(_ADS_EN)).format(n=r.randrange(1000)) for _ in range(4)]
        return "\n".join([text, *lines])
    if kind == "garbage":
        return "".join(r.choice("#$%&*@!~^|<>{}[]0123456789") for _ in range(r.randrange(200, 2000)))
    if kind == "short":
        return text[: r.randrange(5, 30)]
    if kind == "other_lang":
        return " ".join(r.choice(other) for _ in range(r.randrange(2, 8)))
    raise ValueError(kind)


def generate(out: Path, total_mb: float, file_mb: float, seed: int = 0) -> dict:
    """Write the corpus; returns counts by source and noise kind."""
    pools, other = load_pools(), other_language_lines()
    r = random.Random(seed)
    files_per_source = max(1, round(total_mb / file_mb / len(SOURCES)))
    writer = CorpusWriter(out, int(file_mb * (1 << 20)), files_per_source)
    kinds, weights = list(NOISE), list(NOISE.values())
    clean_weight = 1.0 - sum(weights)
    recent: list[tuple[str, str]] = []  # (text, lang) of recent clean documents, for copies
    counts: dict[str, int] = {}
    n = 0
    while len(writer.done) < len(SOURCES):
        source = SOURCES[n % len(SOURCES)]
        n += 1
        if source in writer.done:
            continue
        lang = "zh" if r.random() < ZH_SHARE[source] else "en"
        text = _document(pools[source, lang], lang, r)
        kind = r.choices(["clean", *kinds], weights=[clean_weight, *weights])[0]
        if kind in ("exact_copy", "near_copy") and recent:
            text, lang = recent[r.randrange(len(recent))]
            if kind == "near_copy":
                text = _near_copy(text, lang, r)
        elif kind not in ("clean", "exact_copy", "near_copy", "malformed"):
            text = noisy(kind, text, lang, r, other)
        if kind == "clean":
            if len(recent) < 50_000:
                recent.append((text, lang))
            else:
                recent[r.randrange(len(recent))] = (text, lang)
        record = {"id": f"{source}-{n:09d}", "text": text}
        if source == "web":
            record["url"] = f"https://example-{r.randrange(5000)}.com/{lang}/{n}.html"
        line = json.dumps(record, ensure_ascii=False)
        if kind == "malformed":
            line = line[: len(line) // 2]
        if writer.write(source, line):
            counts[kind] = counts.get(kind, 0) + 1
            counts[f"source:{source}"] = counts.get(f"source:{source}", 0) + 1
    writer.close()
    return {"documents": sum(v for k, v in counts.items() if k.startswith("source:")),
            "files_per_source": files_per_source, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--total-mb", type=float, default=1024)
    parser.add_argument("--file-mb", type=float, default=25.6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    info = generate(args.out, args.total_mb, args.file_mb, args.seed)
    (args.out / "corpus.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
