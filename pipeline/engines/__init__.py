"""What an engine must provide to run kiln's stages: the one place that says it.

The runner (pipeline/runner.py) owns everything about a run that does not depend on where
the work happens: the plan, the run lock, temporary stage folders, the count check, stats.json,
`_SUCCESS` and resume. An engine owns the rest: reading rows, running per-batch operators
over Arrow batches, writing a stage's rows (kept to `data/`, rejected to `rejected/`, counts
returned), and the few exchanges global operators need. Two engines implement this protocol:

- Ray (`pipeline.engines.ray.RayEngine`): Ray Data datasets, tasks and actors; the default.
- Spark (`pipeline.engines.spark.SparkEngine`): DataFrames, `mapInArrow` and Python workers;
  `kiln run --engine spark` or `run: {engine: spark}`.

A *frame* is the engine's handle on rows (a Ray `Dataset`, or the Spark engine's lazy frame):
only the engine that made it reads it. Global operators (pipeline/global_ops/) reach the
engine through `GlobalContext.engine`, so one executor serves both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.runner import RunRequest

ENGINES = ("ray", "spark")

# A function over the rows of one write task (one partition): their tables in order, and the
# task's number, which names the files it writes so a retried task overwrites its own files.
PartWriter = Callable[[Iterator[pa.Table], int], Any]


class Engine(Protocol):
    name: str  # "ray" or "spark", written into stats.json
    num_cpus: int  # CPUs of the cluster, for partition counts

    # --- rows
    def read_inputs(self, config: PipelineConfig) -> Any:
        """The config's inputs as a frame (`common.readers.read_file` per file), ids unique."""

    def input_units(self, config: PipelineConfig, renames_dir: Path) -> Any:
        """The inputs as `global_ops.InputUnits`: what gathered operators read in place when
        stage 1 starts with one (ids claimed as `read_inputs` claims them)."""

    def read_stage(self, folder: str | Path) -> Any:
        """The parquet files of a folder as a frame with their unified schema."""

    def from_file_groups(self, groups: list[list[Any]], sizes: list[int],
                         read: Callable[[list[Any]], Iterable[pa.Table]], schema: pa.Schema) -> Any:
        """A frame whose rows come from `read(group)` for every group, one read task each."""

    def map_operators(self, frame: Any, ops: list[tuple[Any, Any]], batch_size: int, analyze: bool,
                      start: bool) -> Any:
        """The per-batch operators (operator, spec) of a segment over the frame's batches,
        with the stage start (`runner._stage_start`) before the first one when `start`."""

    def map_batches(self, frame: Any, fn: Callable[[pa.Table], pa.Table], batch_size: int) -> Any:
        """A pure function over the frame's batches."""

    def schema_names(self, frame: Any) -> list[str]:
        """The frame's column names (before any mapping not yet run)."""

    # --- writes
    def write_stage(self, frame: Any, data_dir: Path, rejected_dir: Path, prefix: str, count_would_reject: bool,
                    progress: Any) -> dict[str, Any]:
        """Write the frame's rows, kept ones to `data_dir` and rejected ones to `rejected_dir`
        (`runner.write_split_part`), and return the summed counts (`stats.count_block`)."""

    def write_parts(self, frame: Any, fn: PartWriter) -> list[Any]:
        """`fn` over each write task's tables; their small results, in task order."""

    def count_parts(self, frame: Any) -> int | None:
        """How many tasks `write_parts` runs over the frame, where that is known before it
        runs (None otherwise)."""

    # --- exchanges for global operators
    def map_files(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        """`fn(*item)` for every item, in parallel (a task per item, or a run of items per task
        where tasks are costly); the (small) results in the items' order. `fn` and the items
        must be picklable."""

    def run_one(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in one task (its memory is a worker's, not the driver's)."""

    # --- run bookkeeping
    def progress_counters(self) -> tuple[Callable[[], Any], Callable[[Any], tuple[int, int]]] | None:
        """How progress lines count written rows (make a counter, read it), or None: no lines."""

    def prepare_stage(self, ops: list[tuple[Any, Any]]) -> None:
        """Before a stage runs: refuse, with the operator's YAML path, what this engine
        cannot run, and size what it needs for the stage's (operator, spec) pairs."""

    def after_stage(self) -> None:
        """Release what a stage held (id claims)."""

    def logs_hint(self) -> str:
        """Where a failed task's full trace is."""

    def close(self) -> None:
        """Stop what this engine started."""


def choose_engine(config: PipelineConfig, request: RunRequest) -> str:
    """`--engine` wins over the config's `run.engine` (default ray)."""
    return request.engine or config.run.engine


def open_engine(config: PipelineConfig, request: RunRequest) -> Engine:
    """Start (or join) the engine the run asks for."""
    name = choose_engine(config, request)
    if name == "spark":
        from pipeline.engines.spark import SparkEngine

        return SparkEngine.start(config, request)
    from pipeline.engines.ray import RayEngine

    return RayEngine.start(config, request)


def ray_engine_in_process(num_cpus: int, batch_size: int) -> Engine:
    """The Ray engine over the Ray this process has already initialised (for executors
    called outside a run, as tests and benchmarks do)."""
    from pipeline.engines.ray import RayEngine, RaySession

    return RayEngine(RaySession(started_here=False, num_cpus=num_cpus), batch_size)
