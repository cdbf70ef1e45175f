"""Web page rules from FineWeb and C4, and a URL block list, in the style of `operators.rules`.

- `fineweb_quality`: FineWeb's own filter (datatrove `FineWebQualityFilter`, arXiv
  2406.17557): pages whose lines mostly do not end in punctuation, are mostly short, repeat
  each other, or are lists (many line breaks per word) are not prose.
- `c4_quality`: C4's page rules (arXiv 1910.10683): at least `min_sentences` sentences, and
  the paragraph rule of the C4 "realnewslike"/"webtextlike" variants (TFDS `c4_utils`): at
  least `min_paragraphs` lines of at least `paragraph_min_chars` characters (off by default).
- `url_filter`: pages whose URL's host is on a block list (or a subdomain of one), or whose
  URL holds a blocked word (as a token) or subword (anywhere), as datatrove's URLFilter
  does; lists come inline or from files, one entry a line.

Terminal punctuation, sentences and words know Chinese (。！？ end a line or sentence; a Han
character counts as a word), so these rules judge Chinese pages too (`langs: null`).
"""

from __future__ import annotations

import os
import re
from typing import ClassVar
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import Filter, Outcome, Params
from operators.registry import register
from operators.rules import Rule, RuleFilter, _rows_text

# datatrove's END_PUNCTUATION plus the Chinese and typographic line ends.
LINE_END = (".", "'", '"', "!", "?", "…", "。", "！", "？", "”", "’", "」", "』", ")", "）", ":", "：", ";", "；")
SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’」』)）]*(?=\s|$)|[。！？]+")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _word_count(text: str) -> int:
    han = len(HAN.findall(text))
    return han + len(HAN.sub(" ", text).split()) if han else len(text.split())


# --------------------------------------------------------------------------- fineweb_quality


class FineWebQualityParams(Params):
    langs: list[str] | None = Field(default=None, description="languages judged; None: all")
    min_line_punct_ratio: float | None = Field(0.12, ge=0)
    max_short_line_ratio: float | None = Field(0.67, ge=0)
    short_line_chars: int = Field(30, ge=1, description="a line of at most this many characters is short")
    max_dup_line_char_ratio: float | None = Field(0.01, ge=0)
    max_newline_word_ratio: float | None = Field(0.3, ge=0)


@register
class FineWebQuality(RuleFilter):
    """FineWeb's quality filter over the lines of a page (datatrove's defaults)."""

    name = "fineweb_quality"
    Params = FineWebQualityParams
    rules = (
        Rule("line_punct_ratio", "min_line_punct_ratio", "stat.line_punct_ratio", "min",
             "share of lines ending in terminal punctuation below this"),
        Rule("short_line_ratio", "max_short_line_ratio", "stat.short_line_ratio", "max",
             "share of lines of at most `short_line_chars` characters above this"),
        Rule("char_dup_ratio", "max_dup_line_char_ratio", "stat.fineweb_dup_char_ratio", "max",
             "characters in lines that repeat an earlier line over all characters above this"),
        Rule("list_ratio", "max_newline_word_ratio", "stat.newline_word_ratio", "max",
             "line breaks per word above this (lists, menus)"),
    )

    def measure(self, batch, langs, rows, wanted):
        texts = _rows_text(batch, rows)
        n = len(texts)
        out = {name: np.full(n, np.nan) for name in wanted}
        short = self.params.short_line_chars
        for i, text in enumerate(texts):
            lines = _lines(text)
            if not lines:
                continue
            if "stat.line_punct_ratio" in wanted:
                out["stat.line_punct_ratio"][i] = sum(line.endswith(LINE_END) for line in lines) / len(lines)
            if "stat.short_line_ratio" in wanted:
                out["stat.short_line_ratio"][i] = sum(len(line) <= short for line in lines) / len(lines)
            if "stat.fineweb_dup_char_ratio" in wanted:
                seen: set[str] = set()
                dup = 0
                for line in lines:
                    if line in seen:
                        dup += len(line)
                    seen.add(line)
                chars = len(text.replace("\n", ""))
                out["stat.fineweb_dup_char_ratio"][i] = dup / chars if chars else 0.0
            if "stat.newline_word_ratio" in wanted:
                words = _word_count(text)
                out["stat.newline_word_ratio"][i] = text.count("\n") / words if words else 0.0
        return out


# --------------------------------------------------------------------------- c4_quality


class C4QualityParams(Params):
    langs: list[str] | None = Field(default=None, description="languages judged; None: all")
    min_sentences: int | None = Field(5, ge=0)
    min_paragraphs: int | None = Field(None, ge=0)
    paragraph_min_chars: int = Field(200, ge=1, description="a line counts as a paragraph from this many characters")


