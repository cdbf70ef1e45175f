"""Submit a kiln command to a Ray cluster as a Ray job, stream its logs, return its outcome.

The job's entrypoint is `python -m pipeline.cli ARGS` (`kiln run CONFIG` by default, any kiln
subcommand after `--`). The code reaches the cluster in one of two ways:

- upload (default): the project folder becomes the job's `working_dir`, without what a job
  never needs (virtual environments, runs/, data/, .git, caches, third_party/ builds). The
  cluster's Python must already have kiln's dependencies. Relative paths in a pipeline config
  would then point inside that temporary copy, so they are refused before submitting: the
  data must live where every node sees it (a shared file system or a URI).
- `--cwd DIR`: nothing is uploaded; the job runs in DIR on the cluster, a checkout that every
  node has at the same path (a shared home, a container image, this machine for a local
  cluster). Relative paths then mean what they mean there.

Token authentication: the token is sent as `Authorization: Bearer` to the job server; it is
read from --token-file, else RAY_AUTH_TOKEN, else RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token
(Ray's own order). Every request has a timeout, so a wrong address or a lost head ends with
a KilnError instead of a hang.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import KilnError

PROJECT = Path(__file__).resolve().parents[1]
# gitignore syntax; a leading / anchors at the project root (pipeline code may have a data/).
UPLOAD_EXCLUDES = ["/.git", "/.venv", "/.venv-*", "/runs", "/data", "/third_party", "/docs", "__pycache__",
                   "*.pyc", ".pytest_cache", ".ruff_cache", "*.egg-info", "/bench-*.json", "*.log"]
REQUEST_TIMEOUT = 15.0
AGENT_WAIT = 60.0  # a head that just started answers "No available agent" for a while


@dataclass
class SubmitRequest:
    address: str
    kiln_args: list[str]
    token: str | None = None
    cwd: str | None = None  # run in this checkout on the cluster; None uploads the project
    python: str = "python"
    env: dict[str, str] = field(default_factory=dict)
    excludes: list[str] = field(default_factory=list)
    wait: bool = True
    lost_head_seconds: float = 60.0
    poll_seconds: float = 1.0
    job_id: str | None = None


def kiln_command(positional: list[str]) -> list[str]:
    """`CONFIG` alone means `run CONFIG`; anything else is a kiln command line."""
    command = list(positional)
    if not command:
        raise KilnError("nothing to submit: give a pipeline config, or a kiln command after --")
    if len(command) == 1 and command[0].endswith((".yaml", ".yml")):
        command = ["run", command[0]]
    if command[0] == "run":
        # A Ray job runs on Ray, whatever the config's run.engine says (Spark: spark-submit).
        engines = [a.split("=", 1)[1] for a in command if a.startswith("--engine=")]
        engines += [command[i + 1] for i, a in enumerate(command[:-1]) if a == "--engine"]
        if any(e != "ray" for e in engines):
            raise KilnError("kiln submit runs kiln as a Ray job: --engine spark does not apply there; run on "
                            "Spark with spark-submit or kiln run --engine spark --master URL")
        if not engines:
            command += ["--engine", "ray"]
    return command


def read_token(token_file: str | None = None) -> str | None:
    """The cluster token, looked up in Ray's order; None when there is none."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise KilnError(f"token file {path} does not exist")
        return path.read_text().strip() or None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip() or None
    return None


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if address.startswith(("ray://", "auto")):
        raise KilnError(f"--address {address!r} looks like a Ray GCS or client address; kiln submit talks to "
                        "the head's dashboard (job server), e.g. http://HEAD:8265")
    if "://" not in address:
        address = "http://" + address
    return address


def check_relative_paths(config_path: str) -> None:
    """Refuse a pipeline config whose inputs or output are relative paths: in an uploaded
    working_dir they would name files inside the job's temporary copy of the project."""
    from pipeline.config import load_config

    config = load_config(config_path)
    problems = [f"inputs[{i}].path {spec.path!r}" for i, spec in enumerate(config.inputs)
                if "://" not in spec.path and not os.path.isabs(spec.path)]
    if "://" not in config.run_dir and not os.path.isabs(config.run_dir):
        problems.append(f"run.output {config.run_dir!r}" + ("" if config.run.output else " (the default)"))
    if problems:
        raise KilnError(f"{config_path}: {', '.join(problems)} relative: the job runs in a temporary copy of "
                        "the project on the cluster, where these would not be the files you mean. Use absolute "
                        "paths on storage every node sees or URIs (s3://, gs://, hdfs://), add "
                        "`--output ABSOLUTE` after `--`, or submit with --cwd DIR (a checkout on the cluster)")


