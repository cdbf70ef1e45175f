"""The Ray engine: a stage as one pass of tasks over its rows (pipeline/engines/__init__.py says
what an engine provides; pipeline/runner.py runs the stages through it).

One stage is one pass: read (the inputs for stage 1, the previous stage's `data/` otherwise),
the operators in order, and a writer that sends kept rows to `data/` and rejected rows to
`rejected/`, counting as it goes; one plain Ray task per group of files (`FileFrame`) where
the operators ask for nothing but a CPU, a streaming Ray Data pass otherwise. A global
operator splits a stage into segments: the rows so far are written to the stage's scratch
folder, the operator's executor reads them (as often as it needs) and its output is written
again before the stage goes on, unless it leaves its decisions as an overlay of the same files
or reads the rows once, as they come (tokenize_pack; pipeline/global_ops).

Per-batch operators become `map_batches` calls: plain tasks (which Ray fuses), models loaded
once per worker process, or an actor pool for GPU operators, with the CPUs, GPUs, memory and
concurrency the operator declares or the config overrides.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from common import storage
from common.errors import KilnError, StageError
from common.ids import IdClaims
from common.readers import DOC_SCHEMA, expand_inputs, split_parquet_files
from operators.base import (
    Operator,
    apply_operator,
)
from pipeline import stats as stats_lib
from pipeline.cluster import join_on_loopback
from pipeline.config import PipelineConfig
from pipeline.global_ops import InputUnit, InputUnits
from pipeline.runner import (
    RunRequest,
    _apply_chain,
    _group_by_size,
    _read_input_group,
    _read_parquet_group,
    write_split_part,
)

log = logging.getLogger("kiln")
TARGET_READ_BYTES = 128 << 20
MIN_READ_BYTES = 1 << 20  # smaller inputs are read by one task
WRITE_BUNDLE_BYTES = 16 << 20
# A stage's write tasks ask for no CPU: Ray Data reserves each operator at least one task's
# CPUs, so a 1-CPU write held one of a 2-CPU machine's cores idle for the whole stage and the
# operators ran one task at a time (the Ray engine's per-batch stages used about 1.2 of 2
# cores at 100 MB, where Spark used both). Writing (split, count, parquet) then shares the
# cores with the operator tasks.
WRITE_TASK_ARGS = {"num_cpus": 0}

# --------------------------------------------------------------------------- Ray session


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


def default_object_store_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(min(total * 0.25, 4 << 30))


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


@dataclass(frozen=True)
class FileFrame:
    """Rows that one plain task per file group makes on its own: read the group, then apply
    per-batch functions in order. `RayEngine.write_stage` (and `write_parts`, tokenize_pack's
    encode pass) runs read, operators and write in that one task (the shape of a Spark
    `mapInArrow` partition): no Ray Data operator per step, no block handed through the
    object store between them, which cost kiln's per-batch stages more than their operators
    did (docs/benchmarks.md). Anything else (a shuffle, a
    join, an actor pool, an iteration) gets the same rows as a Ray Dataset (`dataset()`);
    attributes of a Dataset are looked up there."""

    groups: tuple[Any, ...]
    sizes: tuple[int, ...]
    read_group: Callable[[Any], Iterable[pa.Table]]
    row_schema: pa.Schema  # of what read_group yields
    steps: tuple[tuple[Callable[[pa.Table], pa.Table], int], ...] = ()  # (function, batch size)

    def dataset(self) -> Any:
        ds = _file_groups_dataset(list(self.groups), list(self.sizes), self.read_group, self.row_schema)
        for fn, batch_size in self.steps:
            ds = ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_size)
        return ds

    def then(self, fn: Callable[[pa.Table], pa.Table], batch_size: int) -> FileFrame:
        return FileFrame(self.groups, self.sizes, self.read_group, self.row_schema, (*self.steps, (fn, batch_size)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset(), name)


def _frame(groups: list[Any], sizes: list[int], read: Callable[[Any], Iterable[pa.Table]], schema: pa.Schema) -> Any:
    return FileFrame(tuple(tuple(g) if isinstance(g, list) else g for g in groups), tuple(sizes), read, schema)


def _frame_batches(group: Any, read: Callable[[Any], Iterable[pa.Table]],
                   steps: tuple[tuple[Callable[[pa.Table], pa.Table], int], ...]) -> Iterator[pa.Table]:
    # The reads yield batches of the stage's batch size; the steps take them as they come.
    for table in read(list(group) if isinstance(group, tuple) else group):
        for fn, _ in steps:
            table = fn(table)
        yield table


def _write_group(index: int, group: Any, read: Callable[[Any], Iterable[pa.Table]],
                 steps: tuple[tuple[Callable[[pa.Table], pa.Table], int], ...], prefix: str, data_dir: Path, rejected_dir: Path,
                 count_would_reject: bool, progress: Any) -> dict[str, Any]:
    """One task of a `FileFrame` write: its group read, mapped and written (`write_split_part`)."""
    on_block = None
    if progress is not None:
        def on_block(rows: int, text_bytes: int) -> None:
            progress.add.remote(rows, text_bytes)
    return write_split_part(_frame_batches(group, read, steps), f"{prefix}-{index:05d}.parquet", data_dir,
                            rejected_dir, count_would_reject, on_block)


def _write_part(index: int, group: Any, read: Callable[[Any], Iterable[pa.Table]],
                steps: tuple[tuple[Callable[[pa.Table], pa.Table], int], ...],
                fn: Callable[[Iterator[pa.Table], int], Any]) -> Any:
    """One task of a `FileFrame`'s `write_parts`: `fn` over its group's batches, the group's
    number as the part (unique, and the same when a failed task is retried)."""
    return fn(_frame_batches(group, read, steps), index)


def _call_each(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*item) for item in items]


def _run_tasks(fn: Callable[..., Any], items: list[tuple[Any, ...]], name: str) -> list[Any]:
    """`fn(*item)` for every item, one plain task each (1 CPU, retried), spread over the
    cluster's nodes; the results in item order."""
    import ray

    if not items:
        return []
    # `fn` may be a functools.partial, which ray.remote does not take: a plain task calls
    # it, and it is put in the object store once for all the tasks.
    task = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_call).options(name=name)
    fn_ref = ray.put(fn)
    return ray.get([task.remote(fn_ref, *item) for item in items])


