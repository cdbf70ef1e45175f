"""The runner: stages of operators, written atomically, every document accounted for.

`Runner` owns what does not depend on the engine (plan, lock, temporary stage folders, the
count check, stats.json, `_SUCCESS`, resume) and hands the work to the run's engine
(pipeline/engine.py): `RayEngine`, below, or the Spark engine (pipeline/spark_engine.py).
What follows describes the Ray engine.

One stage is one streaming Ray Data pass: read (the inputs for stage 1, the previous stage's
`data/` otherwise), the operators in order, and a writer that sends kept rows to `data/` and
rejected rows to `rejected/`, counting as it goes. A global operator splits a stage into
segments: the rows so far are written to the stage's scratch folder, the operator's executor
reads them (as often as it needs) and its output is written again before the stage goes on.

Per-batch operators become `map_batches` calls: plain tasks (which Ray fuses), or an actor
pool for operators with a `setup()` (models), with the CPUs, GPUs, memory and concurrency the
operator declares or the config overrides. Only this package imports Ray.

Reruns: a finished stage (its `_SUCCESS` written) is skipped while its configuration and its
input are unchanged; a stage that runs makes every later stage stale.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from common import storage
from common.errors import ConfigError, KilnError, StageError
from common.ids import IdClaims, make_unique
from common.readers import DOC_SCHEMA, READ_OP, InputFile, expand_inputs, read_file
from operators.base import (
    REJECT_DETAIL,
    REJECT_OP,
    REJECT_REASON,
    SECONDS_PREFIX,
    Operator,
    apply_operator,
    set_column,
    set_up_in_process,
    split_rejected,
)
from pipeline import stats as stats_lib
from pipeline.cluster import join_on_loopback
from pipeline.config import PipelineConfig, StageSpec
from pipeline.lock import RunLock
from pipeline.progress import ProgressReporter

log = logging.getLogger("kiln")
BYTES_IN = "_kiln.bytes_in"
TARGET_READ_BYTES = 128 << 20
MIN_READ_BYTES = 1 << 20  # smaller inputs are read by one task
WRITE_BUNDLE_BYTES = 16 << 20


# --------------------------------------------------------------------------- Ray session


def default_object_store_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(min(total * 0.25, 4 << 30))


# Run by a small watchdog process beside a local Ray: it blocks on a pipe from the driver and,
# when the pipe closes (the driver ended, or was killed with kill -9), kills the Ray processes
# the driver started that are still alive. The raylet and GCS die with the driver, but Ray's
# DashboardAgent and RuntimeEnvAgent (~240 MB) otherwise live on for minutes. Each process is
# checked by its start time, so a reused pid is never hit. SIGINT is ignored: Ctrl-C reaches
# the whole terminal group, and the watchdog must outlive the driver to clean up after it.
_REAPER = """
import json, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
procs = json.loads(sys.argv[1])
sys.stdin.read()
import psutil
for pid, created in procs:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) < 0.01:
            proc.kill()
    except psutil.Error:
        pass
"""


def _start_reaper() -> Any:
    """The watchdog for the Ray processes this driver has started (see _REAPER)."""
    import subprocess
    import sys

    import psutil

    procs = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if "ray::" in command or "/ray/" in command:  # Ray's own, not other children of a host process
                procs.append((child.pid, child.create_time()))
    return subprocess.Popen([sys.executable, "-c", _REAPER, json.dumps(procs)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class RaySession:
    started_here: bool
    num_cpus: int
    reaper: Any = None

    def close(self) -> None:
        if self.started_here:
            import ray

            ray.shutdown()
        if self.reaper is not None:
            self.reaper.stdin.close()  # the watchdog stops what ray.shutdown left
            with contextlib.suppress(Exception):
                self.reaper.wait(timeout=30)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a head that does not answer: ray.init retries a dead GCS address for
    minutes. `auto` and addresses without a port are left to Ray."""
    import socket

    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise KilnError(f"cannot reach the Ray cluster at {address} ({e.strerror or type(e).__name__}): is the "
                        "head up, and is this its GCS address (HEAD:6379) or client address (ray://HEAD:10001)?") from None


