"""`kiln train CONFIG`: continual pretraining (or a small model from scratch) on kiln shards."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a LLaMA on kiln shards (resumes from the last checkpoint)")
    p.add_argument("config", help="train config YAML, e.g. configs/train/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=50 (repeatable)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run on a Ray cluster through Ray Train (ray://host:10001, auto, or local)")
    p.add_argument("--ray-workers", type=int, default=1, metavar="N", help="Ray Train workers (ranks)")
    p.add_argument("--ray-gpus", action="store_true", help="one GPU per Ray Train worker")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from trainer.config import load_train_config
    from trainer.train import train

    cfg = load_train_config(args.config, args.overrides)
    if args.ray_address:
        from trainer.ray_launch import launch

        out = launch(cfg, args.ray_address, args.ray_workers, args.ray_gpus)
        print(f"Ray Train run finished; outputs in {out}")
        return 0
    result = train(cfg)

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps} steps, {result.tokens:,} tokens, final loss {result.final_loss:.4f}; "
              f"model in {result.final_dir}")
    return 0
