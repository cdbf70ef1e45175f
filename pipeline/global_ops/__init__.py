"""Executors for global operators: the engine side of operators that need the whole dataset.

A global operator (`operators.base.GlobalOperator`) holds parameters and pure kernels; its
executor, registered here under the same name, runs it over the stage's engine
(`ctx.engine`, pipeline/engines/__init__.py): on Ray, a Ray Data `Dataset` built from shuffles,
groupbys and aggregations; on either engine, the gathered form below. Never by collecting
the corpus on the driver.

An executor receives the stage's rows so far (already on disk, so it may read them more than
once; as they come, rejected rows included, for one that reads them once: `reads_once`) as the engine's frame and returns a frame with the same rows, the ones it drops marked with `reject_op`,
`reject_reason` and `reject_detail` (use `mark_rejected`). Statistics for the report go into
`ctx.extra`. Every module in this package is imported on first lookup.

Gathered execution, for what a corpus boils down to when it fits `ctx.memory_budget`
(datatrove clusters FineWeb's duplicate pairs in one task; rensa and datasketch keep the band
index in one process): `map_input_files` computes narrow columns (keys, signatures, scores)
from the input files in plain Ray tasks, one per file, each row named by a *row key* (input
file number and row position, which cannot repeat even where document ids do);
`run_in_one_task` hands those files to one task that decides and writes a decision table per
input file (`write_decisions`); `marked_dataset` reads the input files again and applies each
file's decisions by row position. No shuffle, no join, and no fixed cost of an exchange.
Above the budget, executors take their distributed form (shuffles, joins by row key).
These steps go through the stage's engine (`ctx.engine`, pipeline/engines/__init__.py), so the gathered
form runs on Ray and on Spark alike; the distributed form is Ray Data's only.

Between gathered operators of a stage nothing is written: an operator's decisions become an
*overlay* of the same input files (`FileDecisions`), applied wherever the next operator reads
them, so a stage of exact + URL + MinHash dedup reads the previous stage's files and writes its
own once, not once per operator. Row keys always name positions in those files.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import (
    REJECT_DETAIL,
    REJECT_OP,
    REJECT_REASON,
    WOULD_REJECT,
    GlobalOperator,
    set_column,
)

if TYPE_CHECKING:
    import ray.data

Executor = Callable[[GlobalOperator, "ray.data.Dataset", "GlobalContext"], "ray.data.Dataset"]
_EXECUTORS: dict[str, Executor] = {}
# Executors that read their input only through the files and `ctx.overlays` (never the rows
# of `ds`), so they can take a stage's rows without a scratch copy written first.
_READS_FILES: set[str] = set()
# Executors that read `ds` once, in one pass (`Engine.write_parts`), and hand back every row
# they were given, leaving rows an earlier operator rejected as they are: they can take the
# stage's rows as they come (read, stage start, per-batch operators, rejected rows included),
# with no scratch copy written first, which only operators reading their input again need.
_READS_ONCE: set[str] = set()
_discovered = False


@dataclass
class GlobalContext:
    work_dir: Path  # scratch folder inside the stage's temporary folder
    batch_size: int
    analyze: bool
    num_cpus: int  # CPUs of the cluster, for choosing partition counts
    stage_name: str
    # The stage's (temporary) folder: files an executor writes here, such as token shards,
    # are published with the stage. A `shards/` folder is linked as RUN/shards.
    output_dir: Path
    run_dir: Path
    config_sha256: str  # hash of the whole pipeline config, for manifests
    extra: dict[str, Any] = field(default_factory=dict)  # executor statistics for stats.json
    # The folder of parquet files holding the rows so far (what `ds` reads), for gathered
    # execution by row key; and the memory a gathered step may use in its one task.
    input_dir: Path | InputUnits | None = None
    memory_budget: int = 2 << 30
    # What turns the rows of `input_dir`'s files into the rows so far, batch by batch, in
    # order: the stage start, and the decisions of earlier gathered operators of the stage,
    # which are applied where the files are read instead of being written out in between.
    overlays: list[Any] = field(default_factory=list)
    # Set by `marked_dataset`: the overlays that give this operator's output from the same
    # files, so that the runner may hand them to the next operator without writing.
    result_overlays: list[Any] | None = None
    # The engine running the stage (pipeline/engines/__init__.py): executors read, map, write and
    # exchange through it, so one executor serves Ray and Spark. None: Ray (tests that build
    # a context by hand).
    engine: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Executors' per-batch closures capture the context and travel to the workers; the
        # engine (a Spark or Ray session) stays on the driver, where alone it is used.
        return {**self.__dict__, "engine": None}

    def get_engine(self) -> Any:
        if self.engine is None:
            from pipeline.engines import ray_engine_in_process

            self.engine = ray_engine_in_process(self.num_cpus, self.batch_size)
        return self.engine

    @property
    def num_partitions(self) -> int:
        return max(2, 2 * self.num_cpus)


def global_executor(name: str, reads_files: bool = False, reads_once: bool = False) -> Callable[[Executor], Executor]:
    def decorate(fn: Executor) -> Executor:
        _EXECUTORS[name] = fn
        if reads_files:
            _READS_FILES.add(name)
        if reads_once:
            _READS_ONCE.add(name)
        return fn

    return decorate


def reads_files(name: str) -> bool:
    """Whether the executor of `name` reads its input through `ctx.input_dir` and
    `ctx.overlays` only (see `_READS_FILES`)."""
    get_executor(name)
    return name in _READS_FILES


def reads_once(name: str) -> bool:
    """Whether the executor of `name` reads `ds` once and passes every row through (see
    `_READS_ONCE`)."""
    get_executor(name)
    return name in _READS_ONCE


def get_executor(name: str) -> Executor:
    global _discovered
    if not _discovered:
        import pipeline.global_ops as package

        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"pipeline.global_ops.{module.name}")
        _discovered = True
    try:
        return _EXECUTORS[name]
    except KeyError:
        raise KeyError(f"global operator {name!r} has no executor in pipeline/global_ops") from None


DECISION_REASON = "_decision.reason"
DECISION_DETAIL = "_decision.detail"


def apply_decisions(batch: pa.Table, label: str, analyze: bool) -> pa.Table:
    """Fold decision columns (joined onto the rows by id) into the reject columns, or into
    `would_reject` in analyze mode, then drop them."""
    if DECISION_REASON not in batch.column_names:
        return batch
    reasons = batch.column(DECISION_REASON).combine_chunks().cast(pa.string())
    details = batch.column(DECISION_DETAIL).combine_chunks().cast(pa.string()) if DECISION_DETAIL in batch.column_names else None
    batch = batch.drop_columns([c for c in (DECISION_REASON, DECISION_DETAIL) if c in batch.column_names])
    hit = pc.is_valid(reasons)
    if analyze:
        entry = pc.binary_join_element_wise(pa.scalar(label), reasons, "/")
        if WOULD_REJECT in batch.column_names:
            previous = batch.column(WOULD_REJECT).combine_chunks()
            joined = pc.binary_join_element_wise(previous, entry, ";")
            entry = pc.if_else(pc.is_null(previous), entry, pc.if_else(hit, joined, previous))
        return set_column(batch, WOULD_REJECT, entry)
    null = pa.scalar(None, pa.string())
    previous_op = batch.column(REJECT_OP).combine_chunks() if REJECT_OP in batch.column_names else pa.nulls(len(batch), pa.string())
    previous_reason = batch.column(REJECT_REASON).combine_chunks() if REJECT_REASON in batch.column_names else pa.nulls(len(batch), pa.string())
    previous_detail = batch.column(REJECT_DETAIL).combine_chunks() if REJECT_DETAIL in batch.column_names else pa.nulls(len(batch), pa.string())
    fresh = pc.and_(hit, pc.is_null(previous_op))
    batch = set_column(batch, REJECT_OP, pc.if_else(fresh, pa.scalar(label), previous_op))
    batch = set_column(batch, REJECT_REASON, pc.if_else(fresh, reasons, previous_reason))
    detail = details if details is not None else pa.nulls(len(batch), pa.string())
    batch = set_column(batch, REJECT_DETAIL, pc.if_else(fresh, detail, pc.if_else(pc.is_null(previous_op), null, previous_detail)))
    return batch


def mark_rejected(ds: ray.data.Dataset, decisions: ray.data.Dataset, label: str,
                  ctx: GlobalContext, on: str = "id") -> ray.data.Dataset:
    """Join `decisions` (columns `on`, `reason`, optional `detail` and extra per-document
    columns such as `dup_of`) onto `ds` by `on`, distributed, and mark the rows it names.
    The extra columns stay on every row (null for rows `decisions` does not name). Join by
    `ROW_KEY` (see `keyed_dataset`) where ids may repeat."""

    def rename(batch: pa.Table) -> pa.Table:
        names = {"reason": DECISION_REASON, "detail": DECISION_DETAIL}
        return batch.rename_columns([names.get(c, c) for c in batch.column_names])

    decisions = decisions.map_batches(rename, batch_format="pyarrow")
    joined = ds.join(decisions, join_type="left_outer", num_partitions=ctx.num_partitions, on=(on,))

    def fold(batch: pa.Table) -> pa.Table:
        return apply_decisions(batch, label, ctx.analyze)

    return joined.map_batches(fold, batch_format="pyarrow", batch_size=ctx.batch_size)


# --------------------------------------------------------------------------- gathered execution

# Row key: input file number << 40 | row position in the file (files of under 2^40 rows).
ROW_KEY = "_kiln.row"
_FILE_SHIFT = 40
_POSITION_MASK = (1 << _FILE_SHIFT) - 1
DECISION_POSITION = "_position"


def input_files(ctx: GlobalContext) -> list[Any]:
    """The files of the rows so far, in the order row keys number them: parquet paths, or
    the stage-1 input units (`InputUnits`)."""
    from common import storage

    if ctx.input_dir is None:
        raise RuntimeError("gathered execution needs ctx.input_dir (set by the runner)")
    if isinstance(ctx.input_dir, InputUnits):
        return list(ctx.input_dir.units)
    return storage.parquet_files(ctx.input_dir)


def _files_schema_sizes(ctx: GlobalContext) -> tuple[list[Any], pa.Schema | None, list[int]]:
    """`input_files`, the schema their rows are read in, and their estimated sizes in memory."""
    from common import storage

    files = input_files(ctx)
    if isinstance(ctx.input_dir, InputUnits):
        return files, InputUnit.schema(), [unit.size for unit in files]
    schema = storage.unified_schema(files) if files else None
    return files, schema, [storage.file_size(f) * 3 for f in files]  # parquet compresses text about 3x


@dataclass(frozen=True)
class InputUnit:
    """Input files of stage 1 that one task reads in order (`common.readers.read_file`), so
    that a stage starting with a gathered operator reads the inputs in place instead of a
    scratch copy written first. Ids are claimed (common/ids.py) on the unit's first read,
    through `claims` (an object with `claim(ids)` shared by every unit of the stage; None:
    the unit claims for itself, which is right when it holds every file of its sources),
    and the renames it made are recorded in `renames_dir`, so each later read of the unit
    gives the same ids at the same row positions."""

    files: tuple[tuple[Any, Any], ...]  # (InputFile, InputSpec) pairs
    claims: Any
    renames_dir: str

    @property
    def size(self) -> int:
        # in memory: parquet decompresses to about 3x, the other formats are text already
        return sum(f.size * (3 if f.format == "parquet" else 1) for f, _ in self.files)

    @classmethod
    def schema(cls) -> pa.Schema:
        from common.readers import DOC_SCHEMA, READ_OP
        from operators.base import SECONDS_PREFIX

        return DOC_SCHEMA.append(pa.field(SECONDS_PREFIX + READ_OP, pa.float64()))

    def batches(self, number: int, batch_rows: int) -> Iterator[pa.Table]:
        import time

        from common import storage
        from common.ids import IdClaims
        from common.readers import READ_OP, timed_batches
        from operators.base import SECONDS_PREFIX

        renames_file = storage.location(self.renames_dir) / f"{number:06d}.parquet"
        recorded = storage.parquet_file(str(renames_file)).read() if renames_file.is_file() else None
        recorded_positions = recorded.column("position").to_numpy() if recorded is not None else None
        claims = self.claims if self.claims is not None else IdClaims()
        new_positions: list[int] = []
        new_ids: list[str] = []
        position = 0
        for table, seconds in timed_batches(self.files, batch_rows):
            started = time.perf_counter()
            n = table.num_rows
            if recorded is None:
                ids = table.column("id").to_pylist()
                renamed = claims.claim(ids)
                new_positions += [position + i for i in renamed]
                new_ids += list(renamed.values())
            else:
                # A replay: only the recorded renames inside this batch, no claims.
                where = recorded_positions
                inside = np.flatnonzero((where >= position) & (where < position + n))
                renamed = dict(zip((where[inside] - position).tolist(),
                                   recorded.column("id").take(pa.array(inside)).to_pylist()))
                ids = table.column("id").to_pylist() if renamed else []
            if renamed:
                for i, new_id in renamed.items():
                    ids[i] = new_id
                table = set_column(table, "id", pa.array(ids, pa.string()))
            per_row = (seconds + time.perf_counter() - started) / max(1, n)
            yield set_column(table, SECONDS_PREFIX + READ_OP, pa.array(np.full(n, per_row)))
            position += n
        if recorded is None:
            storage.write_parquet_atomic(pa.table({"position": pa.array(new_positions, pa.int64()),
                                                   "id": pa.array(new_ids, pa.string())}), renames_file)


@dataclass(frozen=True)
class InputUnits:
    """Stage 1's inputs as the files of gathered execution (`InputUnit`s, numbered in order)."""

    units: tuple[InputUnit, ...]


