"""The Spark engine: kiln's stages on Apache Spark (`kiln run --engine spark`).

It implements pipeline/engines/__init__.py's protocol with PySpark, so the same configs, operators and
global executors run on a Spark cluster (YARN, Kubernetes, standalone, Databricks) where no
Ray cluster exists, and write the same run folder.

- Rows are a `SparkFrame`: a DataFrame whose partitions feed a picklable function yielding
  Arrow tables (the *source*), and the per-batch functions still to apply. Stage 0's DataFrame
  has one row per group of input files, read with `common.readers.read_file` in the task;
  later stages are `spark.read.parquet(previous/data)`, its Arrow batches conformed to the
  files' unified schema.
- Work runs through `mapInArrow`: each task applies the operator chain (`runner._apply_chain`;
  models load once per Python worker, `operators.base.set_up_in_process`, since Spark reuses
  its Python workers) and writes its rows itself (`runner.write_split_part`: kept to `data/`,
  rejected to `rejected/`, files named by partition so a retried task overwrites its own),
  returning only its counts. Operators never meet Spark's schema inference: what crosses the
  JVM is Arrow batches in and one small result row out.
- Global operators use the same executors as Ray through `map_files` (one task per work item)
  and `run_one` (one task): the gathered forms of dedup, quantile selection and buckets, and
  tokenize_pack's encode / plan / pack. Ray's distributed forms (shuffles above
  `ray.global_memory`) have no Spark counterpart yet: such a stage stops with a one-line error.

Ids are made unique as Ray makes them (common/ids.py), with the claims kept inside the read
task: input files are grouped so that every file whose ids could collide (the same source) is
read by one task, in input order, so "the first copy read" is the first in input order.
A corpus of one source is therefore read by one task (its later stages are parallel).

Not mapped yet: GPU operators (Spark's GPU resource profiles), per-operator CPUs, memory and
concurrency: Spark runs one task per executor core, and every per-batch operator of a segment
in that task.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from common import storage
from common.errors import ConfigError, KilnError
from pipeline import stats as stats_lib

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.runner import RunRequest

JAVA_HINT = "kiln run --engine spark needs Java 17+: apt install openjdk-17-jre-headless"
MIN_JAVA = 17
DRIVER_MEMORY = "1g"  # the driver only plans and adds up counts; rows never reach it
_RESULT_SCHEMA = pa.schema([("result", pa.binary())])
# The driver JVM's logging when kiln starts Spark itself: warnings, on stderr, without the
# native-Hadoop one. Spark's default profile prints half a dozen lines at start (which
# profile, which level, a native Hadoop library not found) before kiln's first line; with
# its own file at WARN (PySpark's shell level) it announces nothing.
_LOG4J2 = """status = error
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


def _log4j2_file() -> str:
    import tempfile

    path = Path(tempfile.gettempdir()) / f"kiln-spark-log4j2-{os.getuid()}.properties"
    if not path.is_file() or path.read_text() != _LOG4J2:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_LOG4J2)
        tmp.replace(path)
    return str(path)


def java_major(version_output: str) -> int | None:
    """Java's major version from `java -version` output (`"17.0.15"`, `"1.8.0_392"`, `"21"`)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> None:
    """One line, not a JVM launch failure, when Java is missing or too old."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home and os.path.exists(os.path.join(home, "bin", "java")) \
        else shutil.which("java")
    if not java:
        raise KilnError(JAVA_HINT)
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        raise KilnError(f"{JAVA_HINT} ({java} does not run)") from None
    major = java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        raise KilnError(f"{JAVA_HINT} ({java} is Java {major or 'of unknown version'})")


# --------------------------------------------------------------------------- frames


def _group_rows(groups: list[Any], read: Callable[[Any], Iterable[pa.Table]],
                batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Source of a frame over work items: each batch row names a group, read in the task."""
    for batch in batches:
        for index in batch.column(0).to_pylist():
            yield from read(groups[index])


def _parquet_rows(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Source of a frame over `spark.read.parquet`: Spark's Arrow batches with the files'
    unified schema (as Ray's reader gives them: the same column types for every engine)."""
    from pipeline.runner import conform

    for batch in batches:
        if batch.num_rows:  # columns by position: the DataFrame's are renamed (see read_stage)
            yield conform(pa.Table.from_batches([batch]).rename_columns(schema.names), schema)


def _transformed(source: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.Table]],
                 transforms: tuple[Callable[[pa.Table], pa.Table], ...],
                 batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    for table in source(batches):
        for fn in transforms:
            table = fn(table)
        yield table


