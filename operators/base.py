"""The operator model: pure transforms of `pyarrow.Table` batches, with bookkeeping in one place.

An operator holds only its logic; `apply_operator` owns the bookkeeping every operator needs
(skipping rows an earlier operator already rejected, stamping `reject_op`/`reject_reason`,
analyze mode, per-row timing), so that the Ray adapter in `pipeline/`, the tests and the
benchmarks run operators exactly the same way. Nothing here imports Ray.

Kinds of operator:
- `Mapper`: returns the batch with text changed or columns added. A mapper that edits text
  (for example one that removes boilerplate lines) may also reject rows it emptied, by
  returning an `Outcome` with reasons.
- `Filter`: computes statistics columns (`stat.*`) in `compute`, then decides keep/drop with
  a reason in `decide`. Keeping the two apart is what makes analyze mode possible.
- `GlobalOperator`: needs the whole dataset (dedup, quantile cut-offs, buckets). The operator
  class here carries parameters and pure kernels; its orchestration over Ray Data lives in
  `pipeline/global_ops/`.

Rejected rows are never dropped: they travel on in the batch with `reject_op` set, later
operators do not see them, and the stage writer sends them to `rejected/`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from common.columns import REJECT_DETAIL, REJECT_OP, REJECT_REASON

# Analyze mode: every "op/reason" an operator would have rejected a row for, joined by ";".
WOULD_REJECT = "would_reject"
# Per-row share of each operator's batch time; summed by the stage writer, never written.
SECONDS_PREFIX = "_kiln.sec."
INTERNAL_PREFIX = "_kiln."
STAT_PREFIX = "stat."


class Params(BaseModel):
    """Base of every operator's typed parameters: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Resources:
    """What one instance of an operator needs; the runner turns this into Ray resources."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes


@dataclass
class Outcome:
    """What an operator did to a batch: the (same-length, same-order) table and, per row,
    the reason it should be rejected (None keeps the row) with an optional free-text detail."""

    table: pa.Table
    reasons: Sequence[str | None] | pa.Array | None = None
    details: Sequence[str | None] | pa.Array | None = None


class Operator:
    """Base of all operators. Subclasses set `name` and `Params`, and implement `apply`
    (through `Mapper.map` or `Filter.compute`/`Filter.decide`)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    resources: ClassVar[Resources] = Resources()

    def __init__(self, params: Params | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if params is None:
            params = self.Params(**kwargs)
        elif isinstance(params, dict):
            params = self.Params(**{**params, **kwargs})
        elif kwargs:
            raise TypeError("pass either a Params object or keyword arguments, not both")
        self.params = params
        # A stage may hold the same operator twice; the runner sets a unique label for
        # accounting (`length_filter`, `length_filter#2`).
        self.label = self.name
        # Set by the runner in analyze mode: operators that edit text by removing parts
        # (paragraph and sentence rules) measure instead of removing.
        self.analyze = False
        self._is_set_up = False

    @classmethod
    def needs_setup(cls) -> bool:
        """True when the operator loads something heavy in `setup()`: a worker loads it once
        (`set_up_in_process`) and keeps it for every batch it runs."""
        return cls.setup is not Operator.setup

    def setup(self) -> None:
        """Load models or lexicons. Called once per worker before the first batch."""

    def check_inputs(self) -> list[tuple[str, str]]:
        """Problems with the files the operator will read (models, tokenizers), as
        (parameter path, message), found without loading anything heavy. The runner asks
        every operator before Ray starts, so a missing model is one line with its YAML path,
        not a failed actor pool minutes later. Nothing by default."""
        return []

    def ensure_setup(self) -> None:
        if not self._is_set_up:
            self.setup()
            self._is_set_up = True

    def apply(self, batch: pa.Table) -> Outcome:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class Mapper(Operator):
    """Changes text or adds columns. `map` returns a table of the same rows in the same
    order, or an `Outcome` when it also rejects rows (for example ones it emptied)."""

    kind: ClassVar[str] = "mapper"

    def map(self, batch: pa.Table) -> pa.Table | Outcome:
        raise NotImplementedError

    def apply(self, batch: pa.Table) -> Outcome:
        result = self.map(batch)
        return result if isinstance(result, Outcome) else Outcome(result)


class Filter(Operator):
    """Keeps or rejects whole documents. `compute` adds the statistics the decision uses
    (as `stat.*` columns, so reports and later stages can use them); `decide` returns one
    reason per row, None to keep."""

    kind: ClassVar[str] = "filter"

    def compute(self, batch: pa.Table) -> pa.Table:
        return batch

    def decide(self, batch: pa.Table) -> Sequence[str | None] | pa.Array:
        raise NotImplementedError

    def apply(self, batch: pa.Table) -> Outcome:
        table = self.compute(batch)
        return Outcome(table, self.decide(table))


class GlobalOperator(Operator):
    """Needs the whole stage input at once. The executor registered for `name` in
    `pipeline/global_ops/` runs it over Ray Data; this class holds parameters and kernels."""

    kind: ClassVar[str] = "global"

    def apply(self, batch: pa.Table) -> Outcome:
        raise TypeError(f"{self.name} is a global operator: run it through the pipeline runner")


# --------------------------------------------------------------------------- helpers


def text_column(batch: pa.Table, column: str = "text") -> list[str]:
    """The text column as Python strings (the shape most text kernels want)."""
    return batch.column(column).to_pylist()


def set_column(batch: pa.Table, name: str, values: Any, type: pa.DataType | None = None) -> pa.Table:
    """Add or replace a column, keeping its position when it exists."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=type)
    index = batch.schema.get_field_index(name)
    if index >= 0:
        return batch.set_column(index, name, array)
    return batch.append_column(name, array)


def reasons_where(drop: np.ndarray | Sequence[bool], reason: str) -> pa.Array:
    """One reason per row: `reason` where `drop` is true, null elsewhere."""
    drop = np.asarray(drop, dtype=bool)
    return pa.array(np.where(drop, reason, None), type=pa.string())


def first_reason(*columns: pa.Array) -> pa.Array:
    """Combine several per-row reason arrays: the first non-null reason wins."""
    if not columns:
        raise ValueError("first_reason needs at least one column")
    return pc.coalesce(*columns)


# --------------------------------------------------------------------------- bookkeeping


def _as_string_array(values: Sequence[str | None] | pa.Array | pa.ChunkedArray | None,
                     length: int) -> pa.Array | None:
    if values is None:
        return None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    array = values if isinstance(values, pa.Array) else pa.array(list(values), type=pa.string())
    if len(array) != length:
        raise ValueError(f"operator returned {len(array)} reasons for {length} rows")
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return array


def active_mask(batch: pa.Table) -> pa.Array | None:
    """Rows no operator has rejected yet, or None when none has."""
    if REJECT_OP not in batch.column_names:
        return None
    column = batch.column(REJECT_OP)
    if column.null_count == len(column):
        return None
    return pc.is_null(column).combine_chunks()


# The set-up operators of the chain this process ran last (see set_up_in_process).
_PROCESS_SET_UP: dict[tuple[str, str, str], Operator] = {}


def set_up_in_process(ops: Sequence[Operator]) -> list[Operator]:
    """The operators of a chain, those with a `setup()` replaced by an instance of the same
    class, label and parameters that this process already set up. A worker that runs many
    batches of a stage loads each model on its first batch and reuses it, as an actor would,
    while the chain stays one fused task (no actor pool holding CPUs between the read and the
    write). Only the latest chain's operators are kept, so a worker that moves on to the next
    stage lets the previous stage's models go."""
    live: dict[tuple[str, str, str], Operator] = {}
    chain: list[Operator] = []
    for op in ops:
        if not op.needs_setup():
            chain.append(op)
            continue
        key = (f"{type(op).__module__}.{type(op).__qualname__}", op.label, op.params.model_dump_json())
        op = live.get(key) or _PROCESS_SET_UP.get(key) or op
        op.ensure_setup()
        live[key] = op
        chain.append(op)
    _PROCESS_SET_UP.clear()
    _PROCESS_SET_UP.update(live)
    return chain


def apply_operator(op: Operator, batch: pa.Table, *, analyze: bool = False) -> pa.Table:
    """Run one operator on a batch with the bookkeeping every operator shares.

    Rows already rejected pass through untouched (and are moved after the active rows).
    Rows the operator rejects get `reject_op`/`reject_reason`/`reject_detail`, or in analyze
    mode only an entry in `would_reject`. Each active row gets its share of the batch time in
    `_kiln.sec.<label>`.
    """
    op.ensure_setup()
    op.analyze = analyze
    started = time.perf_counter()
    mask = active_mask(batch)
    if mask is None:
        active, inactive = batch, None
    else:
        active, inactive = batch.filter(mask), batch.filter(pc.invert(mask))

    if active.num_rows:
        try:
            table, reasons, details = _apply_checked(op, active)
        except OperatorBug:
            raise
        except Exception:
            table, reasons, details = _apply_row_by_row(op, active)
        if reasons is not None and reasons.null_count < len(reasons):
            table = _mark(table, op.label, reasons, details, analyze)
    else:
        table = active

    elapsed = time.perf_counter() - started
    per_row = elapsed / table.num_rows if table.num_rows else 0.0
    table = set_column(table, SECONDS_PREFIX + op.label, pa.array(np.full(table.num_rows, per_row)))
    if inactive is None or inactive.num_rows == 0:
        return table
    return pa.concat_tables([table, inactive], promote_options="permissive")


class OperatorBug(RuntimeError):
    """An operator broke its contract or failed on every row: a bug or a broken setup, not
    bad input, so the stage stops instead of rejecting everything."""


ERROR_REASON = "error"


def _apply_checked(op: Operator, batch: pa.Table) -> tuple[pa.Table, pa.Array | None, pa.Array | None]:
    outcome = op.apply(batch)
    table = outcome.table
    if table.num_rows != batch.num_rows:
        raise OperatorBug(
            f"operator {op.label} returned {table.num_rows} rows for {batch.num_rows}: "
            "operators must keep every row and reject through reasons"
        )
    return (table, _as_string_array(outcome.reasons, table.num_rows),
            _as_string_array(outcome.details, table.num_rows))


def _apply_row_by_row(op: Operator, batch: pa.Table) -> tuple[pa.Table, pa.Array, pa.Array]:
    """The batch raised: run its rows one at a time so that only the documents the operator
    cannot handle are rejected (reason `error`, the exception as detail)."""
    parts, reasons, details = [], [], []
    errors = 0
    last_error: Exception | None = None
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        try:
            table, reason, detail = _apply_checked(op, row)
        except OperatorBug:
            raise
        except Exception as e:  # one document the operator cannot process
            errors += 1
            last_error = e
            parts.append(row)
            reasons.append(ERROR_REASON)
            details.append(f"{type(e).__name__}: {e}"[:500])
            continue
        parts.append(table)
        reasons.append(reason[0].as_py() if reason is not None else None)
        details.append(detail[0].as_py() if detail is not None else None)
    if errors == batch.num_rows and errors >= 8:
        raise OperatorBug(f"operator {op.label} failed on all {errors} rows of a batch: "
                          f"{type(last_error).__name__}: {last_error}") from last_error
    table = pa.concat_tables(parts, promote_options="permissive")
    return table, pa.array(reasons, pa.string()), pa.array(details, pa.string())


def _mark(table: pa.Table, label: str, reasons: pa.Array, details: pa.Array | None,
          analyze: bool) -> pa.Table:
    rejected = pc.is_valid(reasons)
    if analyze:
        entries = pc.binary_join_element_wise(pa.scalar(label), reasons, "/")
        if WOULD_REJECT in table.column_names:
            previous = table.column(WOULD_REJECT).combine_chunks()
            joined = pc.binary_join_element_wise(previous, entries, ";")
            entries = pc.if_else(pc.is_null(previous), entries, pc.if_else(pc.is_null(entries), previous, joined))
        return set_column(table, WOULD_REJECT, entries)
    op_column = pc.if_else(rejected, pa.scalar(label), pa.scalar(None, pa.string()))
    table = set_column(table, REJECT_OP, op_column)
    table = set_column(table, REJECT_REASON, reasons)
    if details is None:
        details = pa.nulls(table.num_rows, pa.string())
    return set_column(table, REJECT_DETAIL, details)


def run_operators(ops: Sequence[Operator], batch: pa.Table, *, analyze: bool = False) -> pa.Table:
    """Run per-batch operators in order on one table, in process (tests, benchmarks)."""
    for op in ops:
        batch = apply_operator(op, batch, analyze=analyze)
    return batch


def split_rejected(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) rows of a batch, with internal columns dropped."""
    batch = drop_internal(batch)
    mask = active_mask(batch)
    if mask is None:
        kept = batch
        rejected = batch.slice(0, 0)
    else:
        kept, rejected = batch.filter(mask), batch.filter(pc.invert(mask))
    kept = kept.drop_columns([c for c in (REJECT_OP, REJECT_REASON, REJECT_DETAIL) if c in kept.column_names])
    return kept, rejected


def drop_internal(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in batch.column_names if c.startswith(INTERNAL_PREFIX)])
