"""tokenize_pack: documents to packed token sequences in kiln shards (trainer/shards.py).

A global operator in two passes, both made of the pure kernels below (the executor in
`pipeline/global_ops/tokenize.py` runs them over Ray; tests and benchmarks run them in process):

1. `encode_batch_table`, per batch: encode the documents with a `tokenizers` fast tokenizer
   (Rust, multithreaded `encode_batch`), add BOS/EOS, optionally cut at `max_doc_tokens`, and
   write the token lists to a scratch Arrow file sorted by group, `(bucket, source)`. Each row
   gets `stat.tokens`; a document that yields no token is rejected (`no_tokens`).
2. `plan_shards` cuts every group's token stream (files in order, documents in order) into
   shard-sized ranges from the per-file totals alone, and `pack_shard` packs one range and
   writes its shard. A shard only ever holds one bucket and one source.

Packing modes (a sequence is exactly `seq_len` tokens; padding only at its end):
- `concat`: the group's documents end to end, cut every `seq_len` tokens. Shards are cut at
  multiples of `seq_len`, so only the last sequence of a group is padded (non-padding
  fraction close to 1); documents that cross a cut continue as a new segment.
- `first_fit`: documents longer than `seq_len` are split into full sequences plus a rest; the
  rests go into sequences by first-fit decreasing bin packing, so no other document is cut
  (Ding et al. 2024, "Fewer truncations improve language modeling"), at the price of padding.
- `same_type_pad`: Ziya2's second stage: first-fit, but only documents of the same task type
  (`type_field`, a column or a key of `meta`) share a sequence; the rest is padding.

Boundaries follow trainer/shards.py: `doc_lens` (segments, then the padding), `position_ids`
restarting at each segment, `loss_mask` 0 on padding and on each segment's first token, and
also on a document's leading `prefix_chars_field` characters (a prompt not to train on).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.base import REJECT_OP, GlobalOperator, Params
from operators.registry import register
from trainer.shards import ShardInfo, ShardWriter, loss_mask_from_doc_lens

TOKENS_STAT = "stat.tokens"
NO_TOKENS = "no_tokens"
UNKNOWN = "unknown"
MODES = ("concat", "first_fit", "same_type_pad")
# Scratch token files: one row per document that has tokens, sorted by group.
TOKEN_SCHEMA = pa.schema([
    ("bucket", pa.int32()),
    ("source", pa.string()),
    ("lang", pa.string()),
    ("type", pa.string()),
    ("prefix", pa.int32()),  # leading tokens with loss_mask 0
    ("truncated", pa.int32()),  # tokens cut by max_doc_tokens
    ("tokens", pa.list_(pa.int32())),
])
WRITE_ROWS = 2048  # sequences per shard record batch


class TokenizePackParams(Params):
    tokenizer: str = Field(description="Hugging Face tokenizer folder (tokenizer.json), a tokenizer.json, "
                                       "or a SentencePiece .model (converted)")
    seq_len: int = Field(2048, ge=8, description="tokens per packed sequence")
    mode: Literal["concat", "first_fit", "same_type_pad"] = "concat"
    shard_tokens: int = Field(1 << 24, ge=8, description="target tokens per shard file")
    add_bos: bool = True
    add_eos: bool = Field(True, description="EOS after every document")
    max_doc_tokens: int | None = Field(None, ge=2, description="cut longer documents (counted as truncated)")
    type_field: str = Field("task_type", description="column or meta key of the task type (same_type_pad)")
    prefix_chars_field: str | None = Field(
        None, description="column or meta key: number of leading characters of a document not trained on")
    shuffle: bool = Field(True, description="shuffle the sequences inside each shard (seeded)")
    seed: int = 0
    parallel_encode: bool | None = Field(
        None, description="let the Rust encoder use every core inside each worker; off: one thread per worker, "
                          "as the engine already runs one task per CPU; unset: on when the encode pass has "
                          "fewer tasks than the cluster has CPUs (a few big input files), off otherwise "
                          "(docs/benchmarks.md)")

    @model_validator(mode="after")
    def _sizes(self) -> TokenizePackParams:
        if self.shard_tokens < self.seq_len:
            raise ValueError(f"shard_tokens ({self.shard_tokens}) must be at least seq_len ({self.seq_len})")
        return self


@register
class TokenizePack(GlobalOperator):
    """Tokenize documents and pack them into fixed-length sequences in Arrow shards with a
    manifest; see the module docstring."""

    name = "tokenize_pack"
    Params = TokenizePackParams

    def check_inputs(self) -> list[tuple[str, str]]:
        path = Path(self.params.tokenizer)
        if path.is_dir() and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
            return [("tokenizer", f"tokenizer folder {path} has neither tokenizer.json nor tokenizer.model")]
        if not path.exists():
            return [("tokenizer", f"tokenizer {path} does not exist (train one with `kiln tokenizer train`, or "
                                  "`make tokenizer` for the demo's)")]
        return []


# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class SpecialIds:
    bos: int | None
    eos: int | None
    pad: int
    vocab_size: int


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str):
    """The `tokenizers.Tokenizer` of an HF tokenizer folder, loaded once per process."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_ids(folder: str | os.PathLike) -> SpecialIds:
    """BOS, EOS and padding ids named by an HF tokenizer folder's config. Padding is the pad
    token, else EOS (padding is never trained on, so any id will do)."""
    folder = Path(folder)
    names: dict[str, str | None] = {}
    for config in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / config
        if path.is_file():
            data = json.loads(path.read_text())
            for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                if names.get(key) is None:
                    names[key] = _token_name(data.get(key))
    tokenizer = load_tokenizer(str(folder))

    def lookup(key: str) -> int | None:
        name = names.get(key)
        return tokenizer.token_to_id(name) if name else None

    bos, eos, pad, unk = lookup("bos_token"), lookup("eos_token"), lookup("pad_token"), lookup("unk_token")
    pad_id = next(i for i in (pad, eos, unk, 0) if i is not None)
    return SpecialIds(bos=bos, eos=eos, pad=pad_id, vocab_size=tokenizer.get_vocab_size(with_added_tokens=True))


