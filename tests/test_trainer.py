"""The trainer: packed-document isolation, a golden loss curve, resume = uninterrupted, data
order (curriculum, ranks, mixes, phases), vocabulary expansion with mean init, an
embeddings-only phase, HF export, and bad input failing with one clear error before training.

Everything runs on CPU on tiny self-made shards (tests/train_fixtures.py), each test in seconds.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import train_fixtures as F

from common.errors import ConfigError, InputError, KilnError
from trainer import model as M
from trainer.config import parse_train_config
from trainer.data import DataPlan, ShardData
from trainer.train import lr_at, train

# Losses of the first 8 steps of F.train_config on F.write_shards (seed 0), bf16 autocast on
# CPU. The tolerance covers bf16 kernel differences between CPUs; a GPU (other bf16 kernels,
# FlashAttention where installed) is held to the same curve more loosely. The curve falls by ~0.7.
GOLDEN = [3.381956, 3.295935, 3.120154, 3.04071, 2.924409, 2.790912, 2.72285, 2.697857]


# The device the trainer picks on this machine; how close its curve must be to GOLDEN; how close
# two runs of the same computation (resumed or not, recomputed or not) must be: CPU kernels are
# deterministic, CUDA attention backward kernels need not be.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GOLDEN_TOL = {"cpu": 0.03, "cuda": 0.1}
REPEAT_TOL = {"cpu": 1e-5, "cuda": 1e-3}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return F.write_shards(tmp_path_factory.mktemp("shards"))


def run(shards: Path, out: Path, **train_opts):
    return train(parse_train_config(F.train_config(shards, out, **train_opts)))


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- packing isolation


def tiny_model(attention: str = "sdpa"):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=29, **F.TINY_MODEL)
    return M.build_model(cfg, None, attention, seed=0).eval()


def check_isolation(attention: str, device: str, model=None) -> None:
    """Two rows, each a document packed after another: every second document's logits equal its
    logits alone. The control (positions not restarted) must differ well past bf16 noise."""
    model = (model or tiny_model(attention)).to(device)
    firsts = [torch.tensor(d) for d in F.documents(2, 1, lo=15, hi=19)]
    seconds = [torch.tensor(d) for d in F.documents(2, 2, lo=21, hi=22)]
    width = max(len(a) for a in firsts) + len(seconds[0])
    ids, pos = torch.zeros(2, width, dtype=torch.long), torch.zeros(2, width, dtype=torch.long)
    for r, (a, b) in enumerate(zip(firsts, seconds)):
        row = torch.cat([a, b])
        pad = width - len(row)  # trailing padding: its own segment, restarting at 0
        ids[r] = torch.cat([row, torch.full((pad,), F.PAD)])
        pos[r] = torch.cat([torch.arange(len(a)), torch.arange(len(b)), torch.arange(pad)])
    ids, pos = ids.to(device), pos.to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        both = M.packed_forward(model, ids, pos, attention).float()
        leaky = M.packed_forward(model, ids, torch.arange(width, device=device).expand(2, -1), attention).float()
        for r, (a, b) in enumerate(zip(firsts, seconds)):
            b = b.to(device)[None]
            alone = M.packed_forward(model, b, torch.arange(b.shape[1], device=device)[None], attention).float()
            span = slice(len(a), len(a) + b.shape[1])
            torch.testing.assert_close(both[r:r + 1, span], alone, rtol=2e-2, atol=2e-2)
            assert (leaky[r:r + 1, span] - alone).abs().max() > 0.1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_to_each_other(attention):
    check_isolation(attention, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not M.flash_attention_available(), reason="needs flash-attn and a CUDA GPU")
def test_flash_attention_isolates_packed_documents():
    check_isolation("flash_attention_2", "cuda")


def test_auto_attention_skips_a_flash_attn_build_that_does_not_load(tmp_path, monkeypatch, capsys):
    """A flash-attn wheel built for another torch is importable by name but fails to load its
    kernels: `auto` falls back to sdpa and says why; asking for flash_attention_2 is an error."""
    fake = tmp_path / "flash_attn"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    M.flash_attention_problem.cache_clear()
    try:
        assert M.attention_implementation("auto") == "sdpa"
        assert "undefined symbol" in capsys.readouterr().err
        with pytest.raises(KilnError, match="does not load against torch"):
            M.attention_implementation("flash_attention_2")
        assert M.attention_implementation("eager") == "eager"
    finally:
        M.flash_attention_problem.cache_clear()


def test_flash_path_passes_document_boundaries_once_per_micro_batch(shards, monkeypatch):
    """packed_forward hands FlashAttention the documents' cu_seq_lens and integer max lengths, the
    same boundaries transformers would derive (with device syncs) in every layer. Checked on CPU
    with a reference varlen attention (sdpa per document) standing in for flash-attn."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    pos = ShardData(shards).batch(np.arange(4)).position_ids
    got = M.flash_varlen_kwargs(pos, torch.device("cpu"))
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(pos.reshape(1, -1))
    assert torch.equal(got["cu_seq_lens_q"], cu_q) and torch.equal(got["cu_seq_lens_k"], cu_k)
    assert got["max_length_q"] == got["max_length_k"] == int(max_q) == int(max_k)
    assert isinstance(got["max_length_q"], int)

    calls = []

    def varlen_reference(module, query, key, value, attention_mask, cu_seq_lens_q=None, max_length_q=None, **kw):
        assert isinstance(max_length_q, int) and cu_seq_lens_q is not None
        calls.append(cu_seq_lens_q)
        out = torch.empty_like(query.transpose(1, 2))
        bounds = cu_seq_lens_q.tolist()
        for a, b in itertools.pairwise(bounds):
            out[:, a:b], _ = sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                                     is_causal=True, scaling=kw.get("scaling"))
        return out, None

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flash_attention_2", varlen_reference)
    model = tiny_model("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    check_isolation("flash_attention_2", "cpu", model)
    assert calls and all(torch.equal(c, calls[0]) for c in calls[:F.TINY_MODEL["num_hidden_layers"]])


# ---------------------------------------------------------------------------- the loop


def test_golden_loss_curve(shards, tmp_path):
    result = run(shards, tmp_path / "run")
    got = losses(tmp_path / "run")
    assert got == pytest.approx(GOLDEN, abs=GOLDEN_TOL[DEVICE])
    assert got[-1] < got[0] - 0.5
    assert result.steps == 8 and result.tokens == 8 * 4 * 32 and result.final_loss == pytest.approx(got[-1])
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row) >= {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "tflops", "mfu", "mem_gb"}
    assert row["tokens_per_s"] > 0
    peak = M.peak_tflops(torch.device(DEVICE))  # None on CPU and on GPUs without a known peak
    assert row["mfu"] == (None if peak is None else pytest.approx(row["tflops"] / peak, abs=1e-4))
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["steps"] == 8 and summary["config"]["train"]["max_steps"] == 8


