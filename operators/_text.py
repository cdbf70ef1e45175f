"""Shared text analysis for the cleaning operators: scripts, language guess, words, lines.

Several rule operators in one stage look at the same document (words, lines, paragraphs,
n-grams). Splitting a Chinese document into words is the expensive part, so the analysis of
each document is computed lazily once and kept in a small process-wide cache keyed by the
text itself: the next operator in the same fused Ray task finds it there. The cache is
bounded by total characters and cleared when full; it never changes a result, only how often
the work is done.

Words are language-aware: Chinese text is segmented with jieba's dictionary and algorithm
(`rjieba`, the Rust port, about 20x faster than the pure-Python `jieba`; `jieba` itself can
be chosen), everything else splits on whitespace. Punctuation at the edges of a token is not
part of a word, and tokens made only of punctuation or symbols are not words.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from functools import cache, cached_property, lru_cache
from typing import Literal

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Segmenter = Literal["rjieba", "jieba"]

# RE2 (pyarrow.compute) character classes; each match is one character.
HAN_RE2 = r"\p{Han}"
LATIN_RE2 = r"\p{Latin}"
SPACE_RE2 = r"[\s\x{3000}\x{a0}]"
DIGIT_RE2 = r"\p{Nd}"
# Symbols: math, currency, modifier and other symbols (emoji, box drawing, dingbats), except
# the tildes and caret that informal Chinese writing uses as punctuation (好哒~, ^_^).
SYMBOL_RE2 = r"[^\P{S}~～^]"
# Chinese (full-width) punctuation, counted against Han characters.
ZH_PUNCT_RE2 = r"[，。！？；：、“”‘’（）《》〈〉【】『』「」…—～·﹏]"

# Python-side punctuation: ASCII, general punctuation, CJK and full-width forms.
PUNCTUATION = (
    string.punctuation
    + "，。！？；：、“”‘’（）《》〈〉【】『』「」〔〕…—～·﹏￥％＃＠＆＊＋－＝／＼｜＜＞［］｛｝＂＇"
    + "\u2010\u2011\u2012\u2013\u2014\u2015\u2016\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021"
    + "\u2022\u2026\u2030\u2032\u2033\u2039\u203a\u00ab\u00bb\u00a1\u00bf\u00b7\u00a7\u00b6"
)
ALPHA = re.compile(r"[^\W\d_]")
PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n\s*")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")

# A document without a `lang` value counts as Chinese when at least this share of its letters
# (Han plus Latin) are Han characters.
ZH_GUESS_HAN_SHARE = 0.3


# --------------------------------------------------------------------------- per batch, vectorized


def count_regex(texts: pa.Array | pa.ChunkedArray, pattern: str) -> np.ndarray:
    """Occurrences of an RE2 pattern in each text, as int64 (nulls count 0)."""
    counts = pc.fill_null(pc.count_substring_regex(texts, pattern), 0)
    return counts.to_numpy(zero_copy_only=False).astype(np.int64, copy=False) if len(counts) else np.zeros(0, np.int64)


def char_lengths(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    lengths = pc.fill_null(pc.utf8_length(texts), 0)
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64, copy=False) if len(lengths) else np.zeros(0, np.int64)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator = numerator.astype(np.float64)
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@cache
def _bmp_members(pattern: str) -> np.ndarray:
    """For every code point of the Basic Multilingual Plane, whether the single-character
    RE2 class `pattern` matches it (surrogates: no), decided by RE2 itself."""
    points = np.arange(0x10000)
    chars = pa.array([chr(c) if not 0xD800 <= c <= 0xDFFF else "a" for c in points.tolist()], pa.string())
    members = pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False).copy()
    members[0xD800:0xE000] = False
    return members


class CodePoints:
    """The code points of a batch of texts, decoded once, for counting characters of
    single-character RE2 classes per text. Equal to `count_regex` on such a class (RE2's own
    tables decide membership), but RE2 pays per match, which on Latin, letter or space
    classes is most of the characters: there, this is 5-30x faster."""

    def __init__(self, texts: list[str | None] | pa.Array | pa.ChunkedArray) -> None:
        strings = [t or "" for t in (texts if isinstance(texts, list) else texts.to_pylist())]
        self.lengths = np.fromiter(map(len, strings), np.int64, len(strings))
        self.points = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), np.uint32)
        self.ends = np.cumsum(self.lengths)
        self.starts = self.ends - self.lengths

    def count(self, pattern: str) -> np.ndarray:
        """Characters of each text that the single-character class `pattern` matches."""
        if len(self.starts) == 0:
            return np.zeros(0, dtype=np.int64)

        def astral_members(distinct: np.ndarray) -> np.ndarray:
            chars = pa.array([chr(c) for c in distinct.tolist()], pa.string())
            return pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False)

        # One spare element, so that a segment start equal to the end still indexes.
        hits = np.append(_members(self.points, _bmp_members(pattern), astral_members), False)
        # Per-text sums without a running total of every code point; reduceat gives an
        # empty text its start element, hence the mask.
        counts = np.add.reduceat(hits, self.starts, dtype=np.int64)
        counts[self.lengths == 0] = 0
        return counts


def _members(points: np.ndarray, bmp: np.ndarray, astral_members) -> np.ndarray:
    """Per code point, membership of a class: `bmp` looked up for the Basic Multilingual
    Plane, `astral_members(distinct code points)` asked once per distinct code point above it."""
    basic = points < 0x10000
    if basic.all():
        return bmp[points]
    hits = np.zeros(len(points), dtype=bool)
    hits[basic] = bmp[points[basic]]
    astral = points[~basic]
    distinct = np.unique(astral)
    hits[~basic] = astral_members(distinct)[np.searchsorted(distinct, astral)]
    return hits


@cache
def _bmp_alnum() -> np.ndarray:
    r"""For every code point of the Basic Multilingual Plane, `str.isalnum` (what Python's
    `[^\W_]` matches)."""
    return np.array([chr(c).isalnum() for c in range(0x10000)], dtype=bool)


def longest_alnum_runs(points: CodePoints) -> np.ndarray:
    """Per text, the length of its longest run of one repeated letter or digit (1 for text
    with letters or digits but no repeat, 0 for none). Runs of punctuation such as separator
    lines are not counted: they are decoration, not repeated content. One compiled pass over
    the code points of the whole batch."""
    n_texts = len(points.lengths)
    out = np.zeros(n_texts, dtype=np.int64)
    codes = points.points
    if len(codes) == 0:
        return out
    alnum = _members(codes, _bmp_alnum(),
                     lambda distinct: np.array([chr(c).isalnum() for c in distinct.tolist()], dtype=bool))
    _longest_runs(codes, alnum, points.starts, points.lengths, out)
    return out


@numba.njit(cache=True, nogil=True)
def _longest_runs(codes: np.ndarray, alnum: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover - compiled
    for text in range(starts.shape[0]):
        longest = 0
        run = 0
        previous = -1
        for i in range(starts[text], starts[text] + lengths[text]):
            code = np.int64(codes[i])
            run = run + 1 if code == previous else 1
            previous = code
            if alnum[i] and run > longest:
                longest = run
        out[text] = longest


def script_stats(texts: pa.Array | pa.ChunkedArray | CodePoints) -> dict[str, np.ndarray]:
    """Han, Latin and non-space character counts per text."""
    points = texts if isinstance(texts, CodePoints) else CodePoints(texts)
    chars = points.lengths
    nonspace = chars - points.count(SPACE_RE2)
    return {"chars": chars, "nonspace": nonspace, "han": points.count(HAN_RE2), "latin": points.count(LATIN_RE2)}


def document_langs(batch: pa.Table) -> list[str]:
    """Each document's language: the `lang` column where set, otherwise a guess: `zh` when
    Han characters make up at least ZH_GUESS_HAN_SHARE of its letters, else fastText lid.176's
    top label (so a German page is not judged by English-only rules because language_id did
    not run), or `en` where the model is not installed."""
    texts = batch.column("text")
    declared = batch.column("lang").to_pylist() if "lang" in batch.column_names else [None] * batch.num_rows
    if all(lang is not None for lang in declared):
        return declared
    han = count_regex(texts, HAN_RE2)
    latin = count_regex(texts, LATIN_RE2)
    guess = np.where(ratio(han, han + latin) >= ZH_GUESS_HAN_SHARE, "zh", "en").astype(object)
    # Texts with few Latin letters keep the `en` guess: lid.176 is unreliable on them.
    unknown = [i for i, lang in enumerate(declared) if lang is None and guess[i] != "zh" and latin[i] >= LID_MIN_LETTERS]
    model = _lid_model()
    if unknown and model is not None:
        # The first characters tell the language. Every rule operator of a stage asks again
        # for the same documents, so guesses are kept by those characters.
        heads = [(t or "")[:LID_CHARS] for t in texts.take(pa.array(unknown, pa.int64())).to_pylist()]
        new = [h for h in dict.fromkeys(heads) if h not in _LID_CACHE]
        if new:
            if len(_LID_CACHE) + len(new) > LID_CACHE_SIZE:
                _LID_CACHE.clear()
            labels, _ = model.predict([_LID_NEWLINES.sub(" ", h) for h in new], k=1)
            _LID_CACHE.update((h, label[0].removeprefix("__label__") if len(label) else "en")
                              for h, label in zip(new, labels))
        for i, head in zip(unknown, heads):
            guess[i] = _LID_CACHE.get(head, "en")
    return [lang if lang is not None else str(g) for lang, g in zip(declared, guess)]


LID_MIN_LETTERS = 20
LID_CHARS = 500
LID_CACHE_SIZE = 50_000
_LID_CACHE: dict[str, str] = {}
_LID_NEWLINES = re.compile(r"[\r\n\t\u2028\u2029]+")


@lru_cache(maxsize=1)
def _lid_model():
    """language_id's lid.176 model, for the guess; None when it is not installed."""
    from operators.language import ModelMissing, default_model_path, load_model

    try:
        return load_model(default_model_path())
    except ModelMissing:
        return None


