"""Text normalization mappers: encodings, markup, Unicode forms, invisible characters,
whitespace, and traditional to simplified Chinese.

Normalization runs first so every later rule, hash and model sees one spelling of the same
text. NFKC folds full-width Latin letters and digits, ligatures and compatibility forms; by
default it leaves Chinese full-width punctuation (，！？：；（）) alone, because NFKC would turn
it into ASCII and Chinese punctuation rules and readers both want it kept.

Order in a stage: `fix_encoding` (mojibake must be repaired before anything reads the
characters), `strip_markup` (tags and entities), `normalize`, then
`traditional_to_simplified` once the language is known.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from pydantic import Field

from operators._text import HAN_RE2, count_regex, document_langs, lang_mask
from operators.base import Mapper, Outcome, Params, set_column, text_column
from operators.registry import register
from operators.rules import Rule

# Full-width punctuation that NFKC would turn into ASCII, kept as is in Chinese text.
CJK_PUNCTUATION = "，！？：；（）～"
# Characters of the supplementary private use area stand in for protected punctuation while
# NFKC runs; input holding them takes the slower piecewise path.
_PLACEHOLDER_BASE = 0xF0000
_PROTECT = {ord(c): _PLACEHOLDER_BASE + i for i, c in enumerate(CJK_PUNCTUATION)}
_RESTORE = {v: k for k, v in _PROTECT.items()}
_PLACEHOLDER_RANGE = re.compile(f"[{chr(_PLACEHOLDER_BASE)}-{chr(_PLACEHOLDER_BASE + len(CJK_PUNCTUATION))}]")
_PROTECTED_SPLIT = re.compile(f"([{re.escape(CJK_PUNCTUATION)}])")

# C0 and C1 controls except tab and newline (carriage returns become newlines first).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Zero-width and format characters that carry no text: zero-width space/joiners, word
# joiner, BOM, soft hyphen, Mongolian vowel separator, bidi marks and embeddings.
INVISIBLE = re.compile(r"[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]")
# Every horizontal space character, including no-break and ideographic spaces.
# Runs of two or more, or one that is not a plain space: a lone ' ' (most matches of a plain
# `[...]+`) is left where it is instead of being replaced by itself.
SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
BLANK_LINES = re.compile(r"\n{3,}")
# Private use areas: code points with no agreed meaning (icon fonts, broken converters).
PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
# Emoji: pictographs with their modifiers, joiners, variation selectors and flag letters.
EMOJI = regex.compile(r"[\p{Extended_Pictographic}\U0001F1E6-\U0001F1FF\U0001F3FB-\U0001F3FF\uFE0F\u200D\u20E3]+")
# Other symbols (box drawing, dingbats, stars), arrows and modifier symbols, keeping the
# degree signs that measurements need; math and currency symbols stay.
SYMBOLS = regex.compile(r"[[\p{So}\p{Sk}\u2190-\u21ff]--[°℃℉]]", flags=regex.V1)
# Full-width ASCII letters and digits, and the ideographic space: safe to fold to ASCII (NFKC
# does this too; this table does it when `form` is NFC or none).
FULLWIDTH_ALNUM = {**{c: c - 0xFEE0 for c in range(0xFF10, 0xFF1A)},
                   **{c: c - 0xFEE0 for c in range(0xFF21, 0xFF3B)},
                   **{c: c - 0xFEE0 for c in range(0xFF41, 0xFF5B)}, 0x3000: 0x20}
FULLWIDTH_ALNUM_RE = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\u3000]")


def nfkc_keep_cjk_punctuation(text: str, form: str = "NFKC") -> str:
    """Unicode normal form `form`, leaving Chinese full-width punctuation untouched."""
    if text.isascii() or unicodedata.is_normalized(form, text):
        return text
    if _PLACEHOLDER_RANGE.search(text):
        parts = _PROTECTED_SPLIT.split(text)
        return "".join(p if p and p in CJK_PUNCTUATION else unicodedata.normalize(form, p) for p in parts)
    return unicodedata.normalize(form, text.translate(_PROTECT)).translate(_RESTORE)


class NormalizeParams(Params):
    form: Literal["NFKC", "NFC", "none"] = Field("NFKC", description="Unicode normal form")
    keep_cjk_punctuation: bool = Field(True, description="keep ，！？：；（）～ full width under NFKC")
    fullwidth_alnum: bool = Field(True, description="full-width letters, digits and space to ASCII (NFKC does it already)")
    remove_control: bool = Field(True, description="remove C0/C1 control characters except tab and newline")
    remove_invisible: bool = Field(True, description="remove zero-width, bidi and format characters, BOM, soft hyphen")
    remove_private_use: bool = Field(True, description="remove private-use code points")
    remove_emoji: bool = Field(False, description="remove emoji with their modifiers and joiners")
    remove_symbols: bool = Field(False, description="remove other and modifier symbols and arrows (keeps °, math, currency)")
    collapse_whitespace: bool = Field(True, description="one space for runs of spaces; trim lines and the text")
    max_blank_lines: int = Field(1, description="blank lines kept between paragraphs (-1: any)")


@register
class Normalize(Mapper):
    """Unicode normal form, full-width letters and digits, control, invisible and private-use
    characters, optionally emoji and symbols, whitespace. Rejects documents that end up
    empty (reason `empty`) and records `stat.chars_removed`."""

    name = "normalize"
    Params = NormalizeParams
    rules = (Rule("empty", None, "stat.chars_removed", "edit", "nothing left after normalization"),)

    def normalize(self, text: str) -> str:
        p = self.params
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if p.form != "none":
            if p.keep_cjk_punctuation:
                text = nfkc_keep_cjk_punctuation(text, p.form)
            elif not text.isascii():
                text = unicodedata.normalize(p.form, text)
        if p.fullwidth_alnum and p.form != "NFKC" and FULLWIDTH_ALNUM_RE.search(text):
            text = text.translate(FULLWIDTH_ALNUM)
        if p.remove_control:
            text = CONTROL.sub("", text)
        if not text.isascii():
            if p.remove_invisible:
                text = INVISIBLE.sub("", text)
            if p.remove_private_use:
                text = PRIVATE_USE.sub("", text)
            if p.remove_emoji:
                text = EMOJI.sub("", text)
            if p.remove_symbols:
                text = SYMBOLS.sub("", text)
        if p.collapse_whitespace:
            text = SPACES.sub(" ", text)
            # Every run of spaces is now one ' ', so trimming lines is two plain replaces.
            text = text.replace(" \n", "\n").replace("\n ", "\n")
            if p.max_blank_lines >= 0 and "\n\n\n" in text:
                text = BLANK_LINES.sub("\n" * (p.max_blank_lines + 1), text)
            text = text.strip()
        return text

    def map(self, batch: pa.Table) -> Outcome:
        texts = text_column(batch)
        normalized = [self.normalize(t) for t in texts]
        removed = [len(a) - len(b) for a, b in zip(texts, normalized)]
        table = set_column(batch, "text", pa.array(normalized, type=batch.schema.field("text").type))
        table = set_column(table, "stat.chars_removed", pa.array(removed, type=pa.int64()))
        reasons = [None if t else "empty" for t in normalized]
        return Outcome(table, reasons)


@register
class Identity(Mapper):
    """Passes batches through unchanged: measures the runner's own overhead in benchmarks."""

    name = "identity"

    def map(self, batch: pa.Table) -> pa.Table:
        return batch