def row_keys(file_number: int, start: int, count: int) -> np.ndarray:
    return (np.int64(file_number) << np.int64(_FILE_SHIFT)) + np.arange(start, start + count, dtype=np.int64)


@dataclass(frozen=True)
class BatchOverlay:
    """A per-batch function (the stage start) applied to every batch read from the files."""

    fn: Callable[[pa.Table], pa.Table]

    def load(self, file_number: int) -> None:
        return None

    def apply(self, table: pa.Table, position: int, state: None) -> pa.Table:
        return self.fn(table)


@dataclass(frozen=True)
class FileDecisions:
    """A gathered operator's decisions (`write_decisions`' per-file tables), applied by row
    position to every batch read from the files, then `post`."""

    decisions_dir: str
    decision_schema: pa.Schema
    label: str
    analyze: bool
    post: Callable[[pa.Table], pa.Table] | None = None

    def load(self, file_number: int) -> pa.Table:
        from common import storage

        decision_file = storage.location(self.decisions_dir) / f"{file_number:06d}.parquet"
        return (storage.parquet_file(str(decision_file)).read() if decision_file.is_file()
                else self.decision_schema.empty_table())

    def apply(self, table: pa.Table, position: int, state: pa.Table) -> pa.Table:
        return _apply_file_decisions(table, position, state, self.label, self.analyze, self.post)