def input_groups(config: PipelineConfig, num_cpus: int) -> list[list[tuple[Any, Any]]]:
    """The inputs' (file, spec) pairs in groups of about a read task's size: small files
    together, a big parquet file in parts of whole row groups."""
    files = expand_inputs(config.inputs)
    total = sum(f.size for f in files)
    target = max(MIN_READ_BYTES, min(TARGET_READ_BYTES, total // max(1, 4 * num_cpus) + 1))
    files = split_parquet_files(files, target)  # one big parquet file is read by several tasks
    return _group_by_size([(f, config.inputs[f.spec_index]) for f in files], [f.size for f in files], target)


def read_inputs_dataset(config: PipelineConfig, num_cpus: int) -> tuple[Any, Any]:
    """The inputs as one Dataset, and the IdClaims actor that makes ids unique across its read
    tasks (None when one task reads everything and keeps the claims itself: no actor to
    start, no round trip per batch); the caller kills the actor after the stage."""
    groups = input_groups(config, num_cpus)
    sizes = [sum(f.size for f, _ in g) for g in groups]
    actor = _claims_actor() if len(groups) > 1 else None
    read = functools.partial(_read_input_group, batch_rows=config.ray.batch_size,
                             claims=ActorClaims(actor) if actor is not None else None)
    return _frame(groups, sizes, read, DOC_SCHEMA), actor


def _claims_actor() -> Any:
    import ray

    # One actor holds the ids read so far, for every read task; it goes with the driver's
    # job. num_cpus=0: it must never wait for a CPU.
    return ray.remote(num_cpus=0)(IdClaims).remote()


@dataclass(frozen=True)
class ActorClaims:
    """`IdClaims.claim` through the stage's claims actor, for the read tasks of stage 1."""

    actor: Any

    def submit(self, ids: list[str]) -> Any:
        """The claim sent, its reply to come as a `concurrent.futures.Future`. Waited for
        through the future, never `ray.get`: a task blocked in `ray.get` hands its CPU back,
        so Ray starts another read task in its place (each a new worker process with its own
        start-up), and a stage of many files ended up running several tasks per CPU."""
        return self.actor.claim.remote(ids).future()

    def claim(self, ids: list[str]) -> dict[int, str]:
        return self.submit(ids).result()


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
    return _frame(groups, sizes, read, schema)


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
    """The Ray Data engine (the protocol is pipeline/engines/__init__.py): datasets read by read tasks
    per group of files, per-batch operators as fused `map_batches` tasks (actor pools for GPU
    operators), writes through Datasinks, plain Ray tasks for the global operators' exchanges."""

    name = "ray"

    def __init__(self, session: RaySession, batch_size: int) -> None:
        self.session = session
        self.batch_size = batch_size
        self.num_cpus = session.num_cpus
        self.claims: list[Any] = []  # the IdClaims actors of the stage reading the inputs

    @classmethod
    def start(cls, config: PipelineConfig, request: RunRequest) -> RayEngine:
        if request.master:
            raise KilnError("--master names a Spark cluster: add --engine spark (Ray joins a cluster with --address)")
        # kiln prints its own progress lines (pipeline/progress.py), not Ray Data's bars.
        return cls(connect_ray(config, request.address, request.num_cpus, progress=False), config.ray.batch_size)

    def read_inputs(self, config: PipelineConfig) -> Any:
        ds, claims = read_inputs_dataset(config, self.num_cpus)
        if claims is not None:
            self.claims.append(claims)
        return ds

    def input_units(self, config: PipelineConfig, renames_dir: Path) -> InputUnits:
        groups = input_groups(config, self.num_cpus)
        claims = None
        if len(groups) > 1:
            self.claims.append(_claims_actor())
            claims = ActorClaims(self.claims[-1])
        return InputUnits(tuple(InputUnit(tuple(group), claims, str(renames_dir)) for group in groups))

    def read_stage(self, folder: str | os.PathLike) -> Any:
        return read_stage_dataset(folder, self.batch_size, self.num_cpus)

    def from_file_groups(self, groups: list[list[Any]], sizes: list[int],
                         read: Callable[[list[Any]], Iterable[pa.Table]], schema: pa.Schema) -> Any:
        return _frame(groups, sizes, read, schema)

    def map_operators(self, frame: Any, ops: list[tuple[Operator, Any]], batch_size: int, analyze: bool,
                      start: bool) -> Any:
        plain = {"batch_format": "pyarrow", "batch_size": batch_size, "num_cpus": 1.0}
        if isinstance(frame, FileFrame) and all(_task_kwargs(op, spec, batch_size, self.cpu_cap) == plain
                                                and not _runs_as_actor(op, spec) for op, spec in ops):
            # Operators asking for nothing but a CPU run in the frame's own tasks.
            return frame.then(functools.partial(_apply_chain, [op for op, _ in ops], analyze=analyze, start=start),
                              batch_size)
        if isinstance(frame, FileFrame):
            frame = frame.dataset()
        return _map_operators(frame, ops, batch_size, analyze, self.cpu_cap, start=start)

    def map_batches(self, frame: Any, fn: Callable[[pa.Table], pa.Table], batch_size: int) -> Any:
        if isinstance(frame, FileFrame):
            return frame.then(fn, batch_size)
        return frame.map_batches(fn, batch_format="pyarrow", batch_size=batch_size)

    def schema_names(self, frame: Any) -> list[str]:
        schema = frame.schema()
        return list(schema.names) if schema is not None else []

    def write_stage(self, frame: Any, data_dir: Path, rejected_dir: Path, prefix: str, count_would_reject: bool,
                    progress: Any) -> dict[str, Any]:
        if isinstance(frame, FileFrame):
            task = functools.partial(_write_group, read=frame.read_group, steps=frame.steps, prefix=prefix,
                                     data_dir=data_dir, rejected_dir=rejected_dir,
                                     count_would_reject=count_would_reject, progress=progress)
            results = _run_tasks(task, list(enumerate(frame.groups)), "KilnStage")
            return stats_lib.merge(*results) if results else {}
        sink = _make_sink(data_dir, rejected_dir, prefix, count_would_reject=count_would_reject, progress=progress)
        frame.write_datasink(sink, ray_remote_args=WRITE_TASK_ARGS)
        return sink.counts

    def write_parts(self, frame: Any, fn: Callable[[Iterator[pa.Table], int], Any]) -> list[Any]:
        if isinstance(frame, FileFrame):
            # As `write_stage`: one plain task per file group reads, maps and hands its batches
            # to `fn` (tokenize_pack's encode pass), no Ray Data pass in between.
            task = functools.partial(_write_part, read=frame.read_group, steps=frame.steps, fn=fn)
            return _run_tasks(task, list(enumerate(frame.groups)), "KilnStage")
        sink = _parts_sink(fn)
        frame.write_datasink(sink)
        return sink.results

    def count_parts(self, frame: Any) -> int | None:
        # A Dataset's write tasks follow its blocks, which are known only as it runs.
        return len(frame.groups) if isinstance(frame, FileFrame) else None

    def map_files(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        # A plain task costs 10-25 ms to schedule and start: thousands of small items (the
        # 3,783 shard plans of tokenize_pack at 1 GB took 45 s as a task each) go in runs, a
        # few per CPU so that uneven items still balance.
        runs = 8 * max(1, int(self.num_cpus))
        if len(items) <= runs:
            return _run_tasks(fn, items, "KilnFiles")
        size = -(-len(items) // runs)
        chunks = [(items[start:start + size],) for start in range(0, len(items), size)]
        return [r for chunk in _run_tasks(functools.partial(_call_each, fn), chunks, "KilnFiles") for r in chunk]

    def run_one(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        return ray.get(ray.remote(num_cpus=1, max_retries=1)(_call).remote(fn, *args))

    def progress_counters(self) -> tuple[Callable[[], Any], Callable[[Any], tuple[int, int]]] | None:
        return _ProgressCounters(), _read_progress

    cpu_cap: float | None = None

    def prepare_stage(self, ops: list[tuple[Operator, Any]]) -> None:
        self.cpu_cap = actor_cpu_cap(ops, self.num_cpus)  # Ray runs every operator kiln has

    def after_stage(self) -> None:
        import ray

        for actor in self.claims:
            ray.kill(actor)
        self.claims = []

    def logs_hint(self) -> str:
        return f"full trace in {_ray_logs_dir()}/ray-data/ray-data.log"

    def close(self) -> None:
        self.session.close()


