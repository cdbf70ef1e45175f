"""Deduplication operators: exact (normalized text), URL and MinHash LSH near-duplicates.

These are global operators: which document survives depends on the whole corpus, so the
classes here carry only parameters and pure, vectorized kernels over `pyarrow.Table`
batches; `pipeline/global_ops/dedup.py` runs them on Ray (gathered in one task below a memory
budget, with hash shuffles above it).

MinHash signatures equal `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)` fed the
shingles of `shingles(text, params)` (datasketch 2's default "affine32" scheme, or "legacy"
for sketches of datasketch < 2), so datasketch is the reference and a user can query kiln's
signatures with it. The shingle hash H is kiln's own, chosen so that a whole batch can be
hashed with numpy instead of one Python call per shingle:

    token hash   t(w) = xxh3_64(utf8(w))                            (one call per distinct token)
    shingle hash H(w1..wk) = fmix64(((t(w1)*M + t(w2))*M + ...) mod 2^64) >> 32

Shingles are word n-grams (English and other space-separated text: lowercased, punctuation
and symbols removed) or character n-grams (Chinese, Japanese, Korean: whitespace and
punctuation removed), chosen per document from its `lang` column or its CJK share.

Survivor rules: every document gets a *rank key*, a string whose order is the survivor order
(`first`: natural order of ids, so `web:a.jsonl:9` comes before `web:a.jsonl:10`; `longest`;
`best` by a statistic column), ending in the id so that keys are unique. The smallest rank key
of a group or connected component is its survivor, so connected components computed by
min-label propagation over rank keys give the survivors directly.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field, model_validator

from operators.base import GlobalOperator, Params
from operators.registry import register

# --------------------------------------------------------------------------- constants

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint64((1 << 32) - 1)
# Multiplier of the polynomial that combines token hashes into a shingle hash (odd, so the
# map is a bijection of the accumulator modulo 2^64).
SHINGLE_MULTIPLIER = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
# Unicode classes (RE2 syntax, as pyarrow.compute uses it).
PUNCT_SYMBOL = r"[\p{P}\p{S}]"
CJK_LANGS = ("zh", "ja", "ko", "yue", "wuu", "lzh")
SCRIPT_SAMPLE_CHARS = 256

# Reasons written to `reject_reason`.
REASON_EXACT = "duplicate"
REASON_URL = "duplicate_url"
REASON_NEAR = "near_duplicate"
REASON_SEEN = "seen_before"

# Columns every dedup operator adds: the survivor's id on rejected rows, and the cluster (the
# survivor's id) on every member of a cluster, survivor included.
DUP_OF = "dup_of"
DUP_CLUSTER = "dup_cluster"


# --------------------------------------------------------------------------- parameters


class SurvivorParams(Params):
    """Which member of a duplicate group is kept. Ties are always broken by id."""

    keep: Literal["first", "longest", "best"] = Field(
        "first", description="first: smallest id in natural order; longest: most characters; "
                             "best: best value of `best_column`")
    best_column: str | None = Field(None, description="statistic column for keep=best, e.g. stat.ppl")
    best: Literal["highest", "lowest"] = Field("highest", description="which value of best_column wins")

    @model_validator(mode="after")
    def _best_needs_column(self) -> SurvivorParams:
        if self.keep == "best" and not self.best_column:
            raise ValueError("keep: best needs best_column (for example stat.ppl with best: lowest)")
        return self


class ExactDedupParams(SurvivorParams):
    lowercase: bool = True
    punctuation: Literal["keep", "remove"] = "remove"
    whitespace: Literal["keep", "collapse", "remove"] = "collapse"
    digits: Literal["keep", "zero", "remove"] = "keep"
    unicode_form: Literal["none", "NFKC"] = "NFKC"


class UrlDedupParams(SurvivorParams):
    ignore_scheme: bool = Field(True, description="http and https are the same page")
    strip_www: bool = True
    drop_fragment: bool = True
    drop_query_params: list[str] = Field(
        default_factory=lambda: ["utm_*", "fbclid", "gclid", "yclid", "mc_cid", "mc_eid", "spm", "from"],
        description="query parameters that do not change the page (glob patterns)")
    sort_query: bool = True
    strip_trailing_slash: bool = True
    lowercase_path: bool = False


class MinHashParams(SurvivorParams):
    num_perm: int = Field(128, ge=2, le=1024)
    seed: int = Field(1, ge=0, lt=2**32)
    scheme: Literal["affine32", "legacy"] = Field(
        "affine32", description="datasketch permutation scheme: affine32 (datasketch >= 2 default) "
                                "or legacy (datasketch < 2)")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity of near-duplicates")
    bands: int | None = Field(None, ge=2, description="LSH bands; with rows, overrides the choice from threshold")
    rows: int | None = Field(None, ge=1, description="rows per band")
    weights: tuple[float, float] = Field((0.5, 0.5), description="false positive / false negative weights "
                                                                  "for choosing bands and rows, as datasketch")
    lsh_threshold: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="threshold the bands and rows are chosen for; default threshold - 0.1 when verifying "
                    "(more candidates, then verified at `threshold`), else threshold")
    verify: bool = Field(True, description="keep only candidate pairs whose signatures estimate Jaccard >= threshold "
                                           "- verify_margin")
    verify_margin: float = Field(
        0.03, ge=0.0, lt=0.5,
        description="signatures estimate Jaccard with a standard deviation of sqrt(J (1 - J) / num_perm), 0.035 "
                    "at J = 0.8 with 128 values: pairs estimated up to this much below the threshold are kept, "
                    "so that true pairs just above it are not lost (recall), at little cost in precision")
    shingle: Literal["auto", "word", "char"] = "auto"
    word_ngram: int = Field(5, ge=1, le=32)
    char_ngram: int = Field(5, ge=1, le=64)
    cjk_ratio: float = Field(0.3, ge=0.0, le=1.0,
                             description="auto without a language: character shingles from this share of CJK "
                                         "characters on (in the first 256 characters)")
    # Shingle normalization, as exact_dedup's options; the defaults are kiln's fixed behaviour
    # before these options existed (so earlier minhash indexes stay comparable).
    lowercase: bool = True
    digits: Literal["keep", "zero", "remove"] = "keep"
    punctuation: Literal["keep", "remove"] = Field(
        "remove", description="remove: punctuation and symbols are word separators (word shingles) or dropped "
                              "(character shingles)")
    whitespace: Literal["keep", "remove"] = Field(
        "remove", description="character shingles: remove drops spaces and line breaks before taking n-grams")
    unicode_form: Literal["none", "NFKC"] = Field("none", description="NFKC folds full-width forms first")
    min_tokens: int = Field(1, ge=1, description="documents with fewer words/characters are not compared")
    against: list[str] = Field(default_factory=list,
                               description="minhash_index folders of earlier runs: documents matching "
                                           "them are rejected as seen_before")
    save_index: bool = Field(True, description="write minhash_index/ into the stage folder")

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they are chosen from the threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        if abs(sum(self.weights) - 1.0) > 1e-9 or min(self.weights) < 0:
            raise ValueError("weights must be two non-negative numbers that sum to 1")
        return self

    @property
    def band_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows  # type: ignore[return-value]
        target = self.lsh_threshold
        if target is None:
            target = max(0.05, self.threshold - 0.1) if self.verify else self.threshold
        return optimal_bands_rows(target, self.num_perm, *self.weights)

    @property
    def verify_threshold(self) -> float | None:
        """The estimated Jaccard a candidate pair must reach, or None without verification."""
        return max(0.0, self.threshold - self.verify_margin) if self.verify else None

    def index_fingerprint(self) -> dict:
        """What must match for two runs' signatures to be comparable."""
        fingerprint = {"num_perm": self.num_perm, "seed": self.seed, "scheme": self.scheme, "shingle": self.shingle,
                       "word_ngram": self.word_ngram, "char_ngram": self.char_ngram, "cjk_ratio": self.cjk_ratio,
                       "lowercase": self.lowercase, "digits": self.digits, "hash": "kiln-xxh3-poly-v1"}
        # Newer normalization options count only when they differ from the behaviour that
        # indexes written before them had.
        for name, default in (("punctuation", "remove"), ("whitespace", "remove"), ("unicode_form", "none")):
            if getattr(self, name) != default:
                fingerprint[name] = getattr(self, name)
        return fingerprint