def _keyed_batches(file_number: int, path: str | InputUnit, schema: pa.Schema | None, batch_rows: int,
                   overlays: list[Any] = ()):
    """Batches of one input file (conformed to `schema` when given) with the overlays applied,
    and their first row's position."""
    from common import storage
    from pipeline.runner import conform

    states = [overlay.load(file_number) for overlay in overlays]
    position = 0
    batches = (path.batches(file_number, batch_rows) if isinstance(path, InputUnit) else
               (pa.Table.from_batches([b]) for b in storage.parquet_file(path).iter_batches(batch_size=batch_rows)))
    for table in batches:
        if schema is not None:
            table = conform(table, schema)
        rows = table.num_rows
        for overlay, state in zip(overlays, states):
            table = overlay.apply(table, position, state)
        yield table, position
        position += rows


def _map_file_task(file_number: int, path: str | InputUnit, schema: pa.Schema, batch_rows: int, fn: Callable,
                   out_schema: pa.Schema, out_dir: str, overlays: list[Any] = ()) -> dict[str, Any]:
    from common import storage
    from operators.base import active_mask

    parts = []
    for table, position in _keyed_batches(file_number, path, schema, batch_rows, overlays):
        table = table.append_column(ROW_KEY, pa.array(row_keys(file_number, position, table.num_rows)))
        active = active_mask(table)  # rows an earlier operator of the stage rejected take no part
        if active is not None:
            table = table.filter(active)
        parts.append(fn(table))
    out = pa.concat_tables(parts).select(out_schema.names).cast(out_schema) if parts else out_schema.empty_table()
    if out.num_rows:
        storage.write_parquet_atomic(out, storage.location(out_dir) / f"part-{file_number:06d}.parquet")
    return {"rows": out.num_rows, "bytes": int(out.nbytes)}


