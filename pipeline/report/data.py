"""Streaming reads of a run's parquet folders for the report.

The report must stay fast on corpora far larger than memory, so its memory does not grow
with the corpus: every folder is read a batch at a time, a few narrow columns at once, and
a batch holds a few megabytes of decoded values whatever the size of a file or row group
(its row count follows the columns' size per row in the footer; the file is read through a
small buffer, a page at a time, not a whole column chunk). What the report keeps is a
summary of fixed size:

- counts and character totals grouped by language, source and rejection reason (`tally`),
  from `stat.chars` or the text's length;
- for a statistic column, exact counts, mean, minimum and maximum, and a uniform random
  sample of at most `HIST_SAMPLE` values per side (kept, rejected) from which the bin edges
  and quantiles are taken; the bins are then counted exactly in a second pass
  (`HistogramBuilder`); when the sample holds every value it is the exact computation;
- row positions: text is read only for the handful of rows a sample or an example needs.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from operators.base import REJECT_OP, REJECT_REASON, STAT_PREFIX, WOULD_REJECT

CHARS_STAT = "stat.chars"
UNKNOWN = "(unknown)"
HIST_BINS = 40
# Values kept per side of a statistic for its bin edges and quantiles: 100,000 place the
# 0.1% quantile that bounds the bins within about a hundredth of a percent of the
# population, and cost 1.6 MB (value and random key) per side while one column is read.
HIST_SAMPLE = 100_000
# Decoded bytes a batch aims at, and the read buffer: the file is read a page at a time
# through it instead of a whole column chunk (a row group of text can be hundreds of MB).
_BATCH_BYTES = 1 << 20
_MAX_BATCH_ROWS = 65_536
_READ_BUFFER = 1 << 20


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


# --------------------------------------------------------------------------- batches


def open_parquet(path: str) -> pq.ParquetFile:
    """A parquet file read through a small buffer, page by page. pyarrow's default
    (`pre_buffer`) reads each column chunk of a row group whole first: a row group's text
    is tens to hundreds of MB, growing with the run's files."""
    return pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)


