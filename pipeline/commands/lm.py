"""`kiln lm train`: train a KenLM n-gram model on reference text for the `perplexity` operator.

The corpus is prepared exactly as the scorer prepares documents (see operators/scoring.py),
estimated with lmplz and written as a KenLM binary with a JSON card beside it.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lm", help="train KenLM language models for perplexity scoring",
                              description="KenLM language models for the perplexity operator.")
    sub = p.add_subparsers(dest="lm_command", metavar="COMMAND")
    t = sub.add_parser("train", help="train a KenLM model on clean reference text",
                       description="Prepare the corpus as the perplexity operator will (normalization, "
                                   "then characters for Chinese and words for English), estimate an "
                                   "n-gram model with lmplz, and write MODEL.binary with MODEL.json, "
                                   "its card. Needs `make lmplz`.")
    t.add_argument("--lang", required=True, help="language the model is for (zh, en, ...)")
    t.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="reference text: .txt (one document per line), .jsonl, .parquet, compressed or not; "
                        "folders and globs allowed")
    t.add_argument("--output", required=True, help="model file to write, e.g. models/lm/zh.binary")
    t.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    t.add_argument("--memory", default="1G", help="lmplz sorting memory, e.g. 1G or 20%% (default 1G)")
    t.add_argument("--prune", type=int, nargs="+", default=[], metavar="N",
                   help="lmplz --prune thresholds per order, e.g. 0 0 1 drops singleton trigrams and up")
    t.add_argument("--no-discount-fallback", dest="discount_fallback", action="store_false",
                   help="let lmplz refuse corpora too small to estimate Kneser-Ney discounts")
    t.add_argument("--text-field", default="text", help="text field of jsonl/parquet input (default text)")
    t.add_argument("--txt-mode", choices=["lines", "paragraphs", "file"], default="lines",
                   help="how .txt files split into documents (default lines)")
    t.add_argument("--keep-arpa", action="store_true", help="also keep the ARPA file beside the binary")
    t.set_defaults(handler=handle_train)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def handle_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.lm import LMTrainRequest, train_kenlm

    card = train_kenlm(LMTrainRequest(
        lang=args.lang, corpus=args.corpus, output=Path(args.output), order=args.order, memory=args.memory,
        prune=args.prune, discount_fallback=args.discount_fallback, text_field=args.text_field,
        txt_mode=args.txt_mode, keep_arpa=args.keep_arpa))
    print(f"wrote {args.output} ({card['model']['bytes']:,} bytes, order {card['order']}, "
          f"{card['corpus']['tokens']:,} training tokens) and its card {Path(args.output).with_suffix('.json')}")
    return 0
