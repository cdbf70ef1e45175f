"""Weight deltas: base + (target - base) rebuilds the target bit for bit, with grown
embeddings carried whole; a delta refuses a base it was not made against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from common.errors import InputError
from pipeline.cli import main
from trainer.delta import apply_delta, make_delta

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def save_model(folder: Path, vocab: int, seed: int, dtype=torch.bfloat16, like: Path | None = None) -> Path:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SMALL))
    if like is not None:  # a "continued" model: the base's weights moved a little, vocab grown
        base = LlamaForCausalLM.from_pretrained(like, dtype=torch.float32)
        base.resize_token_embeddings(vocab, mean_resizing=False)
        with torch.no_grad():
            for p, q in zip(model.parameters(), base.parameters()):
                p.copy_(q + 0.01 * torch.randn_like(q))
    model.to(dtype).save_pretrained(folder)
    return folder


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def test_delta_round_trip_is_exact_and_carries_grown_embeddings(tmp_path):
    base = save_model(tmp_path / "base", 40, 0)
    target = save_model(tmp_path / "target", 48, 1, like=base)
    # small shards, to exercise the multi-file path both ways
    make_delta(base, target, tmp_path / "delta", shard_bytes=20_000)
    index = json.loads((tmp_path / "delta" / "delta.index.json").read_text())
    assert set(index["carried"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert len(set(index["weight_map"].values())) > 1
    apply_delta(base, tmp_path / "delta", tmp_path / "rebuilt", shard_bytes=30_000)
    want, got = tensors(target), tensors(tmp_path / "rebuilt")
    assert set(want) == set(got)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    rebuilt = LlamaForCausalLM.from_pretrained(tmp_path / "rebuilt")
    assert rebuilt.config.vocab_size == 48


def test_delta_refuses_another_base_and_cli_reports_one_line(tmp_path, capsys):
    base = save_model(tmp_path / "base", 40, 0)
    other = save_model(tmp_path / "other", 40, 7)
    target = save_model(tmp_path / "target", 40, 1, like=base)
    assert main(["weights", "make-delta", str(base), str(target), str(tmp_path / "delta")]) == 0
    with pytest.raises(InputError, match="not the model this delta was made against"):
        apply_delta(other, tmp_path / "delta", tmp_path / "bad")
    capsys.readouterr()
    assert main(["weights", "apply-delta", str(tmp_path / "missing"), str(tmp_path / "delta"), str(tmp_path / "x")]) == 2
    assert "base: " in capsys.readouterr().err
    assert main(["weights", "apply-delta", str(base), str(tmp_path / "delta"), str(tmp_path / "ok")]) == 0
    rebuilt = tensors(tmp_path / "ok")
    assert all(torch.equal(rebuilt[name], t) for name, t in tensors(target).items())
