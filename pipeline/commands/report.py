"""`kiln report RUN`: write RUN/report/index.html and report.json, print a summary."""

from __future__ import annotations

import argparse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1] (1%% is 0.01)")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write a run's HTML report (funnel, statistics, mix, data evaluation, shards)",
        description="Write RUN/report/index.html (one self-contained page) and RUN/report/report.json "
                    "from a run folder, and print a summary. The data evaluation follows Ziya2: a random "
                    "sample of the final documents is scored for privacy, toxic, advertising and HTML "
                    "function-word rates (hits per 1,000 characters) and perplexity; the run passes when "
                    "at most 1 in 1,000 sampled documents exceeds a threshold.")
    p.add_argument("run", help="run folder, e.g. runs/demo (or runs/demo/analyze)")
    p.add_argument("--out", help="output folder (default RUN/report)")
    p.add_argument("--sample", type=_fraction, default=0.01, metavar="FRACTION",
                   help="share of the final documents to evaluate (default 0.01 = 1%%)")
    p.add_argument("--sample-min", type=int, default=1000, metavar="N",
                   help="evaluate at least this many documents, or all when fewer (default 1000)")
    p.add_argument("--sample-max", type=int, default=100_000, metavar="N",
                   help="evaluate at most this many documents (default 100,000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the evaluation, example and histogram samples (default 0)")
    p.add_argument("--hist-sample", type=int, metavar="N",
                   help="a statistic with more values than this per side (kept, rejected) takes its bin "
                        "edges and quantiles from a uniform sample of N values, and the page says so; "
                        "counts, means, minima and maxima stay exact (default 100,000)")
    p.add_argument("--thresholds", metavar="NAME=X,...",
                   help="unqualified above these rates (hits per 1,000 characters); defaults "
                        "privacy=1,toxic=0.5,ad=1,html=1; perplexity is judged only when given: ppl=N "
                        "or per language ppl.zh=N")
    p.add_argument("--screenshot", metavar="PNG",
                   help="also open the page in headless Chromium, check it renders without errors, "
                        "and save a screenshot of its top")
    p.add_argument("--quiet", action="store_true", help="no terminal summary, only the page's path")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from common.errors import KilnError
    from pipeline.report import ReportOptions, print_summary, write_report
    from pipeline.report.eval import EvalOptions, parse_thresholds

    if args.sample_min < 0 or args.sample_max < 1:
        raise KilnError("--sample-min must be >= 0 and --sample-max >= 1")
    if args.hist_sample is not None and args.hist_sample < 1:
        raise KilnError("--hist-sample must be >= 1")
    evaluation = EvalOptions(fraction=args.sample, min_docs=args.sample_min, max_docs=args.sample_max, seed=args.seed,
                             thresholds=parse_thresholds(args.thresholds))
    options = ReportOptions(out_dir=args.out, evaluation=evaluation)
    if args.hist_sample is not None:
        options.hist_sample = args.hist_sample
    result = write_report(args.run, options)
    if args.quiet:
        print(result.html)
    else:
        print_summary(result)
    if args.screenshot:
        from pipeline.report.browser import check_page

        check = check_page(result.html, screenshot=args.screenshot)
        print(f"chromium: {check.summary()}; screenshot {args.screenshot}")
        if not check.ok:
            return 1
    return 0