@register
class ExactDedup(GlobalOperator):
    """Exact duplicates after normalization (case, punctuation, whitespace, digits), across
    the corpus; one survivor per group. Rejected rows: reason `duplicate`, `dup_of`."""

    name = "exact_dedup"
    Params = ExactDedupParams


@register
class UrlDedup(GlobalOperator):
    """Documents whose normalized URLs are equal; one survivor per URL. Documents without a
    URL are kept. Rejected rows: reason `duplicate_url`, `dup_of`."""

    name = "url_dedup"
    Params = UrlDedupParams


@register
class MinHashDedup(GlobalOperator):
    """MinHash LSH near-duplicates with connected components over the whole corpus (and
    optionally against earlier runs' indexes); one survivor per cluster. Rejected rows:
    reason `near_duplicate` (or `seen_before`), `dup_of`, `dup_cluster`."""

    name = "minhash_dedup"
    Params = MinHashParams


# --------------------------------------------------------------------------- 64-bit mixing


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, vectorized (uint64 wraps modulo 2^64 as intended)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch's affine schemes pre-mix input hashes."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


# --------------------------------------------------------------------------- shingles


def token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode("utf-8"))


def shingle_hash(shingle: Sequence[str]) -> int:
    """kiln's 32-bit shingle hash H; pass it as `hashfunc` to datasketch.MinHash and feed it
    the tuples from `shingles()` to get kiln's signatures."""
    acc = 0
    for token in shingle:
        acc = (acc * SHINGLE_MULTIPLIER + token_hash(token)) & _M64
    return _fmix64_int(acc) >> 32