@register
class C4Quality(RuleFilter):
    """C4's page rules: enough sentences; optionally enough long paragraphs."""

    name = "c4_quality"
    Params = C4QualityParams
    rules = (
        Rule("too_few_sentences", "min_sentences", "stat.sentences", "min",
             "fewer sentences (ending in . ! ? 。！？) than this (C4: 5)"),
        Rule("too_few_paragraphs", "min_paragraphs", "stat.long_paragraphs", "min",
             "fewer lines of at least `paragraph_min_chars` characters than this (C4 paragraph filter: 3)"),
    )
    int_stats = frozenset({"stat.sentences", "stat.long_paragraphs"})

    def measure(self, batch, langs, rows, wanted):
        texts = _rows_text(batch, rows)
        out: dict[str, np.ndarray] = {}
        if "stat.sentences" in wanted:
            out["stat.sentences"] = np.fromiter((len(SENTENCE_END.findall(t)) for t in texts), np.int64, len(texts))
        if "stat.long_paragraphs" in wanted:
            limit = self.params.paragraph_min_chars
            out["stat.long_paragraphs"] = np.fromiter(
                (sum(len(line) >= limit for line in _lines(t)) for t in texts), np.int64, len(texts))
        return out


# --------------------------------------------------------------------------- url_filter


def _read_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip().lower() for line in f if line.strip() and not line.lstrip().startswith("#")]


class UrlFilterParams(Params):
    domains: list[str] = Field(default_factory=list, description="blocked hosts (their subdomains too)")
    words: list[str] = Field(default_factory=list, description="blocked words: a URL token equal to one")
    subwords: list[str] = Field(default_factory=list, description="blocked strings anywhere in the URL")
    domain_files: list[str] = Field(default_factory=list, description="files of blocked hosts, one a line")
    word_files: list[str] = Field(default_factory=list, description="files of blocked words, one a line")
    subword_files: list[str] = Field(default_factory=list, description="files of blocked subwords, one a line")


class BlockListMissing(FileNotFoundError):
    """A block list file named by url_filter does not exist (checked when the operator is
    built, not when the config is read: shipped configs name files a fresh clone lacks)."""


URL_TOKEN = re.compile(r"[^\W_]+")


@register
class UrlFilter(Filter):
    """Rejects pages by URL: host on the block list (`blocked_domain`), a blocked word as a
    URL token (`blocked_url_word`), a blocked subword in the URL (`blocked_url_subword`).
    Documents without a URL pass."""

    name = "url_filter"
    Params = UrlFilterParams
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("blocked_domain", "domains", "url", "flag", "the URL's host or a parent domain is listed (and `domain_files`)"),
        Rule("blocked_url_word", "words", "url", "flag", "a token of the URL is a listed word (and `word_files`)"),
        Rule("blocked_url_subword", "subwords", "url", "flag", "the URL holds a listed string (and `subword_files`)"),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params  # the lists are small: built here, so the filter needs no actor
        missing = [f for f in (*p.domain_files, *p.word_files, *p.subword_files) if not os.path.isfile(f)]
        if missing:
            raise BlockListMissing(f"url_filter: block list file {', '.join(missing)} does not exist")
        self.domains = {d.lower().lstrip(".") for d in p.domains}
        self.words = {w.lower() for w in p.words}
        subwords = [s.lower() for s in p.subwords]
        for path in p.domain_files:
            self.domains.update(d.lstrip(".") for d in _read_list(path))
        for path in p.word_files:
            self.words.update(_read_list(path))
        for path in p.subword_files:
            subwords.extend(_read_list(path))
        self.subword_re = re.compile("|".join(map(re.escape, subwords))) if subwords else None

    def reason(self, url: str | None) -> tuple[str | None, str | None]:
        if not url:
            return None, None
        lowered = url.lower()
        try:
            host = (urlsplit(lowered if "//" in lowered else "//" + lowered).hostname or "").rstrip(".")
        except ValueError:
            host = ""
        parts = host.split(".")
        for k in range(len(parts) - 1):
            suffix = ".".join(parts[k:])
            if suffix in self.domains:
                return "blocked_domain", suffix
        if self.words:
            for token in URL_TOKEN.findall(lowered):
                if token in self.words:
                    return "blocked_url_word", token
        if self.subword_re is not None:
            match = self.subword_re.search(lowered)
            if match:
                return "blocked_url_subword", match.group(0)
        return None, None

    def apply(self, batch: pa.Table) -> Outcome:
        urls = batch.column("url").to_pylist() if "url" in batch.column_names else [None] * batch.num_rows
        found = [self.reason(url) for url in urls]
        return Outcome(batch, [r for r, _ in found], [f"url matches {m!r}" if m else None for _, m in found])