def batch_rows(pf: pq.ParquetFile, columns: Sequence[str], row_groups: Iterable[int] | None = None) -> int:
    """Rows per batch so that one batch of these columns decodes to about `_BATCH_BYTES`,
    from the footer's uncompressed sizes."""
    meta = pf.metadata
    groups = range(meta.num_row_groups) if row_groups is None else list(row_groups)
    names = pf.schema_arrow.names
    indices = [names.index(c) for c in columns if c in names]
    rows = sum(meta.row_group(g).num_rows for g in groups)
    size = sum(meta.row_group(g).column(i).total_uncompressed_size for g in groups for i in indices)
    if not rows or not size:
        return _MAX_BATCH_ROWS
    return int(min(_MAX_BATCH_ROWS, max(64, _BATCH_BYTES * rows // size)))


def iter_batches(folder: str | os.PathLike, columns: Sequence[str]) -> Iterator[pa.Table]:
    """Every row of a folder's files in order, a bounded batch at a time, as tables of the
    named columns (null where a file lacks one)."""
    for path in files_of(folder):
        yield from file_batches(path, columns)


def file_batches(path: str, columns: Sequence[str], row_groups: Sequence[int] | None = None) -> Iterator[pa.Table]:
    pf = open_parquet(path)
    present = [c for c in columns if c in pf.schema_arrow.names]
    if not present:
        # Only row counts are needed: null columns of the right length, without reading.
        meta = pf.metadata
        for g in range(meta.num_row_groups) if row_groups is None else row_groups:
            rows = meta.row_group(g).num_rows
            if rows:
                yield pa.table({c: pa.nulls(rows) for c in columns})
        return
    for batch in pf.iter_batches(batch_size=batch_rows(pf, present, row_groups), columns=present,
                                 row_groups=row_groups, use_threads=False):
        table = pa.Table.from_batches([batch])
        for c in columns:
            if c not in present:
                table = table.append_column(c, pa.nulls(table.num_rows))
        yield table.select(list(columns))


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
        pf = open_parquet(path)
        names = pf.schema_arrow.names
        keys = [c for c in ("lang", "source", REJECT_OP, REJECT_REASON, WOULD_REJECT) if c in names]
        length_from = CHARS_STAT if _chars_column_usable(pf) else "text"
        if length_from not in names:
            continue
        for table in file_batches(path, [*keys, length_from]):
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


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric or boolean column as float64, nulls as NaN."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.float64())
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def flagged(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where a string column (`would_reject`) holds a non-empty value."""
    if pa.types.is_null(column.type) or not len(column):
        return np.zeros(len(column), bool)
    mask = pc.fill_null(pc.greater(pc.utf8_length(column.cast(pa.string())), 0), False)
    return mask.to_numpy(zero_copy_only=False)


def label_groups(column: pa.ChunkedArray | pa.Array) -> Iterator[tuple[str, np.ndarray]]:
    """(label, row mask) for each distinct value of a string column, nulls as "(unknown)"."""
    if pa.types.is_null(column.type):
        if len(column):
            yield UNKNOWN, np.ones(len(column), bool)
        return
    encoded = pc.dictionary_encode(pc.fill_null(column.cast(pa.string()), UNKNOWN))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks else pa.DictionaryArray.from_arrays(
            pa.array([], pa.int32()), pa.array([], pa.string()))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    for code, label in enumerate(encoded.dictionary.to_pylist()):
        yield label, codes == code


# --------------------------------------------------------------------------- rows


def row_groups(files: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """(file number, row group number, first position, rows) of every row group of the
    files read in order, positions counted across files."""
    out, offset = [], 0
    for f, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            out.append((f, g, offset, rows))
            offset += rows
    return out


def take_rows(files: Sequence[str], indices: Iterable[int], columns: Sequence[str]) -> pa.Table:
    """Rows at the given positions of the files read one after the other (positions count
    across files in order), reading only the row groups that hold them, a bounded batch at
    a time. Rows come back in position order; columns a file lacks are null."""
    wanted = np.unique(np.fromiter(indices, dtype=np.int64))
    parts: list[pa.Table] = []
    schema = schema_of(files)
    columns = [c for c in columns if c in schema.names]
    by_file: dict[int, list[tuple[int, int, int]]] = {}
    for f, g, start, rows in row_groups(files):
        if np.any((wanted >= start) & (wanted < start + rows)):
            by_file.setdefault(f, []).append((g, start, rows))
    for f, groups in by_file.items():
        for g, start, rows in groups:
            local = wanted[(wanted >= start) & (wanted < start + rows)] - start
            batch_start = 0
            for batch in file_batches(files[f], columns, [g]):
                n = batch.num_rows
                here = local[(local >= batch_start) & (local < batch_start + n)] - batch_start
                if here.size:
                    parts.append(_conform(batch.take(pa.array(here)), schema, columns))
                batch_start += n
    if not parts:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(parts)


def _conform(table: pa.Table, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    arrays = []
    for name in columns:
        field = schema.field(name)
        column = table.column(name)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.table(dict(zip(columns, arrays)))


# --------------------------------------------------------------------------- histograms


def _edges(lo: float, hi: float, integer: bool, median: float, bins: int) -> tuple[np.ndarray, str]:
    """Bin edges and scale for values spanning [lo, hi] (see `histogram`)."""
    if lo == hi:
        return np.array([lo - 0.5, hi + 0.5]), "linear"
    if integer and hi - lo <= bins:
        return np.arange(math.floor(lo), math.floor(hi) + 2) - 0.5, "linear"
    if lo > 0 and (hi / lo > 1000 or (hi / lo > 30 and median - lo < 0.1 * (hi - lo))):
        return np.geomspace(lo, hi, bins + 1), "log"
    return np.linspace(lo, hi, bins + 1), "linear"


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts.astype(np.int64)


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
    edges, out["scale"] = _edges(lo, hi, integer, float(np.median(both)), bins)
    out["below_range"] = int((both < edges[0]).sum())
    out["above_range"] = int((both > edges[-1]).sum())
    out["edges"] = [float(e) for e in edges]
    for name, values in (("kept", kept), ("rejected", rejected)):
        out[name] = _bin_counts(values, edges).tolist()
    for name, values in (("kept", kept), ("rejected", rejected)):
        if values.size:
            q = np.quantile(values, [0.01, 0.5, 0.99])
            out[f"summary_{name}"] = {"mean": float(values.mean()), "min": float(values.min()),
                                      "p01": float(q[0]), "p50": float(q[1]), "p99": float(q[2]),
                                      "max": float(values.max())}
    return out


class Sample:
    """The finite values of one side of a statistic, streamed: exact count, sum, minimum,
    maximum and whether every value is whole, and a uniform random sample of at most `size`
    of them: the values with the `size` smallest random keys, so the sample does not depend
    on how the stream is cut into batches. Until more than `size` values have come, the
    sample is every value in stream order. At most twice `size` values are held between
    compactions, so the cost per value stays constant."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = max(1, size), rng
        self.count, self.total, self.integer = 0, 0.0, True
        self.min, self.max = math.inf, -math.inf
        self._values: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._held = 0
        self._threshold = math.inf  # a value whose key is not below it cannot be in the sample

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if not values.size:
            return
        self.count += int(values.size)
        self.total += float(values.sum())
        self.min, self.max = min(self.min, float(values.min())), max(self.max, float(values.max()))
        self.integer = self.integer and bool(np.all(values == np.round(values)))
        keys = self.rng.random(values.size)
        if self._threshold < math.inf:
            entering = keys < self._threshold
            values, keys = values[entering], keys[entering]
        self._values.append(values)
        self._keys.append(keys)
        self._held += values.size
        if self._held > 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        values = np.concatenate(self._values) if self._values else np.empty(0)
        keys = np.concatenate(self._keys) if self._keys else np.empty(0)
        if values.size > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            values, keys = values[keep], keys[keep]
            self._threshold = float(keys.max())
        self._values, self._keys, self._held = [values], [keys], values.size

    @property
    def values(self) -> np.ndarray:
        """The sample (every value while `complete`)."""
        if len(self._values) != 1 or self._held > self.size:
            self._compact()
        return self._values[0]

    @property
    def complete(self) -> bool:
        return self.count == self.values.size

    def weight(self) -> float:
        """Values of the stream each sampled value stands for."""
        return self.count / self.values.size if self.values.size else 0.0


def _weighted_quantiles(samples: Sequence[Sample], qs: Sequence[float]) -> np.ndarray:
    """Quantiles of the union of streams from their samples, each value weighted by how
    many values of its stream it stands for."""
    values = np.concatenate([s.values for s in samples])
    weights = np.concatenate([np.full(s.values.size, s.weight()) for s in samples])
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights) - weights / 2
    return np.interp(np.asarray(qs) * weights.sum(), cumulative, values)


class HistogramBuilder:
    """`histogram` of a statistic whose values are streamed (`add`, per side), in memory
    that does not grow with the stream. When neither side has more than `sample` finite
    values the result is `histogram`'s own. Otherwise the bin edges and the p1, median and
    p99 come from the uniform samples (seeded by `seed` and `name`), while counts, mean,
    minimum and maximum stay exact: `edges()` fixes the bins, the values are streamed again
    through `count`, and the result records the sample sizes under `sample`."""

    SIDES = ("kept", "rejected")
    # Most bytes held per value of `sample`: two sides, each up to twice `sample` values
    # with their keys between compactions (see Sample).
    bytes_per_value = 2 * 2 * 16

    def __init__(self, sample: int = HIST_SAMPLE, seed: int = 0, name: str = "", bins: int = HIST_BINS) -> None:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        self.sides = {side: Sample(sample, rng) for side in self.SIDES}
        self.bins = bins
        self._edges: np.ndarray | None = None
        self._scale = "linear"
        self._counts = {side: np.zeros(0, np.int64) for side in self.SIDES}
        self._below = self._above = 0

    def add(self, side: str, values: np.ndarray) -> None:
        self.sides[side].add(values)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.sides.values())

    @property
    def needs_counting(self) -> bool:
        """True when the bins must be counted in a second pass over the values."""
        return self.count > 0 and not all(s.complete for s in self.sides.values())

    def edges(self) -> np.ndarray:
        """The bins, from the samples: the same rules as `histogram`."""
        kept, rejected = self.sides["kept"], self.sides["rejected"]
        lo, hi = min(kept.min, rejected.min), max(kept.max, rejected.max)
        parts = [s for s in (kept, rejected) if s.values.size]
        if self.count >= 1000:
            lo, hi = (float(q) for q in _weighted_quantiles(parts, [0.001, 0.999]))
        median = float(_weighted_quantiles(parts, [0.5])[0])
        self._edges, self._scale = _edges(lo, hi, kept.integer and rejected.integer, median, self.bins)
        self._counts = {side: np.zeros(len(self._edges) - 1, np.int64) for side in self.SIDES}
        return self._edges

    def count_values(self, side: str, values: np.ndarray) -> None:
        """Second pass: count a batch of the side's values into the bins of `edges()`."""
        edges = self._edges if self._edges is not None else self.edges()
        values = values[np.isfinite(values)]
        if values.size:
            self._counts[side] += _bin_counts(values, edges)
            self._below += int((values < edges[0]).sum())
            self._above += int((values > edges[-1]).sum())

    def result(self) -> dict[str, Any]:
        kept, rejected = self.sides["kept"], self.sides["rejected"]
        if not self.needs_counting:
            return histogram(kept.values, rejected.values, self.bins)
        if self._edges is None:
            raise RuntimeError("a sampled histogram needs edges() and a counting pass before result()")
        out: dict[str, Any] = {"count_kept": kept.count, "count_rejected": rejected.count, "scale": self._scale,
                               "below_range": self._below, "above_range": self._above,
                               "edges": [float(e) for e in self._edges]}
        for side in self.SIDES:
            out[side] = self._counts[side].tolist()
        for side, s in self.sides.items():
            if s.count:
                q = np.quantile(s.values, [0.01, 0.5, 0.99])
                out[f"summary_{side}"] = {"mean": s.total / s.count, "min": s.min, "p01": float(q[0]),
                                          "p50": float(q[1]), "p99": float(q[2]), "max": s.max}
        out["sample"] = {side: int(s.values.size) for side, s in self.sides.items()}
        return out