def _normalize_for_shingles(texts: pa.Array, params: MinHashParams) -> pa.Array:
    """Word mode: NFKC, lowercase, digits, punctuation and symbols to spaces (then split)."""
    if params.unicode_form == "NFKC":
        texts = pc.utf8_normalize(texts, "NFKC")
    if params.lowercase:
        texts = pc.utf8_lower(texts)
    if params.digits == "zero":
        texts = pc.replace_substring_regex(texts, r"\d", "0")
    elif params.digits == "remove":
        texts = pc.replace_substring_regex(texts, r"\d+", "")
    if params.punctuation == "remove":
        texts = pc.replace_substring_regex(texts, PUNCT_SYMBOL, " ")
    return texts


def _codepoints(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """All characters of a batch as one uint32 array, and the characters per document."""
    counts = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    joined = "".join(texts.to_pylist())
    return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32), counts


def _char_options(params: MinHashParams) -> tuple[bool, str, bool, bool]:
    return params.lowercase, params.digits, params.punctuation == "remove", params.whitespace == "remove"


@functools.lru_cache(maxsize=4)
def _char_tables(lowercase: bool, digits: str, drop_punctuation: bool,
                 drop_whitespace: bool) -> tuple[np.ndarray, np.ndarray]:
    """Character mode normalization as lookup tables over the Basic Multilingual Plane:
    what each character becomes (lowercase, digits to 0) and whether it is kept (by default
    not punctuation, symbol, separator, control or format). Built once per process, so a
    batch is normalized without a regex pass."""
    mapped = np.arange(0x10000, dtype=np.uint32)
    keep = np.ones(0x10000, dtype=bool)
    for code in range(0x10000):
        keep[code], mapped[code] = _char_rule(code, lowercase, digits, drop_punctuation, drop_whitespace)
    return mapped, keep


def _char_rule(code: int, lowercase: bool, digits: str, drop_punctuation: bool,
               drop_whitespace: bool) -> tuple[bool, int]:
    char = chr(code)
    category = unicodedata.category(char)
    keep = category not in ("Cf", "Cs")
    if drop_punctuation and category[0] in "PS":
        keep = False
    if drop_whitespace and (category[0] == "Z" or category == "Cc"):
        keep = False
    if lowercase:
        lower = char.lower()
        if len(lower) == 1:
            code = ord(lower)
    if digits != "keep" and unicodedata.decimal(char, None) is not None:
        code = ord("0")
        keep = keep and digits == "zero"
    return keep, code


