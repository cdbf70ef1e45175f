"""`kiln weights make-delta BASE TARGET OUT` / `kiln weights apply-delta BASE DELTA OUT`:
publish a trained model as a difference from its base, and rebuild it (target = base + delta)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="weight deltas: make-delta / apply-delta (target = base + delta)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    make = sub.add_parser("make-delta", help="write TARGET - BASE to OUT (changed-shape tensors carried whole)")
    make.add_argument("base", help="HF folder of the base model")
    make.add_argument("target", help="HF folder of the trained model (e.g. runs/train/x/final)")
    make.add_argument("out", help="delta folder to write")
    apply = sub.add_parser("apply-delta", help="rebuild the target as BASE + DELTA in OUT (an HF folder)")
    apply.add_argument("base", help="HF folder of the base model the delta was made against")
    apply.add_argument("delta", help="delta folder from make-delta")
    apply.add_argument("out", help="HF folder to write")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from trainer.delta import apply_delta, make_delta

    if args.action == "make-delta":
        out = make_delta(args.base, args.target, args.out)
        print(f"delta written to {out}")
    else:
        out = apply_delta(args.base, args.delta, args.out)
        print(f"model written to {out} (loadable with AutoModelForCausalLM.from_pretrained)")
    return 0
