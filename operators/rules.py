"""Quality rules at document, paragraph and sentence level (Ziya2's 30+ rules, Gopher, C4).

Document-level rules are grouped into a few filters that share one analysis of each document
(words, lines, paragraphs, n-gram hashes; see `operators._text`):

- `length_filter`: character counts.
- `gopher_quality`: Gopher's word rules (MassiveText, arXiv 2112.11446, table A1), for Latin
  script languages (default `langs: [en]`).
- `chinese_quality`: the same ideas with jieba words for Chinese, plus Han and Chinese
  punctuation ratios.
- `gopher_repetition`: duplicate lines and paragraphs, top and duplicated n-grams, any
  language (Chinese n-grams are over jieba words).
- `text_quality`: character-level markers: digits, symbols, runs of one character, URL
  density, lorem ipsum, curly braces, javascript, broken encoding.

Every rule has its own parameter (None or false disables it), its own reason string and its
own `stat.*` column; rules are checked in table order and the first that fails names the
reason. A rule operator only judges the documents of its `langs` (the `lang` column, or a
script guess where language ID has not run); its statistics for other documents are left as
another operator set them, so `gopher_quality` and `chinese_quality` share `stat.words`.

`line_filter` is the paragraph and sentence level: a mapper that removes the offending
lines (or sentences) and keeps the rest, counting each rule's removals, and rejects a
document it emptied (`all_lines_removed`).

The one table of all rules, parameters, defaults and reasons is in README.md ("Cleaning
rules"); tests/test_rules.py checks it against this module.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators._text import (
    DIGIT_RE2,
    HAN_RE2,
    SPACE_RE2,
    SYMBOL_RE2,
    ZH_PUNCT_RE2,
    CodePoints,
    Segmenter,
    analyses,
    char_lengths,
    count_regex,
    document_langs,
    duplicate_fractions,
    lang_mask,
    longest_alnum_runs,
    ngram_char_fractions,
    ratio,
)
from operators.base import (
    STAT_PREFIX,
    Filter,
    Mapper,
    Outcome,
    Params,
    first_reason,
    reasons_where,
    set_column,
    text_column,
)
from operators.registry import register

# --------------------------------------------------------------------------- rule specs


@dataclass(frozen=True)
class Rule:
    """One named rule: the reason it rejects with (or, for removal rules, the name its counts
    go under), the parameter holding its threshold or switch (None: always on), the
    statistic it writes, and what it does: `min` rejects below the threshold, `max` above,
    `flag` rejects when the switch is on and the statistic is above 0, `remove` removes the
    offending line or sentence, `edit` changes text (and rejects with `reason`, if any,
    what ends up empty), `measure` only records the statistic. The README's rule table is
    generated from these."""

    reason: str
    param: str | None
    stat: str
    bound: Literal["min", "max", "flag", "remove", "edit", "measure"]
    doc: str
    level: str = "document"


# --------------------------------------------------------------------------- length


class LengthParams(Params):
    min_chars: int = 1
    max_chars: int | None = None

    @model_validator(mode="after")
    def _check_range(self) -> LengthParams:
        if self.min_chars < 0:
            raise ValueError("min_chars must be >= 0")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


@register
class LengthFilter(Filter):
    """Rejects documents shorter than `min_chars` (`too_short`) or longer than `max_chars`
    (`too_long`), counted in Unicode characters; records `stat.chars`."""

    name = "length_filter"
    Params = LengthParams
    rules = (
        Rule("too_short", "min_chars", "stat.chars", "min", "fewer characters than this"),
        Rule("too_long", "max_chars", "stat.chars", "max", "more characters than this"),
    )

    def compute(self, batch: pa.Table) -> pa.Table:
        return set_column(batch, "stat.chars", pc.utf8_length(batch.column("text")).cast(pa.int64()))

    def decide(self, batch: pa.Table) -> pa.Array:
        chars = batch.column("stat.chars").to_numpy()
        reasons = [reasons_where(chars < self.params.min_chars, "too_short")]
        if self.params.max_chars is not None:
            reasons.append(reasons_where(chars > self.params.max_chars, "too_long"))
        return first_reason(*reasons) if len(reasons) > 1 else reasons[0]


# --------------------------------------------------------------------------- rule machinery


def merge_stat(batch: pa.Table, name: str, values: np.ndarray, applies: np.ndarray,
               type: pa.DataType) -> pa.Table:
    """Set stat `name` where `applies`, keeping what another operator wrote elsewhere."""
    new = pa.array(values, type=type, mask=~applies)
    if name in batch.column_names:
        existing = batch.column(name).combine_chunks()
        if existing.type != type:
            existing = existing.cast(type)
        new = pc.if_else(pa.array(applies), new, existing)
    return set_column(batch, name, new)


def _format(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RuleFilter(Filter):
    """A filter made of named rules over `stat.*` columns, judging only the documents whose
    language is in `params.langs`. Subclasses list `rules` and implement `measure`."""

    rules: ClassVar[tuple[Rule, ...]] = ()
    # Stats that are integer counts; the rest are float64 ratios.
    int_stats: ClassVar[frozenset[str]] = frozenset()

    def enabled_rules(self) -> list[Rule]:
        out = []
        for rule in self.rules:
            threshold = getattr(self.params, rule.param)
            if threshold is None or threshold is False:
                continue
            out.append(rule)
        return out

    def wanted_stats(self) -> set[str]:
        return {rule.stat for rule in self.enabled_rules()}

    def applies(self, batch: pa.Table) -> tuple[list[str], np.ndarray]:
        langs = document_langs(batch)
        return langs, lang_mask(langs, self.params.langs)

    def measure(self, batch: pa.Table, langs: list[str], rows: np.ndarray,
                wanted: set[str]) -> dict[str, np.ndarray]:
        """Statistics for the documents at positions `rows` (one value per row in `rows`)."""
        raise NotImplementedError

    def compute(self, batch: pa.Table) -> pa.Table:
        langs, mask = self.applies(batch)
        rows = np.flatnonzero(mask)
        wanted = self.wanted_stats()
        if not wanted:
            return batch
        measured = self.measure(batch, langs, rows, wanted) if len(rows) else {}
        for name in sorted(wanted):
            is_int = name in self.int_stats
            full = np.zeros(batch.num_rows, dtype=np.float64)
            if len(rows):
                full[rows] = measured[name]
            # NaN marks a document the rule does not judge (too short for it): null stat.
            judged = mask & ~np.isnan(full)
            full = np.nan_to_num(full)
            batch = merge_stat(batch, name, full.astype(np.int64) if is_int else full, judged,
                               pa.int64() if is_int else pa.float64())
        return batch

    def judge(self, batch: pa.Table) -> tuple[list[str | None], list[str | None]]:
        _, mask = self.applies(batch)
        n = batch.num_rows
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        open_rows = mask.copy()
        for rule in self.enabled_rules():
            threshold = getattr(self.params, rule.param)
            values = batch.column(rule.stat).to_numpy(zero_copy_only=False).astype(np.float64)
            with np.errstate(invalid="ignore"):
                if rule.bound == "min":
                    bad = values < threshold
                elif rule.bound == "max":
                    bad = values > threshold
                else:
                    bad = values > 0
            bad &= open_rows
            if not bad.any():
                continue
            open_rows &= ~bad
            sign = {"min": "<", "max": ">", "flag": ">"}[rule.bound]
            limit = 0 if rule.bound == "flag" else threshold
            for i in np.flatnonzero(bad):
                value = values[i]
                shown = int(value) if rule.stat in self.int_stats else float(value)
                reasons[i] = rule.reason
                details[i] = f"{rule.stat}={_format(shown)} {sign} {rule.param}={_format(limit)}"
        return reasons, details

    def decide(self, batch: pa.Table) -> list[str | None]:
        return self.judge(batch)[0]

    def apply(self, batch: pa.Table) -> Outcome:
        table = self.compute(batch)
        reasons, details = self.judge(table)
        return Outcome(table, reasons, details)


def _rows_text(batch: pa.Table, rows: np.ndarray) -> list[str]:
    column = batch.column("text")
    if len(rows) == batch.num_rows:
        return column.to_pylist()
    return column.take(pa.array(rows)).to_pylist()


Threshold = Field(default=None, ge=0)


# --------------------------------------------------------------------------- gopher_quality

# Gopher's stop words (arXiv 2112.11446, A.1): a document must hold at least two of them.
ENGLISH_STOPWORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# Written for kiln: frequent Chinese function words, each a jieba token.
CHINESE_STOPWORDS = (
    "的", "了", "是", "在", "和", "有", "我", "你", "他", "她", "它", "这", "那", "也", "就",
    "都", "不", "与", "及", "而", "但", "对", "被", "把", "从", "到", "为", "以", "之", "其",
    "或", "等", "着", "过", "很", "还", "又", "吗", "呢", "吧", "啊", "一个", "我们", "他们",
    "你们", "可以", "没有", "因为", "所以", "如果", "就是", "这个", "什么", "自己", "已经",
)
BULLETS = ("•", "-", "*", "●", "·", "▪", "◦", "‣", "–", "○", "■", "□", "►", "→")
ELLIPSES = ("...", "…")


class GopherQualityParams(Params):
    langs: list[str] | None = Field(default=["en"], description="languages judged; None: all")
    min_words: int | None = Field(50, ge=0)
    max_words: int | None = Field(100_000, ge=0)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, ge=0)
    max_hash_word_ratio: float | None = Field(0.1, ge=0)
    max_ellipsis_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_line_ratio: float | None = Field(0.9, ge=0)
    max_ellipsis_line_ratio: float | None = Field(0.3, ge=0)
    min_alpha_word_ratio: float | None = Field(0.8, ge=0)
    min_stopwords: int | None = Field(2, ge=0)
    stopwords: list[str] = Field(default=list(ENGLISH_STOPWORDS),
                                 description="stop words for `min_stopwords` (Gopher's eight)")
    segmenter: Segmenter = Field("rjieba", description="Chinese word segmenter: rjieba (jieba in Rust) or jieba")


def _word_stats(docs, wanted: set[str], stopwords: frozenset[str]) -> dict[str, np.ndarray]:
    """Word statistics shared by gopher_quality and chinese_quality."""
    out: dict[str, np.ndarray] = {}
    if "stat.words" in wanted:
        out["stat.words"] = np.fromiter((len(d.words) for d in docs), np.int64, len(docs))
    if "stat.mean_word_length" in wanted:
        out["stat.mean_word_length"] = np.fromiter(
            (d.word_lengths.mean() if len(d.word_lengths) else 0.0 for d in docs), np.float64, len(docs))
    if "stat.stopwords" in wanted:
        out["stat.stopwords"] = np.fromiter((d.stopword_count(stopwords) for d in docs), np.int64, len(docs))
    return out


@register
class GopherQuality(RuleFilter):
    """Gopher's document quality rules over words (whitespace tokens without edge
    punctuation; jieba words for Chinese documents when `langs` includes zh)."""

    name = "gopher_quality"
    Params = GopherQualityParams
    rules = (
        Rule("too_few_words", "min_words", "stat.words", "min", "fewer words than this"),
        Rule("too_many_words", "max_words", "stat.words", "max", "more words than this"),
        Rule("mean_word_too_short", "min_mean_word_length", "stat.mean_word_length", "min",
             "mean word length (characters) below this"),
        Rule("mean_word_too_long", "max_mean_word_length", "stat.mean_word_length", "max",
             "mean word length above this"),
        Rule("too_many_hashes", "max_hash_word_ratio", "stat.hash_word_ratio", "max",
             "`#` per token above this"),
        Rule("too_many_ellipses", "max_ellipsis_word_ratio", "stat.ellipsis_word_ratio", "max",
             "`...`/`…` per token above this"),
        Rule("too_many_bullet_lines", "max_bullet_line_ratio", "stat.bullet_line_ratio", "max",
             "share of lines starting with a bullet above this"),
        Rule("too_many_ellipsis_lines", "max_ellipsis_line_ratio", "stat.ellipsis_line_ratio", "max",
             "share of lines ending with an ellipsis above this"),
        Rule("too_few_alpha_words", "min_alpha_word_ratio", "stat.alpha_word_ratio", "min",
             "share of tokens holding a letter below this"),
        Rule("too_few_stopwords", "min_stopwords", "stat.stopwords", "min",
             "fewer distinct stop words (`stopwords`) than this"),
    )
    int_stats = frozenset({"stat.words", "stat.stopwords"})

    def measure(self, batch, langs, rows, wanted):
        texts = _rows_text(batch, rows)
        docs = analyses(texts, [langs[i] for i in rows], self.params.segmenter)
        out = _word_stats(docs, wanted, frozenset(w.lower() for w in self.params.stopwords))
        n = len(docs)
        token_counts = np.fromiter((len(d.tokens) for d in docs), np.int64, n)
        if "stat.hash_word_ratio" in wanted:
            out["stat.hash_word_ratio"] = ratio(np.fromiter((t.count("#") for t in texts), np.int64, n),
                                                token_counts)
        if "stat.ellipsis_word_ratio" in wanted:
            ellipses = np.fromiter((t.count("...") + t.count("…") for t in texts), np.int64, n)
            out["stat.ellipsis_word_ratio"] = ratio(ellipses, token_counts)
        if "stat.bullet_line_ratio" in wanted or "stat.ellipsis_line_ratio" in wanted:
            line_counts = np.fromiter((len(d.lines) for d in docs), np.int64, n)
            if "stat.bullet_line_ratio" in wanted:
                bullets = np.fromiter((sum(1 for s in d.lines if s.startswith(BULLETS)) for d in docs), np.int64, n)
                out["stat.bullet_line_ratio"] = ratio(bullets, line_counts)
            if "stat.ellipsis_line_ratio" in wanted:
                ends = np.fromiter((sum(1 for s in d.lines if s.endswith(ELLIPSES)) for d in docs), np.int64, n)
                out["stat.ellipsis_line_ratio"] = ratio(ends, line_counts)
        if "stat.alpha_word_ratio" in wanted:
            out["stat.alpha_word_ratio"] = np.fromiter((d.alpha_token_ratio() for d in docs), np.float64, n)
        return out


# --------------------------------------------------------------------------- chinese_quality


class ChineseQualityParams(Params):
    langs: list[str] | None = Field(default=["zh"], description="languages judged; None: all")
    min_words: int | None = Field(10, ge=0)
    min_mean_word_length: float | None = Field(1.1, ge=0)
    max_mean_word_length: float | None = Field(4.0, ge=0)
    min_stopwords: int | None = Field(1, ge=0)
    stopwords_min_words: int = Field(30, ge=0, description="documents with fewer words skip the stop-word rule")
    min_han_ratio: float | None = Field(0.2, ge=0)
    min_zh_punct_ratio: float | None = Field(None, ge=0)
    max_zh_punct_ratio: float | None = Field(0.8, ge=0)
    stopwords: list[str] = Field(default=list(CHINESE_STOPWORDS),
                                 description="Chinese function words (a list written for kiln)")
    segmenter: Segmenter = Field("rjieba", description="Chinese word segmenter: rjieba (jieba in Rust) or jieba")


@register
class ChineseQuality(RuleFilter):
    """Chinese document rules: jieba word counts and lengths, function words, the share of
    Han characters and of Chinese punctuation."""

    name = "chinese_quality"
    Params = ChineseQualityParams
    rules = (
        Rule("too_few_words", "min_words", "stat.words", "min", "fewer jieba words than this"),
        Rule("mean_word_too_short", "min_mean_word_length", "stat.mean_word_length", "min",
             "mean jieba word length below this (runs of single characters)"),
        Rule("mean_word_too_long", "max_mean_word_length", "stat.mean_word_length", "max",
             "mean jieba word length above this (unsegmentable strings)"),
        Rule("too_few_stopwords", "min_stopwords", "stat.stopwords", "min",
             "fewer distinct Chinese function words (`stopwords`) than this"),
        Rule("low_han_ratio", "min_han_ratio", "stat.han_ratio", "min",
             "Han characters over non-space characters below this"),
        Rule("low_zh_punct_ratio", "min_zh_punct_ratio", "stat.zh_punct_ratio", "min",
             "Chinese punctuation per Han character below this"),
        Rule("high_zh_punct_ratio", "max_zh_punct_ratio", "stat.zh_punct_ratio", "max",
             "Chinese punctuation per Han character above this"),
    )
    int_stats = frozenset({"stat.words", "stat.stopwords"})

    def measure(self, batch, langs, rows, wanted):
        out: dict[str, np.ndarray] = {}
        if wanted & {"stat.words", "stat.mean_word_length", "stat.stopwords"}:
            texts = _rows_text(batch, rows)
            docs = analyses(texts, [langs[i] for i in rows], self.params.segmenter)
            out |= _word_stats(docs, wanted, frozenset(self.params.stopwords))
            if "stat.stopwords" in wanted:
                # Short Chinese posts often hold no function word at all: judged from this length.
                word_counts = np.fromiter((len(d.words) for d in docs), np.int64, len(docs))
                out["stat.stopwords"] = np.where(word_counts < self.params.stopwords_min_words, np.nan,
                                                 out["stat.stopwords"])
        if wanted & {"stat.han_ratio", "stat.zh_punct_ratio"}:
            column = batch.column("text")
            texts_arrow = column if len(rows) == batch.num_rows else column.take(pa.array(rows))
            han = count_regex(texts_arrow, HAN_RE2)
            if "stat.han_ratio" in wanted:
                nonspace = char_lengths(texts_arrow) - count_regex(texts_arrow, SPACE_RE2)
                out["stat.han_ratio"] = ratio(han, nonspace)
            if "stat.zh_punct_ratio" in wanted:
                out["stat.zh_punct_ratio"] = ratio(count_regex(texts_arrow, ZH_PUNCT_RE2), han)
        return out


# --------------------------------------------------------------------------- gopher_repetition


class GopherRepetitionParams(Params):
    langs: list[str] | None = Field(default=None, description="languages judged; None: all")
    max_dup_line_ratio: float | None = Field(0.3, ge=0)
    max_dup_para_ratio: float | None = Field(0.3, ge=0)
    max_dup_line_char_ratio: float | None = Field(0.2, ge=0)
    max_dup_para_char_ratio: float | None = Field(0.2, ge=0)
    max_top_2gram_char_ratio: float | None = Field(0.20, ge=0)
    max_top_3gram_char_ratio: float | None = Field(0.18, ge=0)
    max_top_4gram_char_ratio: float | None = Field(0.16, ge=0)
    max_dup_5gram_char_ratio: float | None = Field(0.15, ge=0)
    max_dup_6gram_char_ratio: float | None = Field(0.14, ge=0)
    max_dup_7gram_char_ratio: float | None = Field(0.13, ge=0)
    max_dup_8gram_char_ratio: float | None = Field(0.12, ge=0)
    max_dup_9gram_char_ratio: float | None = Field(0.11, ge=0)
    max_dup_10gram_char_ratio: float | None = Field(0.10, ge=0)
    ngram_min_words: int = Field(30, ge=0, description="documents with fewer words skip the n-gram rules")
    segmenter: Segmenter = Field("rjieba", description="Chinese word segmenter: rjieba (jieba in Rust) or jieba")


_TOP_NS = (2, 3, 4)
_DUP_NS = (5, 6, 7, 8, 9, 10)


@register
class GopherRepetition(RuleFilter):
    """Gopher's repetition rules: repeated lines and paragraphs, and text covered by
    repeated word n-grams."""

    name = "gopher_repetition"
    Params = GopherRepetitionParams
    rules = (
        Rule("dup_line_ratio", "max_dup_line_ratio", "stat.dup_line_ratio", "max",
             "share of lines that repeat an earlier line above this"),
        Rule("dup_para_ratio", "max_dup_para_ratio", "stat.dup_para_ratio", "max",
             "share of paragraphs that repeat an earlier one above this"),
        Rule("dup_line_char_ratio", "max_dup_line_char_ratio", "stat.dup_line_char_ratio", "max",
             "characters in repeated lines over characters in lines above this"),
        Rule("dup_para_char_ratio", "max_dup_para_char_ratio", "stat.dup_para_char_ratio", "max",
             "characters in repeated paragraphs above this"),
        *(Rule(f"top_{n}gram", f"max_top_{n}gram_char_ratio", f"stat.top_{n}gram_char_ratio", "max",
               f"characters covered by the most repeated word {n}-gram above this") for n in _TOP_NS),
        *(Rule(f"dup_{n}gram", f"max_dup_{n}gram_char_ratio", f"stat.dup_{n}gram_char_ratio", "max",
               f"characters covered by repeated word {n}-grams above this") for n in _DUP_NS),
    )

    def measure(self, batch, langs, rows, wanted):
        texts = _rows_text(batch, rows)
        docs = analyses(texts, [langs[i] for i in rows], self.params.segmenter)
        n = len(docs)
        out: dict[str, np.ndarray] = {}
        if wanted & {"stat.dup_line_ratio", "stat.dup_line_char_ratio"}:
            pairs = np.array([duplicate_fractions(d.lines) for d in docs], dtype=np.float64).reshape(n, 2)
            out["stat.dup_line_ratio"], out["stat.dup_line_char_ratio"] = pairs[:, 0], pairs[:, 1]
        if wanted & {"stat.dup_para_ratio", "stat.dup_para_char_ratio"}:
            pairs = np.array([duplicate_fractions(d.paragraphs) for d in docs], dtype=np.float64).reshape(n, 2)
            out["stat.dup_para_ratio"], out["stat.dup_para_char_ratio"] = pairs[:, 0], pairs[:, 1]
        top_ns = tuple(k for k in _TOP_NS if f"stat.top_{k}gram_char_ratio" in wanted)
        dup_ns = tuple(k for k in _DUP_NS if f"stat.dup_{k}gram_char_ratio" in wanted)
        if top_ns or dup_ns:
            # In a short text one repeated phrase is a large share: too short to judge.
            skip = {f"top_{k}": np.nan for k in top_ns} | {f"dup_{k}": np.nan for k in dup_ns}
            fractions = [ngram_char_fractions(d, top_ns, dup_ns) if len(d.words) >= self.params.ngram_min_words
                         else skip for d in docs]
            for k in top_ns:
                out[f"stat.top_{k}gram_char_ratio"] = np.array([f[f"top_{k}"] for f in fractions], np.float64)
            for k in dup_ns:
                out[f"stat.dup_{k}gram_char_ratio"] = np.array([f[f"dup_{k}"] for f in fractions], np.float64)
        return out


# --------------------------------------------------------------------------- text_quality

URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'，。！？、；）」』】]+", re.IGNORECASE)
URL_HINT_RE2 = r"(?i)https?://|ftp://|www\."
# Lines that mention javascript or look like script code.
JAVASCRIPT_LINE_RE2 = (r"(?mi)^[^\n]*(?:javascript|function\s*\(|document\.(?:write|getelementbyid|cookie)"
                       r"|window\.(?:location|onload)|\bvar\s+\w+\s*=|<script)[^\n]*$")
class TextQualityParams(Params):
    langs: list[str] | None = Field(default=None, description="languages judged; None: all")
    max_digit_ratio: float | None = Field(0.35, ge=0)
    max_symbol_ratio: float | None = Field(0.1, ge=0)
    max_char_run: int | None = Field(20, ge=1)
    max_url_char_ratio: float | None = Field(0.3, ge=0)
    lorem_ipsum: bool = True
    max_curly_braces: int | None = Field(0, ge=0)
    max_javascript_line_ratio: float | None = Field(0.3, ge=0)
    max_replacement_char_ratio: float | None = Field(0.01, ge=0)
    max_char_repetition_ratio: float | None = Field(None, ge=0)
    char_repetition_n: int = Field(10, ge=1, description="character n-gram length of `max_char_repetition_ratio`")
    min_alnum_ratio: float | None = Field(None, ge=0)
    max_line_length: int | None = Field(None, ge=1)


@register
class TextQuality(RuleFilter):
    """Character-level markers of machine text and web residue, any language."""

    name = "text_quality"
    Params = TextQualityParams
    rules = (
        Rule("too_many_digits", "max_digit_ratio", "stat.digit_ratio", "max",
             "digits over non-space characters above this"),
        Rule("too_many_symbols", "max_symbol_ratio", "stat.symbol_ratio", "max",
             "symbols (Unicode S*: emoji, math, currency, box drawing; not ~ ～ ^) over non-space characters above this"),
        Rule("char_run", "max_char_run", "stat.max_char_run", "max",
             "a run of one repeated letter or digit longer than this (哈哈哈…, aaaa…)"),
        Rule("too_many_urls", "max_url_char_ratio", "stat.url_char_ratio", "max",
             "characters inside URLs over all characters above this"),
        Rule("lorem_ipsum", "lorem_ipsum", "stat.lorem_ipsum", "flag", "contains \"lorem ipsum\" (C4)"),
        Rule("curly_braces", "max_curly_braces", "stat.curly_braces", "max",
             "more `{` or `}` than this (C4 rejects any: code, templates)"),
        Rule("javascript", "max_javascript_line_ratio", "stat.javascript_line_ratio", "max",
             "share of lines mentioning javascript or looking like script code above this"),
        Rule("broken_encoding", "max_replacement_char_ratio", "stat.replacement_char_ratio", "max",
             "U+FFFD replacement characters over characters above this"),
        Rule("char_repetition", "max_char_repetition_ratio", "stat.char_repetition_ratio", "max",
             "share of character n-grams taken by the most frequent ones (the top sqrt(#distinct) "
             "repeated n-grams; Data-Juicer's character_repetition) above this"),
        Rule("low_alnum_ratio", "min_alnum_ratio", "stat.alnum_ratio", "min",
             "letters and digits (any script) over all characters below this"),
        Rule("line_too_long", "max_line_length", "stat.max_line_length", "max",
             "characters in the longest line above this (minified code, unbroken dumps)"),
    )
    int_stats = frozenset({"stat.max_char_run", "stat.lorem_ipsum", "stat.curly_braces", "stat.max_line_length"})

    def measure(self, batch, langs, rows, wanted):
        column = batch.column("text")
        texts = column if len(rows) == batch.num_rows else column.take(pa.array(rows))
        chars = char_lengths(texts)
        nonspace = chars - count_regex(texts, SPACE_RE2)
        out: dict[str, np.ndarray] = {}
        if "stat.digit_ratio" in wanted:
            out["stat.digit_ratio"] = ratio(count_regex(texts, DIGIT_RE2), nonspace)
        if "stat.symbol_ratio" in wanted:
            out["stat.symbol_ratio"] = ratio(count_regex(texts, SYMBOL_RE2), nonspace)
        if "stat.lorem_ipsum" in wanted:
            out["stat.lorem_ipsum"] = _count(texts, "lorem ipsum")
        if "stat.curly_braces" in wanted:
            out["stat.curly_braces"] = count_regex(texts, r"[{}]")
        if "stat.javascript_line_ratio" in wanted:
            lines = _count(texts, "\n") + (chars > 0)
            out["stat.javascript_line_ratio"] = ratio(count_regex(texts, JAVASCRIPT_LINE_RE2), lines)
        if "stat.replacement_char_ratio" in wanted:
            out["stat.replacement_char_ratio"] = ratio(_count(texts, "\ufffd"), chars)
        if "stat.alnum_ratio" in wanted:
            out["stat.alnum_ratio"] = ratio(count_regex(texts, r"[\p{L}\p{N}]"), chars)
        if wanted & {"stat.char_repetition_ratio", "stat.max_line_length"}:
            pylist = texts.to_pylist()
            if "stat.char_repetition_ratio" in wanted:
                n = self.params.char_repetition_n
                out["stat.char_repetition_ratio"] = np.fromiter(
                    (char_repetition_ratio(t, n) for t in pylist), np.float64, len(pylist))
            if "stat.max_line_length" in wanted:
                out["stat.max_line_length"] = np.fromiter(
                    (max(map(len, t.split("\n"))) if t else 0 for t in pylist), np.int64, len(pylist))
        if "stat.max_char_run" in wanted or "stat.url_char_ratio" in wanted:
            pylist = texts.to_pylist()
            if "stat.max_char_run" in wanted:
                out["stat.max_char_run"] = longest_alnum_runs(CodePoints(pylist))
            if "stat.url_char_ratio" in wanted:
                hinted = pc.match_substring_regex(texts, URL_HINT_RE2).to_numpy(zero_copy_only=False)
                url_chars = np.zeros(len(pylist), np.int64)
                for i in np.flatnonzero(hinted):
                    url_chars[i] = sum(len(u) for u in URL.findall(pylist[i]))
                out["stat.url_char_ratio"] = ratio(url_chars, chars)
        return out


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Data-Juicer's character repetition: of the text's character n-grams, the share covered
    by the most frequent sqrt(#distinct) n-grams among those seen more than once; NaN when
    the text has no n-gram."""
    total = len(text) - n + 1
    if total <= 0:
        return float("nan")
    counts = Counter(text[i:i + n] for i in range(total))
    repeated = sorted((c for c in counts.values() if c > 1), reverse=True)
    top = int(len(counts) ** 0.5)
    return sum(repeated[:top]) / total


