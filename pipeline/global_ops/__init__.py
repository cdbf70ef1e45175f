"""Executors for global operators: the Ray Data side of operators that need the whole dataset.

A global operator (`operators.base.GlobalOperator`) holds parameters and pure kernels; its
executor, registered here under the same name, runs it over a Ray Data `Dataset` built from
shuffles, groupbys and aggregations, never by collecting the corpus on the driver.

An executor receives the stage's rows so far (already on disk, so it may read them more than
once) and returns a Dataset with the same rows, the ones it drops marked with `reject_op`,
`reject_reason` and `reject_detail` (use `mark_rejected`). Statistics for the report go into
`ctx.extra`. Every module in this package is imported on first lookup.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    @property
    def num_partitions(self) -> int:
        return max(2, 2 * self.num_cpus)


def global_executor(name: str) -> Callable[[Executor], Executor]:
    def decorate(fn: Executor) -> Executor:
        _EXECUTORS[name] = fn
        return fn

    return decorate


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
                  ctx: GlobalContext) -> ray.data.Dataset:
    """Join `decisions` (columns `id`, `reason`, optional `detail` and extra per-document
    columns such as `dup_of`) onto `ds` by id, distributed, and mark the rows it names.
    The extra columns stay on every row (null for rows `decisions` does not name)."""

    def rename(batch: pa.Table) -> pa.Table:
        names = {"reason": DECISION_REASON, "detail": DECISION_DETAIL}
        return batch.rename_columns([names.get(c, c) for c in batch.column_names])

    decisions = decisions.map_batches(rename, batch_format="pyarrow")
    joined = ds.join(decisions, join_type="left_outer", num_partitions=ctx.num_partitions, on=("id",))

    def fold(batch: pa.Table) -> pa.Table:
        return apply_decisions(batch, label, ctx.analyze)

    return joined.map_batches(fold, batch_format="pyarrow", batch_size=ctx.batch_size)
