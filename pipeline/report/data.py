"""Column-wise reading of a run's parquet folders for the report.

The report must stay fast on corpora far larger than memory, so it never loads documents
whole: counts and character totals are grouped file by file from a few narrow columns
(`lang`, `source`, `reject_op`, `reject_reason`, and `stat.chars` or the text's length),
statistic columns are read one at a time, and text is read only for the handful of rows a
sample or an example needs, one row group at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from operators.base import REJECT_OP, REJECT_REASON, STAT_PREFIX, WOULD_REJECT

CHARS_STAT = "stat.chars"
UNKNOWN = "(unknown)"
_BATCH_ROWS = 65_536
HIST_BINS = 40


def files_of(folder: str | os.PathLike) -> list[str]:
    return storage.parquet_files(folder)


def schema_of(files: Sequence[str]) -> pa.Schema:
    return storage.unified_schema(list(files)) if files else pa.schema([])


def row_count(files: Sequence[str]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def is_numeric(field: pa.Field) -> bool:
    t = field.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def stat_columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """The `stat.*` columns of a schema: (numeric ones, others)."""
    numeric, other = [], []
    for field in schema:
        if field.name.startswith(STAT_PREFIX):
            (numeric if is_numeric(field) else other).append(field.name)
    return numeric, other


def _chars_column_usable(pf: pq.ParquetFile) -> bool:
    """True when `stat.chars` is in the file and holds no nulls (from the footer's
    statistics, without reading it), so it can stand in for the text's length."""
    names = pf.schema_arrow.names
    if CHARS_STAT not in names or not is_numeric(pf.schema_arrow.field(CHARS_STAT)):
        return False
    index = pf.schema_arrow.get_field_index(CHARS_STAT)
    meta = pf.metadata
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return False
    return True


def _add(table: dict[str, list[int]], key: str, docs: int, chars: int) -> None:
    entry = table.setdefault(key, [0, 0])
    entry[0] += docs
    entry[1] += chars


def tally(folder: str | os.PathLike) -> dict[str, Any]:
    """Documents and characters of a folder, in total and grouped by language, source,
    rejecting operator/reason (`op/reason`) and, in analyze runs, would-reject reasons.
    Characters come from `stat.chars` where a file holds it for every row (the length
    filter records it), else from the text's length, read a batch at a time."""
    out: dict[str, Any] = {"docs": 0, "chars": 0, "lang": {}, "source": {}, "reasons": {}, "would_reject": {}}
    for path in files_of(folder):
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        keys = [c for c in ("lang", "source", REJECT_OP, REJECT_REASON, WOULD_REJECT) if c in names]
        length_from = CHARS_STAT if _chars_column_usable(pf) else "text"
        if length_from not in names:
            continue
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[*keys, length_from]):
            table = pa.Table.from_batches([batch])
            length = table.column(length_from)
            chars = (length if length_from == CHARS_STAT else pc.utf8_length(length)).cast(pa.int64())
            chars = pc.fill_null(chars, 0)
            grouped_input = pa.table({**{k: table.column(k).cast(pa.string()) for k in keys}, "_chars": chars})
            if not keys:
                out["docs"] += table.num_rows
                out["chars"] += int(pc.sum(chars).as_py() or 0)
                continue
            grouped = grouped_input.group_by(keys).aggregate([("_chars", "sum"), ("_chars", "count")])
            columns = {k: grouped.column(k).to_pylist() for k in keys}
            sums = grouped.column("_chars_sum").to_pylist()
            counts = grouped.column("_chars_count").to_pylist()
            for i, (n_chars, n_docs) in enumerate(zip(sums, counts)):
                n_chars = int(n_chars or 0)
                out["docs"] += n_docs
                out["chars"] += n_chars
                for key in ("lang", "source"):
                    if key in columns:
                        _add(out[key], columns[key][i] or UNKNOWN, n_docs, n_chars)
                if REJECT_OP in columns and columns[REJECT_OP][i] is not None:
                    reason = columns.get(REJECT_REASON, [None] * len(sums))[i] or "unspecified"
                    _add(out["reasons"], f"{columns[REJECT_OP][i]}/{reason}", n_docs, n_chars)
                if WOULD_REJECT in columns and columns[WOULD_REJECT][i]:
                    for item in columns[WOULD_REJECT][i].split(";"):
                        _add(out["would_reject"], item, n_docs, n_chars)
    return out


def read_columns(folder: str | os.PathLike, columns: Sequence[str]) -> pa.Table:
    """Only the named columns of every file of a folder (null where a file lacks one)."""
    files = files_of(folder)
    if not files:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return storage.read_table(folder, list(columns))


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric or boolean column as float64, nulls as NaN."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.float64())
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def flagged(column: pa.ChunkedArray) -> np.ndarray:
    """True where a string column (`would_reject`) holds a non-empty value."""
    if pa.types.is_null(column.type):
        return np.zeros(len(column), bool)
    mask = pc.fill_null(pc.greater(pc.utf8_length(column.cast(pa.string())), 0), False)
    return mask.to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, bool)


