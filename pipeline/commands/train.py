"""`kiln train CONFIG`: continual pretraining (or a small model from scratch) on kiln shards."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a LLaMA on kiln shards (resumes from the last checkpoint)")
    p.add_argument("config", help="train config YAML, e.g. configs/train/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=50 (repeatable)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from trainer.config import load_train_config
    from trainer.train import train

    cfg = load_train_config(args.config, args.overrides)
    result = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps} steps, {result.tokens:,} tokens, final loss {result.final_loss:.4f}; "
              f"model in {result.final_dir}")
    return 0
