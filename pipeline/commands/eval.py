"""`kiln eval MODEL`: perplexity on held-out text and multiple-choice accuracy of a model.

MODEL is a local Hugging Face folder (a kiln training run's `final/`, or any LLaMA-family
checkpoint). The code lives in `trainer/evaluate.py`; this file is the command line.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity on held-out text and multiple-choice accuracy of a model",
        description="Evaluate a causal LM folder: perplexity and bits per byte on held-out text (per file, "
                    "source and language), and k-shot accuracy on MMLU / C-Eval / CMMLU-format jsonl from the "
                    "next-token logits of the answer letters, as OpenCompass and ColossalEval score base models. "
                    "Prints a table and writes the results as JSON with --out.")
    p.add_argument("model", help="Hugging Face model folder, e.g. runs/train/tiny/final")
    p.add_argument("--text", nargs="+", default=[], metavar="PATH",
                   help="held-out text: .txt (one document per line), .jsonl[.gz] (text, optional source and "
                        "lang fields), .parquet, or a kiln stage's data/ folder")
    p.add_argument("--choice", nargs="+", default=[], metavar="JSONL",
                   help="multiple-choice files: MMLU (question, choices, answer index), C-Eval (question, A-D, "
                        "answer letter) or CMMLU (Question, A-D, Answer) items, one per line")
    p.add_argument("--dev", nargs="+", default=[], metavar="JSONL",
                   help="dev files the shots come from (one for all, or one per --choice file); without "
                        "them the first K items of each file are the shots and are not scored")
    p.add_argument("-k", "--shots", type=int, default=5, dest="k", help="shots per prompt (default 5)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--max-length", type=int, help="context used (default: the model's)")
    p.add_argument("--max-docs", type=int, help="at most this many documents per --text input")
    p.add_argument("--max-questions", type=int, help="at most this many questions per --choice file")
    p.add_argument("--text-field", default="text", help="JSON field of the text (jsonl)")
    p.add_argument("--txt-mode", choices=["lines", "paragraphs", "file"], default="lines",
                   help="how .txt files split into documents (default: lines)")
    p.add_argument("--out", metavar="JSON", help="write the results here")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from common.errors import KilnError
    from trainer.evaluate import EvalRequest, print_results, run_eval

    if args.batch_size < 1:
        raise KilnError("--batch-size must be >= 1")
    if args.max_length is not None and args.max_length < 2:
        raise KilnError("--max-length must be >= 2")
    request = EvalRequest(model=args.model, texts=args.text, choice_files=args.choice, dev=args.dev, k=args.k,
                          device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                          max_length=args.max_length, max_docs=args.max_docs, max_questions=args.max_questions,
                          text_field=args.text_field, txt_mode=args.txt_mode)
    results = run_eval(request)
    print_results(results)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"results: {out}")
    return 0
