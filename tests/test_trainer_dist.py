"""Two ranks under torchrun (gloo, CPU, FSDP2 fully_shard) train like one process with the same
global batch: the loss curves agree within bf16 tolerance, a run resumed from the sharded
checkpoint continues the same curve, and the HF export gathered from the shards loads. The
same through Ray Train's TorchTrainer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import train_fixtures as F
import yaml

from trainer.config import parse_train_config
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    from transformers import AutoModelForCausalLM

    shards = F.write_shards(tmp_path / "shards")
    single = train(parse_train_config(F.train_config(shards, tmp_path / "single", micro_batch_size=4)))

    # Same global batch (2 ranks x 2 sequences), through the real command line under torchrun.
    config = tmp_path / "dual.yaml"
    config.write_text(yaml.safe_dump(F.train_config(shards, tmp_path / "dual", micro_batch_size=2,
                                                    checkpoint_every=4)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "pipeline.cli", "train", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, two = losses(tmp_path / "single"), losses(tmp_path / "dual")
    assert len(two) == 8
    assert two[0] == pytest.approx(one[0], abs=1e-4)
    assert two == pytest.approx(one, abs=0.03)
    state = json.loads((tmp_path / "dual" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["global_batch"] == 4 and state["sequences_consumed"] == 16
    assert len(list((tmp_path / "dual" / "checkpoints" / "step-000008").glob("*.distcp"))) == 2  # one per rank
    # Resume from the sharded step-4 checkpoint under torchrun: the same curve again.
    shutil.rmtree(tmp_path / "dual" / "checkpoints" / "step-000008")
    shutil.rmtree(tmp_path / "dual" / "final")
    cmd[cmd.index("--master_port") + 1] = str(free_port())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    assert losses(tmp_path / "dual") == pytest.approx(two, abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "dual" / "final")
    b = AutoModelForCausalLM.from_pretrained(single.final_dir)
    assert max((x.float() - y.float()).abs().max().item() for x, y in zip(a.parameters(), b.parameters())) < 0.05


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
    assert losses(tmp_path / "run") == pytest.approx(GOLDEN, abs=0.03)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