def test_activation_checkpointing_gives_the_same_curve(shards, tmp_path):
    run(shards, tmp_path / "plain", max_steps=3)
    cfg = F.train_config(shards, tmp_path / "run", max_steps=3)
    cfg["model"]["activation_checkpointing"] = True
    train(parse_train_config(cfg))
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "plain"), abs=REPEAT_TOL[DEVICE])


def test_resume_continues_the_uninterrupted_curve(shards, tmp_path):
    out = tmp_path / "run"
    run(shards, out, checkpoint_every=4, keep_checkpoints=3)
    full = losses(out)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"]
    state = json.loads((out / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["sequences_consumed"] == 16
    # Stopped after step 4: only that checkpoint exists; the rerun resumes from it.
    shutil.rmtree(out / "checkpoints" / "step-000008")
    shutil.rmtree(out / "final")
    run(shards, out, checkpoint_every=4, keep_checkpoints=3)
    resumed = losses(out)
    assert len(resumed) == 8
    assert resumed == pytest.approx(full, abs=REPEAT_TOL[DEVICE])


def test_resume_from_an_embeddings_phase_continues_the_uninterrupted_curve(shards, tmp_path):
    """A checkpoint inside a `train: embeddings` phase holds AdamW state for the embeddings only;
    resuming from it continues the curve, into the phase where everything learns."""
    out = tmp_path / "run"
    cfg = F.train_config(shards, out, max_steps=None, checkpoint_every=2, keep_checkpoints=5)
    cfg["data"]["phases"] = [{"name": "embeddings", "max_tokens": 3 * 4 * 32, "train": "embeddings"},
                             {"name": "all", "max_tokens": 3 * 4 * 32}]
    train(parse_train_config(cfg))
    full = losses(out)
    assert len(full) == 6
    for name in ("step-000004", "step-000006"):
        shutil.rmtree(out / "checkpoints" / name)
    shutil.rmtree(out / "final")
    assert train(parse_train_config(cfg)).steps == 6
    assert losses(out) == pytest.approx(full, abs=REPEAT_TOL[DEVICE])


def test_resume_into_another_model_is_a_one_line_error(shards, tmp_path, capsys):
    """DCP's CheckpointException is a BaseException; it must still become the one-line error."""
    import yaml

    from pipeline.cli import main

    run(shards, tmp_path / "run", max_steps=2)
    cfg = F.train_config(shards, tmp_path / "run", max_steps=4)
    cfg["model"]["config"]["num_hidden_layers"] = 3
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "train.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and "train.resume=false" in err[0], err


def test_rerunning_a_finished_run_trains_nothing_more(shards, tmp_path):
    first = run(shards, tmp_path / "run", max_steps=3)
    again = run(shards, tmp_path / "run", max_steps=3)
    assert again.steps == 3 and again.final_loss == pytest.approx(first.final_loss)
    assert len(losses(tmp_path / "run")) == 3


def test_keeps_only_the_last_checkpoints(shards, tmp_path):
    out = tmp_path / "run"
    run(shards, out, max_steps=6, checkpoint_every=2, keep_checkpoints=2)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]


def test_resume_with_another_batch_size_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    run(shards, out, max_steps=2)
    with pytest.raises(KilnError, match="global batch"):
        run(shards, out, max_steps=4, micro_batch_size=2)


def test_lr_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1)


