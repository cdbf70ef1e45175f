"""`kiln train CONFIG --ray-address ADDR`: the same training loop on a Ray cluster.

Ray Train's `TorchTrainer` starts one worker per rank, with the torch process group already
set up (NCCL on GPUs, gloo on CPUs); each worker exports its rank as torchrun would and runs
`trainer.train.train` unchanged, so FSDP2, checkpoints and exports behave exactly as under
torchrun. Paths are made absolute before submission: shards, checkpoint and output must be
on storage every node sees (NFS or similar), because checkpoints are written by every rank.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig, parse_train_config
from trainer.data import ShardData


def absolute(cfg: TrainConfig) -> dict[str, Any]:
    raw = cfg.resolved()
    raw["output"] = str(Path(raw["output"]).resolve())
    raw["data"]["shards"] = str(Path(raw["data"]["shards"]).resolve())
    if raw["model"].get("checkpoint"):
        raw["model"]["checkpoint"] = str(Path(raw["model"]["checkpoint"]).resolve())
    # pydantic dumped every field; drop the unset model source so the config validates again.
    raw["model"] = {k: v for k, v in raw["model"].items() if v is not None}
    return raw


def _worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    from trainer.train import train

    ctx = ray.train.get_context()
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()))
    result = train(parse_train_config(loop_config["config"]))
    if ctx.get_world_rank() == 0:
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; model in {result.final_dir}")


def launch(cfg: TrainConfig, address: str, workers: int, use_gpu: bool) -> Path:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ShardData(cfg.data.shards, check_hashes=False)  # missing/corrupt shards fail here, not in a worker
    raw = absolute(cfg)
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, runtime_env={"env_vars": env},
                 logging_level="WARNING", **({"num_cpus": workers} if address == "local" else {}))
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"config": raw},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name="kiln-train", storage_path=str(Path(raw["output"]) / "ray")),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    return Path(raw["output"])