def map_input_files(ctx: GlobalContext, fn: Callable[[pa.Table], pa.Table], out_dir: Path,
                    out_schema: pa.Schema) -> dict[str, int]:
    """`fn` over every batch of the rows so far (each with its `ROW_KEY`), in one task per
    input file (the engine's `map_files`), writing `out_dir/part-<file number>.parquet`;
    returns the rows and in-memory bytes written. What each task returns is two numbers."""
    files, schema, _ = _files_schema_sizes(ctx)
    task = functools.partial(_map_file_task, schema=schema, batch_rows=ctx.batch_size, fn=fn, out_schema=out_schema,
                             out_dir=str(out_dir), overlays=ctx.overlays)
    results = ctx.get_engine().map_files(task, list(enumerate(files)))
    return {"rows": sum(r["rows"] for r in results), "bytes": sum(r["bytes"] for r in results)}


def run_in_one_task(ctx: GlobalContext, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in one task of the engine (its memory is the task's, not the driver's)."""
    return ctx.get_engine().run_one(fn, *args)


def write_decisions(decisions: pa.Table, out_dir: Path) -> int:
    """Split a decision table (a `ROW_KEY` column, `reason`, optional `detail` and extra
    columns) by input file into `out_dir/<file number>.parquet`, rows named by position."""
    from common import storage

    if decisions.num_rows == 0:
        return 0
    decisions = decisions.sort_by(ROW_KEY)
    keys = decisions.column(ROW_KEY).to_numpy()
    files = keys >> _FILE_SHIFT
    bounds = np.flatnonzero(np.diff(files)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(keys)]])
    rest = decisions.drop_columns([ROW_KEY])
    for start, end in zip(starts.tolist(), ends.tolist()):
        part = rest.slice(start, end - start)
        part = part.append_column(DECISION_POSITION, pa.array(keys[start:end] & _POSITION_MASK))
        storage.write_parquet_atomic(part, storage.location(out_dir) / f"{int(files[start]):06d}.parquet")
    return len(starts)


def _apply_file_decisions(table: pa.Table, position: int, decisions: pa.Table | None, label: str,
                          analyze: bool, post: Callable[[pa.Table], pa.Table] | None) -> pa.Table:
    """Give a batch (rows `position`... of its file) its decisions, null where none: every
    batch gets the decision columns, so that all output files have the same columns."""
    n = table.num_rows
    where = decisions.column(DECISION_POSITION).to_numpy() - position
    inside = (where >= 0) & (where < n)
    index = np.full(n, -1, dtype=np.int64)
    index[where[inside]] = np.flatnonzero(inside)
    take = pa.array(index, mask=index < 0)
    names = {"reason": DECISION_REASON, "detail": DECISION_DETAIL}
    for name in decisions.column_names:
        if name != DECISION_POSITION:
            table = set_column(table, names.get(name, name), decisions.column(name).take(take))
    table = apply_decisions(table, label, analyze)
    return post(table) if post is not None else table


def _read_overlaid(group: list[tuple[int, str]], schema: pa.Schema, batch_rows: int, overlays: list[Any]):
    for file_number, path in group:
        for table, _ in _keyed_batches(file_number, path, schema, batch_rows, overlays):
            yield table


def overlaid_dataset(ctx: GlobalContext, overlays: list[Any]) -> Any:
    """The rows of the input files with `overlays` applied, read file by file (a frame of
    the stage's engine)."""
    from pipeline.runner import _group_by_size

    files, schema, sizes = _files_schema_sizes(ctx)
    target = max(1 << 20, min(128 << 20, sum(sizes) // max(1, 4 * ctx.num_cpus) + 1))
    groups = _group_by_size(list(enumerate(files)), sizes, target)
    group_sizes = [sum(sizes[i] for i, _ in g) for g in groups]
    read = functools.partial(_read_overlaid, schema=schema, batch_rows=ctx.batch_size, overlays=overlays)
    return ctx.get_engine().from_file_groups(groups, group_sizes, read, schema)


def marked_dataset(ctx: GlobalContext, decisions_dir: Path, label: str,
                   post: Callable[[pa.Table], pa.Table] | None = None) -> Any:
    """The rows so far, read again file by file, with the decisions `write_decisions` wrote
    applied by row position (`post`, if given, then runs on every batch). Also sets
    `ctx.result_overlays`, the same rows as an overlay of the input files."""
    from common import storage

    decision_files = storage.parquet_files(decisions_dir)
    if not decision_files:
        raise RuntimeError(f"marked_dataset: no decision files in {decisions_dir} (call it only when some "
                           "decision was written)")
    decisions = FileDecisions(str(decisions_dir), storage.parquet_file(decision_files[0]).schema_arrow,
                              label, ctx.analyze, post)
    ctx.result_overlays = [*ctx.overlays, decisions]
    return overlaid_dataset(ctx, ctx.result_overlays)


def keyed_dataset(ctx: GlobalContext) -> ray.data.Dataset:
    """The rows so far with their `ROW_KEY`, for the distributed forms (joins by row key);
    rows an earlier operator rejected pass through unmarked by the join."""
    from pipeline.engines.ray import _file_groups_dataset
    from pipeline.runner import _group_by_size

    files, schema, sizes = _files_schema_sizes(ctx)
    target = max(1 << 20, min(128 << 20, sum(sizes) // max(1, 4 * ctx.num_cpus) + 1))
    groups = _group_by_size(list(enumerate(files)), sizes, target)

    def read(group: list[tuple[int, str]]):
        for file_number, path in group:
            for table, position in _keyed_batches(file_number, path, schema, ctx.batch_size, ctx.overlays):
                yield table.append_column(ROW_KEY, pa.array(row_keys(file_number, position, table.num_rows)))

    return _file_groups_dataset(groups, [sum(sizes[i] for i, _ in g) for g in groups], read,
                                schema.append(pa.field(ROW_KEY, pa.int64())))