# --------------------------------------------------------------------------- fix_encoding

# A Latin-1 character that starts a UTF-8 sequence followed by one that continues it, as
# cp1252 or Latin-1 shows them: the signature of UTF-8 decoded with the wrong codec
# ("ä¸­æ–‡" for 中文, "cafÃ©"). One RE2 pass over the batch finds the candidates; ftfy, which
# is slow (milliseconds for a page of Chinese), only sees those.
MOJIBAKE_HINT_RE2 = (r"[\x{c2}-\x{f4}][\x{80}-\x{bf}\x{152}\x{153}\x{160}\x{161}\x{178}\x{17d}\x{17e}"
                     r"\x{192}\x{2c6}\x{2dc}\x{2013}\x{2014}\x{2018}-\x{201e}\x{2020}-\x{2022}\x{2026}"
                     r"\x{2030}\x{2039}\x{203a}\x{20ac}\x{2122}]")


class FixEncodingParams(Params):
    only_suspicious: bool = Field(True, description="run ftfy only where the mojibake signature appears")


@register
class FixEncoding(Mapper):
    """Repairs mojibake (UTF-8 text decoded as Latin-1, cp1252, MacRoman...) with ftfy's
    `fix_encoding`. Records `stat.encoding_fixed` (1 where the text changed)."""

    name = "fix_encoding"
    Params = FixEncodingParams
    rules = (Rule("", None, "stat.encoding_fixed", "edit", "repairs mojibake with ftfy.fix_encoding"),)

    def map(self, batch: pa.Table) -> pa.Table:
        import ftfy

        texts = text_column(batch)
        if self.params.only_suspicious:
            hinted = pc.fill_null(pc.match_substring_regex(batch.column("text"), MOJIBAKE_HINT_RE2), False)
            rows = np.flatnonzero(hinted.to_numpy(zero_copy_only=False))
        else:
            rows = np.arange(len(texts))
        fixed = np.zeros(len(texts), np.int64)
        for i in rows:
            repaired = ftfy.fix_encoding(texts[i])
            if repaired != texts[i]:
                texts[i] = repaired
                fixed[i] = 1
        table = set_column(batch, "text", pa.array(texts, type=batch.schema.field("text").type)) if fixed.any() else batch
        return set_column(table, "stat.encoding_fixed", pa.array(fixed, pa.int64()))


