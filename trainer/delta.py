"""Weight deltas: publish a continually-pretrained model as `target - base` (the way Chinese
LLaMA/Ziya releases ship under the base model's licence), and rebuild it as `base + delta`.

- Tensors present in both with the same shape are stored as fp32 differences. For bf16/fp16
  checkpoints the round trip is exact (the difference of two bf16 numbers fits in fp32).
- Tensors whose shape changed (embed_tokens / lm_head after vocabulary expansion) or that the
  base lacks are carried whole, in the target's dtype.
- The delta records a fingerprint of every base tensor it was made against (shape plus a hash
  of its first bytes), so applying it to another base fails with a clear error instead of
  producing a silently wrong model.

Both directions stream tensor by tensor through safetensors and write shards of at most
`shard_bytes`, so a 13B model never has to be in memory twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from common.errors import InputError

FORMAT = "kiln-delta"
INDEX = "delta.index.json"
CARRY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "added_tokens.json")


class Weights:
    """The tensors of an HF folder (model.safetensors or a sharded index), opened lazily."""

    def __init__(self, folder: str | os.PathLike, what: str) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{what}: {self.folder} is not a folder")
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise InputError(f"{what}: {self.folder} has no *.safetensors weights")
        self._where: dict[str, object] = {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                self._where[name] = handle

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


def fingerprint(t: torch.Tensor) -> str:
    head = t.reshape(-1)[:4096].contiguous().view(torch.uint8).numpy().tobytes()
    return f"{list(t.shape)}:{t.dtype}:{hashlib.sha256(head).hexdigest()[:16]}"


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], out: Path, prefix: str, shard_bytes: int,
                  metadata: dict[str, str]) -> dict[str, str]:
    """Tensors into prefix-00001-of-0000N.safetensors files; returns name -> file."""
    from safetensors.torch import save_file

    written: list[tuple[Path, list[str]]] = []
    chunk: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal chunk, size
        if chunk:
            path = out / f"{prefix}-{len(written) + 1:05d}.safetensors.tmp"
            save_file(chunk, str(path), metadata=metadata)
            written.append((path, list(chunk)))
        chunk, size = {}, 0

    for name, t in tensors:
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        chunk[name] = t.contiguous()
        size += t.numel() * t.element_size()
    flush()
    weight_map = {}
    for i, (path, names) in enumerate(written, 1):
        final = out / f"{prefix}-{i:05d}-of-{len(written):05d}.safetensors"
        os.replace(path, final)
        weight_map.update(dict.fromkeys(names, final.name))
    return weight_map


def _copy_side_files(src: Path, dest: Path) -> None:
    for name in CARRY_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)


def make_delta(base: str | os.PathLike, target: str | os.PathLike, out: str | os.PathLike,
               shard_bytes: int = 2 << 30) -> Path:
    b, t = Weights(base, "base"), Weights(target, "target")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    carried, prints = [], {}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name in t.names():
            tgt = t.get(name)
            if name in b and (bt := b.get(name)).shape == tgt.shape:
                prints[name] = fingerprint(bt)
                yield name, tgt.float() - bt.float()
            else:
                carried.append(name)
                yield name, tgt

    weight_map = _write_shards(tensors(), out, "delta", shard_bytes, {"format": FORMAT})
    # One dtype for the rebuilt model: the target's (HF checkpoints are saved in one dtype).
    dtype = str(t.get(t.names()[0]).dtype).removeprefix("torch.")
    index = {"format": FORMAT, "version": 1, "carried": carried, "base_fingerprints": prints,
             "target_dtype": dtype, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    _copy_side_files(Path(target), out)
    return out


def apply_delta(base: str | os.PathLike, delta: str | os.PathLike, out: str | os.PathLike,
                shard_bytes: int = 5 << 30) -> Path:
    from safetensors import safe_open

    delta = Path(delta)
    if not (delta / INDEX).exists():
        raise InputError(f"delta: {delta} has no {INDEX} (make one with `kiln weights make-delta`)")
    index = json.loads((delta / INDEX).read_text())
    if index.get("format") != FORMAT:
        raise InputError(f"delta: {delta / INDEX} is not a kiln delta")
    b = Weights(base, "base")
    for name, expected in index["base_fingerprints"].items():
        if name not in b:
            raise InputError(f"base: {b.folder} lacks {name}; this delta was made against another model")
        if fingerprint(b.get(name)) != expected:
            raise InputError(f"base: {b.folder} is not the model this delta was made against ({name} differs)")
    dtype = getattr(torch, index["target_dtype"])
    carried = set(index["carried"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, file in sorted(index["weight_map"].items()):
            with safe_open(str(delta / file), framework="pt") as h:
                d = h.get_tensor(name)
            yield name, d if name in carried else (b.get(name).float() + d).to(dtype)

    weight_map = _write_shards(tensors(), out, "model", shard_bytes, {"format": "pt"})
    _copy_side_files(delta, out)
    files = sorted(set(weight_map.values()))
    if len(files) == 1:
        os.replace(out / files[0], out / "model.safetensors")
    else:
        total = sum((out / f).stat().st_size for f in files)
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    return out
