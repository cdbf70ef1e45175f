"""Training throughput: kiln's loop vs transformers' `Trainer`, same model, same data, one process.

Both train the tiny LLaMA of configs/train/tiny.yaml from scratch on the same packed shards
(the demo's runs/demo/shards by default) with the same micro-batch, bf16 autocast, AdamW
(0.9, 0.95), weight decay 0.1, clipping 1.0 and warmup + cosine; `Trainer` gets the shards
through a plain torch Dataset yielding input_ids / position_ids / labels, so both see packed
documents isolated by position_ids. Each run's first `--skip` steps (allocation, first-call
overheads) are left out; tokens/s counts every token of a sequence (padding included, < 1%
on the demo). Runs alternate kiln / Trainer `--repeats` times and the median is reported.

    python benchmarks/bench_train.py [--shards runs/demo/shards] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from trainer.config import parse_train_config
from trainer.data import ShardData
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(shards: str, out: str, steps: int, micro: int, skip: int) -> dict:
    cfg = yaml.safe_load((REPO / "configs/train/tiny.yaml").read_text())
    cfg["output"] = out
    cfg["data"]["shards"] = shards
    cfg["train"].update(max_steps=steps, micro_batch_size=micro, log_every=skip, checkpoint_every=0,
                        progress=False, resume=False)
    return cfg


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def rates(stamps: dict[int, tuple[float, float]], skip: int, steps: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens/s, tokens per CPU-second) over steps skip+1..steps."""
    (w0, c0), (w1, c1) = stamps[skip], stamps[steps]
    tokens = (steps - skip) * tokens_per_step
    return tokens / (w1 - w0), tokens / (c1 - c0)


def run_kiln(cfg: dict, skip: int, seq_len: int) -> tuple[float, float]:
    stamps: dict[int, tuple[float, float]] = {}
    train(parse_train_config(cfg), on_step=lambda step: stamps.__setitem__(step, clock()))
    return rates(stamps, skip, cfg["train"]["max_steps"], cfg["train"]["micro_batch_size"] * seq_len)


def run_hf_trainer(cfg: dict, skip: int, seq_len: int) -> tuple[float, float]:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    data = ShardData(cfg["data"]["shards"])
    order = np.random.default_rng(0).permutation(data.rows)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(order)

        def __getitem__(self, i: int) -> dict:
            b = data.batch(order[i:i + 1])
            return {"input_ids": b.input_ids[0], "position_ids": b.position_ids[0], "labels": b.labels[0]}

    tok = data.manifest.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id, max_position_embeddings=2048, tie_word_embeddings=False,
                         use_cache=False, **cfg["model"]["config"])
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    t = cfg["train"]
    stamps: dict[int, tuple[float, float]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps[state.global_step] = clock()

    args = TrainingArguments(
        output_dir=cfg["output"] + "-hf", max_steps=t["max_steps"], per_device_train_batch_size=t["micro_batch_size"],
        learning_rate=t["lr"], warmup_steps=t["warmup_steps"], lr_scheduler_type="cosine", weight_decay=0.1,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, bf16=True, use_cpu=True, report_to=[],
        save_strategy="no", logging_strategy="no", dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()]).train()
    return rates(stamps, skip, t["max_steps"], t["micro_batch_size"] * seq_len)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="runs/demo/shards")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (Path(args.shards) / "manifest.json").exists():
        print(f"bench_train: no shards at {args.shards}; run `make demo` first (or pass --shards)", file=sys.stderr)
        return 2
    try:
        import accelerate  # noqa: F401 - transformers' Trainer needs it
    except ImportError:
        print("bench_train: transformers' Trainer needs accelerate: .venv/bin/pip install accelerate", file=sys.stderr)
        return 2
    seq_len = ShardData(args.shards).seq_len
    kiln, hf = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            cfg = tiny_config(args.shards, os.path.join(tmp, f"kiln-{r}"), args.steps, args.micro_batch, args.skip)
            kiln.append(run_kiln(cfg, args.skip, seq_len))
            hf.append(run_hf_trainer(cfg, args.skip, seq_len))
            print(f"repeat {r + 1}: kiln {kiln[-1][0]:,.0f} tokens/s ({kiln[-1][1]:,.0f}/CPU-s), "
                  f"Trainer {hf[-1][0]:,.0f} tokens/s ({hf[-1][1]:,.0f}/CPU-s)", flush=True)
    threads = torch.get_num_threads()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}, "
          f"torch {torch.__version__}")
    print(f"tiny LLaMA (configs/train/tiny.yaml), seq_len {seq_len}, micro-batch {args.micro_batch}, "
          f"{args.steps} steps (first {args.skip} not timed), median of {args.repeats}:")
    print("| loop | tokens/s (median) | tokens/CPU-s (median) | tokens/s, each run |")
    print("|---|---:|---:|---|")
    for name, xs in (("kiln train loop", kiln), ("transformers Trainer", hf)):
        wall, cpu = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
        print(f"| {name} | {wall:,.0f} | {cpu:,.0f} | {', '.join(f'{x[0]:,.0f}' for x in xs)} |")
    ratio = statistics.median(x[1] for x in kiln) / statistics.median(x[1] for x in hf)
    print(f"kiln / Trainer, tokens per CPU-second: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
