"""`kiln classifier train`: train the fastText quality classifier used by `quality_classifier`.

Positive examples are text like what should be kept (clean reference text), negative ones
text like what should go (spam, chatter, boilerplate). Both are prepared exactly as the
operator prepares documents; a held-out share of each gives precision and recall.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classifier", help="train the fastText quality classifier",
                              description="fastText quality classifier for the quality_classifier operator.")
    sub = p.add_subparsers(dest="classifier_command", metavar="COMMAND")
    t = sub.add_parser("train", help="train on positive (keep) and negative (drop) example files",
                       description="Train a binary fastText classifier (supervised) on prepared text and write "
                                   "MODEL (quantized .ftz format unless --cutoff 0) with MODEL.json, its card "
                                   "(with validation precision/recall).")
    t.add_argument("--positive", nargs="+", required=True, metavar="FILE",
                   help="examples of text to keep: .txt (one document per line), .jsonl, .parquet")
    t.add_argument("--negative", nargs="+", required=True, metavar="FILE", help="examples of text to drop")
    t.add_argument("--output", required=True, help="model file to write, e.g. models/quality.ftz")
    t.add_argument("--epoch", type=int, default=10)
    t.add_argument("--lr", type=float, default=0.5)
    t.add_argument("--wordNgrams", dest="word_ngrams", type=int, default=2)
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--minCount", dest="min_count", type=int, default=1)
    t.add_argument("--bucket", type=int, default=2_000_000, help="hash buckets for word n-grams")
    t.add_argument("--cutoff", type=int, default=100_000,
                   help="quantize the model, keeping this many input rows (a few MB instead of 500); 0 keeps all")
    t.add_argument("--validation", type=float, default=0.1, help="held-out share of each class (default 0.1)")
    t.add_argument("--no-balance", dest="balance", action="store_false",
                   help="keep every example instead of downsampling the larger class to the smaller")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--text-field", default="text", help="text field of jsonl/parquet input (default text)")
    t.add_argument("--txt-mode", choices=["lines", "paragraphs", "file"], default="lines")
    t.set_defaults(handler=handle_train)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def handle_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from common.errors import KilnError
    from pipeline.lm import ClassifierTrainRequest, train_classifier

    if not 0 <= args.validation < 1:
        raise KilnError("--validation is a share between 0 and 1")
    card = train_classifier(ClassifierTrainRequest(
        positive=args.positive, negative=args.negative, output=Path(args.output), epoch=args.epoch, lr=args.lr,
        word_ngrams=args.word_ngrams, dim=args.dim, min_count=args.min_count, bucket=args.bucket, cutoff=args.cutoff or None, validation=args.validation,
        balance=args.balance, seed=args.seed, text_field=args.text_field, txt_mode=args.txt_mode))
    print(f"wrote {args.output} ({card['model']['bytes']:,} bytes) and its card {Path(args.output).with_suffix('.json')}")
    return 0