def _count(texts, pattern: str) -> np.ndarray:
    counts = pc.fill_null(pc.count_substring(texts, pattern, ignore_case=True), 0)
    return counts.to_numpy(zero_copy_only=False).astype(np.int64)


# --------------------------------------------------------------------------- line_filter

# Phrase lists written for kiln (English and Chinese web boilerplate), matched
# case-insensitively anywhere in a line or sentence of at most `phrase_max_chars`.
POLICY_PHRASES = (
    r"\bcookies?\b[^\n]{0,80}\b(?:use|uses|using|accept|policy|settings|consent|enable)\b",
    r"\b(?:use|uses|using|accept|enable)\b[^\n]{0,40}\bcookies?\b",
    r"privacy (?:policy|notice|statement)",
    r"(?:^|\b(?:our|the|these|site|website)\s)terms (?:of|and) (?:use|service|conditions)\b",
    r"隐私政策", r"隐私条款", r"使用条款", r"服务条款", r"用户协议", r"免责声明",
    r"本文来源于网络", r"如有侵权", r"侵权请联系", r"版权归原作者",
)
NAVIGATION_PHRASES = (
    r"skip to (?:main )?content", r"back to top", r"jump to navigation", r"main menu",
    r"(?:previous|next) (?:post|article|page|story)", r"^home\s*[>»/|]",
    r"^(?:menu|search|sign in|log in|sign up|subscribe|register|home)"
    r"(?:\s*[|/·]?\s*(?:menu|search|sign in|log in|sign up|subscribe|register|home))+$",
    r"^related (?:articles|posts|stories|links)\b", r"^posted in\b", r"\bleave a (?:comment|reply)\b",
    r"^you are here\b",
    r"^(?:上一篇|下一篇|上一页|下一页)", r"返回首页", r"返回顶部", r"当前位置", r"网站导航",
    r"设为首页", r"加入收藏", r"^【?相关(?:阅读|文章|新闻)】?", r"^责任编辑[:：]", r"^首页\s*[>»/|]",
    # a menu: three or more short items separated by | • · » > ›
    r"^(?:[^|•·»>›\n]{1,24}\s[|•·»>›]\s){2,}[^|•·»>›\n]{1,24}$",
)
CLICK_HERE_PHRASES = (
    r"\bclick here\b", r"\bclick to (?:read|view|see|download|subscribe)",
    r"\b(?:read|learn) more\W*$", r"\bcontinue reading\W*$", r"\b(?:sign up|subscribe) (?:for|to) (?:our|the) newsletter\b",
    r"点击这里", r"点击此处", r"点此", r"点击查看", r"阅读全文", r"查看全文", r"查看更多", r"展开全文",
)
SHARE_PHRASES = (
    r"^share (?:this|on|via|to)\b", r"\bshare (?:on|via) (?:facebook|twitter|weibo|whatsapp|linkedin|email)\b",
    r"\btweet this\b", r"\bfollow us on\b", r"\bpin it\b",
    r"\bemail this\b", r"^share\W*$",
    r"分享到", r"分享至", r"一键分享", r"转发到", r"扫一扫", r"关注我们的微信",
)
COPYRIGHT_PHRASES = (
    r"©", r"\(c\)\s*\d{4}", r"\bcopyright\s*(?:©|\(c\)|\d{4})", r"^copyright\b", r"all rights reserved",
    r"版权所有", r"版权归", r"未经(?:许可|授权|允许)[^\n]{0,12}(?:转载|复制|使用)", r"转载请注明", r"ICP备",
)
ZH_AD_PHRASES = (
    r"加微信", r"加[Vv]信", r"加[Vv][Xx]?[:：\s]", r"微信号", r"[Vv][Xx][:：]", r"QQ群[:：]?\s*\d{5,}",
    r"加入QQ群", r"QQ号[:：]?\s*\d{5,}",
    r"[Qq]{2}\s*[:：]?\s*\d{5,}", r"扫码", r"扫描二维码", r"长按识别", r"关注公众号", r"关注微信公众",
    r"点击下载", r"免费下载", r"立即下载", r"下载APP", r"领取优惠券", r"代开发票", r"咨询热线",
    r"客服热线", r"招代理", r"诚招加盟", r"添加好友", r"微信[:：]?\s*[A-Za-z][A-Za-z0-9_-]{4,}", r"日结\d+",
    r"招聘兼职", r"注册即送", r"免费领取", r"名额有限", r"先到先得", r"全网最低价", r"立即抢购", r"正品保证",
    r"免费在线观看",
)
EN_SPAM_PHRASES = (
    r"\bwork from home\b", r"\bearn \$\d+ (?:a|per) (?:day|hour|week)\b", r"\bbuy now\b",
    r"\blimited time offer\b",
    r"\bclaim your (?:prize|reward|gift)\b", r"\byou have been selected\b", r"\bno credit check\b",
    r"\bloan approved\b", r"\bhot singles\b", r"\bonline casino\b", r"\blose \d+ (?:pounds|lbs|kg)\b",
    r"\bcheap (?:watches|pills|viagra|replica)", r"\bunbeatable prices?\b", r"\b100% free\b",
)
JAVASCRIPT_PHRASES = (r"javascript",)

TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "”", "’", "」", "』", "…", ")", "）", ":", "：")
# Sentence ends: Chinese and ASCII terminal punctuation (with closing quotes), an ASCII period
# before whitespace, or a newline; trailing spaces and one newline stay with the sentence.
SENTENCE_END = re.compile(r"(?:(?:[。！？!?；;]+[”’」』\"')）]*|…+[”’」』\"')）]*|\.(?=\s))[ \t]*\n?|\n)")
BLANK_RUNS = re.compile(r"\n{3,}")
HAN_ANY = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
LATIN_WORD = re.compile(r"[A-Za-z0-9]+")


def _any_of(phrases: Sequence[str]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in phrases), re.IGNORECASE | re.MULTILINE)


_UNIT_STAT = "stat.<unit>_removed_"
LINE_RULES = (
    Rule("repeated", "repeated", _UNIT_STAT + "repeated", "remove",
         "repeats an earlier line or sentence of the document (menus, widgets), so that repetition rules "
         "after it judge the rest of the page", "sentence"),
    Rule("javascript", "javascript", _UNIT_STAT + "javascript", "remove", "mentions javascript (C4)", "sentence"),
    Rule("long_word", "max_word_chars", _UNIT_STAT + "long_word", "remove",
         "holds a run of more than this many characters without space or Han (C4: 1000)", "sentence"),
    Rule("policy", "policy", _UNIT_STAT + "policy", "remove",
         "cookie, privacy-policy, terms-of-use and reposting notices (如有侵权请联系删除)", "sentence"),
    Rule("copyright", "copyright", _UNIT_STAT + "copyright", "remove",
         "copyright footers (©, Copyright, 版权所有, 转载请注明, ICP备)", "sentence"),
    Rule("share", "share_buttons", _UNIT_STAT + "share", "remove",
         "share buttons (Share on, Tweet this, 分享到, 扫一扫)", "sentence"),
    Rule("click_here", "click_here", _UNIT_STAT + "click_here", "remove",
         "click here, read more, sign up for our newsletter, 点击这里, 阅读全文", "sentence"),
    Rule("navigation", "navigation", _UNIT_STAT + "navigation", "remove",
         "menus and navigation (Home | News | …, Posted in, Related articles, 上一篇, 设为首页, 责任编辑)", "sentence"),
    Rule("zh_ads", "zh_ads", _UNIT_STAT + "zh_ads", "remove",
         "Chinese ads and spam (加微信, QQ群, 扫码, 点击下载, 代开发票)", "sentence"),
    Rule("en_spam", "en_spam", _UNIT_STAT + "en_spam", "remove",
         "English spam (work from home, earn $, buy now, claim your prize, online casino)", "sentence"),
    Rule("no_terminal_punct", "terminal_punct", _UNIT_STAT + "no_terminal_punct", "remove",
         "does not end in terminal punctuation (C4)", "sentence"),
    Rule("few_words", "min_words", _UNIT_STAT + "few_words", "remove",
         "fewer words than this (Han characters count one each; C4: 3)", "sentence"),
    Rule("all_<unit>_removed", None, "stat.<unit>_removed", "edit",
         "every line or sentence was removed: the document is rejected (detail: counts per rule)"),
)
_PHRASES = {
    "javascript": JAVASCRIPT_PHRASES, "policy": POLICY_PHRASES, "copyright": COPYRIGHT_PHRASES,
    "share": SHARE_PHRASES, "click_here": CLICK_HERE_PHRASES, "navigation": NAVIGATION_PHRASES,
    "zh_ads": ZH_AD_PHRASES, "en_spam": EN_SPAM_PHRASES,
}
_PHRASE_RES = {name: _any_of(phrases) for name, phrases in _PHRASES.items()}
# Rules limited to short units (a long paragraph that mentions a privacy policy is content).
_SHORT_UNIT_RULES = frozenset({"policy", "copyright", "share", "click_here", "navigation", "zh_ads", "en_spam"})


