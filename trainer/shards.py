"""The kiln shard format: packed token sequences in Arrow IPC stream files, and manifest.json.

This module is the contract between the pipeline's `tokenize_pack` stage (which writes shards)
and the trainer (which reads them); both import it, neither defines the format elsewhere.

A shard is an Arrow IPC *stream* file (`pa.ipc.new_stream`), which pyarrow and
`datasets.Dataset.from_file` open memory-mapped. Each row is one packed sequence of exactly
`seq_len` tokens:

- `input_ids`    list<int32>: the tokens; padding uses the manifest's `pad_id`.
- `position_ids` list<int32>: position inside its segment, restarting at 0 where a document
                 (or the part of a document continued from the previous sequence, or the
                 trailing padding) begins. Attention never crosses a restart.
- `doc_lens`     list<int32>: the segment lengths in order; they sum to `seq_len`.
- `loss_mask`    list<int8>:  1 where the token is a training target. 0 on padding and on the
                 first token of every segment (nothing before it in the segment predicts it).
- `bucket`       int32: curriculum bucket, 0 the easiest.
- `source`       string: the corpus source all documents of the sequence come from.

`manifest.json` sits at the top of the shard folder; every path in it is relative to that
folder, and the tokenizer is copied inside it so a shard folder is self-contained.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT_NAME = "kiln-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("doc_lens", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
        pa.field("bucket", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


class ShardFormatError(ValueError):
    """A shard folder, manifest or shard file that does not follow the kiln format."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Hash of a file, or of every file in a folder (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def positions_from_doc_lens(doc_lens: Sequence[int]) -> np.ndarray:
    """`position_ids` for a sequence made of segments of the given lengths."""
    lens = np.asarray(doc_lens, dtype=np.int64)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    return (np.arange(int(lens.sum())) - starts).astype(np.int32)


def loss_mask_from_doc_lens(doc_lens: Sequence[int], pad_len: int = 0) -> np.ndarray:
    """1 on every token but the first of each segment and the trailing `pad_len` tokens."""
    lens = np.asarray(doc_lens, dtype=np.int64)
    mask = np.ones(int(lens.sum()), dtype=np.int8)
    mask[(np.cumsum(lens) - lens)[lens > 0]] = 0
    if pad_len:
        mask[-pad_len:] = 0
    return mask


@dataclass
class TokenizerInfo:
    path: str  # relative to the manifest's folder
    sha256: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int


@dataclass
class ShardInfo:
    path: str  # relative to the manifest's folder
    bucket: int
    source: str
    sequences: int
    tokens: int  # sequences * seq_len
    target_tokens: int  # tokens with loss_mask 1
    padding_tokens: int
    sha256: str = ""