def lang_mask(langs: list[str], wanted: list[str] | None) -> np.ndarray:
    """True where a document's language is in `wanted` (None: every document)."""
    if wanted is None:
        return np.ones(len(langs), dtype=bool)
    wanted_set = set(wanted)
    return np.fromiter((lang in wanted_set for lang in langs), dtype=bool, count=len(langs))


# --------------------------------------------------------------------------- word segmentation


@lru_cache(maxsize=2)
def segmenter(name: Segmenter):
    """A function text -> list of tokens for Chinese text."""
    if name == "rjieba":
        import rjieba

        return rjieba.cut
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.lcut


def is_chinese(lang: str) -> bool:
    return lang == "zh" or lang.startswith("zh-") or lang.startswith("zh_")


# --------------------------------------------------------------------------- per document


class DocAnalysis:
    """Lazily computed views of one document that several rules share."""

    def __init__(self, text: str, lang: str, segmenter_name: Segmenter) -> None:
        self.text = text
        self.lang = lang
        self.segmenter_name = segmenter_name

    @cached_property
    def lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        return [s for s in (line.strip() for line in self.text.splitlines()) if s]

    @cached_property
    def paragraphs(self) -> list[str]:
        """Non-blank paragraphs (separated by blank lines), stripped."""
        return [s for s in (p.strip() for p in PARAGRAPH_SPLIT.split(self.text)) if s]

    @cached_property
    def tokens(self) -> list[str]:
        """Raw tokens: jieba segments for Chinese, whitespace-separated tokens otherwise;
        punctuation-only tokens included (the symbol and alphabetic rules count them)."""
        if is_chinese(self.lang):
            cut = segmenter(self.segmenter_name)
            return [t for t in cut(self.text) if t.strip()]
        return self.text.split()

    @cached_property
    def words(self) -> list[str]:
        """Tokens without edge punctuation; tokens that are only punctuation dropped."""
        return [w for w in (t.strip(PUNCTUATION) for t in self.tokens) if w]

    @cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @cached_property
    def word_hashes(self) -> np.ndarray:
        """A 64-bit hash of each word (Python's string hash: stable within the process, which
        is all that comparing words inside one document needs)."""
        return np.fromiter(map(hash, self.words), dtype=np.int64, count=len(self.words)).view(np.uint64)

    def alpha_token_ratio(self) -> float:
        tokens = self.tokens
        if not tokens:
            return 0.0
        search = ALPHA.search
        return sum(1 for t in tokens if search(t)) / len(tokens)

    def stopword_count(self, stopwords: frozenset[str]) -> int:
        """Distinct stop words present (lowercased for Latin text)."""
        words = self.words if is_chinese(self.lang) else [w.lower() for w in self.words]
        return len(stopwords.intersection(words))


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    counts = Counter(items)
    if len(counts) == len(items):
        return 0.0, 0.0
    dup_items = 0
    dup_chars = 0
    total_chars = 0
    for item, n in counts.items():
        total_chars += len(item) * n
        if n > 1:
            dup_items += n - 1
            dup_chars += len(item) * (n - 1)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def ngram_char_fractions(analysis: DocAnalysis, top_ns: tuple[int, ...],
                         dup_ns: tuple[int, ...]) -> dict[str, float]:
    """Gopher repetition over words, vectorized with numpy.

    top_<n>: characters in all occurrences of the repeated n-gram that covers the most
    characters, over the characters in words (0 unless some n-gram occurs twice).
    dup_<n>: characters of words covered by any n-gram that occurs more than once, each
    word counted once, over the characters in words (Gopher's definition).
    """
    out = {f"top_{n}": 0.0 for n in top_ns} | {f"dup_{n}": 0.0 for n in dup_ns}
    lengths = analysis.word_lengths
    n_words = len(lengths)
    total = int(lengths.sum())
    wanted = set(top_ns) | set(dup_ns)
    if not wanted or total == 0 or n_words < 2:
        return out
    ids = analysis.word_hashes
    cumulative = None
    hashes = ids
    with np.errstate(over="ignore"):
        for n in range(2, max(wanted) + 1):
            # Rolling hash of the n-gram starting at each position.
            hashes = hashes[:-1] * _NGRAM_MULTIPLIER + ids[n - 1:]
            count = len(hashes)
            if count < 2:
                break
            order = np.argsort(hashes, kind="stable")
            ordered = hashes[order]
            same_as_next = ordered[1:] == ordered[:-1]
            if not same_as_next.any():
                break  # no n-gram repeats, so no longer one does either
            if n not in wanted:
                continue
            repeated_sorted = np.zeros(count, dtype=bool)
            repeated_sorted[1:] |= same_as_next
            repeated_sorted[:-1] |= same_as_next
            if n in top_ns:
                if cumulative is None:
                    cumulative = np.concatenate(([0], np.cumsum(lengths)))
                window_chars = (cumulative[n:n + count] - cumulative[:count])[order]
                group = np.concatenate(([0], np.cumsum(~same_as_next)))
                per_ngram = np.bincount(group[repeated_sorted], weights=window_chars[repeated_sorted])
                out[f"top_{n}"] = float(per_ngram.max()) / total
            if n in dup_ns:
                repeated = np.empty(count, dtype=bool)
                repeated[order] = repeated_sorted
                # A word is covered when an n-gram starting at one of the n positions
                # ending at it is repeated.
                covered = np.convolve(repeated.astype(np.int8), np.ones(n, dtype=np.int8))[:n_words] > 0
                out[f"dup_{n}"] = float(lengths[covered].sum()) / total
    return out


class AnalysisCache:
    """Per-process cache of DocAnalysis keyed by (language, segmenter, text)."""

    # Enough for the batches of a stage (a 1024-document batch of web text is a few million
    # characters); the word lists it holds take several times the text's memory.
    def __init__(self, max_chars: int = 16 << 20) -> None:
        self.max_chars = max_chars
        self._entries: dict[tuple[str, str, str], DocAnalysis] = {}
        self._chars = 0

    def get(self, text: str, lang: str, segmenter_name: Segmenter) -> DocAnalysis:
        key = (lang, segmenter_name, text)
        found = self._entries.get(key)
        if found is None:
            if self._chars + len(text) > self.max_chars:
                self.clear()
            found = self._entries[key] = DocAnalysis(text, lang, segmenter_name)
            self._chars += len(text)
        return found

    def clear(self) -> None:
        self._entries.clear()
        self._chars = 0


CACHE = AnalysisCache()


def analyses(texts: list[str], langs: list[str], segmenter_name: Segmenter) -> list[DocAnalysis]:
    return [CACHE.get(t, lang, segmenter_name) for t, lang in zip(texts, langs)]