@dataclass(frozen=True)
class SparkFrame:
    """Rows on Spark: `df`'s partitions through `source` (picklable: it runs in the tasks),
    then `transforms` in order. `schema` is the rows' schema before the transforms."""

    df: Any
    source: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.Table]]
    schema: pa.Schema
    transforms: tuple[Callable[[pa.Table], pa.Table], ...] = ()

    def then(self, fn: Callable[[pa.Table], pa.Table]) -> SparkFrame:
        return replace(self, transforms=(*self.transforms, fn))

    def reader(self) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.Table]]:
        """What a task runs on its partition's batches (no DataFrame inside: it is shipped)."""
        return functools.partial(_transformed, self.source, self.transforms)


def _part_task(tables: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.Table]],
               fn: Callable[[Iterator[pa.Table], int], Any],
               batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    from pyspark import TaskContext

    result = fn(tables(batches), TaskContext.get().partitionId())
    yield pa.RecordBatch.from_arrays([pa.array([pickle.dumps(result)], pa.binary())], schema=_RESULT_SCHEMA)


def _call(fn: Callable[..., Any], item: tuple[Any, ...]) -> Any:
    return fn(*item)


def source_closed_groups(pairs: list[tuple[Any, Any]]) -> list[list[tuple[Any, Any]]]:
    """Input files grouped so that files whose ids could collide are in one group, in input
    order. Ids start with `<source>:`; the part of the source before its first ':' is the
    key, so that sources such as `a` and `a:b` (ids `a:b:c` from both) share a group."""
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for file, spec in pairs:
        groups.setdefault(file.source.split(":", 1)[0], []).append((file, spec))
    return list(groups.values())


# --------------------------------------------------------------------------- the engine


