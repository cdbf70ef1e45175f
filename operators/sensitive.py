"""Sensitive topics and Ziya2's evaluation rates: lexicon categories matched with Aho-Corasick.

A lexicon is a folder of plain-text files, one term per line; a file is a category and its
name (without extension) the category's name, unless the lexicon source names one category
for all its files. Lines starting with `#` and blank lines are skipped. Lines may combine
several terms with separator characters (the Chinese sensitive lexicons in the wild write
`出售|钢珠枪` or `考试,答案`): with `separators` set, such a line is a rule whose parts must
all occur in the document (`multi_term: all`, the default) or a list of independent terms
(`multi_term: any`).

All terms of all categories go into one automaton (pyahocorasick) with the categories as
payload, so a document is scanned once, over its lowercased text, whatever the number of
categories and terms. Terms whose edge is a letter or digit of a space-separated script
only match at a word boundary there ("ass" does not match inside "class", "sex" not inside
"Essex"); terms in Chinese and Japanese match anywhere, as those scripts have no spaces.
Within a category, overlapping occurrences count once (leftmost, then longest).

A category's measure is hits per 1,000 characters of the document (Unicode code points).
`sensitive_filter` writes `stat.sensitive_<category>` for every category and rejects
documents over a category's threshold with reason `sensitive:<category>`. `ziya_rates`
writes Ziya2's four evaluation rates, `stat.rate_privacy`, `stat.rate_toxic`, `stat.rate_ad`
and `stat.rate_html`, from the lexicons shipped in configs/lexicons/ziya (or the user's), and
rejects only where thresholds are set (reason `rate:<name>`).

The automaton is built lazily, once per worker process, and cached by the lexicon files'
paths, sizes and modification times: these operators stay plain Ray tasks (no actor pool of
one) and a worker never builds the same automaton twice.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import Filter, Outcome, Params, set_column, text_column
from operators.registry import register

LEXICON_DIR = Path(__file__).resolve().parents[1] / "configs" / "lexicons"
SENSITIVE_DIR = LEXICON_DIR / "sensitive"
ZIYA_DIR = LEXICON_DIR / "ziya"
ZIYA_RATES = ("privacy", "toxic", "ad", "html")
# Files a lexicon folder usually carries besides its word lists.
_NOT_LEXICONS = ("readme*", "license*", "licence*", "source*", "credits*", "*.md", "*.json")

# --------------------------------------------------------------------------- lexicon files


def category_name(name: str) -> str:
    """A column-safe category name: lowercase letters, digits (any script) and underscores."""
    cleaned = re.sub(r"\W+", "_", unicodedata.normalize("NFKC", name).lower()).strip("_")
    if not cleaned:
        raise ValueError(f"cannot make a category name out of {name!r}")
    return cleaned


class LexiconSource(Params):
    """One lexicon: a file or a folder of files, one term per line."""

    path: str = Field(description="a lexicon file, or a folder of them")
    files: list[str] = Field(default_factory=lambda: ["*"],
                             description="file name patterns inside a folder (README, LICENSE, SOURCE, *.md, *.json are skipped)")
    category: str | None = Field(None, description="one category for all files; default: each file's name")
    separators: str = Field("", description="characters joining several terms on one line, e.g. ',|'")
    multi_term: Literal["all", "any"] = Field(
        "all", description="a line with separators: all parts must occur (all) or each part is a term (any)")
    match_inside_words: bool = Field(False, description="let Latin-script terms match inside longer words")
    encoding: str = "utf-8"

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str) -> str:
        path = Path(os.path.expanduser(v)).absolute()
        if not path.exists():
            raise ValueError(f"lexicon {v} does not exist")
        # Absolute, so Ray workers with another working directory find the same files.
        return str(path)

    @field_validator("category")
    @classmethod
    def _category(cls, v: str | None) -> str | None:
        return None if v is None else category_name(v)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}") from None
        return v

    def lexicon_files(self) -> list[tuple[Path, str]]:
        """(file, category) pairs, sorted by file name."""
        path = Path(self.path)
        if path.is_file():
            found = [path]
        else:
            found = sorted(
                f for f in path.iterdir()
                if f.is_file() and not f.name.startswith(".")
                and any(fnmatch.fnmatch(f.name, pattern) for pattern in self.files)
                and not any(fnmatch.fnmatch(f.name.lower(), skip) for skip in _NOT_LEXICONS)
            )
            if not found:
                raise ValueError(f"no lexicon files in {path} match {self.files}")
        return [(f, self.category or category_name(f.stem)) for f in found]


@dataclass(frozen=True)
class Rule:
    """A lexicon entry: one term, several terms that must all occur in the document, or an
    exception (a `!` line): a phrase inside which no term counts."""

    parts: tuple[str, ...]
    exception: bool = False


@functools.lru_cache(maxsize=256)
def _read_rules(path: str, mtime_ns: int, size: int, encoding: str, separators: str,
                multi_term: str) -> tuple[Rule, ...]:
    """The rules of one lexicon file (cached per file version: validation and every batch a
    worker runs share one read)."""
    try:
        raw = Path(path).read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"lexicon {path} is not {encoding} text (byte {e.start}); set encoding") from None
    rules: list[Rule] = []
    split = re.compile("[" + re.escape(separators) + "]") if separators else None
    for line in raw.lstrip("\ufeff").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        term = unicodedata.normalize("NFKC", line).lower()
        if term.startswith("!"):
            if term[1:].strip():
                rules.append(Rule((term[1:].strip(),), exception=True))
            continue
        parts = [p.strip() for p in split.split(term)] if split else [term]
        parts = [p for p in parts if p]
        if multi_term == "any" or len(parts) == 1:
            rules.extend(Rule((p,)) for p in parts)
        elif parts:
            rules.append(Rule(tuple(dict.fromkeys(parts))))
    return tuple(rules)


def read_lexicon(source: LexiconSource) -> dict[str, list[Rule]]:
    """Rules per category of one lexicon source."""
    out: dict[str, list[Rule]] = {}
    for file, category in source.lexicon_files():
        st = file.stat()
        rules = _read_rules(str(file), st.st_mtime_ns, st.st_size, source.encoding,
                            source.separators, source.multi_term)
        out.setdefault(category, []).extend(rules)
    return out


# --------------------------------------------------------------------------- matching


def _unspaced(c: str) -> bool:
    """Characters of scripts written without spaces between words: Han, kana, Thai, Lao,
    Khmer, Myanmar. Terms and text in these scripts need no word boundary."""
    o = ord(c)
    return (0x2E80 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3FFFF
            or 0x0E00 <= o <= 0x0EFF or 0x1000 <= o <= 0x109F or 0x1780 <= o <= 0x17FF
            or 0xFF66 <= o <= 0xFF9F)


def _word_char(c: str) -> bool:
    return c.isalnum() and not _unspaced(c)


@dataclass
class _Term:
    text: str
    check_left: bool
    check_right: bool
    exception: bool = False
    # (category index, index among the category's co-occurrence rules or -1, part index)
    owners: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class ScanResult:
    """Per category: hits, and up to `keep_terms` distinct matched terms."""

    hits: list[int]
    terms: list[list[str]]


class LexiconMatcher:
    """One Aho-Corasick automaton over all terms of all categories."""

    def __init__(self, categories: dict[str, list[Rule]], *, min_term_chars: int = 2,
                 inside_words: dict[str, bool] | None = None) -> None:
        import ahocorasick

        self.categories = list(categories)
        self.terms: list[_Term] = []
        self.compound: list[list[Rule]] = [[] for _ in self.categories]
        self.skipped_short = 0
        self._index: dict[str, int] = {}
        self.automaton = ahocorasick.Automaton()
        inside_words = inside_words or {}
        for ci, name in enumerate(self.categories):
            boundaries = not inside_words.get(name, False)
            for rule in categories[name]:
                if rule.exception:
                    self._term(rule.parts[0], boundaries).exception = True
                    continue
                if any(len(p) < min_term_chars for p in rule.parts):
                    self.skipped_short += 1
                    continue
                ri = -1
                if len(rule.parts) > 1:
                    ri = len(self.compound[ci])
                    self.compound[ci].append(rule)
                for pi, part in enumerate(rule.parts):
                    term = self._term(part, boundaries)
                    if (ci, ri, pi) not in term.owners:
                        term.owners.append((ci, ri, pi))
        self.size = sum(1 for t in self.terms if t.owners)
        if self.terms:
            self.automaton.make_automaton()

    def _term(self, text: str, boundaries: bool) -> _Term:
        ti = self._index.get(text)
        if ti is None:
            ti = self._index[text] = len(self.terms)
            self.terms.append(_Term(text, boundaries and _word_char(text[0]), boundaries and _word_char(text[-1])))
            self.automaton.add_word(text, ti)
        return self.terms[ti]

    def scan(self, text: str, keep_terms: int = 0) -> ScanResult | None:
        """Hits per category in `text`, with up to `keep_terms` matched terms each; None when
        nothing matched (most documents: that path allocates nothing)."""
        if not self.terms or not text:
            return None
        lowered = text.lower()
        last = len(lowered) - 1
        found: list[tuple[int, int, _Term]] = []
        exceptions: list[tuple[int, int]] = []
        for end, ti in self.automaton.iter(lowered):
            term = self.terms[ti]
            start = end - len(term.text) + 1
            if term.check_left and start > 0 and _word_char(lowered[start - 1]):
                continue
            if term.check_right and end < last and _word_char(lowered[end + 1]):
                continue
            if term.exception:
                exceptions.append((start, end))
            if term.owners:
                found.append((start, end, term))
        if not found:
            return None
        n = len(self.categories)
        hits = [0] * n
        terms: list[list[str]] = [[] for _ in range(n)]
        # Single-term occurrences per category, to count overlapping ones once.
        occurrences: list[list[tuple[int, int, _Term]]] = [[] for _ in range(n)]
        parts_seen: dict[tuple[int, int], dict[int, int]] = {}
        for start, end, term in found:
            if exceptions and any(s <= start and end <= e for s, e in exceptions):
                continue
            for ci, ri, pi in term.owners:
                if ri < 0:
                    occurrences[ci].append((start, end, term))
                else:
                    seen = parts_seen.setdefault((ci, ri), {})
                    seen[pi] = seen.get(pi, 0) + 1
        for ci, occ in enumerate(occurrences):
            if not occ:
                continue
            occ.sort(key=lambda o: (o[0], -o[1]))
            covered = -1
            for start, end, term in occ:
                if start <= covered:
                    continue
                covered = end
                hits[ci] += 1
                if len(terms[ci]) < keep_terms and term.text not in terms[ci]:
                    terms[ci].append(term.text)
        for (ci, ri), seen in parts_seen.items():
            rule = self.compound[ci][ri]
            if len(seen) == len(rule.parts):
                # A rule of co-occurring terms counts as often as its rarest part occurs.
                hits[ci] += min(seen.values())
                joined = "+".join(rule.parts)
                if len(terms[ci]) < keep_terms and joined not in terms[ci]:
                    terms[ci].append(joined)
        return ScanResult(hits, terms)


# (category, file, source) triples: each lexicon file with the category it counts for.
NamedFiles = list[tuple[str, Path, LexiconSource]]


def _files_key(named: NamedFiles) -> tuple[Any, ...]:
    """What decides an automaton: every file's version and how it is read."""
    key = []
    for category, file, source in named:
        st = file.stat()
        key.append((category, str(file), st.st_mtime_ns, st.st_size, source.encoding,
                    source.separators, source.multi_term, source.match_inside_words))
    return tuple(key)