def _char_tokens(texts: pa.Array, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """Character mode tokens (codepoints after normalization) and tokens per document."""
    if params.unicode_form == "NFKC":
        texts = pc.utf8_normalize(texts, "NFKC")
    codepoints, counts = _codepoints(texts)
    options = _char_options(params)
    mapped_table, keep_table = _char_tables(*options)
    astral = codepoints >= 0x10000
    bmp = np.where(astral, 0, codepoints)
    mapped, keep = mapped_table[bmp], keep_table[bmp]
    if astral.any():
        for code in np.unique(codepoints[astral]).tolist():
            where = codepoints == code
            kept, new = _char_rule(code, *options)
            keep[where], mapped[where] = kept, new
    doc_of = np.repeat(np.arange(len(counts)), counts)
    return mapped[keep], np.bincount(doc_of[keep], minlength=len(counts)).astype(np.int64)


# Han (with extensions and compatibility ideographs), kana and hangul.
_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
               (0x20000, 0x3134F))


def _is_cjk(codepoints: np.ndarray) -> np.ndarray:
    hit = np.zeros(len(codepoints), dtype=bool)
    for low, high in _CJK_RANGES:
        hit |= (codepoints >= low) & (codepoints <= high)
    return hit


def uses_char_shingles(texts: pa.Array, langs: pa.Array | None, params: MinHashParams) -> np.ndarray:
    """Per document: True for character shingles, False for word shingles."""
    n = len(texts)
    if params.shingle != "auto":
        return np.full(n, params.shingle == "char")
    # The opening characters decide: documents rarely change script after their first few
    # hundred characters, and counting over them is cheap.
    codepoints, counts = _codepoints(pc.utf8_slice_codeunits(texts, 0, SCRIPT_SAMPLE_CHARS))
    cjk = np.bincount(np.repeat(np.arange(n), counts), weights=_is_cjk(codepoints), minlength=n)
    by_ratio = (cjk > 0) & (cjk >= params.cjk_ratio * counts)
    if langs is None or langs.null_count == len(langs):
        return by_ratio
    primary = pc.utf8_lower(pc.replace_substring_regex(pc.fill_null(langs, ""), r"[-_].*", ""))
    is_cjk = pc.is_in(primary, value_set=pa.array(CJK_LANGS)).to_numpy(zero_copy_only=False)
    known = pc.not_equal(primary, "").to_numpy(zero_copy_only=False)
    return np.where(known, is_cjk, by_ratio)


def _tokens(text: str, params: MinHashParams, char_mode: bool) -> list[str]:
    """One document's tokens through the batch kernels' own normalization and splitting."""
    texts = pa.array([text], pa.string())
    if char_mode:
        return [chr(c) for c in _char_tokens(texts, params)[0].tolist()]
    return pc.utf8_split_whitespace(_normalize_for_shingles(texts, params))[0].as_py()


def shingles(text: str, params: MinHashParams, char_mode: bool | None = None,
             lang: str | None = None) -> list[tuple[str, ...]]:
    """The shingles kiln hashes for one document: n-gram tuples of words or characters.
    A document shorter than n gives one shingle of all its tokens; an empty one none."""
    if char_mode is None:
        char_mode = bool(uses_char_shingles(pa.array([text], pa.string()),
                                            pa.array([lang], pa.string()), params)[0])
    n = params.char_ngram if char_mode else params.word_ngram
    tokens = _tokens(text, params, char_mode)
    if not tokens:
        return []
    if len(tokens) <= n:
        return [tuple(tokens)]
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _hash_unique(values: list[str]) -> np.ndarray:
    return np.fromiter((xxhash.xxh3_64_intdigest(v.encode("utf-8")) for v in values), dtype=np.uint64,
                       count=len(values))


