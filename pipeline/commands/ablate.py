"""`kiln ablate CONFIG`: train the same small model on raw and on cleaned text, compare them
on held-out clean text. The steps are in `pipeline/ablate.py`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="does cleaning help? train on raw vs cleaned text, compare on held-out text",
        description="From one raw corpus (a pipeline config's inputs), hold out documents by hash, build "
                    "shards of the raw text (tokenized only) and of the pipeline's cleaned output (and "
                    "optionally the same in curriculum order), train the same model on an equal token budget "
                    "of each, and evaluate each on the held-out clean text. Writes OUTPUT/ablation/results.json "
                    "and prints the comparison; `kiln report OUTPUT` shows it in the Ablation section.")
    p.add_argument("config", help="ablation YAML, e.g. configs/ablate/small.yaml")
    p.add_argument("--redo", action="store_true", help="train every arm again even if finished")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipeline.ablate import AblateRequest, print_results, run_ablation

    results = run_ablation(args.config, AblateRequest(redo_training=args.redo))
    print_results(results)
    print(f"results: {results['output']}/ablation/results.json; report: kiln report {results['output']}")
    return 0