class LineFilterParams(Params):
    split: Literal["lines", "sentences"] = Field(
        "sentences", description="unit removed: sentences (split at 。！？!?; and '. ', and at line ends) or whole lines")
    repeated: bool = False
    javascript: bool = True
    max_word_chars: int | None = Field(1000, ge=1)
    policy: bool = True
    copyright: bool = True
    share_buttons: bool = True
    click_here: bool = True
    navigation: bool = True
    zh_ads: bool = True
    en_spam: bool = True
    terminal_punct: bool = False
    min_words: int | None = Field(None, ge=1)
    phrase_max_chars: int = Field(
        200, ge=1, description="phrase rules (policy ... zh_ads) only remove units up to this many characters")


@register
class LineFilter(Mapper):
    """Removes boilerplate lines (or sentences) and keeps the rest of the document. Records
    how many units each rule removed (`stat.<unit>_removed_<rule>`), the total
    (`stat.<unit>_removed`) and the characters removed (`stat.<unit>_chars_removed`);
    rejects a document it emptied (`all_lines_removed` / `all_sentences_removed`) with the
    counts as detail. In analyze mode it only counts."""

    name = "line_filter"
    Params = LineFilterParams
    rules = LINE_RULES

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.enabled = [r for r in LINE_RULES if r.param is not None and getattr(p, r.param) not in (None, False)]
        self.long_word = None
        if p.max_word_chars is not None:
            self.long_word = re.compile(f"[^\\s\u3400-\u4dbf\u4e00-\u9fff]{{{p.max_word_chars + 1},}}")
        # RE2 passes over the batch find the documents that may hold a phrase; only those are
        # split. Anchors are dropped so the passes also find matches at sentence starts. One
        # pattern per rule: all the phrases in one alternation outgrow RE2's DFA memory and
        # run ten times slower than the eight passes together.
        self.phrase_hints = ["(?im)" + "|".join(f"(?:{ph.removeprefix('^').removesuffix('$')})" for ph in _PHRASES[r.reason])
                             for r in self.enabled if r.reason in _PHRASES]
        self.per_unit_only = p.terminal_punct or p.min_words is not None or p.repeated
        self.unit = p.split
        # Each phrase rule as one RE2 pattern (what _PHRASE_RES holds, for Python's re), run
        # over all units of a batch's candidate documents at once instead of unit by unit.
        self.phrase_rules = [r.reason for r in self.enabled if r.reason in _PHRASE_RES]
        self.phrase_re2 = {name: "(?im)" + _PHRASE_RES[name].pattern for name in self.phrase_rules}

    def unit_reason(self, unit: str, phrases: frozenset[str] | None = None) -> str | None:
        """The rule that removes `unit`, if any. `phrases`: the phrase rules known to match
        the stripped unit (found for a whole batch by `phrase_matches`); None to search here."""
        p = self.params
        stripped = unit.strip()
        if not stripped:
            return None
        short = len(stripped) <= p.phrase_max_chars
        for rule in self.enabled:
            name = rule.reason
            if name == "long_word":
                if len(stripped) > p.max_word_chars and self.long_word.search(stripped):
                    return name
            elif name in _PHRASE_RES:
                if (short or name not in _SHORT_UNIT_RULES) and (
                        name in phrases if phrases is not None else _PHRASE_RES[name].search(stripped)):
                    return name
            elif name == "no_terminal_punct":
                if not stripped.endswith(TERMINAL) or stripped.endswith("..."):
                    return name
            elif name == "few_words":
                han = len(HAN_ANY.findall(stripped))
                words = han + len(LATIN_WORD.findall(stripped)) if han else len(stripped.split())
                if words < p.min_words:
                    return name
        return None

    def split_units(self, text: str) -> list[str]:
        """Units that concatenate back to `text` exactly."""
        if self.unit == "lines":
            return text.splitlines(keepends=True)
        units, start = [], 0
        for match in SENTENCE_END.finditer(text):
            units.append(text[start:match.end()])
            start = match.end()
        if start < len(text):
            units.append(text[start:])
        return units

    def candidates(self, batch: pa.Table, texts: list[str]) -> np.ndarray:
        """Documents that may lose a unit: the rest are left alone without splitting."""
        n = len(texts)
        if self.per_unit_only:
            return np.ones(n, dtype=bool)
        hinted = np.zeros(n, dtype=bool)
        for hint in self.phrase_hints:
            found = pc.match_substring_regex(batch.column("text"), hint)
            hinted |= pc.fill_null(found, False).to_numpy(zero_copy_only=False)
        if self.long_word is not None:
            limit = self.params.max_word_chars
            for i, text in enumerate(texts):
                if not hinted[i] and len(text) > limit and self.long_word.search(text):
                    hinted[i] = True
        return hinted

    def phrase_matches(self, units: list[str]) -> list[frozenset[str]]:
        """For each unit, the phrase rules whose pattern its stripped text matches: one RE2
        pass per rule over all the units (pyarrow), not one Python regex search per unit and
        rule, which was half of the filter stage's time at 100 MB."""
        if not units:
            return []
        if not self.phrase_rules:
            return [frozenset()] * len(units)
        stripped = pc.utf8_trim_whitespace(pa.array(units, pa.string()))
        hits = [(name, pc.match_substring_regex(stripped, pattern).to_numpy(zero_copy_only=False))
                for name, pattern in self.phrase_re2.items()]
        none: frozenset[str] = frozenset()
        found = [none] * len(units)
        for index in np.flatnonzero(np.logical_or.reduce([h for _, h in hits])).tolist():
            found[index] = frozenset(name for name, h in hits if h[index])
        return found

    def clean(self, text: str, units: list[str] | None = None,
              phrases: list[frozenset[str]] | None = None) -> tuple[str, dict[str, int], int]:
        """(text without removed units, removals per rule, characters removed). `units` and
        `phrases`, when given, are the text's units and their `phrase_matches`."""
        counts: dict[str, int] = {}
        kept = []
        removed_chars = 0
        seen: set[str] = set()
        if units is None:
            units = self.split_units(text)
        for index, unit in enumerate(units):
            reason = None
            if self.params.repeated:
                key = unit.strip()
                if key and key in seen:
                    reason = "repeated"
                seen.add(key)
            reason = reason or self.unit_reason(unit, phrases[index] if phrases is not None else None)
            if reason is None:
                kept.append(unit)
            else:
                counts[reason] = counts.get(reason, 0) + 1
                removed_chars += len(unit.strip())
        if not counts:
            return text, counts, 0
        cleaned = "".join(kept)
        cleaned = BLANK_RUNS.sub("\n\n", cleaned).strip()
        return cleaned, counts, removed_chars

    def map(self, batch: pa.Table) -> Outcome:
        texts = text_column(batch)
        n = len(texts)
        per_rule = {r.reason: np.zeros(n, np.int64) for r in self.enabled}
        removed_chars = np.zeros(n, np.int64)
        new_texts = list(texts)
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        candidates = np.flatnonzero(self.candidates(batch, texts)).tolist()
        units = [self.split_units(texts[i]) for i in candidates]
        matches = self.phrase_matches([u for doc in units for u in doc])
        offsets = list(itertools.accumulate((len(doc) for doc in units), initial=0))
        for k, i in enumerate(candidates):
            cleaned, counts, chars = self.clean(texts[i], units[k], matches[offsets[k]:offsets[k + 1]])
            if not counts:
                continue
            for name, count in counts.items():
                per_rule[name][i] = count
            removed_chars[i] = chars
            if not cleaned:
                # Rejected: the original text goes to rejected/, where it can be inspected.
                reasons[i] = f"all_{self.unit}_removed"
                details[i] = " ".join(f"{k}={v}" for k, v in counts.items())
            elif not self.analyze:
                new_texts[i] = cleaned
        table = batch
        if not self.analyze:
            table = set_column(table, "text", pa.array(new_texts, type=batch.schema.field("text").type))
        total = np.zeros(n, np.int64)
        for name, values in per_rule.items():
            total += values
            table = set_column(table, f"{STAT_PREFIX}{self.unit}_removed_{name}", pa.array(values, pa.int64()))
        table = set_column(table, f"{STAT_PREFIX}{self.unit}_removed", pa.array(total, pa.int64()))
        table = set_column(table, f"{STAT_PREFIX}{self.unit}_chars_removed", pa.array(removed_chars, pa.int64()))
        return Outcome(table, reasons, details)
