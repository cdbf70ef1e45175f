"""Two ranks under torchrun (gloo, CPU, FSDP2 fully_shard) train like one process with the same
global batch: the gradient norms agree, the loss curves agree within bf16 tolerance, a run resumed
from the sharded checkpoint continues the same curve, and the HF export gathered from the shards
loads. The gloo test hides any GPU, so it tests the same thing on a GPU machine; with two GPUs the
NCCL test compares two GPUs with one. The same through Ray Train's TorchTrainer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_fixtures as F
import yaml

from trainer.config import parse_train_config
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def kiln_train(config: Path, nproc: int, cpu: bool) -> subprocess.CompletedProcess:
    """`kiln train config` through the real command line, under torchrun when nproc > 1. `cpu`
    hides the GPUs (CUDA_VISIBLE_DEVICES=""): the trainer then takes gloo and the CPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
              "--master_port", str(free_port())] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "pipeline.cli", "train", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write_config(path: Path, shards: Path, out: Path, **train_opts) -> Path:
    path.write_text(yaml.safe_dump(F.train_config(shards, out, **train_opts)))
    return path


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    """Same global batch of 4 sequences: one process accumulating four micro-batches of 1, against
    two gloo ranks each accumulating two (same shapes, so bf16 kernels agree; only the order of
    the fp32 gradient sums differs). The loss is divided by the global step's target tokens, so
    FSDP must sum the ranks' gradients: the first step's gradient norms agree to 1e-5 (they
    were half)."""
    from transformers import AutoModelForCausalLM

    shards = F.write_shards(tmp_path / "shards")
    kiln_train(write_config(tmp_path / "single.yaml", shards, tmp_path / "single", micro_batch_size=1,
                            grad_accum_steps=4), 1, cpu=True)
    dual = write_config(tmp_path / "dual.yaml", shards, tmp_path / "dual", micro_batch_size=1, grad_accum_steps=2,
                        checkpoint_every=4)
    kiln_train(dual, 2, cpu=True)

    one, two = metrics(tmp_path / "single", "loss"), metrics(tmp_path / "dual", "loss")
    assert len(two) == 8
    assert two[0] == pytest.approx(one[0], abs=1e-5)
    norms_one, norms_two = metrics(tmp_path / "single", "grad_norm"), metrics(tmp_path / "dual", "grad_norm")
    assert norms_two[0] == pytest.approx(norms_one[0], abs=1e-5)
    # Later steps: the fp32 gradient sums run in another order (two ranks, one reduction per
    # step), and the tiny model at lr 1e-2 amplifies the rounding a little from step to step.
    assert norms_two == pytest.approx(norms_one, rel=1e-3)
    assert two == pytest.approx(one, abs=1e-3)
    summary = json.loads((tmp_path / "dual" / "train.json").read_text())
    assert summary["gradient_sync"] == "last micro-batch"  # one reduce-scatter per step, not per micro-batch
    state = json.loads((tmp_path / "dual" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["global_batch"] == 4 and state["sequences_consumed"] == 16
    assert len(list((tmp_path / "dual" / "checkpoints" / "step-000008").glob("*.distcp"))) == 2  # one per rank
    # Resume from the sharded step-4 checkpoint under torchrun: the same curve again.
    shutil.rmtree(tmp_path / "dual" / "checkpoints" / "step-000008")
    shutil.rmtree(tmp_path / "dual" / "final")
    assert "resuming from" in kiln_train(dual, 2, cpu=True).stderr
    assert metrics(tmp_path / "dual", "loss") == pytest.approx(two, abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "dual" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "final")
    assert max((x.float() - y.float()).abs().max().item() for x, y in zip(a.parameters(), b.parameters())) < 0.01


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU every lone run takes this path already, and the "
                    "bitwise comparison with the plain module holds on CPU")
def test_one_rank_fsdp_trains_like_the_plain_module(tmp_path, monkeypatch):
    """A lone process on a GPU goes through FSDP2 too (a one-rank group), for the same precision
    policy as many GPUs. The same path, forced on CPU: the curve of the plain module, a resume
    from its checkpoint continues it, and the export gathers the one shard."""
    from functools import partial

    from transformers import AutoModelForCausalLM

    import trainer.train as T

    shards = F.write_shards(tmp_path / "shards")
    plain = train(parse_train_config(F.train_config(shards, tmp_path / "plain", max_steps=4)))
    monkeypatch.setattr(T, "Dist", partial(T.Dist, sharded=True))
    cfg = parse_train_config(F.train_config(shards, tmp_path / "fsdp", max_steps=4, checkpoint_every=2))
    train(cfg)
    for key in ("loss", "grad_norm"):
        assert metrics(tmp_path / "fsdp", key) == pytest.approx(metrics(tmp_path / "plain", key), abs=1e-5)
    assert json.loads((tmp_path / "fsdp" / "train.json").read_text())["fsdp"] is True
    assert json.loads((tmp_path / "plain" / "train.json").read_text())["fsdp"] is False
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "fsdp" / "final")
    train(cfg)
    assert metrics(tmp_path / "fsdp", "loss") == pytest.approx(metrics(tmp_path / "plain", "loss"), abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    b = AutoModelForCausalLM.from_pretrained(plain.final_dir)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_nccl_ranks_match_one_gpu(tmp_path):
    """The same comparison on two GPUs (NCCL, bf16 FSDP parameters) against one GPU, which uses
    the same precision policy; bf16 kernels on different batch shapes differ a little."""
    shards = F.write_shards(tmp_path / "shards")
    kiln_train(write_config(tmp_path / "single.yaml", shards, tmp_path / "single", micro_batch_size=4), 1, cpu=False)
    kiln_train(write_config(tmp_path / "dual.yaml", shards, tmp_path / "dual", micro_batch_size=1,
                            grad_accum_steps=2), 2, cpu=False)
    assert metrics(tmp_path / "dual", "grad_norm")[0] == pytest.approx(metrics(tmp_path / "single", "grad_norm")[0],
                                                                        rel=1e-2)
    assert metrics(tmp_path / "dual", "loss") == pytest.approx(metrics(tmp_path / "single", "loss"), abs=0.05)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_launcher_runs_two_ranks(tmp_path, monkeypatch):
    """`kiln train --ray-address local --ray-workers 2`: Ray Train's TorchTrainer sets up gloo,
    each worker runs the same loop; the curve matches the one-process golden curve."""
    from test_trainer import GOLDEN

    from pipeline.cli import main

    shards = F.write_shards(tmp_path / "shards")
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump(F.train_config(shards, tmp_path / "run", micro_batch_size=2)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    assert main(["train", str(config), "--ray-address", "local", "--ray-workers", "2"]) == 0
    assert metrics(tmp_path / "run", "loss") == pytest.approx(GOLDEN, abs=0.03)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_a_rank_without_a_gpu_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: rank 1 would take cuda:1, which does not
    exist; it says so before starting NCCL."""
    from common.errors import KilnError
    from trainer.train import Dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(KilnError, match=r"local rank 1 but the node has 1 visible GPU.*--nproc_per_node 1"):
        Dist()