def check_token(address: str) -> None:
    """Ask the GCS once whether it takes this driver's token: ray.init would retry a refused
    token for ~20 s, print a warning a second, and then say it cannot reach the cluster."""
    if address == "auto" or "://" in address:
        return
    try:
        from ray._raylet import GcsClient  # private; without it ray.init reports the problem
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    saved_stderr, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the GCS client logs the refusal from C++ as well; kiln says it once
    try:
        GcsClient(address=address)
    except AuthenticationError:
        has_token = any(os.environ.get(v) for v in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
        problem = "refused this driver's token" if has_token else "needs a token and this driver has none"
        raise KilnError(f"the Ray cluster at {address} answers but {problem} (token authentication is on): set "
                        "RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                        "(`ray get-auth-token` on the head prints it)") from None
    except Exception:  # anything else: ray.init says what it is
        return
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)


def connect_ray(config: PipelineConfig, address: str | None = None, num_cpus: int | None = None,
                progress: bool = True) -> RaySession:
    """Start a local Ray with the configured CPUs and a capped object store, or join an
    existing cluster when an address is given. Reuses a Ray already initialised in process.
    Inside a Ray job (`kiln submit`) RAY_ADDRESS names the job's cluster, which is joined."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = False
    if not ray.is_initialized():
        address = address or config.ray.address or os.environ.get("RAY_ADDRESS")
        from ray.exceptions import AuthenticationError

        try:
            if address:
                check_reachable(address)
                check_token(address)
                join_on_loopback(address)
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
            else:
                ray.init(
                    num_cpus=num_cpus or config.ray.num_cpus or os.cpu_count(),
                    object_store_memory=config.ray.object_store_memory or default_object_store_bytes(),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
        except ConnectionError as e:
            raise KilnError(f"cannot reach the Ray cluster at {address}: {e}. If the cluster runs with token "
                            "authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                            "RAY_AUTH_TOKEN_PATH)") from None
        except AuthenticationError as e:
            raise KilnError(f"the Ray cluster at {address} refused to connect: {str(e).split('. ')[0]}; set "
                            "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from None
        started = True
    reaper = _start_reaper() if started and not address else None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = config.ray.preserve_order
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    _quiet_ray_data_console()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return RaySession(started_here=started, num_cpus=cpus, reaper=reaper)


class _NoTracebacksOnConsole(logging.Filter):
    """Ray Data logs a failed task's traceback two or three times (~175 lines) before the
    driver sees the error; kiln then says what failed in one line. Those records stay in
    Ray's session log (ray-data.log, named in the error) and are kept off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _quiet_ray_data_console() -> None:
    from ray.data._internal.logging import configure_logging

    configure_logging()  # Ray Data sets up its handlers once; the filter goes on its console one
    for handler in logging.getLogger("ray.data").handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if is_console and not any(isinstance(f, _NoTracebacksOnConsole) for f in handler.filters):
            handler.addFilter(_NoTracebacksOnConsole())


def _ray_logs_dir() -> str:
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # a private API: the message just says less without it
        return "Ray's session logs"


# --------------------------------------------------------------------------- reading


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give a table exactly `schema`'s columns (missing ones null, types cast)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _group_by_size(items: list[Any], sizes: list[int], target: int) -> list[list[Any]]:
    groups: list[list[Any]] = []
    current: list[Any] = []
    current_size = 0
    for item, size in zip(items, sizes):
        if current and current_size + size > target:
            groups.append(current)
            current, current_size = [], 0
        current.append(item)
        current_size += size
    if current:
        groups.append(current)
    return groups


def _read_input_group(group: list[tuple[InputFile, Any]], batch_rows: int, claims: Any) -> Iterator[pa.Table]:
    """Read a group of input files batch by batch, ids made unique (pipeline/ids.py). With an
    IdClaims actor (`claims`, when several tasks read), each batch's claim is sent before the
    next batch is read and collected after, so the actor's round trip overlaps the reading;
    with None (one read task holds every input, or the Spark engine's source-closed groups)
    the claims are kept in this task."""
    local = IdClaims() if claims is None else None
    pending: tuple[pa.Table, Any, float] | None = None

    def finish(table: pa.Table, reply: Any, seconds: float) -> pa.Table:
        import ray

        started = time.perf_counter()
        table = make_unique(table, lambda _: ray.get(reply))
        per_row = (seconds + time.perf_counter() - started) / max(1, table.num_rows)
        return table.append_column(SECONDS_PREFIX + READ_OP, pa.array([per_row] * table.num_rows, pa.float64()))

    for file, spec in group:
        batches = read_file(file, spec, batch_rows)
        while True:
            started = time.perf_counter()
            table = next(batches, None)
            if table is None:
                break
            if local is not None:
                table = make_unique(table, local.claim)
                per_row = (time.perf_counter() - started) / max(1, table.num_rows)
                yield table.append_column(SECONDS_PREFIX + READ_OP, pa.array([per_row] * table.num_rows, pa.float64()))
                continue
            reply = claims.claim.remote(table.column("id").to_pylist())
            seconds = time.perf_counter() - started
            if pending is not None:
                yield finish(*pending)
            pending = (table, reply, seconds)
    if pending is not None:
        yield finish(*pending)


def _read_parquet_group(group: list[str], schema: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    for path in group:
        for batch in storage.parquet_file(path).iter_batches(batch_size=batch_rows):
            yield conform(pa.Table.from_batches([batch]), schema)


def _file_groups_dataset(groups: list[list[Any]], sizes: list[int], read: Callable[[list[Any]], Iterable[pa.Table]],
                         schema: pa.Schema):
    from ray.data import read_datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class FileGroups(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(sizes)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [
                ReadTask(functools.partial(read, group),
                         BlockMetadata(num_rows=None, size_bytes=size, exec_stats=None, input_files=None),
                         schema=schema)
                for group, size in zip(groups, sizes)
            ]

        def get_name(self) -> str:
            return "KilnRead"

    return read_datasource(FileGroups())


def read_inputs_dataset(config: PipelineConfig, num_cpus: int) -> tuple[Any, Any]:
    """The inputs as one Dataset, and the IdClaims actor that makes ids unique across its read
    tasks (None when one task reads everything and keeps the claims itself: no actor to
    start, no round trip per batch); the caller kills the actor after the stage."""
    files = expand_inputs(config.inputs)
    pairs = [(f, config.inputs[f.spec_index]) for f in files]
    total = sum(f.size for f in files)
    target = max(MIN_READ_BYTES, min(TARGET_READ_BYTES, total // max(1, 4 * num_cpus) + 1))
    groups = _group_by_size(pairs, [f.size for f in files], target)
    sizes = [sum(f.size for f, _ in g) for g in groups]
    claims = None
    if len(groups) > 1:
        import ray

        # One actor holds the ids read so far, for every read task; it goes with the driver's
        # job. num_cpus=0: it must never wait for a CPU.
        claims = ray.remote(num_cpus=0)(IdClaims).remote()
    read = functools.partial(_read_input_group, batch_rows=config.ray.batch_size, claims=claims)
    return _file_groups_dataset(groups, sizes, read, DOC_SCHEMA), claims


def read_stage_dataset(folder: str | os.PathLike, batch_rows: int, num_cpus: int):
    """The parquet files of a folder as one Dataset with a unified schema."""
    files = storage.parquet_files(folder)
    if not files:
        schema = DOC_SCHEMA
        import ray.data

        return ray.data.from_arrow(DOC_SCHEMA.empty_table())
    schema = storage.unified_schema(files)
    file_sizes = [storage.file_size(f) * 3 for f in files]  # parquet compresses text about 3x
    target = max(1 << 20, min(TARGET_READ_BYTES, sum(file_sizes) // max(1, 4 * num_cpus) + 1))
    groups = _group_by_size(files, file_sizes, target)
    sizes = [sum(storage.file_size(f) * 3 for f in g) for g in groups]
    read = functools.partial(_read_parquet_group, schema=schema, batch_rows=batch_rows)
    return _file_groups_dataset(groups, sizes, read, schema)


# --------------------------------------------------------------------------- writing


def _stage_start(batch: pa.Table) -> pa.Table:
    """Count input bytes per row and make sure the reject columns exist."""
    batch = set_column(batch, BYTES_IN, pc.binary_length(batch.column("text")).cast(pa.int64()))
    for name in (REJECT_OP, REJECT_REASON, REJECT_DETAIL):
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
    return batch


def write_split_part(tables: Iterable[pa.Table], name: str, data_dir: Path, rejected_dir: Path,
                     count_would_reject: bool, on_block: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """One write task of a stage, for every engine: count each table (`stats.count_block`),
    split it into kept and rejected rows, and write one parquet file of each named `name`
    (by the task, so a retried task overwrites its own files); return the task's counts."""
    counts: dict[str, Any] = {}
    kept_parts, rejected_parts = [], []
    for table in tables:
        block_counts = stats_lib.count_block(table)
        if not count_would_reject:
            block_counts.pop("would_reject", None)
        counts = stats_lib.merge(counts, block_counts)
        if on_block is not None:
            on_block(table.num_rows, block_counts.get("bytes_in", 0))
        kept, rejected = split_rejected(table)
        if kept.num_rows:
            kept_parts.append(kept)
        if rejected.num_rows:
            rejected_parts.append(rejected)
    if kept_parts:
        storage.write_parquet_atomic(pa.concat_tables(kept_parts, promote_options="permissive"), data_dir / name)
    if rejected_parts:
        storage.write_parquet_atomic(pa.concat_tables(rejected_parts, promote_options="permissive"),
                                     rejected_dir / name)
    return counts


def _make_sink(data_dir: Path, rejected_dir: Path, prefix: str, count_would_reject: bool, progress: Any = None):
    from ray.data import Datasink

    class StageSink(Datasink):
        """Splits each block into kept and rejected rows, writes one parquet file of each per
        write task (named by the task index, so a retried task overwrites its own files), and
        returns the task's counts; the driver adds them up in `on_write_complete`. Rows are
        reported to the `progress` counter actor (pipeline/progress.py) block by block."""

        def __init__(self) -> None:
            self.counts: dict[str, Any] = {}

        def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
            tables = (block if isinstance(block, pa.Table) else pa.Table.from_pandas(block) for block in blocks)
            on_block = None
            if progress is not None:
                def on_block(rows: int, text_bytes: int) -> None:
                    progress.add.remote(rows, text_bytes)
            return write_split_part(tables, f"{prefix}-{ctx.task_idx:05d}.parquet", data_dir, rejected_dir,
                                    count_would_reject, on_block)

        def on_write_complete(self, write_result: Any) -> None:
            self.counts = stats_lib.merge(*write_result.write_returns) if write_result.write_returns else {}

        def get_name(self) -> str:
            return "KilnStageWrite"

        @property
        def min_bytes_per_write(self) -> int:
            # Blocks bundled into files of tens of MB, not one small file per block: a
            # global operator reads a segment file by file, and fewer files cost fewer tasks.
            return WRITE_BUNDLE_BYTES

    return StageSink()


class _ProgressCounters:
    """One progress counter actor for all the writes of a run, zeroed before each: an actor
    is a worker process to start (a second or two of CPU on a small machine), too much to pay
    for every stage and segment."""

    def __init__(self) -> None:
        self.actor: Any = None

    def __call__(self) -> Any:
        import ray

        from pipeline.progress import ProgressCounter

        if self.actor is None:
            self.actor = ray.remote(num_cpus=0)(ProgressCounter).remote()
        ray.get(self.actor.reset.remote(), timeout=60)
        return self.actor


def _read_progress(counter: Any) -> tuple[int, int]:
    import ray

    return ray.get(counter.read.remote(), timeout=10)


# --------------------------------------------------------------------------- operators


class _ActorOperator:
    """Actor-side holder for an operator with a heavy setup(): built and set up once."""

    def __init__(self, name: str, params: dict[str, Any], label: str, analyze: bool) -> None:
        from operators import registry

        self.op = registry.get(name)(params)
        self.op.label = label
        self.analyze = analyze
        self.op.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return apply_operator(self.op, batch, analyze=self.analyze)


def _runs_as_actor(op: Operator, spec: Any) -> bool:
    """GPU operators run as actor pools, each actor holding its GPU and model. Every other
    per-batch operator, model or not, runs in the stage's fused task chain and loads its model
    once per worker process (`set_up_in_process`): an actor pool would hold CPUs for the whole
    stage, and on a small machine the reads that feed it, blocked on a full output buffer,
    then hold the rest, so the write never gets a CPU (the 100 MB score stage stalled so)."""
    gpus = spec.resources.num_gpus if spec.resources.num_gpus is not None else op.resources.num_gpus
    return op.kind != "global" and bool(gpus)


def actor_cpu_cap(ops: list[tuple[Operator, Any]], cluster_cpus: int) -> float | None:
    """CPUs each actor may ask for by default so that a stage's actor pools, one actor each,
    leave a CPU for the read and map tasks: two 1-CPU model operators on a 2-CPU machine
    would otherwise hold every CPU and the stage would wait forever."""
    actors = sum(1 for op, spec in ops if _runs_as_actor(op, spec))
    if not actors:
        return None
    return max(0.25, (cluster_cpus - 1) / actors)


def check_fits(spec: Any, num_cpus: float, num_gpus: float, memory: int | None,
               nodes: list[dict[str, float]] | None = None) -> None:
    """Fail with the operator's YAML path when no node of the cluster can ever run one of its
    tasks or actors (a GPU operator on a cluster without GPUs): Ray would wait forever."""
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    asks = {"CPU": num_cpus or 0, "GPU": num_gpus or 0, "memory": memory or 0}
    if not nodes or any(all(node.get(k, 0) >= v for k, v in asks.items() if v) for node in nodes):
        return
    largest = {k: max(node.get(k, 0) for node in nodes) for k in asks}
    wanted = ", ".join(f"{v:g} {k}" if k != "memory" else f"{v / (1 << 30):.1f} GiB memory"
                       for k, v in asks.items() if v)
    have = ", ".join(f"{largest[k]:g} {k}" if k != "memory" else f"{largest[k] / (1 << 30):.1f} GiB memory"
                     for k, v in asks.items() if v)
    raise StageError(f"{spec.where}: each task asks for {wanted}, but no node of the cluster has that much "
                     f"(the largest has {have}); lower {spec.where}.resources or add such a node")


def _task_kwargs(op: Operator, spec: Any, batch_size: int, cpu_cap: float | None) -> dict[str, Any]:
    """The map_batches arguments of one operator: its batch size and the CPUs, GPUs, memory
    and concurrency it declares or the config overrides."""
    resources = spec.resources
    num_cpus = resources.num_cpus if resources.num_cpus is not None else op.resources.num_cpus
    if resources.num_cpus is None and cpu_cap is not None and _runs_as_actor(op, spec):
        num_cpus = min(num_cpus, cpu_cap)
    num_gpus = resources.num_gpus if resources.num_gpus is not None else op.resources.num_gpus
    memory = resources.memory if resources.memory is not None else op.resources.memory
    check_fits(spec, num_cpus, num_gpus, memory)
    kwargs: dict[str, Any] = {"batch_format": "pyarrow", "batch_size": resources.batch_size or batch_size,
                              "num_cpus": num_cpus}
    if num_gpus:
        kwargs["num_gpus"] = num_gpus
    if memory:
        kwargs["memory"] = memory
    if resources.concurrency and not _runs_as_actor(op, spec):
        kwargs["concurrency"] = resources.concurrency
    return kwargs


def _apply_chain(ops: list[Operator], batch: pa.Table, *, analyze: bool, start: bool) -> pa.Table:
    """Several per-batch operators (and the stage's start) on one batch, in order."""
    if start:
        batch = _stage_start(batch)
    for op in set_up_in_process(ops):
        batch = apply_operator(op, batch, analyze=analyze)
    return batch


def _map_operators(ds: Any, ops: list[tuple[Operator, Any]], batch_size: int, analyze: bool,
                   cpu_cap: float | None = None, start: bool = False) -> Any:
    """The per-batch operators of a segment as map_batches calls. Consecutive plain-task
    operators that ask for the same resources and batch size are one call (one function
    applying them in turn, with the stage start before the first when `start`): Ray would
    fuse them into one task anyway, but re-batch the rows between them, which on cheap
    operators costs as much as the operators (docs/benchmarks.md, Runner overhead)."""
    chain: list[Operator] = []
    chain_kwargs: dict[str, Any] | None = None

    def flush(ds: Any) -> Any:
        nonlocal start, chain_kwargs
        if chain or start:
            fn = functools.partial(_apply_chain, list(chain), analyze=analyze, start=start)
            kwargs = chain_kwargs if chain else {"batch_format": "pyarrow", "batch_size": batch_size}
            ds = ds.map_batches(fn, **kwargs)
            start = False
        chain.clear()
        chain_kwargs = None
        return ds

    for op, spec in ops:
        kwargs = _task_kwargs(op, spec, batch_size, cpu_cap)
        if _runs_as_actor(op, spec):
            ds = flush(ds)
            ds = _map_actor(ds, op, spec, analyze, kwargs)
            continue
        if chain and kwargs != chain_kwargs:
            ds = flush(ds)
        if start and not chain and kwargs["batch_size"] != batch_size:
            ds = flush(ds)  # the stage start keeps the stage's batch size
        chain.append(op)
        chain_kwargs = kwargs
    return flush(ds)


def _map_actor(ds: Any, op: Operator, spec: Any, analyze: bool, kwargs: dict[str, Any]) -> Any:
    """An operator with a setup() (a model) or GPUs: an actor pool that grows, by default, to
    as many actors as the cluster can hold at once."""
    import ray
    from ray.data import ActorPoolStrategy

    cluster = ray.cluster_resources()
    if kwargs.get("num_gpus"):
        fits = int(cluster.get("GPU", 0) // kwargs["num_gpus"])
    else:
        fits = int(max(1.0, cluster.get("CPU", 1) - 1) // max(kwargs["num_cpus"], 0.01))
    max_size = spec.resources.concurrency or max(1, fits)
    return ds.map_batches(
        _ActorOperator,
        fn_constructor_kwargs={"name": op.name, "params": spec.params, "label": op.label, "analyze": analyze},
        compute=ActorPoolStrategy(min_size=1, max_size=max_size),
        **kwargs,
    )


def _label_operators(stage: StageSpec) -> list[tuple[Operator, Any]]:
    seen: dict[str, int] = {}
    built = []
    for spec in stage.ops:
        op = spec.build()
        seen[op.name] = seen.get(op.name, 0) + 1
        op.label = op.name if seen[op.name] == 1 else f"{op.name}#{seen[op.name]}"
        built.append((op, spec))
    return built


# --------------------------------------------------------------------------- running


@dataclass
class RunRequest:
    only_stage: str | None = None
    until: str | None = None
    redo: bool = False
    analyze: bool = False
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True
    progress_interval: float = 30.0  # seconds between progress lines when output is not a terminal
    engine: str | None = None  # ray or spark; None: the config's run.engine
    master: str | None = None  # Spark's master URL; None: local[N] (or spark-submit's)


def output_dir(config: PipelineConfig, analyze: bool) -> Path | storage.Location:
    """The run folder: a local Path, or a Location for a URI (s3://, gs://, hdfs://, file://)."""
    base = storage.location(config.run_dir)
    return base / "analyze" if analyze else base


def stage_dirs(config: PipelineConfig, analyze: bool = False) -> list[Path | storage.Location]:
    base = output_dir(config, analyze)
    return [base / storage.stage_folder_name(i, s.name) for i, s in enumerate(config.stages)]


def _fresh(config: PipelineConfig, index: int, stage_dir: Path, upstream_run_id: str | None) -> dict[str, Any] | None:
    """The stage's stats when it is finished and still matches config and input, else None."""
    if not storage.is_finished(stage_dir):
        return None
    st = storage.read_json(stage_dir / storage.STATS)
    if st.get("stage_hash") != config.stage_hash(index) or st.get("input_run_id") != upstream_run_id:
        return None
    return st


def plan(config: PipelineConfig, request: RunRequest) -> list[tuple[int, str]]:
    """Which stages run and why, as (index, reason); skipped stages are not listed."""
    dirs = stage_dirs(config, request.analyze)
    names = [s.name for s in config.stages]
    for option in (request.only_stage, request.until):
        if option is not None and option not in names:
            raise KilnError(f"no stage named {option!r}; stages are {', '.join(names)}")
    last = names.index(request.until) if request.until else len(names) - 1
    first = 0
    if request.only_stage:
        first = last = names.index(request.only_stage)
    upstream: str | None = None
    runs: list[tuple[int, str]] = []
    for i in range(0, last + 1):
        st = _fresh(config, i, dirs[i], upstream)
        if i < first:
            if st is None:
                raise KilnError(
                    f"stage {request.only_stage!r} needs stage {names[i]!r} finished first: run "
                    f"`kiln run CONFIG --until {request.only_stage}`"
                )
        elif request.redo:
            runs.append((i, "redo requested"))
        elif runs:
            runs.append((i, f"its input, stage {names[runs[-1][0]]!r}, runs again"))
        elif st is None:
            reason = "not finished yet" if not storage.is_finished(dirs[i]) else "configuration or input changed"
            runs.append((i, reason))
        upstream = st["run_id"] if st else None
    return runs


# Operators whose outputs are written with local file APIs: the shard format and the tokenizer
# folder are the trainer's contract (trainer/shards.py), read memory-mapped from a file system.
LOCAL_ONLY_OPS = {"tokenize_pack": "writes Arrow shards and the tokenizer folder the trainer memory-maps"}


def check_uri_operators(config: PipelineConfig, run_dir: str) -> None:
    for stage in config.stages:
        for spec in stage.ops:
            if spec.name in LOCAL_ONLY_OPS:
                raise KilnError(f"{spec.where}: {LOCAL_ONLY_OPS[spec.name]}, which needs a file system path, but "
                                f"run.output is a URI ({run_dir}); give run.output a shared file system path, or "
                                "run the stages before it on the URI and pack in a pipeline whose input is their "
                                "data/ folder")


# --------------------------------------------------------------------------- before Ray starts
# Everything a user can fix is checked before Ray starts, one line each with its YAML path.


def check_operator_inputs(config: PipelineConfig, stages: list[int]) -> None:
    """The files every operator of the stages to run will read (Operator.check_inputs)."""
    problems = [f"{spec.where}.{key}: {message}"
                for index in stages for spec in config.stages[index].ops
                for key, message in spec.build().check_inputs()]
    if problems:
        raise ConfigError("\n".join(problems))


def check_output_writable(run_dir: Path | storage.Location) -> None:
    """run.output can be made and written: not read-only, permitted, and not under a file."""
    if storage.is_uri(run_dir):
        return  # an object store answers only when written to; the first stage says so
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".kiln-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, (NotADirectoryError, FileExistsError)):
            reason = "a file is in the way of this folder"
        raise ConfigError(f"run.output: cannot write the run folder {run_dir}: {reason}") from None


# Parquet stage folders hold about half a stage's input text (compressed), global operators'
# scratch as much again; compressed inputs are counted at 4x, parquet inputs at 3x.
STAGE_BYTES_PER_INPUT_BYTE = 0.5


def estimate_run_bytes(files: list[InputFile], stages: int) -> int:
    raw = sum(f.size * (4 if f.compression else 3 if f.format == "parquet" else 1) for f in files)
    return int(raw * STAGE_BYTES_PER_INPUT_BYTE * stages)


def check_free_space(run_dir: Path | storage.Location, files: list[InputFile], stages: int) -> None:
    if storage.is_uri(run_dir):
        return
    import shutil

    need, free = estimate_run_bytes(files, stages), shutil.disk_usage(run_dir).free
    if free < need:
        raise ConfigError(f"run.output: {run_dir} has {free / 1e9:.2f} GB free, but the {stages} stage(s) to run "
                          f"need about {need / 1e9:.2f} GB (half the inputs' uncompressed size per stage); free "
                          "space or point run.output elsewhere")


# --------------------------------------------------------------------------- the Ray engine


def _parts_sink(fn: Callable[[Iterator[pa.Table], int], Any]):
    from ray.data import Datasink

    class PartsSink(Datasink):
        """`fn` over each write task's blocks; the results in task order."""

        def __init__(self) -> None:
            self.results: list[Any] = []

        def write(self, blocks: Iterable[Any], ctx: Any) -> Any:
            tables = (block if isinstance(block, pa.Table) else pa.Table.from_pandas(block) for block in blocks)
            return fn(tables, ctx.task_idx)

        def on_write_complete(self, write_result: Any) -> None:
            self.results = list(write_result.write_returns or [])

        def get_name(self) -> str:
            return "KilnWriteParts"

    return PartsSink()


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class RayEngine:
    """The Ray Data engine (the protocol is pipeline/engine.py): datasets read by read tasks
    per group of files, per-batch operators as fused `map_batches` tasks (actor pools for GPU
    operators), writes through Datasinks, plain Ray tasks for the global operators' exchanges."""

    name = "ray"

    def __init__(self, session: RaySession, batch_size: int) -> None:
        self.session = session
        self.batch_size = batch_size
        self.num_cpus = session.num_cpus
        self.claims: Any = None  # the IdClaims actor of the stage reading the inputs, if any

    @classmethod
    def start(cls, config: PipelineConfig, request: RunRequest) -> RayEngine:
        if request.master:
            raise KilnError("--master names a Spark cluster: add --engine spark (Ray joins a cluster with --address)")
        # kiln prints its own progress lines (pipeline/progress.py), not Ray Data's bars.
        return cls(connect_ray(config, request.address, request.num_cpus, progress=False), config.ray.batch_size)

    def read_inputs(self, config: PipelineConfig) -> Any:
        ds, self.claims = read_inputs_dataset(config, self.num_cpus)
        return ds

    def read_stage(self, folder: str | os.PathLike) -> Any:
        return read_stage_dataset(folder, self.batch_size, self.num_cpus)

    def from_file_groups(self, groups: list[list[Any]], sizes: list[int],
                         read: Callable[[list[Any]], Iterable[pa.Table]], schema: pa.Schema) -> Any:
        return _file_groups_dataset(groups, sizes, read, schema)

    def map_operators(self, frame: Any, ops: list[tuple[Operator, Any]], batch_size: int, analyze: bool,
                      start: bool) -> Any:
        return _map_operators(frame, ops, batch_size, analyze, self.cpu_cap, start=start)

    def map_batches(self, frame: Any, fn: Callable[[pa.Table], pa.Table], batch_size: int) -> Any:
        return frame.map_batches(fn, batch_format="pyarrow", batch_size=batch_size)

    def schema_names(self, frame: Any) -> list[str]:
        schema = frame.schema()
        return list(schema.names) if schema is not None else []

    def write_stage(self, frame: Any, data_dir: Path, rejected_dir: Path, prefix: str, count_would_reject: bool,
                    progress: Any) -> dict[str, Any]:
        sink = _make_sink(data_dir, rejected_dir, prefix, count_would_reject=count_would_reject, progress=progress)
        frame.write_datasink(sink)
        return sink.counts

    def write_parts(self, frame: Any, fn: Callable[[Iterator[pa.Table], int], Any]) -> list[Any]:
        sink = _parts_sink(fn)
        frame.write_datasink(sink)
        return sink.results

    def map_files(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        import ray

        if not items:
            return []
        # `fn` may be a functools.partial, which ray.remote does not take: a plain task calls
        # it, and it is put in the object store once for all the tasks.
        task = ray.remote(num_cpus=1, max_retries=3)(_call)
        fn_ref = ray.put(fn)
        return ray.get([task.remote(fn_ref, *item) for item in items])

    def run_one(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        return ray.get(ray.remote(num_cpus=1, max_retries=1)(_call).remote(fn, *args))

    def progress_counters(self) -> tuple[Callable[[], Any], Callable[[Any], tuple[int, int]]] | None:
        return _ProgressCounters(), _read_progress

    cpu_cap: float | None = None

    def prepare_stage(self, ops: list[tuple[Operator, Any]]) -> None:
        self.cpu_cap = actor_cpu_cap(ops, self.num_cpus)  # Ray runs every operator kiln has

    def after_stage(self) -> None:
        if self.claims is not None:
            import ray

            ray.kill(self.claims)
            self.claims = None

    def logs_hint(self) -> str:
        return f"full trace in {_ray_logs_dir()}/ray-data/ray-data.log"

    def close(self) -> None:
        self.session.close()


class Runner:
    def __init__(self, config: PipelineConfig, request: RunRequest, echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.request = request
        self.echo = echo
        self.run_dir = output_dir(config, request.analyze)
        self.dirs = stage_dirs(config, request.analyze)
        self.engine: Any = None  # pipeline/engine.py: started once some stage is to run
        self.progress = ProgressReporter(echo, 0)

    def run(self) -> dict[str, Any]:
        files = expand_inputs(self.config.inputs)  # missing inputs fail here, before Ray starts
        if storage.is_uri(self.run_dir):
            check_uri_operators(self.config, str(self.run_dir))
        planned = plan(self.config, self.request)
        check_operator_inputs(self.config, [i for i, _ in planned])
        check_output_writable(self.run_dir)
        if planned:
            check_free_space(self.run_dir, files, len(planned))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir, self.echo):  # one run per folder (pipeline/lock.py)
            # Only the lock's holder may take .tmp- folders for leftovers of an interrupted run.
            for name in storage.clean_stale_tmp(self.run_dir):
                self.echo(f"removed the unfinished stage folder {name} left by an interrupted run")
            planned_index = dict(planned)
            names = [s.name for s in self.config.stages]
            last = names.index(self.request.until) if self.request.until else len(names) - 1
            for i in range(last + 1):
                if i not in planned_index and storage.is_finished(self.dirs[i]):
                    self.echo(f"  skip {self.dirs[i].name}: finished (use --redo to run it again)")
            if not planned:
                self._write_config()
                return self.write_run_stats()
            from pipeline.engine import open_engine

            self.engine = open_engine(self.config, self.request)
            counters = self.engine.progress_counters()
            if counters is not None and self.request.progress:
                self.progress = ProgressReporter(self.echo, self.request.progress_interval,
                                                 live=None if self.echo is print else False,
                                                 make_counter=counters[0], read_counter=counters[1])
            self._write_config()  # only once the cluster answered: a failed connect leaves no trace
            try:
                for i, reason in planned:
                    self._run_stage(i, reason, self.engine.num_cpus)
            finally:
                self.engine.close()
                self.write_run_stats()
            return self.write_run_stats()

    def _write_config(self) -> None:
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.raw, allow_unicode=True, sort_keys=False))

    def write_run_stats(self) -> dict[str, Any]:
        stages = [storage.read_json(d / storage.STATS) for d in self.dirs if storage.is_finished(d)]
        run_stats = {"run": self.config.run.name, "run_dir": str(self.run_dir), "analyze": self.request.analyze,
                     "config": self.config.source_path, "updated": _now(), "stages": stages}
        engines = sorted({st["engine"] for st in stages if st.get("engine")})
        if engines:
            run_stats["engine"] = "+".join(engines)  # which engine made the stages (both, if mixed)
        storage.write_json(self.run_dir / storage.STATS, run_stats)
        return run_stats

    def _run_stage(self, index: int, reason: str, num_cpus: int) -> dict[str, Any]:
        stage = self.config.stages[index]
        final_dir = self.dirs[index]
        tmp_dir = self.run_dir / f"{storage.TMP_PREFIX}{final_dir.name}-{uuid.uuid4().hex[:8]}"
        # Made at once, not by the first write: writes are bundled into files of tens of MB, and a
        # run interrupted before its first file must still leave a folder the next run cleans up.
        tmp_dir.mkdir(parents=True, exist_ok=True)
        upstream = None
        if index > 0:
            upstream = storage.read_json(self.dirs[index - 1] / storage.STATS)["run_id"]
        self.echo(f"> stage {final_dir.name} ({reason})")
        started = time.time()
        try:
            counts, extra, labels = self._execute(index, stage, tmp_dir, num_cpus)
        except KilnError:
            storage.remove_tree(tmp_dir)
            raise
        except Exception as e:  # a failed Ray task, an operator bug: keep earlier stages, explain
            storage.remove_tree(tmp_dir)
            raise StageError(f"stage {final_dir.name} failed, nothing of it was kept (finished stages are): "
                             f"{_root_cause(e)} ({self.engine.logs_hint()})") from e
        seconds = time.time() - started
        st = self._stage_stats(index, stage, counts, extra, labels, seconds, started, upstream)
        st["engine"] = self.engine.name
        if st["docs_in"] != st["docs_out"] + st["rejected_total"]:
            # An operator or a join lost or doubled rows: never publish such a stage.
            storage.remove_tree(tmp_dir)
            raise StageError(f"stage {final_dir.name} does not add up, nothing of it was kept: {st['docs_in']:,} in "
                             f"but {st['docs_out']:,} kept + {st['rejected_total']:,} rejected "
                             f"({', '.join(f'{k} {v:,}' for k, v in st['rejected'].items()) or 'no rejections'}); "
                             "this is a kiln bug, please report it with the config")
        storage.write_json(tmp_dir / storage.STATS, st)
        (tmp_dir / storage.SUCCESS).write_text(_now() + "\n")
        storage.publish(tmp_dir, final_dir)
        if (final_dir / "shards").is_dir():
            storage.link(final_dir / "shards", self.run_dir / "shards")
        self.echo(summarise_stage(st))
        return st

    def _execute(self, index: int, stage: StageSpec, tmp_dir: Path, num_cpus: int):
        from pipeline.global_ops import BatchOverlay, GlobalContext, get_executor, reads_files

        engine = self.engine
        analyze = self.request.analyze
        batch_size = self.config.ray.batch_size
        ops = _label_operators(stage)
        engine.prepare_stage(ops)
        labels = ([(READ_OP, READ_OP, "reader")] if index == 0 else []) + [(op.label, op.name, op.kind) for op, _ in ops]
        if index == 0:
            ds = engine.read_inputs(self.config)
        else:
            ds = engine.read_stage(self.dirs[index - 1] / storage.DATA)
        rejected_dir = tmp_dir / storage.REJECTED
        sink_counts: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        segment_dirs: list[Path] = []  # the scratch segments written so far (a global operator's input)
        expected_first = (storage.read_json(self.dirs[index - 1] / storage.STATS).get("docs_out")
                          if index > 0 else None)

        def write(dataset: Any, segment: int, final: bool) -> Any:
            """Write the rows so far: rejected ones to the stage's rejected/, kept ones to
            data/ (final) or to a scratch segment that the next operator reads back."""
            target = tmp_dir / storage.DATA if final else tmp_dir / "_work" / f"segment-{segment}"
            label = self.dirs[index].name + ("" if segment == 0 else f" (part {segment + 1})")
            expected = sink_counts[-1].get("kept") if sink_counts else expected_first
            with self.progress.watch(label, expected) as counter:
                counts = engine.write_stage(dataset, target, rejected_dir, f"s{segment}", count_would_reject=final,
                                            progress=counter)
            sink_counts.append(counts)
            segment_dirs.append(target)
            return None if final else engine.read_stage(target)

        segment = 0
        finished = False
        start = True  # the stage start (_stage_start) runs with the first per-batch operators
        per_batch: list[tuple[Operator, Any]] = []  # per-batch operators not mapped yet
        # Where ds's rows can be read from file by file: a folder of parquet files and the
        # overlays that turn its rows into ds's (global_ops.BatchOverlay, FileDecisions), or
        # None when ds has operators applied that no file holds yet.
        files_dir: Path | None = None
        overlays: list[Any] = []
        if index > 0:
            files_dir = self.dirs[index - 1] / storage.DATA
        op_seconds: dict[str, float] = {}
        for position, (op, spec) in enumerate(ops):
            if op.kind != "global":
                per_batch.append((op, spec))
                continue
            if per_batch:
                ds = engine.map_operators(ds, per_batch, batch_size, analyze, start=start)
                per_batch, start, files_dir = [], False, None
            elif start and files_dir is not None:
                # The stage starts with a global operator: it reads the previous stage's files
                # with the stage start as an overlay, not a scratch copy of them.
                ds = engine.map_operators(ds, [], batch_size, analyze, start=True)
                start, overlays = False, [BatchOverlay(_stage_start)]
            elif start:
                ds = engine.map_operators(ds, [], batch_size, analyze, start=True)
                start, files_dir = False, None
            if files_dir is None or (overlays and not reads_files(op.name)):
                # A global operator reads its input more than once: from disk, and operators
                # other than the file readers get the rows kept so far only.
                ds = write(ds, segment, final=False)
                segment += 1
                files_dir, overlays = segment_dirs[-1], []
            ctx = GlobalContext(work_dir=tmp_dir / "_work" / f"{op.label}", batch_size=batch_size, analyze=analyze,
                                num_cpus=num_cpus, stage_name=stage.name, output_dir=tmp_dir,
                                run_dir=self.run_dir, config_sha256=self.config.config_hash(),
                                input_dir=files_dir, memory_budget=self.config.ray.global_memory,
                                overlays=list(overlays), engine=engine)
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            result = get_executor(op.name)(op, ds, ctx)
            finished = position == len(ops) - 1
            if finished:
                write(result, segment, final=True)
                segment += 1
            elif reads_files(op.name) and (ctx.result_overlays is not None or result is ds):
                # Decided, not yet applied: the next operator reads the same files with this
                # one's decisions as one more overlay; the stage writes once, at its end.
                overlays = ctx.result_overlays if ctx.result_overlays is not None else overlays
                ds = result
            else:
                ds, files_dir, overlays = result, None, []
            ctx.extra["wall_seconds"] = round(time.perf_counter() - started, 3)
            extra[op.label] = ctx.extra
            op_seconds[op.label] = ctx.extra["wall_seconds"]
        if per_batch or start:
            ds = engine.map_operators(ds, per_batch, batch_size, analyze, start=start)
        if not finished:
            write(ds, segment, final=True)
        sink_counts[-1].setdefault("seconds", {}).update(op_seconds)
        (tmp_dir / storage.DATA).mkdir(parents=True, exist_ok=True)
        rejected_dir.mkdir(parents=True, exist_ok=True)
        storage.remove_tree(tmp_dir / "_work")
        engine.after_stage()
        return sink_counts, extra, labels

    def _stage_stats(self, index: int, stage: StageSpec, sink_counts: list[dict[str, Any]], extra: dict[str, Any],
                     labels: list[tuple[str, str, str]], seconds: float, started: float,
                     upstream: str | None) -> dict[str, Any]:
        first, last = sink_counts[0], sink_counts[-1]
        total = stats_lib.merge(*sink_counts)
        rejected = dict(sorted(total.get("rejected", {}).items(), key=lambda kv: -kv[1]))
        docs_in = int(first.get("rows", 0))
        st = {
            "name": stage.name,
            "index": index,
            "folder": self.dirs[index].name,
            "stage_hash": self.config.stage_hash(index),
            "run_id": uuid.uuid4().hex,
            "input_run_id": upstream,
            "analyze": self.request.analyze,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "finished": _now(),
            "seconds": round(seconds, 3),
            "docs_in": docs_in,
            "docs_out": int(last.get("kept", 0)),
            "rejected_total": int(sum(rejected.values())),
            "rejected": rejected,
            "bytes_in": int(first.get("bytes_in", 0)),
            "bytes_out": int(last.get("bytes_out", 0)),
            "docs_per_s": round(docs_in / seconds, 1) if seconds > 0 else None,
            "ops": stats_lib.op_rows(labels, docs_in, rejected, total.get("seconds", {}), self.request.analyze,
                                     last.get("would_reject", {})),
            "extra": extra,
        }
        if self.request.analyze:
            st["would_reject"] = dict(sorted(last.get("would_reject", {}).items(), key=lambda kv: -kv[1]))
        return st


def summarise_stage(st: dict[str, Any]) -> str:
    line = (f"  done {st['folder']}: {st['docs_in']:,} in -> {st['docs_out']:,} kept, "
            f"{st['rejected_total']:,} rejected in {st['seconds']:.1f} s")
    top = list(st["rejected"].items())[:6]
    if top:
        line += "\n      " + ", ".join(f"{k} {v:,}" for k, v in top)
        if len(st["rejected"]) > len(top):
            line += f", and {len(st['rejected']) - len(top)} more reasons"
    if st.get("would_reject"):
        line += "\n      would reject: " + ", ".join(f"{k} {v:,}" for k, v in list(st["would_reject"].items())[:6])
    return line


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Bug|Interrupt|Exit)): (.+)$", re.MULTILINE)
_RAY_WRAPPERS = ("UserCodeException", "RayTaskError", "RayError", "RayActorError",
                 # Spark's: a Python worker's exception arrives inside the JVM's
                 "SparkException", "Py4JJavaError", "PythonException", "TaskSetManager")


def _root_cause(error: BaseException) -> str:
    """The original exception behind Ray's wrappers, in one line. A task's own exception
    reaches the driver only as text inside the wrapper's traceback, so it is read from there."""
    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    for exc in chain:
        for name, message in _EXCEPTION_LINE.findall(str(exc)):
            if not name.split(".")[-1].startswith(_RAY_WRAPPERS):
                return f"{name.split('.')[-1]}: {message.strip()}"
    innermost = chain[-1]
    lines = [line for line in str(innermost).strip().splitlines() if line.strip()]
    return f"{type(innermost).__name__}: {lines[0] if lines else ''}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_pipeline(config: PipelineConfig, request: RunRequest | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    return Runner(config, request or RunRequest(), echo).run()