def labels_of(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as a numpy object array, nulls as "(unknown)"."""
    if pa.types.is_null(column.type):
        return np.full(len(column), UNKNOWN, dtype=object)
    filled = pc.fill_null(column.cast(pa.string()), UNKNOWN)
    return filled.to_numpy(zero_copy_only=False).astype(object) if len(column) else np.zeros(0, dtype=object)


def row_groups_of(files: Sequence[str], rows: int) -> np.ndarray:
    """For each of the first `rows` positions of the files read in order, the number of the
    row group (counted across files) that holds it."""
    metas = [pq.ParquetFile(f).metadata for f in files]
    sizes = [meta.row_group(g).num_rows for meta in metas for g in range(meta.num_row_groups)]
    return np.repeat(np.arange(len(sizes)), sizes)[:rows]


def take_rows(files: Sequence[str], indices: Iterable[int], columns: Sequence[str]) -> pa.Table:
    """Rows at the given positions of the files read one after the other (positions count
    across files in order), reading only the row groups that hold them. Rows come back in
    position order; columns a file lacks are null."""
    wanted = np.unique(np.fromiter(indices, dtype=np.int64))
    parts: list[pa.Table] = []
    schema = schema_of(files)
    columns = [c for c in columns if c in schema.names]
    offset = 0
    for path in files:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        in_file = wanted[(wanted >= offset) & (wanted < offset + meta.num_rows)] - offset
        if in_file.size:
            present = [c for c in columns if c in pf.schema_arrow.names]
            group_start = 0
            for g in range(meta.num_row_groups):
                group_rows = meta.row_group(g).num_rows
                local = in_file[(in_file >= group_start) & (in_file < group_start + group_rows)] - group_start
                if local.size:
                    group = pf.read_row_group(g, columns=present)
                    parts.append(_conform(group.take(pa.array(local)), schema, columns))
                group_start += group_rows
        offset += meta.num_rows
    if not parts:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(parts)


def _conform(table: pa.Table, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    arrays = []
    for name in columns:
        field = schema.field(name)
        if name in table.column_names:
            column = table.column(name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.table(dict(zip(columns, arrays)))


def histogram(kept: np.ndarray, rejected: np.ndarray, bins: int = HIST_BINS) -> dict[str, Any]:
    """Shared bins for the kept and rejected values of one statistic. Small integer ranges
    get one bin per value; positive values spanning three decades, or skewed ones (median in
    the lowest tenth of a range over 30x wide: lengths, perplexities), get log bins; the 0.1%
    most extreme values of large columns are counted in the end bins, so one outlier does
    not squeeze the rest into a single bar."""
    kept = kept[np.isfinite(kept)]
    rejected = rejected[np.isfinite(rejected)]
    both = np.concatenate([kept, rejected])
    out: dict[str, Any] = {"count_kept": int(kept.size), "count_rejected": int(rejected.size), "scale": "linear"}
    if both.size == 0:
        out.update(edges=[], kept=[], rejected=[])
        return out
    lo, hi = float(both.min()), float(both.max())
    if both.size >= 1000:
        lo, hi = (float(q) for q in np.quantile(both, [0.001, 0.999]))
    integer = bool(np.all(both == np.round(both)))
    if lo == hi:
        edges = np.array([lo - 0.5, hi + 0.5])
    elif integer and hi - lo <= bins:
        edges = np.arange(math.floor(lo), math.floor(hi) + 2) - 0.5
    elif lo > 0 and (hi / lo > 1000 or (hi / lo > 30 and np.median(both) - lo < 0.1 * (hi - lo))):
        edges = np.geomspace(lo, hi, bins + 1)
        out["scale"] = "log"
    else:
        edges = np.linspace(lo, hi, bins + 1)
    out["below_range"] = int((both < edges[0]).sum())
    out["above_range"] = int((both > edges[-1]).sum())
    out["edges"] = [float(e) for e in edges]
    for name, values in (("kept", kept), ("rejected", rejected)):
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
        out[name] = counts.astype(int).tolist()
    for name, values in (("kept", kept), ("rejected", rejected)):
        if values.size:
            q = np.quantile(values, [0.01, 0.5, 0.99])
            out[f"summary_{name}"] = {"mean": float(values.mean()), "min": float(values.min()),
                                      "p01": float(q[0]), "p50": float(q[1]), "p99": float(q[2]),
                                      "max": float(values.max())}
    return out
