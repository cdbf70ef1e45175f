"""exact_dedup's keys at compiled speed: the text normalized as `normalize_for_exact` defines
it, then hashed to 128 bits, in one pass over the UTF-8 bytes.

`normalize_for_exact` (operators/dedup.py) is the definition: NFKC, lowercase, digits, runs
of punctuation, symbols and whitespace, trimming, each an Arrow compute pass (utf8proc and
RE2). Over a million documents those passes cost 40 CPU seconds, most of exact_dedup's time.
Each of them maps one code point at a time, except NFKC, which can compose neighbours. So
this module tabulates, once per process and *with the same Arrow functions*, what every code
point becomes (its NFKC where that is one safe code point, then lowercase), which class it is in (the separator class of the chosen options,
ASCII digit, trimmed whitespace) and whether NFKC may change it or its neighbour. A compiled
loop (numba) then normalizes each document by table lookups. A document with a code point
that NFKC may change (compatibility forms, combining marks, characters that compose with
the one before) takes the Arrow passes instead, so every key equals the definition's
(tests/test_dedup.py compares the two on real text and on every code point).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import unicodedata
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.dedup import (
    PUNCT_SYMBOL,
    ExactDedupParams,
    hash128,
    normalize_for_exact,
    string_buffers,
)

MAX_CODE_POINT = 0x110000
# Flags per code point.
NEEDS_DEFINITION = 1  # NFKC may change it or compose it with its neighbour: Arrow's passes
SEPARATOR = 2  # in the separator class of the options (punctuation, symbols, whitespace)
DIGIT = 4  # RE2's \d (ASCII digits)
TRIMMED = 8  # removed at either end by utf8_trim_whitespace

_DIGITS = {"keep": 0, "zero": 1, "remove": 2}


def _separator_pattern(params: ExactDedupParams) -> tuple[str | None, bool, bool]:
    """(the class that `normalize_for_exact` replaces, whether a run becomes one replacement,
    whether the replacement is a space rather than nothing)."""
    if params.punctuation == "remove" and params.whitespace != "keep":
        return r"[\p{P}\p{S}\s]", True, params.whitespace == "collapse"
    if params.punctuation == "remove":
        return PUNCT_SYMBOL, False, True
    if params.whitespace != "keep":
        return r"\s", True, params.whitespace == "collapse"
    return None, False, False


def _composes_with_previous() -> np.ndarray:
    """Code points that canonical composition can join to the character before them: the
    second half of every two-part canonical decomposition, and the Hangul vowel and trailing
    jamo."""
    seconds = np.zeros(MAX_CODE_POINT, dtype=bool)
    for code in range(MAX_CODE_POINT):
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                seconds[int(parts[1], 16)] = True
    seconds[0x1161:0x1176] = True
    seconds[0x11A8:0x11C3] = True
    return seconds


# Until a process has normalized this much text it takes the definition's passes: building
# the tables costs about 1.4 CPU seconds the first time on a machine (then they are loaded
# from its cache folder), the passes about 25 per GB, so a small corpus (the demo's) never
# needs them.
_WORTH_TABLES_BYTES = 16 << 20
_bytes_seen = 0
# Bumped whenever what the tables hold changes, so that no older cached file is read.
_TABLES_FORMAT = 1
_TABLE_NAMES = ("direct", "values", "starts", "flags")


def _cache_file(lowercase: bool, unicode_form: str, separator: str | None) -> Path:
    """Where this machine keeps the tables of these options: they depend on Arrow's Unicode
    data and Python's, so both versions are part of the name."""
    key = json.dumps([_TABLES_FORMAT, pa.__version__, unicodedata.unidata_version, lowercase, unicode_form,
                      separator])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kiln" / f"exact-tables-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