def _word_token_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of all documents concatenated, and per-document token counts."""
    lists = pc.utf8_split_whitespace(texts)
    offsets = lists.offsets.to_numpy()
    counts = np.diff(offsets)
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return np.zeros(0, np.uint64), counts
    encoded = pc.dictionary_encode(flat).combine_chunks() if isinstance(flat, pa.ChunkedArray) else pc.dictionary_encode(flat)
    uniq = _hash_unique(encoded.dictionary.to_pylist())
    return uniq[encoded.indices.to_numpy()], counts


@functools.lru_cache(maxsize=1)
def _bmp_char_hashes() -> np.ndarray:
    """t(c) for every character of the Basic Multilingual Plane, computed once per process:
    character tokens then hash by table lookup."""
    return np.fromiter((xxhash.xxh3_64_intdigest(chr(c).encode("utf-8", "surrogatepass")) for c in range(0x10000)),
                       dtype=np.uint64, count=0x10000)


def _char_token_hashes(codepoints: np.ndarray) -> np.ndarray:
    table = _bmp_char_hashes()
    astral = codepoints >= 0x10000
    hashes = table[np.where(astral, 0, codepoints)]
    if astral.any():
        uniq, inverse = np.unique(codepoints[astral], return_inverse=True)
        hashes[astral] = _hash_unique([chr(c) for c in uniq.tolist()])[inverse]
    return hashes


def _combine_shingles(tokens: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (uint32) of every document, concatenated, and per-document counts.

    Full n-grams are computed for every window of the concatenated token array with
    contiguous slices (no gathers), then the windows that cross a document boundary are
    dropped; documents shorter than n contribute one shingle of all their tokens."""
    counts = counts.astype(np.int64)
    per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    total = int(per_doc.sum())
    if total == 0:
        return np.zeros(0, np.uint32), per_doc
    multiplier = np.uint64(SHINGLE_MULTIPLIER)
    out = np.empty(total, dtype=np.uint64)
    short = (counts > 0) & (counts < n)
    slot_short = np.repeat(short, per_doc)
    windows = len(tokens) - n + 1
    with np.errstate(over="ignore"):
        if windows > 0 and not slot_short.all():
            acc = tokens[:windows].copy()
            for k in range(1, n):
                acc *= multiplier
                acc += tokens[k:windows + k]
            token_start = np.cumsum(counts) - counts
            position = np.arange(len(tokens)) - np.repeat(token_start, counts)
            valid = position <= np.repeat(counts - n, counts)
            out[~slot_short] = acc[valid[:windows]]
        if short.any():
            token_start = np.cumsum(counts) - counts
            starts, lengths = token_start[short], counts[short]
            acc = tokens[starts].copy()
            for k in range(1, int(lengths.max())):
                step = acc * multiplier + tokens[np.minimum(starts + k, len(tokens) - 1)]
                acc = np.where(lengths > k, step, acc)
            out[slot_short] = acc
        hashes = (fmix64(out) >> np.uint64(32)).astype(np.uint32)
    return hashes, per_doc