# --------------------------------------------------------------------------- strip_markup

MARKUP_HINT_RE2 = r"<[A-Za-z!/?]|&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]{1,31});"
COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)
DECLARATION = re.compile(r"<[!?][^<>]*>")
TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9:_-]*)(?:\s[^<>]*)?/?>")
CLOSING_TAG = re.compile(r"</[A-Za-z][A-Za-z0-9:_-]*\s*>")
# Tags recognised as markup even in a document without closing tags.
HTML_TAGS = frozenset(re.findall(r"\S+", """a abbr address area article aside audio b base bdi bdo blockquote body br button
canvas caption cite code col colgroup data dd del details dfn dialog div dl dt em embed fieldset
figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd
label legend li link main map mark meta meter nav noscript object ol optgroup option output p param
picture pre q s samp script section select small source span strong style sub summary sup table
tbody td template textarea tfoot th thead time title tr track u ul var video wbr center"""))
BLOCK_TAGS = frozenset(re.findall(r"\S+", """address article aside blockquote br dd div dl dt fieldset figcaption figure
footer form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre section table tbody td tfoot th
thead title tr ul text"""))


class StripMarkupParams(Params):
    drop_elements: list[str] = Field(
        default=["script", "style", "noscript", "head", "template", "svg", "iframe"],
        description="elements removed with their content")
    unescape_entities: bool = Field(True, description="decode entities (`&amp;`, `&#3;`, `&nbsp;`) once tags are gone")