# --------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """Documents as one flat token array: document i is tokens[offsets[i]:offsets[i+1]]
    (BOS, text, EOS; empty when the text has no token)."""

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, n + 1
    text_tokens: np.ndarray  # int64 per document: tokens of the text alone
    truncated: np.ndarray  # int64 per document: tokens cut by max_doc_tokens
    prefix: np.ndarray  # int32 per document: leading tokens of a prompt not trained on (0: none)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def encode_documents(tokenizer, texts: Sequence[str], *, bos: int | None = None, eos: int | None = None,
                     max_doc_tokens: int | None = None,
                     prefix_chars: Sequence[int | None] | None = None) -> Encoded:
    """Encode `texts` in one multithreaded batch and frame each document as
    [bos] text [eos]. `prefix_chars` (per document, or None) masks the tokens of the leading
    characters, found through the character offsets the encoder reports."""
    n = len(texts)
    with_prefix = prefix_chars is not None and any(p for p in prefix_chars)
    encodings = (tokenizer.encode_batch(list(texts), add_special_tokens=False) if with_prefix
                 else tokenizer.encode_batch_fast(list(texts), add_special_tokens=False))
    id_lists = [e.ids for e in encodings]
    text_tokens = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=n)
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int32, count=int(text_tokens.sum()))
    prefix = np.zeros(n, dtype=np.int32)
    if with_prefix:
        for i, (encoding, chars) in enumerate(zip(encodings, prefix_chars)):
            if chars:
                ends = np.fromiter((end for _, end in encoding.offsets), dtype=np.int64)
                prefix[i] = int(np.count_nonzero(ends <= int(chars)))
    has = text_tokens > 0
    extra = has * ((bos is not None) + (eos is not None))
    lengths = text_tokens + extra
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    is_text = np.ones(len(tokens), dtype=bool)
    starts, ends = offsets[:-1][has], offsets[1:][has]
    if bos is not None:
        tokens[starts] = bos
        is_text[starts] = False
        prefix[has & (prefix > 0)] += 1  # the prompt's tokens come after BOS
    if eos is not None:
        tokens[ends - 1] = eos
        is_text[ends - 1] = False
    tokens[is_text] = flat
    truncated = np.zeros(n, dtype=np.int64)
    if max_doc_tokens is not None and (lengths > max_doc_tokens).any():
        keep = np.minimum(lengths, max_doc_tokens)
        truncated = lengths - keep
        new_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(keep, out=new_offsets[1:])
        tokens = np.concatenate([tokens[s:s + k] for s, k in zip(offsets[:-1], keep)]) if n else tokens
        offsets = new_offsets
        prefix = np.minimum(prefix, keep).astype(np.int32)
    return Encoded(tokens=tokens, offsets=offsets, text_tokens=text_tokens, truncated=truncated, prefix=prefix)


def field_values(batch: pa.Table, name: str) -> list[Any]:
    """A column's values, or else the key `name` of each row's `meta` JSON (readers keep a
    record's other fields there), or else all None."""
    if name in batch.column_names:
        return batch.column(name).to_pylist()
    if "meta" in batch.column_names:
        values = []
        for meta in batch.column("meta").to_pylist():
            try:
                record = orjson.loads(meta) if meta else None
            except orjson.JSONDecodeError:
                record = None
            values.append(record.get(name) if isinstance(record, dict) else None)
        return values
    return [None] * batch.num_rows


class FieldError(ValueError):
    """A column the operator reads holds values it cannot use."""


def string_values(batch: pa.Table, name: str, default: str) -> pa.Array:
    """A string field per row (column, else `meta` key), `default` where null or empty."""
    if name in batch.column_names and pa.types.is_string(batch.column(name).type):
        column = batch.column(name).combine_chunks()
        missing = pc.fill_null(pc.equal(column, ""), True)
        return pc.if_else(missing, pa.scalar(default), column)
    return pa.array([str(v) if v not in (None, "") else default for v in field_values(batch, name)], pa.string())


# Buckets name shard folders (`bucket-NNN/`) and travel as int32: a curriculum has a few.
MAX_BUCKET = 9999
BAD_BUCKET = "bad_bucket"
BAD_PREFIX_CHARS = "bad_prefix_chars"


def _non_negative_int(value: Any, limit: int) -> int | None:
    """`value` as an integer in [0, limit], else None (strings of digits count, 1.0 too)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not number.is_integer() or not 0 <= number <= limit:
        return None
    return int(number)


def bucket_values(batch: pa.Table) -> tuple[np.ndarray, list[str | None]]:
    """Curriculum bucket per row (the `bucket` column, or meta key; 0 where there is none),
    and per row why its value cannot be one (None where it can): a document carrying
    `"../../x"`, `1e12` or `-1` is rejected alone, never the whole stage."""
    if "bucket" in batch.column_names and pa.types.is_integer(batch.column("bucket").type):
        column = pc.fill_null(batch.column("bucket"), 0).to_numpy()
        bad = (column < 0) | (column > MAX_BUCKET)
        problems = [None] * len(column)
        for i in np.flatnonzero(bad).tolist():
            problems[i] = f"bucket must be an integer from 0 to {MAX_BUCKET}, got {int(column[i])}"
        return np.where(bad, 0, column).astype(np.int32), problems
    values = field_values(batch, "bucket")
    out = np.zeros(len(values), dtype=np.int32)
    problems = [None] * len(values)
    for i, value in enumerate(values):
        if value is None:
            continue
        number = _non_negative_int(value, MAX_BUCKET)
        if number is None:
            problems[i] = f"bucket must be an integer from 0 to {MAX_BUCKET}, got {str(value)[:40]!r}"
        else:
            out[i] = number
    return out, problems


def _prefix_chars_values(values: list[Any], name: str) -> tuple[list[int | None], list[str | None]]:
    out: list[int | None] = []
    problems: list[str | None] = []
    for value in values:
        number = None if value is None else _non_negative_int(value, 1 << 40)
        bad = value is not None and number is None
        out.append(number)
        problems.append(f"{name} must be a non-negative integer (characters), got {str(value)[:40]!r}" if bad else None)
    return out, problems


@dataclass
class EncodedBatch:
    """What the first pass makes of one batch: per-row statistics and rejections, and the
    token table (TOKEN_SCHEMA) of the documents that have tokens, in row order."""

    tokens_stat: pa.Array  # int64 per row, null for rows rejected earlier
    reasons: pa.Array  # string per row: no_tokens, bad_bucket, bad_prefix_chars or null
    token_table: pa.Table
    details: pa.Array | None = None  # string per row: what was wrong with a rejected row's values


def encode_batch_table(batch: pa.Table, params: TokenizePackParams, tokenizer, special: SpecialIds) -> EncodedBatch:
    """The first pass on one batch (see the module docstring). Rows another operator already
    rejected are left alone."""
    n = batch.num_rows
    if REJECT_OP in batch.column_names:
        active = pc.is_null(batch.column(REJECT_OP)).to_numpy(zero_copy_only=False)
    else:
        active = np.ones(n, dtype=bool)
    index = np.flatnonzero(active)
    # Only the columns the encoder reads are copied.
    fields = ["text", "source", "lang", "bucket", "meta", params.type_field, params.prefix_chars_field]
    rows = batch.select(list(dict.fromkeys(f for f in fields if f in batch.column_names)))
    if len(index) < n:
        rows = rows.take(pa.array(index, type=pa.int64()))
    # Whitespace alone would still encode to `▁` pieces: such a document has nothing to learn.
    texts = [t if t and not t.isspace() else "" for t in rows.column("text").to_pylist()]
    # Values a document carries into a decision are checked per row: a bad one rejects that
    # document (its text is not encoded), with the value in reject_detail.
    buckets, problems = bucket_values(rows)
    bad_reason: list[str | None] = [BAD_BUCKET if p else None for p in problems]
    prefix_chars = None
    if params.prefix_chars_field:
        prefix_chars, prefix_problems = _prefix_chars_values(field_values(rows, params.prefix_chars_field),
                                                             params.prefix_chars_field)
        for i, problem in enumerate(prefix_problems):
            if problem and not problems[i]:
                problems[i], bad_reason[i] = problem, BAD_PREFIX_CHARS
    for i, problem in enumerate(problems):
        if problem:
            texts[i] = ""
    encoded = encode_documents(tokenizer, texts, bos=special.bos if params.add_bos else None,
                               eos=special.eos if params.add_eos else None,
                               max_doc_tokens=params.max_doc_tokens, prefix_chars=prefix_chars)
    tokens_stat = np.zeros(n, dtype=np.int64)
    tokens_stat[index] = encoded.text_tokens
    reasons = np.full(n, None, dtype=object)
    reasons[index[encoded.text_tokens == 0]] = NO_TOKENS
    details = np.full(n, None, dtype=object)
    for i, problem in enumerate(problems):
        if problem:
            reasons[index[i]], details[index[i]] = bad_reason[i], problem

    keep = np.flatnonzero(encoded.text_tokens > 0)
    kept = rows.drop_columns(["text"])
    if len(keep) < rows.num_rows:
        kept = kept.take(pa.array(keep, type=pa.int64()))
    types = (string_values(kept, params.type_field, "") if params.mode == "same_type_pad"
             else pa.nulls(len(keep), pa.string()).fill_null(""))
    lengths = encoded.lengths[keep]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = encoded.offsets[:-1][keep]
    flat = (np.concatenate([encoded.tokens[s:s + k] for s, k in zip(starts, lengths)])
            if len(keep) < len(texts) else encoded.tokens)
    token_table = pa.Table.from_arrays([
        pa.array(buckets[keep], type=pa.int32()),
        string_values(kept, "source", UNKNOWN),
        string_values(kept, "lang", UNKNOWN),
        types,
        pa.array(encoded.prefix[keep], type=pa.int32()),
        pa.array(encoded.truncated[keep], type=pa.int32()),
        _list_array(flat, offsets),
    ], schema=TOKEN_SCHEMA)
    stat = pa.array(tokens_stat, type=pa.int64(), mask=~active)
    return EncodedBatch(tokens_stat=stat, reasons=pa.array(reasons.tolist(), type=pa.string()),
                        token_table=token_table, details=pa.array(details.tolist(), type=pa.string()))


def _list_array(flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    if offsets[-1] >= 2**31:
        raise FieldError("a single batch holds 2^31 tokens or more; lower ray.batch_size")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=pa.int32()))


def group_token_table(tables: Sequence[pa.Table]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Token tables of one write task as one table sorted by group (stable: document order
    is kept inside a group), with each group's rows, documents, tokens (by language) and
    truncated tokens."""
    table = pa.concat_tables(tables) if tables else TOKEN_SCHEMA.empty_table()
    if table.num_rows == 0:
        return table, []
    table = table.take(pc.sort_indices(table, sort_keys=[("bucket", "ascending"), ("source", "ascending")]))
    lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
    keys = pa.table({"bucket": table.column("bucket"), "source": table.column("source"),
                     "lang": table.column("lang"), "tokens": pa.array(lengths),
                     "truncated": table.column("truncated").cast(pa.int64())})
    by_lang = keys.group_by(["bucket", "source", "lang"], use_threads=False).aggregate([("tokens", "sum")]).to_pylist()
    buckets = table.column("bucket").to_numpy()
    sources = table.column("source").to_pylist()
    truncated = keys.column("truncated").to_numpy()
    groups = []
    start = 0
    for i in range(1, table.num_rows + 1):
        if i == table.num_rows or buckets[i] != buckets[start] or sources[i] != sources[start]:
            bucket, source = int(buckets[start]), sources[start]
            groups.append({
                "bucket": bucket, "source": source, "rows": [start, i], "docs": i - start,
                "tokens": int(lengths[start:i].sum()),
                "truncated": int(truncated[start:i].sum()),
                "tokens_by_lang": {r["lang"]: int(r["tokens_sum"]) for r in by_lang
                                   if r["bucket"] == bucket and r["source"] == source},
            })
            start = i
    return table, groups


def write_token_file(table: pa.Table, path: str | os.PathLike) -> None:
    """Scratch token table as an Arrow IPC file (memory-mapped by the second pass)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, TOKEN_SCHEMA) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def read_token_rows(path: str | os.PathLike, start: int, stop: int) -> pa.Table:
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all().slice(start, stop - start)


# --------------------------------------------------------------------------- packing


@dataclass
class Packed:
    """Packed sequences: (m, seq_len) ids and loss mask, segment lengths per sequence (the
    trailing padding being the last segment), padding per sequence."""

    input_ids: np.ndarray
    doc_lens: list[list[int]]
    loss_mask: np.ndarray
    padding: np.ndarray
    continued_segments: int = 0  # segments that continue a document cut at a sequence start
    documents_split: int = 0  # documents spread over more than one segment

    @classmethod
    def empty(cls, seq_len: int) -> Packed:
        return cls(np.zeros((0, seq_len), np.int32), [], np.zeros((0, seq_len), np.int8), np.zeros(0, np.int64))

    @property
    def sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padding_tokens(self) -> int:
        return int(self.padding.sum())

    @staticmethod
    def concat(parts: Sequence[Packed], seq_len: int) -> Packed:
        parts = [p for p in parts if p.sequences]
        if not parts:
            return Packed.empty(seq_len)
        if len(parts) == 1:
            return parts[0]
        return Packed(np.concatenate([p.input_ids for p in parts]), [d for p in parts for d in p.doc_lens],
                      np.concatenate([p.loss_mask for p in parts]), np.concatenate([p.padding for p in parts]),
                      sum(p.continued_segments for p in parts), sum(p.documents_split for p in parts))

    def permuted(self, order: np.ndarray) -> Packed:
        return Packed(self.input_ids[order], [self.doc_lens[i] for i in order], self.loss_mask[order],
                      self.padding[order], self.continued_segments, self.documents_split)


def _target_mask(length: int, starts: np.ndarray, prefix: np.ndarray) -> np.ndarray | None:
    """1 where a token may be a target as far as prompts go; None when nothing is masked."""
    if not len(prefix) or not prefix.any():
        return None
    mask = np.ones(length, dtype=np.int8)
    for start, count in zip(starts[prefix > 0], prefix[prefix > 0]):
        mask[max(0, start):max(0, start + count)] = 0
    return mask


def pack_stream(tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, pad_id: int,
                target: np.ndarray | None = None, doc_ends: np.ndarray | None = None) -> Packed:
    """`concat` mode: cut a token stream into sequences of `seq_len`. `doc_starts` are the
    positions where documents begin; a cut inside a document starts a continued segment.
    `doc_ends` (of documents starting in the stream) count the documents split."""
    total = len(tokens)
    if total == 0:
        return Packed.empty(seq_len)
    m = math.ceil(total / seq_len)
    pad = m * seq_len - total
    ids = np.full(m * seq_len, pad_id, dtype=np.int32)
    ids[:total] = tokens
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    doc_starts = doc_starts[(doc_starts >= 0) & (doc_starts < total)]
    seq_starts = np.arange(0, total, seq_len, dtype=np.int64)
    cuts = np.union1d(doc_starts, seq_starts)
    seg_lens = np.diff(np.append(cuts, total))
    per_seq = np.bincount(cuts // seq_len, minlength=m)
    bounds = np.cumsum(per_seq)[:-1]
    doc_lens = [part.tolist() for part in np.split(seg_lens, bounds)]
    if pad:
        doc_lens[-1].append(pad)
    mask = np.ones(m * seq_len, dtype=np.int8)
    mask[cuts] = 0
    if pad:
        mask[total:] = 0
    if target is not None:
        mask[:total] &= target
    split = 0
    if doc_ends is not None and len(doc_starts):
        ends = np.asarray(doc_ends, dtype=np.int64)
        split = int(np.count_nonzero(doc_starts // seq_len != (ends - 1) // seq_len))
    padding = np.zeros(m, dtype=np.int64)
    padding[-1] = pad
    return Packed(ids.reshape(m, seq_len), doc_lens, mask.reshape(m, seq_len), padding,
                  continued_segments=int(len(cuts) - len(doc_starts)), documents_split=split)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, int]:
    """Bin of each item under first-fit decreasing: items longest first, each into the
    lowest-numbered bin with room. A max segment tree over the bins' free space finds that
    bin in O(log n). Returns (bin per item, number of bins)."""
    sizes = [int(x) for x in lengths]
    n = len(sizes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    if max(sizes) > capacity or min(sizes) < 1:
        raise ValueError(f"items must be between 1 and {capacity} long")
    width = 1
    while width < n:
        width *= 2
    tree = [0] * (2 * width)
    for i in range(n):
        tree[width + i] = capacity
    for node in range(width - 1, 0, -1):
        tree[node] = max(tree[2 * node], tree[2 * node + 1])
    assignment = np.empty(n, dtype=np.int64)
    used = 0
    for item in sorted(range(n), key=lambda i: -sizes[i]):
        need = sizes[item]
        node = 1
        while node < width:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        assignment[item] = node - width
        used = max(used, node - width + 1)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return assignment, used


def pack_first_fit(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seq_len: int, pad_id: int,
                   target: np.ndarray | None = None) -> Packed:
    """`first_fit` mode for the documents tokens[starts[i]:starts[i]+lengths[i]]: whole
    `seq_len` pieces of long documents become sequences of their own, the rests and the short
    documents are bin-packed (first-fit decreasing) and each sequence is padded."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    full = lengths // seq_len
    rest = lengths % seq_len
    # Whole pieces: sequence k of document i starts at starts[i] + k * seq_len.
    piece_doc = np.repeat(np.arange(len(lengths)), full)
    piece_k = np.arange(int(full.sum())) - np.repeat(np.cumsum(full) - full, full)
    piece_starts = starts[piece_doc] + piece_k * seq_len
    item_docs = np.flatnonzero(rest > 0)
    item_starts = starts[item_docs] + full[item_docs] * seq_len
    item_lens = rest[item_docs]
    bins, n_bins = first_fit_decreasing(item_lens, seq_len)
    m = len(piece_starts) + n_bins
    ids = np.full((m, seq_len), pad_id, dtype=np.int32)
    mask = np.ones((m, seq_len), dtype=np.int8)
    padding = np.zeros(m, dtype=np.int64)
    doc_lens: list[list[int]] = [[seq_len] for _ in range(len(piece_starts))]
    if len(piece_starts):
        gather = piece_starts[:, None] + np.arange(seq_len)[None, :]
        ids[: len(piece_starts)] = tokens[gather]
        if target is not None:
            mask[: len(piece_starts)] = target[gather]
        mask[: len(piece_starts), 0] = 0
    fill = np.zeros(n_bins, dtype=np.int64)
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for item in sorted(range(len(item_lens)), key=lambda i: -int(item_lens[i])):  # FFD order
        members[bins[item]].append(item)
    for b, items in enumerate(members):
        row = len(piece_starts) + b
        lens = []
        for item in items:
            s, n = int(item_starts[item]), int(item_lens[item])
            at = int(fill[b])
            ids[row, at:at + n] = tokens[s:s + n]
            if target is not None:
                mask[row, at:at + n] = target[s:s + n]
            fill[b] += n
            lens.append(n)
        pad = seq_len - int(fill[b])
        if pad:
            lens.append(pad)
        mask[row] &= loss_mask_from_doc_lens(lens, pad)
        doc_lens.append(lens)
        padding[row] = pad
    continued = int(full.sum() - np.count_nonzero(full)) + int(np.count_nonzero((full > 0) & (rest > 0)))
    return Packed(ids, doc_lens, mask, padding, continued_segments=continued,
                  documents_split=int(np.count_nonzero(lengths > seq_len)))


def pack_same_type(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, types: Sequence[str],
                   seq_len: int, pad_id: int, target: np.ndarray | None = None) -> Packed:
    """`same_type_pad` mode: first-fit inside each task type, so a sequence never mixes types."""
    types = np.asarray(types, dtype=object)
    parts = []
    for kind in sorted(set(types.tolist())):
        pick = np.flatnonzero(types == kind)
        parts.append(pack_first_fit(tokens, np.asarray(starts)[pick], np.asarray(lengths)[pick], seq_len, pad_id, target))
    return Packed.concat(parts, seq_len)


# --------------------------------------------------------------------------- shards


def _slug(source: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"
    if slug != source:  # keep distinct sources apart even when their slugs meet
        slug += "-" + hashlib.sha1(source.encode()).hexdigest()[:6]
    return slug


def shard_path(bucket: int, source: str, index: int) -> str:
    return f"bucket-{bucket:03d}/{_slug(source)}-{index:05d}.arrow"


def plan_shards(files: Sequence[tuple[str, Sequence[dict[str, Any]]]], seq_len: int, mode: str,
                shard_tokens: int) -> list[dict[str, Any]]:
    """Cut each group's token stream (its documents in file order, then row order) into
    shards, from the per-file group totals of the first pass alone.

    concat: shard j holds the stream's tokens [j*K*seq_len, (j+1)*K*seq_len) with K the
    sequences per shard, so cuts fall on sequence starts and no shard but a group's last has
    padding. Other modes: shard j packs the documents that *start* in [j*T, (j+1)*T)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for name, summaries in files:
        for g in summaries:
            key = (int(g["bucket"]), str(g["source"]))
            parts = groups.setdefault(key, [])
            offset = parts[-1]["offset"] + parts[-1]["tokens"] if parts else 0
            parts.append({"file": name, "rows": list(g["rows"]), "tokens": int(g["tokens"]), "offset": offset})
    step = max(1, shard_tokens // seq_len) * seq_len if mode == "concat" else shard_tokens
    plans = []
    for (bucket, source), parts in sorted(groups.items()):
        total = parts[-1]["offset"] + parts[-1]["tokens"]
        for j in range(math.ceil(total / step)):
            start, stop = j * step, min(total, (j + 1) * step)
            overlapping = [p for p in parts if p["offset"] < stop and p["offset"] + p["tokens"] > start]
            plans.append({"bucket": bucket, "source": source, "index": j, "path": shard_path(bucket, source, j),
                          "start": start, "stop": stop, "files": overlapping})
    return plans


@dataclass
class ShardResult:
    info: ShardInfo | None  # None when no document starts in the range (first_fit edge case)
    documents: int = 0
    content_tokens: int = 0
    continued_segments: int = 0
    documents_split: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_range(token_dir: str | os.PathLike, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The documents of a plan's files: flat tokens, their group-stream start offsets,
    lengths, prompt prefixes and types."""
    token_parts, starts, lengths, prefixes, types = [], [], [], [], []
    base = 0
    for part in plan["files"]:
        rows = read_token_rows(Path(token_dir) / part["file"], *part["rows"])
        column = rows.column("tokens").combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.values.to_numpy()
        token_parts.append(values[offsets[0]:offsets[-1]])
        local = offsets[:-1] - offsets[0]
        lengths.append(np.diff(offsets))
        starts.append(part["offset"] + local)  # group coordinates
        prefixes.append(rows.column("prefix").to_numpy())
        types.extend(rows.column("type").to_pylist())
        base += int(offsets[-1] - offsets[0])
    if not token_parts:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.int32), empty, empty, np.zeros(0, np.int32), []
    return (np.concatenate(token_parts), np.concatenate(starts), np.concatenate(lengths),
            np.concatenate(prefixes), types)


def pack_plan(token_dir: str | os.PathLike, plan: dict[str, Any], seq_len: int, mode: str, pad_id: int,
              shuffle: bool = False, seed: int = 0) -> tuple[Packed, int, int]:
    """Pack one shard plan. Returns (sequences, documents starting in it, their tokens)."""
    tokens, group_starts, lengths, prefixes, types = load_range(token_dir, plan)
    first = int(group_starts[0]) if len(group_starts) else 0
    local_starts = group_starts - first  # positions in `tokens`
    start, stop = int(plan["start"]), int(plan["stop"])
    here = (group_starts >= start) & (group_starts < stop)
    target = _target_mask(len(tokens), local_starts, prefixes)
    if mode == "concat":
        lo, hi = start - first, stop - first
        stream = tokens[lo:hi]
        packed = pack_stream(stream, local_starts[here] - lo, seq_len, pad_id,
                             None if target is None else target[lo:hi],
                             doc_ends=(local_starts + lengths)[here] - lo)
        content = len(stream)
    else:
        pick = np.flatnonzero(here)
        if mode == "same_type_pad":
            packed = pack_same_type(tokens, local_starts[pick], lengths[pick], [types[i] for i in pick],
                                    seq_len, pad_id, target)
        else:
            packed = pack_first_fit(tokens, local_starts[pick], lengths[pick], seq_len, pad_id, target)
        content = int(lengths[pick].sum())
    if shuffle and packed.sequences > 1:
        key = int.from_bytes(hashlib.sha256(f"{plan['bucket']}|{plan['source']}|{plan['index']}".encode()).digest()[:8], "little")
        packed = packed.permuted(np.random.default_rng([seed, key]).permutation(packed.sequences))
    return packed, int(np.count_nonzero(here)), content


def write_shard(packed: Packed, path: str | os.PathLike, seq_len: int, bucket: int, source: str,
                relative_to: str | os.PathLike) -> ShardInfo:
    writer = ShardWriter(path, seq_len, bucket, source, relative_to=relative_to)
    try:
        for lo in range(0, packed.sequences, WRITE_ROWS):
            hi = min(lo + WRITE_ROWS, packed.sequences)
            writer.write(packed.input_ids[lo:hi], packed.doc_lens[lo:hi], packed.loss_mask[lo:hi], packed.padding[lo:hi])
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def pack_shard(token_dir: str | os.PathLike, shards_dir: str | os.PathLike, plan: dict[str, Any], seq_len: int,
               mode: str, pad_id: int, shuffle: bool = False, seed: int = 0) -> ShardResult:
    """The second pass for one shard: pack its plan and write `shards_dir/plan['path']`."""
    packed, documents, content = pack_plan(token_dir, plan, seq_len, mode, pad_id, shuffle, seed)
    if not packed.sequences:
        return ShardResult(info=None)
    info = write_shard(packed, Path(shards_dir) / plan["path"], seq_len, plan["bucket"], plan["source"], shards_dir)
    return ShardResult(info=info, documents=documents, content_tokens=content,
                       continued_segments=packed.continued_segments, documents_split=packed.documents_split)