def _shingle_hashes_by_mode(texts: pa.Array, char_mode: np.ndarray,
                            params: MinHashParams) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, shingle hashes, shingles per row) for the word-shingled and the
    character-shingled documents of a batch."""
    parts = []
    for mode in (False, True):
        rows = np.flatnonzero(char_mode == mode)
        if len(rows) == 0:
            continue
        subset = texts.take(pa.array(rows)) if len(rows) < len(texts) else texts
        if mode:
            codepoints, counts = _char_tokens(subset, params)
            tokens = _char_token_hashes(codepoints)
        else:
            tokens, counts = _word_token_hashes(_normalize_for_shingles(subset, params))
        hashes, per_doc = _combine_shingles(tokens, counts, params.char_ngram if mode else params.word_ngram)
        parts.append((rows, hashes, per_doc))
    return parts


def shingle_hashes(texts: pa.Array, char_mode: np.ndarray, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """H of every shingle of every document, concatenated in document order, and the number
    of shingles per document."""
    n_docs = len(texts)
    parts = _shingle_hashes_by_mode(texts, char_mode, params)
    per_doc = np.zeros(n_docs, dtype=np.int64)
    for rows, _, counts in parts:
        per_doc[rows] = counts
    out = np.empty(int(per_doc.sum()), dtype=np.uint32)
    offsets = np.cumsum(per_doc) - per_doc
    for rows, hashes, counts in parts:
        # Where each shingle of these rows goes in document order.
        local_starts = np.cumsum(counts) - counts
        within = np.arange(len(hashes)) - np.repeat(local_starts, counts)
        out[np.repeat(offsets[rows], counts) + within] = hashes
    return out, per_doc


# --------------------------------------------------------------------------- MinHash


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for (num_perm, seed, scheme)."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                           gen.randint(0, MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                         dtype=np.uint64).T
        return pairs[0].copy(), pairs[1].copy()
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@numba.njit(cache=True, nogil=True)
def _minhash_affine32(hashes: np.ndarray, starts: np.ndarray, ends: np.ndarray, a: np.ndarray, b: np.ndarray,
                      out: np.ndarray) -> None:  # pragma: no cover - compiled
    for doc in range(starts.shape[0]):
        row = out[doc]
        for i in range(starts[doc], ends[doc]):
            h = hashes[i]
            for p in range(a.shape[0]):
                value = np.uint32(a[p] * h + b[p])  # modulo 2^32, as datasketch's uint32 arithmetic
                if value < row[p]:
                    row[p] = value


@numba.njit(cache=True, nogil=True)
def _minhash_legacy(hashes: np.ndarray, starts: np.ndarray, ends: np.ndarray, a: np.ndarray, b: np.ndarray,
                    out: np.ndarray) -> None:  # pragma: no cover - compiled
    for doc in range(starts.shape[0]):
        row = out[doc]
        for i in range(starts[doc], ends[doc]):
            h = np.uint64(hashes[i])
            for p in range(a.shape[0]):
                # (a h + b) wraps modulo 2^64 before the Mersenne modulus, as in datasketch.
                value = np.uint32(((a[p] * h + b[p]) % MERSENNE_PRIME) & MAX_HASH32)
                if value < row[p]:
                    row[p] = value


def minhash_signatures(hashes: np.ndarray, per_doc: np.ndarray, params: MinHashParams) -> np.ndarray:
    """Signatures (n_docs x num_perm, uint32) from concatenated shingle hashes: the values
    datasketch.MinHash would hold after `update_batch` with the same hashes. Documents
    without shingles keep the empty signature (all 2^32 - 1).

    A compiled loop (numba): one pass over the shingles, the num_perm minima of a document
    staying in registers or L1, instead of a (num_perm x shingles) temporary matrix."""
    n_docs, num_perm = len(per_doc), params.num_perm
    a, b = permutations(num_perm, params.seed, params.scheme)
    out = np.full((n_docs, num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    if len(hashes) == 0:
        return out
    ends = np.cumsum(per_doc).astype(np.int64)
    starts = ends - per_doc.astype(np.int64)
    if params.scheme == "legacy":
        _minhash_legacy(hashes.astype(np.uint32), starts, ends, a, b, out)
    else:
        mixed = fmix32(hashes.astype(np.uint32))
        _minhash_affine32(mixed, starts, ends, a.astype(np.uint32), b.astype(np.uint32), out)
    return out


def signatures(texts: pa.Array, langs: pa.Array | None, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """(signatures, shingles per document) of a batch of texts."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(langs, pa.ChunkedArray):
        langs = langs.combine_chunks()
    texts = pc.fill_null(texts, "")
    char_mode = uses_char_shingles(texts, langs, params)
    sigs = np.full((len(texts), params.num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    per_doc = np.zeros(len(texts), dtype=np.int64)
    for rows, hashes, counts in _shingle_hashes_by_mode(texts, char_mode, params):
        sigs[rows] = minhash_signatures(hashes, counts, params)
        per_doc[rows] = counts
    return sigs, per_doc


# --------------------------------------------------------------------------- LSH


def _false_positive(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _false_negative(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@functools.lru_cache(maxsize=64)
def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                       fn_weight: float = 0.5) -> tuple[int, int]:
    """datasketch.MinHashLSH's choice of (bands, rows): the grid point minimising the
    weighted false positive and false negative probability mass around the threshold."""
    best, opt = math.inf, (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = _false_positive(threshold, b, r) * fp_weight + _false_negative(threshold, b, r) * fn_weight
            if error < best:
                best, opt = error, (b, r)
    return opt


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs x bands) uint64 keys: a hash of the band index and the band's `rows` values.
    Two documents share a key (barring a 2^-64 collision) exactly where datasketch's
    MinHashLSH would put them in the same bucket of that band."""
    n = sigs.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    multiplier = np.uint64(SHINGLE_MULTIPLIER)
    with np.errstate(over="ignore"):
        for band in range(bands):
            acc = np.full(n, np.uint64(band + 1) * np.uint64(0xD6E8FEB86659FD93), dtype=np.uint64)
            for value in sigs[:, band * rows:(band + 1) * rows].T:
                acc = acc * multiplier + value.astype(np.uint64)
            out[:, band] = fmix64(acc)
    return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature values per row pair: datasketch's MinHash.jaccard."""
    return (sig_a == sig_b).mean(axis=1)


def signature_bytes(sigs: np.ndarray) -> pa.Array:
    """Signatures as fixed-size binary (little-endian uint32), compact in Arrow and parquet."""
    width = sigs.shape[1] * 4
    data = np.ascontiguousarray(sigs.astype("<u4")).view(np.uint8).reshape(-1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(sigs), [None, pa.py_buffer(data)])


def signatures_from_bytes(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != pa.binary(num_perm * 4):
        # Joins (polars) hand fixed-size binary back as plain binary.
        column = column.cast(pa.binary(num_perm * 4))
    if len(column) == 0:
        return np.zeros((0, num_perm), np.uint32)
    buffer = column.buffers()[1]
    data = np.frombuffer(buffer, dtype="<u4", count=(column.offset + len(column)) * num_perm)
    return data[column.offset * num_perm:].reshape(len(column), num_perm).astype(np.uint32)


# --------------------------------------------------------------------------- exact keys


def normalize_for_exact(texts: pa.Array, params: ExactDedupParams) -> pa.Array:
    if params.unicode_form == "NFKC":
        texts = pc.utf8_normalize(texts, "NFKC")
    if params.lowercase:
        texts = pc.utf8_lower(texts)
    if params.digits == "zero":
        texts = pc.replace_substring_regex(texts, r"\d", "0")
    elif params.digits == "remove":
        texts = pc.replace_substring_regex(texts, r"\d+", "")
    if params.punctuation == "remove" and params.whitespace != "keep":
        # Runs of punctuation, symbols and whitespace to one space (or nothing) in one regex
        # pass: the same text as the two passes below, in half the time.
        texts = pc.replace_substring_regex(texts, r"[\p{P}\p{S}\s]+", " " if params.whitespace == "collapse" else "")
        return pc.utf8_trim_whitespace(texts) if params.whitespace == "collapse" else texts
    if params.punctuation == "remove":
        # To a space, so "1.62" and "1 . 62", or "end.Next" and "end. Next", agree.
        texts = pc.replace_substring_regex(texts, PUNCT_SYMBOL, " ")
    if params.whitespace == "collapse":
        texts = pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"\s+", " "))
    elif params.whitespace == "remove":
        texts = pc.replace_substring_regex(texts, r"\s+", "")
    return texts


def string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets from 0) of a string or large_string array without nulls."""
    if len(texts) == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    offset_type = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    _, offset_buffer, data_buffer = texts.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=offset_type)[texts.offset:texts.offset + len(texts) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[-1]], offsets - offsets[0]


def hash128(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """xxh3_128 of each string's UTF-8 bytes as two uint64 halves; null strings hash like "".
    Read straight from the Arrow buffers: no Python string per value."""
    values = pc.fill_null(values, "")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    data, offsets = string_buffers(values)
    view = memoryview(data)
    n = len(values)
    high = np.empty(n, dtype=np.uint64)
    low = np.empty(n, dtype=np.uint64)
    digest = xxhash.xxh3_128_intdigest
    bounds = offsets.tolist()
    for i in range(n):
        value = digest(view[bounds[i]:bounds[i + 1]])
        high[i] = value >> 64
        low[i] = value & _M64
    return high, low


def normalize_url(url: str | None, params: UrlDedupParams) -> str | None:
    """A canonical form of a URL, or None for a missing or unusable one."""
    if not url or not url.strip():
        return None
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    scheme = parts.scheme.lower()
    if params.strip_www and host.startswith("www."):
        host = host[4:]
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if params.ignore_scheme and scheme in ("http", "https"):
        scheme = "http"
    path = parts.path or "/"
    if params.strip_trailing_slash and len(path) > 1:
        path = path.rstrip("/") or "/"
    if params.lowercase_path:
        path = path.lower()
    query = parts.query
    if query:
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                 if not any(_glob_match(k, pattern) for pattern in params.drop_query_params)]
        if params.sort_query:
            pairs.sort()
        query = urlencode(pairs)
    fragment = "" if params.drop_fragment else parts.fragment
    return urlunsplit((scheme, host, path, query, fragment))


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\*", ".*") + r"\Z", re.IGNORECASE)


def _glob_match(name: str, pattern: str) -> bool:
    return bool(_glob_regex(pattern).match(name))


# --------------------------------------------------------------------------- survivor rank keys

_DIGITS = re.compile(r"\d+")
RANK_SEPARATOR = "\x00"


def natural_key(identifier: str) -> str:
    """A string whose plain order is the natural order of ids: digit runs compare by value."""
    identifier = identifier.replace(RANK_SEPARATOR, "")
    return _DIGITS.sub(lambda m: f"{len(m.group().lstrip('0') or '0'):02d}{m.group().lstrip('0') or '0'}", identifier)


def _ordered_u64(values: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (IEEE-754 sign flip)."""
    bits = values.astype(np.float64).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def rank_keys(batch: pa.Table, params: SurvivorParams, text_bytes: np.ndarray | None = None,
              row_keys: np.ndarray | None = None) -> pa.Array:
    """One string per row whose order is the survivor order (smallest survives):
    `<16 hex digits of the rule's value><natural id>\\0<16 hex digits of the row key>\\0<id>\\0<text bytes>`.

    The row key (default: the row's position in the batch) names the row itself, so keys are
    unique even where ids repeat, and equal ids keep their input order."""
    ids = batch.column("id").to_pylist()
    n = len(ids)
    if row_keys is None:
        row_keys = np.arange(n, dtype=np.int64)
    if text_bytes is None:
        text_bytes = pc.binary_length(batch.column("text")).to_numpy(zero_copy_only=False)
    if params.keep == "first":
        prefix = np.zeros(n, dtype=np.uint64)
    elif params.keep == "longest":
        chars = pc.utf8_length(pc.fill_null(batch.column("text"), "")).to_numpy(zero_copy_only=False)
        prefix = np.uint64(_M64) - chars.astype(np.uint64)
    else:
        column = params.best_column
        if column not in batch.column_names:
            raise KeyError(f"keep: best needs the column {column!r}, which the documents do not have")
        values = pc.cast(batch.column(column), pa.float64()).to_numpy(zero_copy_only=False)
        ordered = _ordered_u64(np.nan_to_num(values, nan=0.0))
        if params.best == "highest":
            ordered = ~ordered
        # Missing values lose to any present one.
        prefix = np.where(np.isnan(values), np.uint64(_M64), ordered)
    sep = RANK_SEPARATOR
    return pa.array([f"{p:016x}{natural_key(i)}{sep}{r:016x}{sep}{i}{sep}{nb}"
                     for p, i, r, nb in zip(prefix.tolist(), ids, row_keys.tolist(), text_bytes.tolist())],
                    pa.string())


def split_rank_keys(keys: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(ids, text bytes, row keys) back from rank keys."""
    values = keys.to_pylist()
    ids, sizes, rows = [], [], []
    for key in values:
        rest = key[key.index(RANK_SEPARATOR) + 1:]
        rows.append(int(rest[:16], 16))
        identifier, _, size = rest[17:].rpartition(RANK_SEPARATOR)
        ids.append(identifier)
        sizes.append(int(size))
    return pa.array(ids, pa.string()), pa.array(sizes, pa.int64()), pa.array(rows, pa.int64())


def id_surrogates(ids: pa.Array | pa.ChunkedArray, salt: str = "") -> np.ndarray:
    """64-bit surrogate of each id for the band shuffle (int64 view of xxh3_64)."""
    prefix = salt.encode("utf-8")
    return np.fromiter((xxhash.xxh3_64_intdigest(prefix + v.encode("utf-8")) for v in ids.to_pylist()),
                       dtype=np.uint64, count=len(ids)).view(np.int64)


# --------------------------------------------------------------------------- grouping kernels


def group_starts(sorted_keys: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean mask of rows that begin a new group in rows sorted by `sorted_keys`."""
    n = len(sorted_keys[0])
    start = np.zeros(n, dtype=bool)
    if n == 0:
        return start
    start[0] = True
    for key in sorted_keys:
        start[1:] |= key[1:] != key[:-1]
    return start


def star_edges(bucket: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (member, bucket minimum) for every bucket of two or more members: a star per
    bucket, so a bucket of k documents gives k - 1 edges instead of k(k-1)/2."""
    if len(bucket) == 0:
        return member[:0], member[:0]
    order = np.lexsort((member, bucket))
    bucket, member = bucket[order], member[order]
    start = group_starts([bucket])
    group = np.cumsum(start) - 1
    first = member[start][group]
    keep = (~start) & (member != first)
    return member[keep], first[keep]
