"""Text normalization mappers: Unicode normal form, control and invisible characters, whitespace.

Normalization runs first so every later rule, hash and model sees one spelling of the same
text. NFKC folds full-width Latin letters and digits, ligatures and compatibility forms; by
default it leaves Chinese full-width punctuation (，！？：；（）) alone, because NFKC would turn
it into ASCII and Chinese punctuation rules and readers both want it kept.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

import pyarrow as pa

from operators.base import Mapper, Outcome, Params, set_column, text_column
from operators.registry import register

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
SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
LEADING_SPACE = re.compile(r"\n[ \t]+")
BLANK_LINES = re.compile(r"\n{3,}")


def nfkc_keep_cjk_punctuation(text: str, form: str = "NFKC") -> str:
    """Unicode normal form `form`, leaving Chinese full-width punctuation untouched."""
    if text.isascii() or unicodedata.is_normalized(form, text):
        return text
    if _PLACEHOLDER_RANGE.search(text):
        parts = _PROTECTED_SPLIT.split(text)
        return "".join(p if p and p in CJK_PUNCTUATION else unicodedata.normalize(form, p) for p in parts)
    return unicodedata.normalize(form, text.translate(_PROTECT)).translate(_RESTORE)


class NormalizeParams(Params):
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    keep_cjk_punctuation: bool = True
    remove_control: bool = True
    remove_invisible: bool = True
    collapse_whitespace: bool = True
    max_blank_lines: int = 1


@register
class Normalize(Mapper):
    """Unicode normal form, control and invisible characters, whitespace. Rejects documents
    that end up empty (reason `empty`) and records `stat.chars_removed`."""

    name = "normalize"
    Params = NormalizeParams

    def normalize(self, text: str) -> str:
        p = self.params
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if p.form != "none":
            if p.keep_cjk_punctuation:
                text = nfkc_keep_cjk_punctuation(text, p.form)
            elif not text.isascii():
                text = unicodedata.normalize(p.form, text)
        if p.remove_control:
            text = CONTROL.sub("", text)
        if p.remove_invisible and not text.isascii():
            text = INVISIBLE.sub("", text)
        if p.collapse_whitespace:
            text = SPACES.sub(" ", text)
            text = TRAILING_SPACE.sub("\n", text)
            text = LEADING_SPACE.sub("\n", text)
            if p.max_blank_lines >= 0:
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
