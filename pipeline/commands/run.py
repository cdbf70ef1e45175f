"""`kiln run CONFIG`: run the pipeline's stages (all, `--until NAME`, or one with `--stage`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the pipeline stages of a config",
                              description="Run the stages of a pipeline config into its run folder. "
                                          "Finished stages are skipped unless their config or input changed.")
    p.add_argument("config", help="pipeline YAML, e.g. configs/pipeline/demo.yaml")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stage", metavar="NAME", help="run only this stage (earlier stages must be finished)")
    which.add_argument("--until", metavar="NAME", help="run every stage up to and including this one")
    p.add_argument("--redo", action="store_true", help="run the selected stages even if finished")
    p.add_argument("--analyze", action="store_true",
                   help="compute every statistic and drop nothing (writes RUN/analyze/)")
    p.add_argument("--engine", choices=("ray", "spark"),
                   help="what runs the stages (default: the config's run.engine, else ray)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto, ray://host:10001)")
    p.add_argument("--master", help="Spark master URL for --engine spark (default local[N]; under spark-submit, "
                                    "its master)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray or Spark (default: config, else all)")
    p.add_argument("--output", help="run folder (default: the config's run.output, else runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between progress lines when the output is not a terminal (default 30)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import RunRequest, run_pipeline

    config = load_config(args.config)
    if args.output:
        config.run.output = args.output
    request = RunRequest(only_stage=args.stage, until=args.until, redo=args.redo, analyze=args.analyze,
                         address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress,
                         progress_interval=args.progress_interval, engine=args.engine, master=args.master)
    stats = run_pipeline(config, request)
    if stats["stages"]:
        first, last = stats["stages"][0], stats["stages"][-1]
        print(f"run folder: {stats['run_dir']}  ({first['docs_in']:,} documents in, {last['docs_out']:,} kept "
              f"after {last['folder']})")
        print(f"check it with: kiln verify {stats['run_dir']}")
    return 0