class SparkEngine:
    """pipeline/engines/__init__.py's protocol on PySpark (see the module docstring)."""

    name = "spark"

    def __init__(self, spark: Any, started_here: bool, batch_size: int) -> None:
        self.spark = spark
        self.started_here = started_here
        self.batch_size = batch_size
        self.num_cpus = int(spark.sparkContext.defaultParallelism)

    @classmethod
    def start(cls, config: PipelineConfig, request: RunRequest) -> SparkEngine:
        """A local Spark (`local[N]`: --num-cpus, ray.num_cpus or the machine's CPUs), the
        cluster at --master, or, under spark-submit, the session it configured."""
        if request.address:
            raise KilnError("--address joins a Ray cluster; with --engine spark give the cluster as --master URL "
                            "(or run kiln under spark-submit)")
        check_java()
        # Python workers run this interpreter (the venv with kiln's dependencies).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        from pyspark.sql import SparkSession

        cpus = request.num_cpus or config.ray.num_cpus or os.cpu_count() or 1
        under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver
        master = request.master or (None if under_submit else f"local[{cpus}]")
        if master and master.startswith("local"):
            # A local Spark listens on loopback only (and does not warn about the host name).
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        active = SparkSession.getActiveSession()
        builder = SparkSession.builder.appName(f"kiln {config.run.name}")
        if master:
            builder = builder.master(master)
        if not under_submit:  # spark-submit's driver is configured by whoever submitted it
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={_log4j2_file()}")
        for key, value in {
            "spark.driver.memory": DRIVER_MEMORY,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": str(2 * cpus),
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Batches the size Ray gives the operators: the per-batch timing and memory alike.
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.ray.batch_size),
            "spark.python.worker.reuse": "true",  # models stay loaded in a worker (set_up_in_process)
        }.items():
            builder = builder.config(key, value)
        try:
            spark = builder.getOrCreate()
        except Exception as e:  # a JVM that does not start, a master that does not answer
            raise KilnError(f"Spark did not start ({master or 'spark-submit'}): {str(e).splitlines()[0]}") from None
        spark.sparkContext.setLogLevel("ERROR")
        return cls(spark, active is None, config.ray.batch_size)

    # --- rows

    def from_file_groups(self, groups: list[list[Any]], sizes: list[int],
                         read: Callable[[list[Any]], Iterable[pa.Table]], schema: pa.Schema) -> SparkFrame:
        rdd = self.spark.sparkContext.parallelize([(i,) for i in range(len(groups))], max(1, len(groups)))
        df = self.spark.createDataFrame(rdd, "work_item long")
        return SparkFrame(df, functools.partial(_group_rows, groups, read), schema)

    def read_inputs(self, config: PipelineConfig) -> SparkFrame:
        from common.readers import DOC_SCHEMA, expand_inputs
        from pipeline.runner import _read_input_group

        files = expand_inputs(config.inputs)
        groups = source_closed_groups([(f, config.inputs[f.spec_index]) for f in files])
        read = functools.partial(_read_input_group, batch_rows=config.ray.batch_size, claims=None)
        return self.from_file_groups(groups, [sum(f.size for f, _ in g) for g in groups], read, DOC_SCHEMA)

    def input_units(self, config: PipelineConfig, renames_dir: Path) -> Any:
        from common.readers import expand_inputs
        from pipeline.global_ops import InputUnit, InputUnits

        # Source-closed like the reads: each unit claims its own ids, no shared claims needed.
        files = expand_inputs(config.inputs)
        groups = source_closed_groups([(f, config.inputs[f.spec_index]) for f in files])
        return InputUnits(tuple(InputUnit(tuple(group), None, str(renames_dir)) for group in groups))

    def read_stage(self, folder: str | os.PathLike) -> SparkFrame:
        from common.readers import DOC_SCHEMA

        files = storage.parquet_files(folder)
        if not files:
            return self.from_file_groups([], [], lambda group: iter(()), DOC_SCHEMA)
        schema = storage.unified_schema(files)
        if storage.is_uri(folder):
            # Object stores are kiln's (fsspec, common/storage.py), which Spark's Hadoop file
            # systems would need their own configuration for: read the files in the tasks.
            from pipeline.runner import _read_parquet_group

            read = functools.partial(_read_parquet_group, schema=schema, batch_rows=self.batch_size)
            return self.from_file_groups([[f] for f in files], [storage.file_size(f) for f in files], read, schema)
        df = self.spark.read.schema(_spark_schema(schema)).parquet(*files)
        # mapInArrow resolves every column by name, and a dotted name (`stat.ppl`) would be
        # read as a struct field: the columns go under positional names, restored in the task.
        df = df.toDF(*[f"c{i}" for i in range(len(schema))])
        return SparkFrame(df, functools.partial(_parquet_rows, schema), schema)

    def map_operators(self, frame: SparkFrame, ops: list[tuple[Any, Any]], batch_size: int, analyze: bool,
                      start: bool) -> SparkFrame:
        from pipeline.runner import _apply_chain

        if not ops and not start:
            return frame
        # Every per-batch operator of the segment in one function: one task per partition.
        return frame.then(functools.partial(_apply_chain, [op for op, _ in ops], analyze=analyze, start=start))

    def map_batches(self, frame: SparkFrame, fn: Callable[[pa.Table], pa.Table], batch_size: int) -> SparkFrame:
        return frame.then(fn)

    def schema_names(self, frame: SparkFrame) -> list[str]:
        return list(frame.schema.names)

    # --- writes

    def write_parts(self, frame: SparkFrame, fn: Callable[[Iterator[pa.Table], int], Any]) -> list[Any]:
        task = functools.partial(_part_task, frame.reader(), fn)
        rows = frame.df.mapInArrow(task, "result binary").collect()
        return [pickle.loads(row.result) for row in rows]

    def count_parts(self, frame: SparkFrame) -> int | None:
        return frame.df.rdd.getNumPartitions()

    def write_stage(self, frame: SparkFrame, data_dir: Path, rejected_dir: Path, prefix: str, count_would_reject: bool,
                    progress: Any) -> dict[str, Any]:
        from pipeline.runner import write_split_part

        def write(tables: Iterator[pa.Table], part: int) -> dict[str, Any]:
            return write_split_part(tables, f"{prefix}-{part:05d}.parquet", data_dir, rejected_dir, count_would_reject)

        results = self.write_parts(frame, write)
        return stats_lib.merge(*results) if results else {}

    # --- exchanges

    def map_files(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        if not items:
            return []
        # At most a few tasks per core, each taking a run of items: a Spark task costs about
        # 0.1 s to schedule, so 94 one-shard tasks of tokenize_pack took 10.6 s (Ray: 0.4 s).
        rdd = self.spark.sparkContext.parallelize(items, min(len(items), 4 * self.num_cpus))
        return rdd.map(functools.partial(_call, fn)).collect()

    def run_one(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.spark.sparkContext.parallelize([args], 1).map(functools.partial(_call, fn)).collect()[0]

    # --- bookkeeping

    def progress_counters(self) -> None:
        return None  # Spark reports progress in its own UI; kiln prints each finished stage

    def prepare_stage(self, ops: list[tuple[Any, Any]]) -> None:
        for op, spec in ops:
            gpus = spec.resources.num_gpus if spec.resources.num_gpus is not None else op.resources.num_gpus
            if gpus:
                raise ConfigError(f"{spec.where}: asks for {gpus:g} GPU(s), which the spark engine does not schedule "
                                  "yet (no GPU resource profiles): run this stage with --engine ray")

    def after_stage(self) -> None:
        return None

    def logs_hint(self) -> str:
        return "the Spark driver's log has the full trace"

    def close(self) -> None:
        if self.started_here:
            with contextlib.suppress(Exception):
                self.spark.stop()


def _spark_schema(schema: pa.Schema) -> Any:
    """The Spark schema that reads parquet files of this Arrow schema (large strings as strings)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    fields = []
    for field in schema:
        kind = field.type
        if pa.types.is_large_string(kind):
            kind = pa.string()
        elif pa.types.is_large_binary(kind):
            kind = pa.binary()
        elif pa.types.is_null(kind):
            kind = pa.string()
        fields.append(pa.field(field.name, kind))
    return from_arrow_schema(pa.schema(fields))