@functools.lru_cache(maxsize=8)
def tables(lowercase: bool, unicode_form: str,
           separator: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`build_tables`, from this machine's cache folder when an earlier process built them
    (an unreadable or unwritable cache is only slower)."""
    path = _cache_file(lowercase, unicode_form, separator)
    try:
        with np.load(path) as cached:
            return tuple(cached[name] for name in _TABLE_NAMES)
    except (OSError, ValueError, KeyError, EOFError):
        pass
    built = build_tables(lowercase, unicode_form, separator)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as handle:
            np.savez(handle, **dict(zip(_TABLE_NAMES, built)))
        os.replace(partial, path)  # whole or not at all, whichever process writes last
    except OSError:
        pass
    return built


def build_tables(lowercase: bool, unicode_form: str,
                 separator: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What each code point becomes after NFKC and lowercasing (`direct[c]` when it is one
    code point, else the run `values[starts[c]:starts[c + 1]]`), and each code point's flags,
    from Arrow's own functions applied to every code point on its own.

    NFKC maps a character on its own when it is neither combining nor composed with the
    character before it and its NFKC is made of such characters (fullwidth and compatibility
    forms: '，' is ',', '…' is '...'): a string of those decomposes and recomposes to the
    characters' own forms. Any other character that NFKC changes is left to the definition."""
    codes = np.arange(MAX_CODE_POINT, dtype=np.int64)
    valid = (codes < 0xD800) | (codes > 0xDFFF)  # surrogates never occur in UTF-8 text
    valid_codes = np.flatnonzero(valid)
    chars = pa.array([chr(c) for c in valid_codes.tolist()], pa.string())
    flags = np.zeros(MAX_CODE_POINT, dtype=np.uint8)
    flags[~valid] = NEEDS_DEFINITION
    forms = chars
    if unicode_form == "NFKC":
        forms = pc.utf8_normalize(chars, "NFKC")
        unsafe = ~valid | _composes_with_previous()
        unsafe[valid_codes] |= np.array([unicodedata.combining(c) != 0 for c in chars.to_pylist()])
        changed = pc.not_equal(forms, chars).to_numpy(zero_copy_only=False)
        for code, form in zip(valid_codes[changed].tolist(), forms.filter(pa.array(changed)).to_pylist()):
            if any(unsafe[ord(c)] for c in form):
                unsafe[code] = True
        flags[unsafe] |= NEEDS_DEFINITION
    if lowercase:
        # Arrow lowercases code point by code point, so the NFKC form's parts on their own.
        parts = pa.array([c for form in forms.to_pylist() for c in form], pa.string())
        lowered = pc.utf8_lower(parts)
        if not pc.all(pc.equal(pc.utf8_length(lowered), 1)).as_py():
            several = pc.invert(pc.equal(pc.utf8_length(lowered), 1))
            bad = set(pc.filter(parts, several).to_pylist())
            for code, form in zip(valid_codes.tolist(), forms.to_pylist()):
                if any(c in bad for c in form):
                    flags[code] |= NEEDS_DEFINITION
            lowered = pc.if_else(several, parts, lowered)
        lengths = pc.utf8_length(forms).to_numpy(zero_copy_only=False)
        value_list = [ord(c) for c in lowered.to_pylist()]
    else:
        lengths = pc.utf8_length(forms).to_numpy(zero_copy_only=False)
        value_list = [ord(c) for form in forms.to_pylist() for c in form]
    run_lengths = np.ones(MAX_CODE_POINT, dtype=np.int64)
    run_lengths[valid_codes] = lengths
    starts = np.zeros(MAX_CODE_POINT + 1, dtype=np.int64)
    np.cumsum(run_lengths, out=starts[1:])
    values = np.zeros(int(starts[-1]), dtype=np.int32)
    values[starts[:-1][~valid]] = codes[~valid]
    at = np.repeat(starts[:-1][valid_codes], lengths) + (np.arange(int(lengths.sum())) -
                                                         np.repeat(np.cumsum(lengths) - lengths, lengths))
    values[at] = value_list
    if separator is not None:
        flags[valid_codes[pc.match_substring_regex(chars, f"^{separator}$").to_numpy(zero_copy_only=False)]] |= SEPARATOR
    flags[valid_codes[pc.match_substring_regex(chars, r"^\d$").to_numpy(zero_copy_only=False)]] |= DIGIT
    flags[valid_codes[pc.equal(pc.utf8_trim_whitespace(chars), "").to_numpy(zero_copy_only=False)]] |= TRIMMED
    # One lookup for most code points: what it becomes when that is one code point, else -1
    # (a run of `values`) or -2 (left to the definition).
    direct = np.where(run_lengths == 1, values[starts[:-1]], -1).astype(np.int32)
    direct[(flags & NEEDS_DEFINITION) != 0] = -2
    return direct, values, starts, flags


@numba.njit(cache=True, nogil=True)
def _normalize(data: np.ndarray, offsets: np.ndarray, direct: np.ndarray, values: np.ndarray, starts: np.ndarray,
               flags: np.ndarray,
               digits: int, collapse: bool, space: bool, trim: bool, out: np.ndarray,
               out_offsets: np.ndarray, scratch: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Normalize every document into `out` (UTF-8) with `out_offsets`; returns the indexes of
    the documents left to the definition (they get an empty string here): a code point NFKC
    may change in context, or a document that would not fit `scratch` or `out`."""
    documents = offsets.shape[0] - 1
    left = np.zeros(documents, dtype=np.bool_)
    pos = 0
    for doc in range(documents):
        out_offsets[doc] = pos
        i = offsets[doc]
        end = offsets[doc + 1]
        n = 0
        pending = False
        while i < end and not left[doc]:
            b0 = data[i]
            if b0 < 0x80:
                code = np.int64(b0)
                i += 1
            elif b0 < 0xE0:
                code = ((np.int64(b0) & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F)
                i += 2
            elif b0 < 0xF0:
                code = ((np.int64(b0) & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | \
                       (np.int64(data[i + 2]) & 0x3F)
                i += 3
            else:
                code = ((np.int64(b0) & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) | \
                       ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)
                i += 4
            target = direct[code]
            if target == -2:
                left[doc] = True
                break
            first_part = starts[code] if target == -1 else 0
            last_part = starts[code + 1] if target == -1 else 1
            for k in range(first_part, last_part):
                part = values[k] if target == -1 else target
                flag = flags[part]
                if flag & 4 and digits != 0:
                    if digits == 2:
                        continue
                    part = 48
                    flag = flags[part]
                if flag & 2:
                    if collapse:
                        pending = True
                        continue
                    if not space:
                        continue
                    part = 32
                elif pending:
                    pending = False
                    if space:
                        if n == scratch.shape[0]:
                            left[doc] = True
                            break
                        scratch[n] = 32
                        n += 1
                if n == scratch.shape[0]:
                    left[doc] = True
                    break
                scratch[n] = part
                n += 1
        if left[doc]:
            continue
        if pending and space and n < scratch.shape[0]:
            scratch[n] = 32
            n += 1
        first = 0
        last = n
        if trim:
            while first < last and flags[scratch[first]] & 8:
                first += 1
            while last > first and flags[scratch[last - 1]] & 8:
                last -= 1
        if pos + 4 * (last - first) > out.shape[0]:
            left[doc] = True
            continue
        for k in range(first, last):
            code = scratch[k]
            if code < 0x80:
                out[pos] = code
                pos += 1
            elif code < 0x800:
                out[pos] = 0xC0 | (code >> 6)
                out[pos + 1] = 0x80 | (code & 0x3F)
                pos += 2
            elif code < 0x10000:
                out[pos] = 0xE0 | (code >> 12)
                out[pos + 1] = 0x80 | ((code >> 6) & 0x3F)
                out[pos + 2] = 0x80 | (code & 0x3F)
                pos += 3
            else:
                out[pos] = 0xF0 | (code >> 18)
                out[pos + 1] = 0x80 | ((code >> 12) & 0x3F)
                out[pos + 2] = 0x80 | ((code >> 6) & 0x3F)
                out[pos + 3] = 0x80 | (code & 0x3F)
                pos += 4
    out_offsets[documents] = pos
    return np.flatnonzero(left)


def _compiled_or_definition(texts: pa.Array, params: ExactDedupParams,
                            compiled: bool | None) -> tuple[pa.Array, np.ndarray]:
    """(the texts normalized, the indexes of those left to the definition: empty strings in
    the first). `compiled`: always (True) or never (False) the tables; by default once the
    process has seen `_WORTH_TABLES_BYTES` of text."""
    global _bytes_seen
    separator, collapse, space = _separator_pattern(params)
    data, offsets = string_buffers(texts)
    _bytes_seen += len(data)
    if compiled is None:
        compiled = _bytes_seen >= _WORTH_TABLES_BYTES
    if not compiled:
        return normalize_for_exact(texts, params).cast(pa.large_string()), np.zeros(0, np.int64)
    direct, values, starts, flags = tables(params.lowercase, params.unicode_form, separator)
    # Twice the input holds the output of all but rare documents (NFKC forms of several code
    # points, such as ligatures); those that do not fit are left to the definition.
    out = np.empty(2 * len(data) + 64, dtype=np.uint8)
    out_offsets = np.empty(len(offsets), dtype=np.int64)
    longest = int(np.max(np.diff(offsets))) if len(offsets) > 1 else 0
    scratch = np.empty(2 * longest + 64, dtype=np.int32)
    left = _normalize(data, offsets, direct, values, starts, flags, _DIGITS[params.digits], collapse, space,
                      params.whitespace == "collapse", out, out_offsets, scratch)
    normalized = pa.LargeStringArray.from_buffers(len(texts), pa.py_buffer(out_offsets),
                                                  pa.py_buffer(out[:out_offsets[-1]]))
    return normalized, left


def _without_nulls(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    texts = pc.fill_null(texts, "")
    return texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts


def normalize(texts: pa.Array, params: ExactDedupParams, compiled: bool | None = None) -> pa.Array:
    """`normalize_for_exact(texts, params)`, the same strings (large_string), by table lookups
    for the documents whose code points allow it and Arrow's passes for the rest (see
    `_compiled_or_definition` for `compiled`)."""
    texts = _without_nulls(texts)
    normalized, left = _compiled_or_definition(texts, params, compiled)
    if len(left) == 0:
        return normalized
    definition = normalize_for_exact(texts.take(pa.array(left)), params).cast(pa.large_string())
    # Rows of the compiled result, with the left ones taken from the definition's (appended) rows.
    take = np.arange(len(texts))
    take[left] = len(texts) + np.arange(len(left))
    return pa.chunked_array([normalized, definition]).combine_chunks().take(pa.array(take))


def exact_keys(texts: pa.Array, params: ExactDedupParams) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit key of each text: xxh3_128 of `normalize_for_exact(text, params)`. The
    documents left to the definition are hashed on their own, not merged into the batch's
    strings first (only the keys are wanted)."""
    texts = _without_nulls(texts)
    normalized, left = _compiled_or_definition(texts, params, None)
    high, low = hash128(normalized)
    if len(left):
        high[left], low[left] = hash128(normalize_for_exact(texts.take(pa.array(left)), params))
    return high, low