def test_hf_export_loads_with_transformers(shards, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run(shards, tmp_path / "run", max_steps=20)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tok = AutoTokenizer.from_pretrained(result.final_dir)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == len(tok) == 29
    assert Tokenizer.from_file(str(result.final_dir / "tokenizer.json")).get_vocab_size() == 29
    data = ShardData(shards)
    batch = data.batch(np.arange(4))
    with torch.no_grad():
        out = model.float()(input_ids=batch.input_ids, position_ids=batch.position_ids, labels=batch.labels)
    assert out.loss.item() < math.log(29) - 0.5  # it learned something; chance is ln(29)


# ---------------------------------------------------------------------------- MFU accounting


def test_tied_embedding_flops_include_the_head(shards, tmp_path):
    """A tied model stores one matrix fewer but still multiplies by it in lm_head: same FLOPs."""
    from transformers import LlamaConfig

    untied = LlamaConfig(vocab_size=1000, tie_word_embeddings=False, **F.TINY_MODEL)
    tied = LlamaConfig(vocab_size=1000, tie_word_embeddings=True, **F.TINY_MODEL)
    total, embedding = M.count_params(untied)
    attention = 12 * 2 * 32 * 32  # 12·L·H·T
    assert M.flops_per_token(untied, 32) == 6 * (total - embedding) + attention
    assert M.flops_per_token(tied, 32) == M.flops_per_token(untied, 32)
    # ...and what the trainer counts for a tied model (train.json; MFU is tokens/s times this).
    cfg = F.train_config(shards, tmp_path / "run", max_steps=1)
    cfg["model"]["config"]["tie_word_embeddings"] = True
    result = train(parse_train_config(cfg))
    summary = json.loads((result.output_dir / "train.json").read_text())
    assert summary["flops_per_token"] == 6 * summary["parameters"] + attention  # lm_head included


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_tflops_by_full_device_name(name, tflops):
    assert M.peak_tflops_of(name) == tflops


# ---------------------------------------------------------------------------- data order


def plan(shards: Path, world: int = 1, micro: int = 4, accum: int = 1, steps: int = 10, **data):
    from trainer.config import DataOptions

    opts = DataOptions(shards=str(shards), **data)
    return DataPlan(ShardData(shards), opts, seed=0, micro_batch=micro, accum=accum, world=world,
                    max_steps=steps, max_tokens=None)


def test_curriculum_goes_bucket_by_bucket_and_shuffles_inside(shards):
    p = plan(shards, steps=60)
    buckets = p.data.bucket[p.order]
    n0 = int((p.data.bucket == 0).sum())
    assert (buckets[:n0] == 0).all() and (buckets[n0:p.data.rows] == 1).all()
    assert not (np.diff(p.order[:n0]) == 1).all()  # shuffled within the bucket
    assert sorted(p.order[: p.data.rows]) == list(range(p.data.rows))  # an epoch sees every row once


def test_ranks_split_each_global_batch(shards):
    one = plan(shards, world=1, micro=4)
    two = plan(shards, world=2, micro=2)
    for step in range(3):
        [single] = one.micro_batches(step, 0)
        parts = [two.micro_batches(step, r)[0] for r in range(2)]
        assert torch.equal(torch.cat([b.input_ids for b in parts]), single.input_ids)


def test_phases_run_in_order_with_their_mix(shards):
    phases = [{"name": "easy", "max_tokens": 4 * 32 * 5, "buckets": [0], "train": "embeddings"},
              {"name": "mixed", "max_tokens": 4 * 32 * 25, "mix": {"web": 3, "books": 1}}]
    p = plan(shards, phases=phases, steps=None)
    assert [(x.name, x.first_step, x.steps) for x in p.phases] == [("easy", 0, 5), ("mixed", 5, 25)]
    assert p.steps == 30 and p.phase_at(4).train == "embeddings" and p.phase_at(5).name == "mixed"
    assert (p.data.bucket[p.order[:20]] == 0).all()
    mixed = p.data.source[p.order[20:]]
    assert (mixed == "web").mean() == pytest.approx(0.75, abs=0.01)


def test_unknown_mix_key_is_a_config_error(shards):
    with pytest.raises(ConfigError, match="neither a source nor a bucket"):
        plan(shards, phases=[{"name": "x", "max_tokens": 1000, "mix": {"wikipedia": 1}}], steps=None)


# ---------------------------------------------------------------------------- vocabulary expansion


@pytest.fixture(scope="module")
def base_checkpoint(shards, tmp_path_factory) -> Path:
    """A tiny trained model, exported in fp32 with the 29-piece tokenizer."""
    out = tmp_path_factory.mktemp("base")
    cfg = F.train_config(shards, out, max_steps=4)
    cfg["model"]["export_dtype"] = "float32"
    return train(parse_train_config(cfg)).final_dir


@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_loaded_model_recomputes_layers_in_backward_when_checkpointing(base_checkpoint, shards, tmp_path,
                                                                        monkeypatch, checkpointing):
    """from_pretrained returns a model in eval mode, where HF layers never recompute: the trainer
    must put it in training mode. Each layer's MLP runs once per micro-batch forward, and once
    more in backward when activation checkpointing is on."""
    calls: list[int] = []
    build = M.build_model

    def counting_build(*args, **kwargs):
        model = build(*args, **kwargs)
        for layer in model.model.layers:  # (module hooks do not fire in the recomputation)
            layer.mlp.forward = counted(layer.mlp.forward)
        return model

    def counted(forward):
        def run(*args, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)
        return run

    monkeypatch.setattr(M, "build_model", counting_build)
    cfg = F.train_config(shards, tmp_path / "run", max_steps=1, grad_accum_steps=2, micro_batch_size=2)
    cfg["model"] = {"checkpoint": str(base_checkpoint), "activation_checkpointing": checkpointing}
    train(parse_train_config(cfg))
    layers, micro_batches = F.TINY_MODEL["num_hidden_layers"], 2
    assert len(calls) == layers * micro_batches * (2 if checkpointing else 1)


def test_new_tokens_start_as_the_mean_of_their_old_pieces(base_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    new_dir = F.save_tokenizer(tmp_path / "new", extra=["ab", "abc"])
    old_tok, new_tok = AutoTokenizer.from_pretrained(base_checkpoint), AutoTokenizer.from_pretrained(new_dir)
    model = AutoModelForCausalLM.from_pretrained(base_checkpoint, dtype=torch.float32)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    assert M.expand_vocabulary(model, old_tok, new_tok, len(new_tok)) == 2
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == w_out.shape[0] == 31
    a, b, c = (old_tok.convert_tokens_to_ids(x) for x in "abc")
    for new_id, pieces in ((29, [a, b]), (30, [a, b, c])):
        torch.testing.assert_close(w_in[new_id], before_in[pieces].mean(0))
        torch.testing.assert_close(w_out[new_id], before_out[pieces].mean(0))
    torch.testing.assert_close(w_in[:29], before_in)


def test_training_on_expanded_shards_grows_the_model_and_can_train_embeddings_only(base_checkpoint, tmp_path):
    from safetensors.torch import load_file

    new_dir = F.save_tokenizer(tmp_path / "new", extra=["ab", "abc"])
    shards = F.write_shards(tmp_path / "shards", tokenizer=new_dir)
    cfg = F.train_config(shards, tmp_path / "run", max_steps=None)
    cfg["model"] = {"checkpoint": str(base_checkpoint), "export_dtype": "float32"}
    cfg["data"]["phases"] = [{"name": "embeddings", "max_tokens": 3 * 4 * 32, "train": "embeddings"}]
    result = train(parse_train_config(cfg))
    summary = json.loads((result.output_dir / "train.json").read_text())
    assert summary["vocab_rows_added"] == 2 and result.steps == 3
    before, after = load_file(base_checkpoint / "model.safetensors"), load_file(result.final_dir / "model.safetensors")
    assert after["model.embed_tokens.weight"].shape[0] == 31
    for name, tensor in before.items():
        if M.is_embedding(name):
            assert not torch.equal(after[name][:29], tensor), name
        else:
            assert torch.equal(after[name], tensor), f"{name} changed in an embeddings-only phase"


# ---------------------------------------------------------------------------- bad input


def test_shards_from_another_tokenizer_are_refused(base_checkpoint, tmp_path):
    other = F.save_tokenizer(tmp_path / "other", shuffle=True)
    shards = F.write_shards(tmp_path / "shards", tokenizer=other)
    cfg = F.train_config(shards, tmp_path / "run")
    cfg["model"] = {"checkpoint": str(base_checkpoint)}
    with pytest.raises(InputError, match="different tokenizer"):
        train(parse_train_config(cfg))
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_and_missing_shards(shards, tmp_path):
    cfg = F.train_config(shards, tmp_path / "run")
    cfg["model"] = {"checkpoint": str(tmp_path / "nowhere")}
    with pytest.raises(InputError, match="not a folder"):
        train(parse_train_config(cfg))
    with pytest.raises(InputError, match="make demo"):
        run(tmp_path / "no-shards", tmp_path / "run")


def test_corrupt_shard_is_refused(shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    victim = bad / "bucket-001" / "web-00000.arrow"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(InputError, match="sha256"):
        run(bad, tmp_path / "run")
    cfg = F.train_config(bad, tmp_path / "run")
    cfg["data"]["check_hashes"] = False
    with pytest.raises(InputError, match="corrupt"):
        train(parse_train_config(cfg))


def test_a_model_too_big_for_memory_fails_before_allocating(shards, tmp_path):
    cfg = F.train_config(shards, tmp_path / "run")
    cfg["model"]["config"] = {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 120,
                              "num_attention_heads": 128, "num_key_value_heads": 8}
    with pytest.raises(KilnError, match=r"needs about .* GiB"):
        train(parse_train_config(cfg))


def test_config_errors_name_the_yaml_path(shards, tmp_path):
    cfg = F.train_config(shards, tmp_path / "run", lrr=1.0)
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key \(did you mean lr\?\)"):
        parse_train_config(cfg)
    cfg = F.train_config(shards, tmp_path / "run")
    cfg["model"]["checkpoint"] = "x"
    with pytest.raises(ConfigError, match=r"exactly one of model\.checkpoint"):
        parse_train_config(cfg)
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size"):
        parse_train_config(F.train_config(shards, tmp_path / "run"), ["train.micro_batch_size=0"])


def test_cli_prints_one_line_for_bad_input(tmp_path, capsys):
    from pipeline.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(f"output: {tmp_path / 'run'}\nmodel: {{config: {{hidden_size: 32}}}}\n"
                      f"data: {{shards: {tmp_path / 'missing'}}}\ntrain: {{max_steps: 2}}\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kiln train: error:") and "make demo" in err[0]


# ---------------------------------------------------------------------------- issue 17: tokenizer and shards


def _swap_tokenizer(shards: Path, folder: Path, extra: list[str]) -> None:
    shutil.rmtree(folder / "tokenizer")
    F.save_tokenizer(folder / "tokenizer", extra=extra)


def test_a_swapped_tokenizer_is_refused_with_one_line_naming_the_right_one(shards, tmp_path, capsys):
    """Issue 17 item 3: another tokenizer in the shard folder trained without a word and
    shipped in final/."""
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    _swap_tokenizer(shards, bad, extra=["ab", "abc"])
    with pytest.raises(InputError, match=r"is not the tokenizer the shards were packed with \(sha256 \w+, 29 tokens\): "
                                         r"it has 31 tokens"):
        run(bad, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(F.train_config(bad, tmp_path / "run")))
    from pipeline.cli import main

    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the tokenizer the shards were packed with" in err[0]


def test_an_edited_manifest_vocab_or_token_ids_beyond_it_are_refused(shards, tmp_path):
    from tokenizers import Tokenizer, models

    from trainer.shards import sha256_tree

    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 40
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"has 29 tokens but .*manifest.json says 40"):
        run(bad, tmp_path / "run")
    # A 10-token tokenizer with a matching manifest: the shards' ids (up to 28) do not fit it.
    Tokenizer(models.WordLevel({str(i): i for i in range(10)}, unk_token="0")).save(str(bad / "tokenizer/tokenizer.json"))
    manifest["tokenizer"].update(vocab_size=10, sha256=sha256_tree(bad / "tokenizer"))
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"the shards hold token id 28, but the manifest's tokenizer has only 10 tokens"):
        run(bad, tmp_path / "run")


def test_a_deleted_shard_file_is_one_line(shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    (bad / "bucket-001" / "web-00000.arrow").unlink()
    with pytest.raises(InputError, match=r"web-00000.arrow, listed in .*manifest.json, is missing"):
        run(bad, tmp_path / "run")
