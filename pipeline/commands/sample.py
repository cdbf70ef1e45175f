"""`kiln sample OUT_DIR`: write the demo corpus, a noisy raw corpus built from the project's
own prose, with clean reference text and the ground truth of every piece of noise in it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.sample import DEFAULT_DOCS, DEFAULT_RATES

    p = subparsers.add_parser(
        "sample", help="generate the demo corpus (raw files with planted noise, reference text, truth.jsonl)",
        description="Write OUT_DIR/raw/{web.jsonl.gz,news.jsonl,forum.txt,books.parquet}, "
                    "OUT_DIR/reference/, OUT_DIR/heldout/ and OUT_DIR/truth.jsonl. "
                    "The same seed gives byte-identical files.")
    p.add_argument("out_dir", help="output folder, e.g. data/demo")
    p.add_argument("--docs", type=int, default=DEFAULT_DOCS, help=f"raw records in all (default {DEFAULT_DOCS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rate", action="append", default=[], metavar="KIND=SHARE",
                   help="override a noise rate (share of all records); kinds: " + ", ".join(
                       f"{k} ({v:g})" for k, v in DEFAULT_RATES.items()))
    p.add_argument("--source", help="folder of source prose (default configs/demo/source)")
    p.set_defaults(handler=handle)


def parse_rates(items: list[str]) -> dict[str, float]:
    from common.errors import KilnError

    rates = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise KilnError(f"--rate {item!r}: expected KIND=SHARE, for example near_dup=0.08") from None
        if not sep:
            raise KilnError(f"--rate {item!r}: expected KIND=SHARE, for example near_dup=0.08")
    return rates


def handle(args: argparse.Namespace) -> int:
    from common.errors import KilnError
    from pipeline.sample import generate

    try:
        s = generate(args.out_dir, docs=args.docs, seed=args.seed, rates=parse_rates(args.rate),
                     source_dir=args.source)
    except OSError as e:
        raise KilnError(f"cannot write {args.out_dir}: {e}") from None
    print(f"wrote {s.out_dir} in {s.seconds:.1f} s: {s.docs:,} raw records (seed {args.seed})")
    for name, n in s.per_file.items():
        print(f"  raw/{name:<16} {n:>6,}")
    print("  reference/  " + ", ".join(f"{lang} {n}" for lang, n in s.reference.items()) + " paragraphs;  "
          "heldout/  " + ", ".join(f"{lang} {n}" for lang, n in s.heldout.items()) + " paragraphs")
    print("  kinds:  " + ", ".join(f"{k} {n:,}" for k, n in s.per_kind.items()))
    print("  langs:  " + ", ".join(f"{k} {n:,}" for k, n in sorted(s.per_lang.items(), key=lambda x: -x[1])))
    print(f"  truth:  {s.out_dir / 'truth.jsonl'}")
    return 0