@register
class StripMarkup(Mapper):
    """Removes HTML, XML and SGML residue: comments, declarations, the elements named in
    `drop_elements` with their content, tags (block tags become line breaks), entities
    (`&amp;`, `&#3;`) and the control characters they decode to. A tag is only taken for
    markup where the document holds a closing tag or the tag is an HTML tag name, so
    `a <b> c` in prose survives where no markup is around. Records
    `stat.markup_chars_removed`; rejects documents that were only markup
    (`markup_only`)."""

    name = "strip_markup"
    Params = StripMarkupParams
    rules = (Rule("markup_only", None, "stat.markup_chars_removed", "edit",
                  "removes tags, comments, entities; rejects a document that was only markup"),)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        names = "|".join(re.escape(n) for n in self.params.drop_elements)
        self.dropped = (re.compile(rf"<({names})\b[^>]*>.*?</\1\s*>", re.S | re.I) if names else None)

    def strip(self, text: str) -> str:
        text = COMMENT.sub("", text)
        text = CDATA.sub(r"\1", text)
        text = DECLARATION.sub("", text)
        if self.dropped is not None:
            text = self.dropped.sub("", text)
        markup_doc = CLOSING_TAG.search(text) is not None

        def replace(match: re.Match) -> str:
            name = match.group(1).lower()
            if not markup_doc and name not in HTML_TAGS:
                return match.group(0)
            return "\n" if name in BLOCK_TAGS else ""

        text = TAG.sub(replace, text)
        if self.params.unescape_entities and "&" in text:
            text = html.unescape(text)
        text = CONTROL.sub("", text)
        text = TRAILING_SPACE.sub("\n", text)
        return BLANK_LINES.sub("\n\n", text).strip()

    def map(self, batch: pa.Table) -> Outcome:
        texts = text_column(batch)
        hinted = pc.fill_null(pc.match_substring_regex(batch.column("text"), MARKUP_HINT_RE2), False)
        removed = np.zeros(len(texts), np.int64)
        reasons: list[str | None] = [None] * len(texts)
        changed = False
        for i in np.flatnonzero(hinted.to_numpy(zero_copy_only=False)):
            stripped = self.strip(texts[i])
            removed[i] = len(texts[i]) - len(stripped)
            if not stripped:
                reasons[i] = "markup_only"
            elif stripped != texts[i] and not self.analyze:
                texts[i] = stripped
                changed = True
        table = set_column(batch, "text", pa.array(texts, type=batch.schema.field("text").type)) if changed else batch
        table = set_column(table, "stat.markup_chars_removed", pa.array(removed, pa.int64()))
        return Outcome(table, reasons)


# --------------------------------------------------------------------------- traditional_to_simplified


@lru_cache(maxsize=8)
def opencc_converter(config: str):
    import opencc

    return opencc.OpenCC(config)


class TraditionalToSimplifiedParams(Params):
    config: Literal["t2s", "tw2s", "tw2sp", "hk2s"] = Field(
        "t2s", description="OpenCC conversion: t2s characters; tw2s/hk2s regional; tw2sp with Taiwan phrases")
    langs: list[str] | None = Field(default=["zh"], description="languages converted; None: all")


@register
class TraditionalToSimplified(Mapper):
    """Converts traditional Chinese to simplified with OpenCC (the data ships in the `opencc`
    wheel). Only documents that hold Han characters and whose language is in `langs` (or
    unknown) are converted, so Japanese kanji are left alone once language ID has run.
    Records `stat.t2s_chars_changed`."""

    name = "traditional_to_simplified"
    Params = TraditionalToSimplifiedParams
    rules = (Rule("", None, "stat.t2s_chars_changed", "edit", "traditional to simplified Chinese with OpenCC"),)

    def map(self, batch: pa.Table) -> pa.Table:
        texts = text_column(batch)
        n = len(texts)
        candidates = count_regex(batch.column("text"), HAN_RE2) > 0
        if self.params.langs is not None and "lang" in batch.column_names:
            declared = batch.column("lang").to_pylist()
            langs = document_langs(batch)
            wanted = lang_mask(langs, self.params.langs)
            candidates &= np.array([d is None for d in declared]) | wanted
        converter = opencc_converter(self.params.config)
        changed = np.zeros(n, np.int64)
        for i in np.flatnonzero(candidates):
            converted = converter.convert(texts[i])
            if converted != texts[i]:
                changed[i] = _changed_chars(texts[i], converted)
                texts[i] = converted
        table = set_column(batch, "text", pa.array(texts, type=batch.schema.field("text").type)) if changed.any() else batch
        return set_column(table, "stat.t2s_chars_changed", pa.array(changed, pa.int64()))


def _changed_chars(before: str, after: str) -> int:
    """Characters that differ (position by position when the length is kept, as it is for
    character conversion; the length difference plus the shorter's differences otherwise)."""
    a = np.frombuffer(before.encode("utf-32-le"), dtype=np.uint32)
    b = np.frombuffer(after.encode("utf-32-le"), dtype=np.uint32)
    common = min(len(a), len(b))
    return int((a[:common] != b[:common]).sum()) + abs(len(a) - len(b))
