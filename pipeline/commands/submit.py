"""`kiln submit CONFIG --address http://HEAD:8265`: run a kiln command on a Ray cluster as a job.

`kiln submit CONFIG` submits `kiln run CONFIG`; anything after `--` is the kiln command
itself, e.g. `kiln submit --address URL -- train configs/train/tiny.yaml`. The logs are
streamed; the exit code is 0 when the job succeeded, 1 when it failed or was stopped.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "submit", help="run a kiln command on a Ray cluster as a Ray job (logs streamed)",
        description="Submit `kiln run CONFIG` (or, after --, any kiln command) to a Ray cluster's job server, "
                    "stream its logs and exit with its outcome (0 succeeded, 1 failed or stopped).",
        epilog="examples:\n  kiln submit configs/pipeline/clean.yaml --address http://head:8265\n"
               "  kiln submit --address http://head:8265 -- run configs/pipeline/demo.yaml --until filter\n"
               "  kiln submit --address http://head:8265 -- train configs/train/tiny.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="*", metavar="CONFIG | -- COMMAND ARGS",
                   help="a pipeline config (submits `kiln run CONFIG`), or after -- a kiln command and its arguments")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("KILN_RAY_ADDRESS"),
                   help="the head's dashboard/job server, e.g. http://head:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--token-file", help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, "
                                        "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
    p.add_argument("--cwd", metavar="DIR", help="run in this kiln checkout on the cluster instead of uploading the "
                                                "project (DIR must exist on every node)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="more files to leave out of the uploaded project (gitignore syntax; repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment of the job (repeatable)")
    p.add_argument("--python", default="python", help="the cluster's Python with kiln's dependencies (default: python)")
    p.add_argument("--job-id", help="submission id (default: Ray chooses one)")
    p.add_argument("--no-wait", action="store_true", help="submit and return at once, without streaming the logs")
    p.add_argument("--lost-head-timeout", type=float, default=60.0, metavar="S",
                   help="give up when the head stays unreachable this long while following the job (default 60)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from common.errors import KilnError
    from pipeline.submit import SubmitRequest, exit_code, kiln_command, read_token, submit

    if not args.address:
        raise KilnError("no cluster address: pass --address http://HEAD:8265 (the head's dashboard) or set "
                        "RAY_API_SERVER_ADDRESS")
    command = kiln_command(args.command)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KilnError(f"--env {item!r}: use KEY=VALUE")
        env[key] = value
    cwd = os.path.abspath(args.cwd) if args.cwd and not os.path.isabs(args.cwd) else args.cwd
    request = SubmitRequest(address=args.address, kiln_args=command, token=read_token(args.token_file), cwd=cwd,
                            python=args.python, env=env, excludes=args.exclude, wait=not args.no_wait,
                            lost_head_seconds=args.lost_head_timeout, job_id=args.job_id)
    _, status = submit(request)
    return exit_code(status)
