"""`kiln verify RUN`: check that every document of every stage is kept or rejected, once."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="check a run's accounting (docs_in = docs_out + rejected, ids)")
    p.add_argument("run", help="run folder, e.g. runs/demo")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipeline.verify import verify_run

    checks = verify_run(args.run)
    width = max((len(c.folder) for c in checks), default=5)
    for c in checks:
        status = "ok" if c.ok else "FAILED"
        print(f"{c.folder:<{width}}  {c.docs_in:>10,} in = {c.docs_out:>10,} kept + {c.rejected:>9,} rejected  {status}")
        for problem in c.problems:
            print(f"{'':<{width}}    - {problem}")
    bad = [c for c in checks if not c.ok]
    if not checks:
        print("no finished stages to verify")
        return 1
    print(f"{len(checks) - len(bad)}/{len(checks)} stages verified" + ("" if not bad else f"; {len(bad)} failed"))
    return 1 if bad else 0
