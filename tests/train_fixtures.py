"""Tiny, self-made training inputs for the trainer's tests: a letter-level BPE tokenizer (and an
expanded one that appends merged pieces), shards of learnable documents written with
trainer.shards.ShardWriter, and a small LLaMA config. Nothing depends on the demo run."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from trainer.shards import Manifest, ShardWriter, TokenizerInfo, sha256_tree

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPECIAL = ["<unk>", "<s>", "</s>"]
BOS, EOS, PAD = 1, 2, 2
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def save_tokenizer(folder: Path, extra: list[str] = (), shuffle: bool = False) -> Path:
    """A character BPE over a-z; `extra` pieces (e.g. "ab", "abc") are appended as merges, like a
    vocabulary expansion. `shuffle` gives a tokenizer whose ids mean other letters."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = list(LETTERS[::-1]) if shuffle else list(LETTERS)
    vocab = {p: i for i, p in enumerate(SPECIAL + letters)}
    merges = []
    for piece in extra:
        vocab[piece] = len(vocab)
        merges.append((piece[:-1], piece[-1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def documents(n: int, seed: int, vocab: int = 29, lo: int = 6, hi: int = 40) -> list[np.ndarray]:
    """Learnable documents: arithmetic runs over the letters (start and stride drawn per document)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length, start, stride = int(rng.integers(lo, hi)), int(rng.integers(0, 26)), int(rng.integers(1, 4))
        docs.append(3 + (start + stride * np.arange(length)) % 26)
    return docs


def pack(docs: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, list[list[int]], np.ndarray, list[int]]:
    """Concat packing (BOS doc EOS ...), cut every seq_len tokens, like the pipeline's concat mode."""
    from trainer.shards import loss_mask_from_doc_lens

    stream, bounds = [], []
    for d in docs:
        bounds.append(len(stream))
        stream.extend([BOS, *d.tolist(), EOS])
    starts = set(bounds)
    rows = len(stream) // seq_len
    ids = np.array(stream[: rows * seq_len], dtype=np.int32).reshape(rows, seq_len)
    doc_lens, masks = [], []
    for r in range(rows):
        cuts = [0] + [s - r * seq_len for s in sorted(starts) if r * seq_len < s < (r + 1) * seq_len] + [seq_len]
        lens = [b - a for a, b in itertools.pairwise(cuts) if b > a]
        doc_lens.append(lens)
        masks.append(loss_mask_from_doc_lens(lens))
    return ids, doc_lens, np.stack(masks), [0] * rows


def write_shards(folder: Path, tokenizer: Path | None = None, seq_len: int = 32, buckets: int = 2,
                 docs_per_bucket: int = 60, sources: tuple[str, ...] = ("web", "books"), seed: int = 0) -> Path:
    """A complete shard folder: one shard per (bucket, source), manifest.json, tokenizer inside."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "tokenizer"
    if tokenizer is None:
        save_tokenizer(tok_dir)
    else:
        shutil.copytree(tokenizer, tok_dir, dirs_exist_ok=True)
    infos = []
    for b in range(buckets):
        for k, source in enumerate(sources):
            docs = documents(docs_per_bucket, seed * 1000 + b * 10 + k, lo=6 + 10 * b, hi=20 + 20 * b)
            ids, lens, mask, padding = pack(docs, seq_len)
            w = ShardWriter(folder / f"bucket-{b:03d}" / f"{source}-00000.arrow", seq_len, b, source, relative_to=folder)
            w.write(ids[: len(ids) // 2], lens[: len(ids) // 2], mask[: len(ids) // 2], padding[: len(ids) // 2])
            w.write(ids[len(ids) // 2:], lens[len(ids) // 2:], mask[len(ids) // 2:], padding[len(ids) // 2:])
            infos.append(w.close())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    manifest = Manifest(seq_len=seq_len, shards=infos, curriculum=list(range(buckets)),
                        tokenizer=TokenizerInfo(path="tokenizer", sha256=sha256_tree(tok_dir), vocab_size=len(tok),
                                                bos_id=BOS, eos_id=EOS, pad_id=PAD))
    manifest.save(folder)
    return folder


def train_config(shards: Path, output: Path, **train: Any) -> dict[str, Any]:
    return {
        "output": str(output),
        "model": {"config": dict(TINY_MODEL)},
        "data": {"shards": str(shards), "order": "curriculum"},
        "train": {"seed": 0, "micro_batch_size": 4, "max_steps": 8, "lr": 1e-2, "warmup_steps": 2,
                  "log_every": 1, "checkpoint_every": 0, "progress": False, **train},
    }