@dataclass
class Manifest:
    seq_len: int
    tokenizer: TokenizerInfo
    shards: list[ShardInfo]
    pack_mode: str = "concat"
    curriculum: list[int] = field(default_factory=lambda: [0])  # bucket order, easy to hard
    bucket_names: dict[str, str] = field(default_factory=dict)
    tokens_by_bucket: dict[str, int] = field(default_factory=dict)
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    tokens_by_lang: dict[str, int] = field(default_factory=dict)
    documents: int = 0
    padding_tokens: int = 0
    truncated_tokens: int = 0
    pipeline_config_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        if data.get("format") != FORMAT_NAME:
            raise ShardFormatError(f"{where}: not a kiln shard manifest (format={data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ShardFormatError(f"{where}: manifest version {data.get('version')} is not {FORMAT_VERSION}")
        try:
            fields = dict(data)
            fields["tokenizer"] = TokenizerInfo(**fields["tokenizer"])
            fields["shards"] = [ShardInfo(**s) for s in fields["shards"]]
            return cls(**fields)
        except (KeyError, TypeError) as e:
            raise ShardFormatError(f"{where}: malformed manifest: {e}") from None

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> Manifest:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists():
            raise ShardFormatError(f"no shard manifest at {path} (run the pipeline's tokenize_pack stage first)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ShardFormatError(f"{path}: invalid JSON: {e}") from None
        return cls.from_json(data, str(path))


class ShardWriter:
    """Writes packed sequences to one shard file, atomically (temporary name, then rename)."""

    def __init__(self, path: str | os.PathLike, seq_len: int, bucket: int, source: str,
                 relative_to: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self.seq_len = seq_len
        self.bucket = bucket
        self.source = source
        self.relative_to = Path(relative_to) if relative_to else self.path.parent
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pa.ipc.new_stream(self._sink, SCHEMA)
        self.sequences = 0
        self.target_tokens = 0
        self.padding_tokens = 0

    def write(self, input_ids: np.ndarray, doc_lens: Sequence[Sequence[int]], loss_mask: np.ndarray,
              padding: Sequence[int]) -> None:
        """Append sequences: `input_ids` and `loss_mask` shaped (n, seq_len); `doc_lens` one
        list per sequence; `padding` the number of trailing pad tokens per sequence."""
        input_ids = np.asarray(input_ids, dtype=np.int32)
        loss_mask = np.asarray(loss_mask, dtype=np.int8)
        n = input_ids.shape[0]
        if input_ids.ndim != 2 or input_ids.shape[1] != self.seq_len or loss_mask.shape != input_ids.shape:
            raise ShardFormatError(f"sequences must be shaped (n, {self.seq_len}), got {input_ids.shape}")
        positions = np.stack([positions_from_doc_lens(d) for d in doc_lens]) if n else input_ids
        if positions.shape != input_ids.shape:
            raise ShardFormatError("doc_lens do not sum to seq_len")
        offsets = pa.array(np.arange(0, (n + 1) * self.seq_len, self.seq_len, dtype=np.int32))
        batch = pa.record_batch(
            [
                pa.ListArray.from_arrays(offsets, pa.array(input_ids.reshape(-1))),
                pa.ListArray.from_arrays(offsets, pa.array(positions.reshape(-1).astype(np.int32))),
                pa.array([list(map(int, d)) for d in doc_lens], type=pa.list_(pa.int32())),
                pa.ListArray.from_arrays(offsets, pa.array(loss_mask.reshape(-1))),
                pa.array(np.full(n, self.bucket, dtype=np.int32)),
                pa.array([self.source] * n, type=pa.string()),
            ],
            schema=SCHEMA,
        )
        self._writer.write_batch(batch)
        self.sequences += n
        self.target_tokens += int(loss_mask.sum())
        self.padding_tokens += int(np.sum(padding))

    def close(self) -> ShardInfo:
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self.path)
        return ShardInfo(
            path=str(self.path.relative_to(self.relative_to)),
            bucket=self.bucket,
            source=self.source,
            sequences=self.sequences,
            tokens=self.sequences * self.seq_len,
            target_tokens=self.target_tokens,
            padding_tokens=self.padding_tokens,
            sha256=sha256_file(self.path),
        )

    def abort(self) -> None:
        self._writer.close()
        self._sink.close()
        self._tmp.unlink(missing_ok=True)


def read_shard(path: str | os.PathLike) -> pa.Table:
    """A shard as a pyarrow Table, memory-mapped; a clear error when it is not one."""
    try:
        with pa.memory_map(str(path), "r") as source:
            table = pa.ipc.open_stream(source).read_all()
    except FileNotFoundError:
        raise ShardFormatError(f"shard {path} is missing") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardFormatError(f"shard {path} is corrupt or not an Arrow IPC stream: {e}") from None
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ShardFormatError(f"shard {path} lacks columns {missing}")
    return table


def iter_shards(folder: str | os.PathLike, manifest: Manifest | None = None) -> Iterator[tuple[ShardInfo, pa.Table]]:
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    for info in manifest.shards:
        yield info, read_shard(folder / info.path)


def validate_shards(folder: str | os.PathLike, check_hashes: bool = True) -> Manifest:
    """Check that every shard exists, has the format's columns and lengths, and matches the
    manifest's counts (and hashes). Raises ShardFormatError naming the first problem."""
    folder = Path(folder)
    manifest = Manifest.load(folder)
    for info in manifest.shards:
        path = folder / info.path
        if not path.is_file():
            raise ShardFormatError(f"shard {path}, listed in {folder / MANIFEST_NAME}, is missing: restore it, or pack "
                                   "the shards again")
        if check_hashes and info.sha256 and sha256_file(path) != info.sha256:
            raise ShardFormatError(f"shard {path} does not match the manifest's sha256 (changed or corrupt)")
        table = read_shard(path)
        if table.num_rows != info.sequences:
            raise ShardFormatError(f"shard {path} has {table.num_rows} sequences, manifest says {info.sequences}")
        lengths = np.unique(pc.list_value_length(table.column("input_ids")).to_numpy())
        if len(lengths) and (len(lengths) != 1 or lengths[0] != manifest.seq_len):
            raise ShardFormatError(f"shard {path} has sequence lengths {lengths.tolist()}, not {manifest.seq_len}")
    return manifest


def tokenizer_vocab_size(folder: str | os.PathLike) -> int | None:
    """Tokens of an HF tokenizer folder with added tokens, counted as tokenize_pack counts
    them for the manifest; None when the folder has no tokenizer.json to count from."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)


def check_tokenizer(folder: str | os.PathLike, manifest: Manifest) -> None:
    """The tokenizer in the shard folder must be the one the shards were made with (the
    manifest's sha256 and vocab size): another one trains on ids that mean other pieces and
    ships the wrong tokenizer with the model. Raises ShardFormatError saying which to use."""
    info = manifest.tokenizer
    tok_dir = Path(folder) / info.path
    wanted = f"the tokenizer the shards were packed with (sha256 {info.sha256[:12]}, {info.vocab_size:,} tokens)"
    if not tok_dir.is_dir() or not any(tok_dir.iterdir()):
        raise ShardFormatError(f"{tok_dir}, the manifest's tokenizer, is missing: put {wanted} there")
    if info.sha256 and sha256_tree(tok_dir) != info.sha256:
        vocab = tokenizer_vocab_size(tok_dir)
        found = f"{vocab:,} tokens, " if vocab is not None else ""
        raise ShardFormatError(f"{tok_dir} is not {wanted}: it has {found}sha256 {sha256_tree(tok_dir)[:12]}; use "
                               "that tokenizer, or pack the shards again with this one")
    vocab = tokenizer_vocab_size(tok_dir)
    if vocab is not None and vocab != info.vocab_size:
        raise ShardFormatError(f"{tok_dir} has {vocab:,} tokens but {folder}/{MANIFEST_NAME} says {info.vocab_size:,}: "
                               f"the manifest was edited; use {wanted.split(' (')[0]}, or pack the shards again")