def _client(address: str, token: str | None):
    """A JobSubmissionClient whose every request has a timeout (the SDK sets none, so an
    address that drops packets would hang forever)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    class TimedClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any):
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return super()._do_request(method, endpoint, **kwargs)

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return _call(lambda: TimedClient(address, headers=headers), address)
    except AuthenticationError as e:
        raise KilnError(_auth_message(address, token, e)) from None


def _auth_message(address: str, token: str | None, error: Exception) -> str:
    if token:
        return (f"the Ray cluster at {address} refused the token ({str(error).splitlines()[0]}); pass the "
                "cluster's token with --token-file or RAY_AUTH_TOKEN")
    return (f"the Ray cluster at {address} needs a token (token authentication is on) and none was found: "
            "pass --token-file FILE, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (the head's token is in "
            "~/.ray/auth_token there, or `ray get-auth-token` prints it)")


def _call(fn: Callable[[], Any], address: str) -> Any:
    """Run one SDK call, turning connection problems into one clear KilnError."""
    import requests

    try:
        return fn()
    except (requests.ConnectionError, requests.Timeout, ConnectionError) as e:
        raise KilnError(f"cannot reach the Ray job server at {address} ({type(e).__name__}): is the head up and "
                        "is this its dashboard address (http://HEAD:8265)?") from None


def runtime_env(request: SubmitRequest) -> dict[str, Any]:
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", **request.env}
    if request.cwd:
        # Workers import kiln from the same checkout as the driver.
        env_vars["PYTHONPATH"] = request.cwd + (os.pathsep + env_vars["PYTHONPATH"] if "PYTHONPATH" in env_vars
                                                else "")
        return {"env_vars": env_vars}
    return {"working_dir": str(PROJECT), "excludes": [*UPLOAD_EXCLUDES, *request.excludes], "env_vars": env_vars}


def entrypoint(request: SubmitRequest) -> str:
    command = " ".join(shlex.quote(a) for a in [request.python, "-m", "pipeline.cli", *request.kiln_args])
    return f"cd {shlex.quote(request.cwd)} && {command}" if request.cwd else command


def submit(request: SubmitRequest, out: Callable[[str], None] = lambda s: print(s, end="", flush=True),
           echo: Callable[[str], None] = print) -> tuple[str, str]:
    """Submit, then (with `wait`) stream the logs until the job ends; returns (job id, status)."""
    from ray.exceptions import AuthenticationError

    address = normalise_address(request.address)
    # Ray's packaging logs a line per ignored file; kiln says what matters itself.
    logging.getLogger("ray").setLevel(logging.ERROR)
    if request.kiln_args[:1] == ["run"] and len(request.kiln_args) > 1 and not request.cwd:
        check_relative_paths(request.kiln_args[1])
    client = _client(address, request.token)
    deadline = time.monotonic() + AGENT_WAIT
    while True:
        try:
            job_id = _call(lambda: client.submit_job(entrypoint=entrypoint(request), runtime_env=runtime_env(request),
                                                     submission_id=request.job_id), address)
            break
        except AuthenticationError as e:
            raise KilnError(_auth_message(address, request.token, e)) from None
        except RuntimeError as e:
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2)  # the head's job agent is still starting
                continue
            raise KilnError(f"the job server at {address} refused the job: {str(e).strip()}") from None
    echo(f"submitted job {job_id} to {address} (watch it at {address}/#/jobs/{job_id})")
    if not request.wait:
        return job_id, "SUBMITTED"
    try:
        return job_id, follow(client, address, job_id, request, out, echo)
    except KeyboardInterrupt:
        raise KilnError(f"stopped following job {job_id}; it keeps running on the cluster. Stop it with "
                        f"`RAY_API_SERVER_ADDRESS={address} ray job stop {job_id}` (with RAY_AUTH_MODE=token and "
                        "the token); finished stages are kept") from None


def follow(client: Any, address: str, job_id: str, request: SubmitRequest, out: Callable[[str], None],
           echo: Callable[[str], None]) -> str:
    """Print the job's new log text as it comes and return its final status. Polling (not the
    websocket tail) keeps every request under a timeout; a head that stays unreachable for
    `lost_head_seconds` ends this with a KilnError rather than a hang."""
    printed = 0
    last_contact = time.monotonic()
    while True:
        try:
            info = _call(lambda: client.get_job_info(job_id), address)
            logs = _call(lambda: client.get_job_logs(job_id), address)
            last_contact = time.monotonic()
        except KilnError as e:
            if time.monotonic() - last_contact > request.lost_head_seconds:
                raise KilnError(f"lost the Ray head at {address} for over {request.lost_head_seconds:.0f} s while "
                                f"job {job_id} ran; its outcome is unknown. Finished stages are kept: once the "
                                f"cluster is back, submit again and the run resumes ({e})") from None
            time.sleep(request.poll_seconds)
            continue
        if len(logs) > printed:
            out(logs[printed:])
            printed = len(logs)
        status = str(getattr(info.status, "value", info.status))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            if status != "SUCCEEDED":
                message = (info.message or "").strip().splitlines()
                echo(f"job {job_id} {status.lower()}" + (f": {message[-1]}" if message else ""))
            else:
                echo(f"job {job_id} succeeded")
            return status
        time.sleep(request.poll_seconds)


def exit_code(status: str) -> int:
    return {"SUCCEEDED": 0, "SUBMITTED": 0}.get(status, 1)
