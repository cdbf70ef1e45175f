"""The `kiln` command line.

Each subcommand lives in its own module under `pipeline/commands/` and exposes
`register(subparsers)`; this file discovers them, so adding a command is adding a file.
Command modules import heavy libraries (ray, torch) inside their handlers, keeping
`kiln --help` fast.

A handler returns an exit code. Errors a user can fix (`KilnError` and its subclasses) are
printed as one clear line with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from common.errors import KilnError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description="Prepare Chinese and English pretraining data with Ray Data, and train on it.",
    )
    # Not `command`: a subcommand may have an argument of that name (`kiln submit`'s).
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    import pipeline.commands

    for module in sorted(pkgutil.iter_modules(pipeline.commands.__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        importlib.import_module(f"pipeline.commands.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.subcommand is None else 2
    try:
        return int(args.handler(args) or 0)
    except KilnError as e:
        print(f"kiln {args.subcommand}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kiln {args.subcommand}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
