"""The runner: stages of operators, written atomically, every document accounted for.

`Runner` owns what does not depend on the engine: the plan, the run lock, temporary stage
folders, the order of a stage's per-batch and global operators (and when the rows so far must
be written for a global operator to read them again), the count check, stats.json,
`_SUCCESS` and resume. The work itself goes to the run's engine (pipeline/engines/: Ray by
default, or Spark). The engine-neutral pieces the engines share live here too: the stage
start, the operator chain applied to a batch, the kept/rejected split of a write, and the
readers of input and stage files.

Reruns: a finished stage (its `_SUCCESS` written) is skipped while its configuration and its
input are unchanged; a stage that runs makes every later stage stale.
"""

from __future__ import annotations

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
from common.readers import READ_OP, InputFile, expand_inputs, timed_batches
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
from pipeline.config import PipelineConfig, StageSpec
from pipeline.lock import RunLock
from pipeline.progress import ProgressReporter

log = logging.getLogger("kiln")
BYTES_IN = "_kiln.bytes_in"


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
    """Read a group of input files batch by batch, ids made unique (pipeline/ids.py). With the
    stage's claims actor (`claims`, an `ActorClaims`, when several tasks read), each batch's
    claim is sent before the next batch is read and collected after, so the actor's round trip
    overlaps the reading;
    with None (one read task holds every input, or the Spark engine's source-closed groups)
    the claims are kept in this task."""
    local = IdClaims() if claims is None else None
    pending: tuple[pa.Table, Any, float] | None = None

    def finish(table: pa.Table, reply: Any, seconds: float) -> pa.Table:
        started = time.perf_counter()
        table = make_unique(table, lambda _: reply.result())
        per_row = (seconds + time.perf_counter() - started) / max(1, table.num_rows)
        return table.append_column(SECONDS_PREFIX + READ_OP, pa.array([per_row] * table.num_rows, pa.float64()))

    for table, seconds in timed_batches(group, batch_rows):
        if local is not None:
            started = time.perf_counter()
            table = make_unique(table, local.claim)
            per_row = (seconds + time.perf_counter() - started) / max(1, table.num_rows)
            yield table.append_column(SECONDS_PREFIX + READ_OP, pa.array([per_row] * table.num_rows, pa.float64()))
            continue
        started = time.perf_counter()
        reply = claims.submit(table.column("id").to_pylist())
        seconds += time.perf_counter() - started
        if pending is not None:
            yield finish(*pending)
        pending = (table, reply, seconds)
    if pending is not None:
        yield finish(*pending)


def _read_parquet_group(group: list[str], schema: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    for path in group:
        for batch in storage.parquet_file(path).iter_batches(batch_size=batch_rows):
            yield conform(pa.Table.from_batches([batch]), schema)


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


# --------------------------------------------------------------------------- operators


def _apply_chain(ops: list[Operator], batch: pa.Table, *, analyze: bool, start: bool) -> pa.Table:
    """Several per-batch operators (and the stage's start) on one batch, in order."""
    if start:
        batch = _stage_start(batch)
    for op in set_up_in_process(ops):
        batch = apply_operator(op, batch, analyze=analyze)
    return batch


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


class Runner:
    def __init__(self, config: PipelineConfig, request: RunRequest, echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.request = request
        self.echo = echo
        self.run_dir = output_dir(config, request.analyze)
        self.dirs = stage_dirs(config, request.analyze)
        self.engine: Any = None  # pipeline/engines/__init__.py: started once some stage is to run
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
            from pipeline.engines import open_engine

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
        from pipeline.global_ops import (
            BatchOverlay,
            GlobalContext,
            get_executor,
            reads_files,
            reads_once,
        )

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
        files_dir: Path | Any = None
        overlays: list[Any] = []
        if index > 0:
            files_dir = self.dirs[index - 1] / storage.DATA
        elif ops and ops[0][0].kind == "global" and reads_files(ops[0][0].name):
            # Stage 1 starts with a gathered operator: it reads the input files in place, as
            # later stages read the previous stage's files; no scratch copy of the inputs.
            files_dir = engine.input_units(self.config, tmp_dir / "_work" / "input-ids")
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
            if (files_dir is None or (overlays and not reads_files(op.name))) and not reads_once(op.name):
                # A global operator reads its input more than once: from disk, and operators
                # other than the file readers get the rows kept so far only. One that reads
                # it once (tokenize_pack) takes the rows as they come, in the same tasks.
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
