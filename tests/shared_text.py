"""Readers for the real text in ../shared/data used by the cleaning tests and benchmark.

Nothing is copied into the repository: these functions read the shared folder in place and
return documents as pyarrow tables in kiln's document schema (id, text, source, lang).
"""

from __future__ import annotations

import html
import re
import zipfile
from pathlib import Path

REUTERS_ARTICLE = re.compile(r"<REUTERS\b.*?</REUTERS>", re.S)
REUTERS_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)


def docs_table(texts: list[str], source: str, lang: str | None = None):
    import pyarrow as pa  # not at the top: the benchmark's peer-tool venv reads text without it

    return pa.table({
        "id": [f"{source}:{i}" for i in range(len(texts))],
        "text": texts,
        "source": [source] * len(texts),
        "lang": pa.array([lang] * len(texts), pa.string()),
    })


def reuters_sgml(data: Path, limit: int | None = None, files: int = 1) -> list[str]:
    """Raw Reuters articles: each <REUTERS>...</REUTERS> element with its SGML markup."""
    out: list[str] = []
    for path in sorted((data / "en_reuters21578").glob("reut2-*.sgm"))[:files]:
        raw = path.read_bytes().decode("latin-1")
        out.extend(REUTERS_ARTICLE.findall(raw))
    return out[:limit]


def reuters_bodies(data: Path, limit: int | None = None, files: int = 1) -> list[str]:
    """Reuters article bodies as plain text (entities unescaped, control characters gone)."""
    bodies = []
    for article in reuters_sgml(data, None, files):
        match = REUTERS_BODY.search(article)
        if match:
            text = html.unescape(match.group(1))
            bodies.append(re.sub(r"[\x00-\x08\x0b-\x1f]", "", text).strip())
    return bodies[:limit]


def bbc_articles(data: Path, limit: int | None = None) -> list[str]:
    paths = sorted((data / "en_bbc_news" / "bbc").glob("*/*.txt"))
    return [p.read_bytes().decode("latin-1") for p in paths[:limit]]


def lines(path: Path, limit: int | None = None) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                out.append(line)
            if limit is not None and len(out) >= limit:
                break
    return out


def clue_docs(data: Path, limit: int | None = None) -> list[str]:
    return lines(data / "zh_uer_corpora" / "corpora" / "CLUECorpusSmall_sampled.txt", limit)


def chnsenticorp(data: Path, limit: int | None = None) -> list[str]:
    return lines(data / "zh_uer_corpora" / "corpora" / "chnsenticorp.txt", limit)


def weibo_posts(data: Path, limit: int | None = None) -> list[str]:
    """SMP2020-EWECT Weibo posts (the text column of label<TAB>text)."""
    rows = lines(data / "zh_uer_corpora" / "datasets" / "smp2020-ewect" / "usual" / "train.tsv",
                 None if limit is None else limit + 1)
    return [r.split("\t", 1)[1] for r in rows[1:] if "\t" in r]


def news_commentary(data: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(English, Chinese) parallel lines."""
    rows = lines(data / "zh_uer_corpora" / "corpora" / "news-commentary-v13-en-zh_sampled.txt", limit)
    return [tuple(r.split("\t", 1)) for r in rows if "\t" in r]


def multi_lang_messages(data: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(language code, message) for the Spanish (`xiyu`) and Russian (`eyu`) customer messages."""
    rows = lines(data / "zh_thucnews_cnews_sample" / "data" / "cnews" / "multi_lang.val.txt", limit)
    codes = {"xiyu": "es", "eyu": "ru"}
    out = []
    for row in rows:
        parts = row.split("\t")
        if len(parts) == 3 and parts[2] in codes:
            out.append((codes[parts[2]], parts[1]))
    return out


def thucnews(data: Path, limit: int | None = None) -> list[str]:
    """THUCNews articles (label<TAB>text)."""
    rows = lines(data / "zh_thucnews_cnews_sample" / "data" / "cnews" / "cnews.val.txt", limit)
    return [r.split("\t", 1)[1] for r in rows if "\t" in r]


UDHR_FILES = {
    "en": ("udhr/English-Latin1", "latin-1"),
    "zh": ("udhr/Chinese_Mandarin-UTF8", "utf-8"),
    "es": ("udhr/Spanish-Latin1", "latin-1"),
    "fr": ("udhr/French_Francais-Latin1", "latin-1"),
    "de": ("udhr/German_Deutsch-Latin1", "latin-1"),
    "ru": ("udhr/Russian-UTF8", "utf-8"),
    "ja": ("udhr/Japanese_Nihongo-UTF8", "utf-8"),
}


def udhr_bytes(data: Path, member: str) -> bytes:
    with zipfile.ZipFile(data / "nltk_data_corpora" / "packages" / "corpora" / "udhr.zip") as z:
        return z.read(member)


def udhr(data: Path, lang: str) -> str:
    member, encoding = UDHR_FILES[lang]
    # Some files in the zip end inside a multi-byte character.
    return udhr_bytes(data, member).decode(encoding, errors="replace").rstrip("\ufffd")


SINICA_PREFIX = re.compile(r"^#\d+:\d+\.\[\d+\]\s*")


def sinica_sentences(data: Path, limit: int | None = None) -> list[str]:
    """Traditional Chinese sentences from the Sinica treebank (Taiwan), spaces between words
    removed."""
    with zipfile.ZipFile(data / "nltk_data_corpora" / "packages" / "corpora" / "sinica_treebank.zip") as z:
        raw = z.read("sinica_treebank/raw").decode("utf-8")
    out = []
    for line in raw.splitlines():
        text = SINICA_PREFIX.sub("", line).replace(" ", "")
        text = re.sub(r"_\d+:", "", text)
        if len(text) >= 6:
            out.append(text)
        if limit is not None and len(out) >= limit:
            break
    return out