@functools.lru_cache(maxsize=8)
def _cached_matcher(key: tuple[Any, ...], min_term_chars: int, order: tuple[str, ...]) -> LexiconMatcher:
    categories: dict[str, list[Rule]] = {name: [] for name in order}
    inside: dict[str, bool] = {}
    for category, path, mtime, size, encoding, separators, multi_term, inside_words in key:
        if category not in categories:
            continue
        rules = _read_rules(path, mtime, size, encoding, separators, multi_term)
        categories[category].extend(rules)
        inside[category] = inside.get(category, False) or inside_words
    return LexiconMatcher(categories, min_term_chars=min_term_chars, inside_words=inside)


def build_matcher(named: NamedFiles, order: Sequence[str], min_term_chars: int) -> LexiconMatcher:
    """The matcher for these files, categories in `order`; built once per process and lexicon
    version, so every batch a worker runs reuses it."""
    return _cached_matcher(_files_key(named), min_term_chars, tuple(order))


def per_thousand(hits: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Hits per 1,000 characters; 0 for empty documents."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chars > 0, hits * 1000.0 / np.maximum(chars, 1), 0.0)


# --------------------------------------------------------------------------- operators


class _LexiconParams(Params):
    min_term_chars: int = Field(2, ge=1, description="shorter lexicon terms are ignored (single characters match everywhere)")
    min_hits: int = Field(1, ge=1, description="a category rejects only with at least this many hits")
    detail_terms: int = Field(5, ge=0, description="matched terms listed in reject_detail")


def _shipped(path: Path) -> list[LexiconSource]:
    if not path.exists():
        raise ValueError(f"the shipped lexicon {path} is missing (kiln installed without configs/?); "
                         "name lexicon files or folders")
    return [LexiconSource(path=str(path))]


def _check_thresholds(thresholds: dict[str, float], known: Sequence[str], what: str) -> None:
    for name, value in thresholds.items():
        if name not in known:
            raise ValueError(f"thresholds.{name}: no such {what}; known: {', '.join(known) or 'none'}")
        if value < 0:
            raise ValueError(f"thresholds.{name}: must be >= 0 (hits per 1000 characters)")


# Thresholds of the shipped categories, in hits per 1,000 characters (see README: measured on
# news, Wikipedia, Weibo and reviews, these reject well under 1% of clean text).
DEFAULT_THRESHOLDS = {"porn": 1.0, "gambling": 1.0, "drugs": 1.0, "violence": 1.0, "politics": 1.0}


class SensitiveParams(_LexiconParams):
    lexicons: list[LexiconSource] | None = Field(
        None, description="lexicon files or folders; default: the shipped configs/lexicons/sensitive")
    rename: dict[str, str] = Field(default_factory=dict, description="category renames, e.g. {色情词库: porn}")
    categories: list[str] | None = Field(None, description="measure only these categories (after renaming)")
    thresholds: dict[str, float] | None = Field(
        None, description="per category, hits per 1000 characters above which a document is rejected; "
                          "default: DEFAULT_THRESHOLDS for the shipped categories present")
    default_threshold: float | None = Field(None, ge=0, description="threshold of categories not in thresholds")

    @field_validator("rename")
    @classmethod
    def _rename(cls, v: dict[str, str]) -> dict[str, str]:
        return {category_name(k): category_name(n) for k, n in v.items()}

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [category_name(c) for c in v]

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else {category_name(k): t for k, t in v.items()}

    def sources(self) -> list[LexiconSource]:
        return self.lexicons if self.lexicons is not None else _shipped(SENSITIVE_DIR)

    def named_files(self) -> NamedFiles:
        return [(self.rename.get(c, c), f, s) for s in self.sources() for f, c in s.lexicon_files()]

    def category_order(self) -> list[str]:
        """Categories in first-seen order, renamed, and selected by `categories`."""
        names = list(dict.fromkeys(c for c, _, _ in self.named_files()))
        return names if self.categories is None else [n for n in names if n in self.categories]

    def effective_thresholds(self) -> dict[str, float]:
        order = self.category_order()
        if self.thresholds is None:
            out = {k: v for k, v in DEFAULT_THRESHOLDS.items() if k in order}
        else:
            out = {k: v for k, v in self.thresholds.items() if k in order}
        if self.default_threshold is not None:
            for name in order:
                out.setdefault(name, self.default_threshold)
        return out

    @model_validator(mode="after")
    def _check(self) -> SensitiveParams:
        if self.lexicons is not None and not self.lexicons:
            raise ValueError("lexicons: name at least one lexicon file or folder")
        for source in self.sources():
            read_lexicon(source)  # unreadable files fail here, at config time
        available = list(dict.fromkeys(c for c, _, _ in self.named_files()))
        missing = [c for c in self.categories or [] if c not in available]
        if missing:
            raise ValueError(f"categories: {', '.join(missing)} not in the lexicons "
                             f"(categories: {', '.join(available)})")
        _check_thresholds(self.thresholds or {}, self.category_order(), "category")
        return self


class _LexiconFilter(Filter):
    """Shared by both operators: scan, rates per category, thresholds, reasons and details."""

    reason_prefix: str = ""
    column_prefix: str = ""

    def named_files(self) -> NamedFiles:
        raise NotImplementedError

    def category_order(self) -> list[str]:
        raise NotImplementedError

    def thresholds(self) -> dict[str, float]:
        raise NotImplementedError

    @property
    def matcher(self) -> LexiconMatcher:
        return build_matcher(self.named_files(), self.category_order(), self.params.min_term_chars)

    def _scan(self, batch: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray, list[list[list[str]] | None]]:
        matcher = self.matcher
        texts = text_column(batch)
        keep = self.params.detail_terms
        hits = np.zeros((len(texts), len(matcher.categories)), dtype=np.int64)
        terms: list[list[list[str]] | None] = [None] * len(texts)
        scan = matcher.scan
        for row, text in enumerate(texts):
            result = scan(text, keep)
            if result is not None:
                hits[row] = result.hits
                terms[row] = result.terms
        chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        return matcher.categories, hits, chars, terms

    def _with_stats(self, batch: pa.Table, categories: list[str], hits: np.ndarray,
                    chars: np.ndarray) -> pa.Table:
        for ci, name in enumerate(categories):
            batch = set_column(batch, self.column_prefix + name, pa.array(per_thousand(hits[:, ci], chars)))
        return batch

    def _worst(self, categories: list[str], hits: np.ndarray, chars: np.ndarray) -> np.ndarray:
        """Per row, the index of the category furthest over its threshold (by ratio), or -1."""
        thresholds = self.thresholds()
        worst = np.full(len(chars), -1)
        worst_ratio = np.zeros(len(chars))
        for ci, name in enumerate(categories):
            limit = thresholds.get(name)
            if limit is None:
                continue
            rate = per_thousand(hits[:, ci], chars)
            over = (rate > limit) & (hits[:, ci] >= self.params.min_hits)
            ratio = np.where(over, rate / limit if limit > 0 else np.inf, 0.0)
            pick = over & (ratio > worst_ratio)
            worst = np.where(pick, ci, worst)
            worst_ratio = np.where(pick, ratio, worst_ratio)
        return worst

    def _reasons(self, categories: list[str], worst: np.ndarray) -> pa.Array:
        return pa.array([None if w < 0 else self.reason_prefix + categories[w] for w in worst], pa.string())

    def compute(self, batch: pa.Table) -> pa.Table:
        categories, hits, chars, _ = self._scan(batch)
        return self._with_stats(batch, categories, hits, chars)

    def decide(self, batch: pa.Table) -> pa.Array:
        # From the statistics alone: hits are recovered from the rate and the length.
        categories = self.matcher.categories
        chars = pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
        hits = np.zeros((len(chars), len(categories)), dtype=np.int64)
        for ci, name in enumerate(categories):
            rate = batch.column(self.column_prefix + name).to_numpy(zero_copy_only=False)
            hits[:, ci] = np.rint(rate * chars / 1000.0).astype(np.int64)
        return self._reasons(categories, self._worst(categories, hits, chars))

    def apply(self, batch: pa.Table) -> Outcome:
        # compute + decide in one scan, keeping the matched terms for reject_detail.
        categories, hits, chars, terms = self._scan(batch)
        table = self._with_stats(batch, categories, hits, chars)
        worst = self._worst(categories, hits, chars)
        if not (worst >= 0).any():
            return Outcome(table)
        thresholds = self.thresholds()
        details = []
        for row, ci in enumerate(worst):
            if ci < 0:
                details.append(None)
                continue
            name = categories[ci]
            rate = hits[row, ci] * 1000.0 / chars[row]
            details.append(f"{name}: {hits[row, ci]} hits, {rate:.2f} per 1000 chars > {thresholds[name]:g}; "
                           + ", ".join(terms[row][ci]))
        return Outcome(table, self._reasons(categories, worst), details)


@register
class SensitiveFilter(_LexiconFilter):
    """Sensitive-topic categories from lexicon folders (one file per category). Writes
    `stat.sensitive_<category>` (hits per 1,000 characters) for every category; rejects a
    document whose rate in a category is over that category's threshold, with reason
    `sensitive:<category>` and the matched terms as detail."""

    name = "sensitive_filter"
    Params = SensitiveParams
    reason_prefix = "sensitive:"
    column_prefix = "stat.sensitive_"

    def named_files(self) -> NamedFiles:
        return self.params.named_files()

    def category_order(self) -> list[str]:
        return self.params.category_order()

    def thresholds(self) -> dict[str, float]:
        return self.params.effective_thresholds()


class ZiyaRatesParams(_LexiconParams):
    privacy: list[LexiconSource] | None = Field(None, description="privacy words; default configs/lexicons/ziya/privacy.txt")
    toxic: list[LexiconSource] | None = Field(None, description="toxic words; default configs/lexicons/ziya/toxic.txt")
    ad: list[LexiconSource] | None = Field(None, description="advertising words; default configs/lexicons/ziya/ad.txt")
    html: list[LexiconSource] | None = Field(None, description="HTML function words; default configs/lexicons/ziya/html.txt")
    thresholds: dict[Literal["privacy", "toxic", "ad", "html"], float] = Field(
        default_factory=dict, description="reject above these rates (hits per 1000 characters); default: measure only")

    def sources(self, rate: str) -> list[LexiconSource]:
        given = getattr(self, rate)
        return given if given is not None else _shipped(ZIYA_DIR / f"{rate}.txt")

    @model_validator(mode="after")
    def _check(self) -> ZiyaRatesParams:
        for rate in ZIYA_RATES:
            sources = self.sources(rate)
            if not sources:
                raise ValueError(f"{rate}: name at least one lexicon file or folder")
            for source in sources:
                read_lexicon(source)
        _check_thresholds(dict(self.thresholds), ZIYA_RATES, "rate")
        return self


@register
class ZiyaRates(_LexiconFilter):
    """Ziya2's evaluation rates: privacy-word, toxic-word, advertising-word and HTML
    function-word hits per 1,000 characters, as `stat.rate_privacy`, `stat.rate_toxic`,
    `stat.rate_ad`, `stat.rate_html`. Measures only unless thresholds are set (reason
    `rate:<name>`)."""

    name = "ziya_rates"
    Params = ZiyaRatesParams
    reason_prefix = "rate:"
    column_prefix = "stat.rate_"

    def named_files(self) -> NamedFiles:
        return [(rate, f, s) for rate in ZIYA_RATES for s in self.params.sources(rate)
                for f, _ in s.lexicon_files()]

    def category_order(self) -> list[str]:
        return list(ZIYA_RATES)

    def thresholds(self) -> dict[str, float]:
        return dict(self.params.thresholds)
