"""Executors of `perplexity_select` and `difficulty_bucket`, on every engine.

Both work in two passes and never join:
1. a narrow projection of every row (group name, value, a 64-bit tie key hashed from the
   id, characters, source) is written by one task per input file; where ordering it fits
   `ray.global_memory` (about 90 bytes a document: 20 million documents in the default 2 GB)
   one task orders it and summarises every group (the gathered form, as the dedup operators
   do), else Ray Data's sort-based `groupby(...).map_groups` does it across the cluster; each
   group gives one small summary row: the exact rank boundaries (value, tie key) of its
   cut-offs or buckets, counts and a histogram;
2. a streaming `map_batches` over the rows labels each one from its group's boundaries
   (a few numbers per group, shipped with the function) and, for selection, marks the
   rejected ones through `apply_decisions`.

Memory: a group's projection is about 30 bytes per document plus its source name, held by
one task, so the largest group (a language, or the whole input when nothing is grouped)
must fit a worker: tens of millions of documents per group on an ordinary node. Nothing
of the corpus comes to the driver, only one summary per group.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.errors import KilnError
from operators.base import set_column
from operators.bucketing import (
    HEAD,
    MIDDLE,
    TAIL,
    DifficultyBucket,
    PerplexitySelect,
    boundaries_at,
    bucket_summary,
    count_boundaries,
    equal_split_ranks,
    merge_bucket_summaries,
    proportional_bin_sizes,
    ranks_from_sizes,
    select_boundaries,
    select_labels,
    tie_keys,
)
from pipeline.global_ops import (
    DECISION_DETAIL,
    DECISION_REASON,
    GlobalContext,
    apply_decisions,
    global_executor,
    run_in_one_task,
)

GROUP, VALUE, TIE, CHARS, SOURCE = "_group", "_value", "_tie", "_chars", "_source"
NULL_GROUP = "(null)"
ALL = "all"


def group_names(batch: pa.Table, keys: list[str]) -> list[str]:
    """Each row's group: the values of `keys` joined by '/', or 'all' when there are none."""
    if not keys:
        return [ALL] * batch.num_rows
    columns = []
    for key in keys:
        if key in batch.column_names:
            columns.append([NULL_GROUP if v is None else str(v) for v in batch.column(key).to_pylist()])
        else:
            columns.append([NULL_GROUP] * batch.num_rows)
    return ["/".join(parts) for parts in zip(*columns)]


def float_values(batch: pa.Table, column: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN."""
    array = batch.column(column).combine_chunks()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise KilnError(f"column {column} is {array.type}, not numeric")
    return np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _check_column(ds: Any, column: str, op_name: str, ctx: GlobalContext) -> None:
    names = ctx.get_engine().schema_names(ds)
    if names and column not in names:
        hint = " (add the perplexity operator before it)" if column.startswith("stat.ppl") else ""
        raise KilnError(f"{op_name}: the stage input has no column {column}{hint}; it has "
                        f"{', '.join(n for n in names if n.startswith('stat.')) or 'no stat.* columns'}")


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _log_histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.log10(values), bins=bins)
    return {"edges": [float(10 ** e) for e in edges], "counts": counts.tolist(), "scale": "log10"}


@contextmanager
def sort_shuffle(dataset: Any):
    """Group with Ray Data's sort-based shuffle: the projections grouped here are narrow, and
    the default hash shuffle starts aggregator actors that cost more than the whole job on
    small and medium inputs (11 s against 0.3 s for a 70-document stage). A dataset shares
    its DataContext with the datasets derived from it, so the strategy is switched on that
    context only while the grouped pass executes, then restored."""
    from ray.data.context import ShuffleStrategy

    context = dataset.context
    previous = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = previous


def _summaries(projected: Any, summarize, ctx: GlobalContext) -> dict[str, dict[str, Any]]:
    with sort_shuffle(projected):
        grouped = projected.groupby(GROUP, num_partitions=ctx.num_partitions)
        rows = grouped.map_groups(summarize, batch_format="pyarrow").take_all()
    return {row[GROUP]: json.loads(row["summary"]) for row in rows}


# --------------------------------------------------------------------------- gathered form
# Below the budget, on every engine, groups are summarised the gathered way: the narrow
# projection of every input file is written by one task per file (`map_input_files`), and one
# task reads it all, orders it by group and summarises each group (`run_in_one_task`). Above
# it the Ray engine groups the same projection files with Ray Data. The same `project` and
# `summarize` functions in both forms, so the same boundaries.

# Working memory of the one task per byte of projection: the columns, their sorted copy, a group.
_GATHER_MEMORY_FACTOR = 3.0


def _gather_projection(op_label: str, project, schema: pa.Schema, ctx: GlobalContext) -> tuple[list[str], bool]:
    """The projection of every row, written by one task per input file, and whether one task
    may order it within `ray.global_memory` (the gathered form). Above the budget the Ray
    engine groups the same files with a Ray Data groupby; other engines stop with the reason."""
    from pipeline.global_ops import map_input_files

    out_dir = ctx.work_dir / "projection"
    gathered = map_input_files(ctx, project, out_dir, schema)
    need = int(gathered["bytes"] * _GATHER_MEMORY_FACTOR)
    fits = need <= ctx.memory_budget
    if not fits and not _is_ray(ctx):
        raise KilnError(f"{op_label}: its projection (about {need / 1e9:.2f} GB to order in one task) is over "
                        f"ray.global_memory ({ctx.memory_budget / 1e9:.2f} GB), and the "
                        f"{ctx.get_engine().name} engine summarises groups in one task: raise ray.global_memory "
                        "or run this stage with --engine ray")
    ctx.extra["execution"] = "gathered" if fits else "distributed"
    files = sorted(str(f) for f in out_dir.glob("part-*.parquet")) if out_dir.is_dir() else []
    return files, fits


def _projected_dataset(files: list[str], schema: pa.Schema) -> Any:
    import ray.data

    return ray.data.read_parquet(files, schema=schema)


def _read_projection(files: list[str], schema: pa.Schema) -> pa.Table:
    from common import storage

    tables = [storage.parquet_file(f).read().cast(schema) for f in files]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _group_counts(files: list[str], schema: pa.Schema) -> dict[str, int]:
    table = _read_projection(files, schema)
    counts = table.group_by(GROUP).aggregate([([], "count_all")])
    return dict(zip(counts.column(GROUP).to_pylist(), counts.column("count_all").to_pylist()))


def _summarize_groups(files: list[str], schema: pa.Schema, summarize) -> dict[str, dict[str, Any]]:
    """Every group of the gathered projection through `summarize`, in one task."""
    table = _read_projection(files, schema)
    if table.num_rows == 0:
        return {}
    table = table.sort_by(GROUP)
    groups = table.column(GROUP).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    out = {}
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        row = summarize(table.slice(lo, hi - lo))
        out[row.column(GROUP)[0].as_py()] = json.loads(row.column("summary")[0].as_py())
    return out


def _is_ray(ctx: GlobalContext) -> bool:
    return ctx.get_engine().name == "ray"


def _summary_table(name: str, summary: dict[str, Any]) -> pa.Table:
    return pa.table({GROUP: [name], "summary": [json.dumps(summary)]})


# --------------------------------------------------------------------------- perplexity_select


@global_executor("perplexity_select")
def run_perplexity_select(op: PerplexitySelect, ds: Any, ctx: GlobalContext) -> Any:
    p = op.params
    _check_column(ds, p.column, op.name, ctx)
    keys = list(p.group_by)

    def project(batch: pa.Table) -> pa.Table:
        values = float_values(batch, p.column)
        keep = ~np.isnan(values)
        return pa.table({GROUP: pa.array(group_names(batch, keys), pa.string()).filter(pa.array(keep)),
                         VALUE: values[keep],
                         TIE: tie_keys(batch.column("id").to_pylist())[keep]})

    def summarize(group: pa.Table) -> pa.Table:
        values = group.column(VALUE).to_numpy()
        ties = group.column(TIE).to_numpy()
        bounds = select_boundaries(values, ties, p.keep_fraction, p.head_fraction)
        labels = select_labels(values, ties, bounds["head"], bounds["keep"])
        head_values, kept_values = values[labels == HEAD], values[labels != TAIL]
        summary = {
            "docs": len(values),
            "head": int((labels == HEAD).sum()), "middle": int((labels == MIDDLE).sum()),
            "tail": int((labels == TAIL).sum()),
            # The largest value of each class: the cut lines a report draws.
            "head_below": float(head_values.max()) if head_values.size else None,
            "keep_below": float(kept_values.max()) if kept_values.size else None,
            "boundaries": bounds,
            "histogram": _log_histogram(values, p.histogram_bins),
        }
        return _summary_table(group.column(GROUP)[0].as_py(), summary)

    schema = pa.schema([(GROUP, pa.string()), (VALUE, pa.float64()), (TIE, pa.uint64())])
    files, gathered = _gather_projection(op.label, project, schema, ctx)
    if gathered:
        summaries = run_in_one_task(ctx, _summarize_groups, files, schema, summarize)
    else:
        summaries = _summaries(_projected_dataset(files, schema), summarize, ctx)
    bounds = {g: (_bound(s["boundaries"]["head"]), _bound(s["boundaries"]["keep"])) for g, s in summaries.items()}
    label_column = p.label_column
    missing_reason = "no_ppl" if p.missing == "reject" else None

    def decide(batch: pa.Table) -> pa.Table:
        values = float_values(batch, p.column)
        ties = tie_keys(batch.column("id").to_pylist())
        groups = np.asarray(group_names(batch, keys), dtype=object)
        labels = np.full(batch.num_rows, None, dtype=object)
        for name in np.unique(groups):
            rows = (groups == name) & ~np.isnan(values)
            if name in bounds and rows.any():
                head, keep = bounds[name]
                labels[rows] = select_labels(values[rows], ties[rows], head, keep)
        reasons = np.full(batch.num_rows, None, dtype=object)
        details = np.full(batch.num_rows, None, dtype=object)
        for i in np.nonzero(labels == TAIL)[0]:
            cut = summaries[groups[i]]["keep_below"]
            reasons[i] = "perplexity"
            details[i] = (f"{p.column} {values[i]:.4g} beyond the {p.keep_fraction:g} cut-off of {groups[i]} "
                          + (f"({cut:.4g})" if cut is not None else "(which keeps none of its few documents)"))
        if missing_reason:
            reasons[np.isnan(values)] = missing_reason
        batch = set_column(batch, label_column, pa.array(labels.tolist(), pa.string()))
        batch = set_column(batch, DECISION_REASON, pa.array(reasons.tolist(), pa.string()))
        batch = set_column(batch, DECISION_DETAIL, pa.array(details.tolist(), pa.string()))
        return apply_decisions(batch, op.label, ctx.analyze)

    docs_scored = sum(s["docs"] for s in summaries.values())
    ctx.extra.update({
        "column": p.column,
        "keep_fraction": p.keep_fraction,
        "head_fraction": p.head_fraction,
        "group_by": keys,
        # Only the cut values under `cutoffs`: the report draws each of them as a line.
        "cutoffs": {g: {"keep_below": _finite_or_none(s["keep_below"]),
                        "head_below": _finite_or_none(s["head_below"])}
                    for g, s in sorted(summaries.items())},
        "counts": {g: {"docs": s["docs"], "head": s["head"], "middle": s["middle"], "tail": s["tail"]}
                   for g, s in sorted(summaries.items())},
        "histograms": {g: s["histogram"] for g, s in sorted(summaries.items())},
        "docs_scored": docs_scored,
        "missing": p.missing,
    })
    return ctx.get_engine().map_batches(ds, decide, ctx.batch_size)


def _bound(b: list | None) -> tuple[float, int] | None:
    return None if b is None else (float(b[0]), int(b[1]))


# --------------------------------------------------------------------------- difficulty_bucket


@global_executor("difficulty_bucket")
def run_difficulty_bucket(op: DifficultyBucket, ds: Any, ctx: GlobalContext) -> Any:
    p = op.params
    _check_column(ds, p.column, op.name, ctx)
    keys = p.group_keys()
    k = p.num_buckets
    sign = 1.0 if p.higher_is_harder else -1.0
    fill = {"hardest": math.inf, "easiest": -math.inf, "reject": math.nan}[p.missing]

    def difficulty(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        raw = float_values(batch, p.column)
        value = sign * raw
        value[np.isnan(value)] = fill
        return raw, value

    def project(batch: pa.Table) -> pa.Table:
        raw, value = difficulty(batch)
        keep = ~np.isnan(value)
        sources = batch.column("source") if "source" in batch.column_names else pa.nulls(batch.num_rows, pa.string())
        mask = pa.array(keep)
        return pa.table({GROUP: pa.array(group_names(batch, keys), pa.string()).filter(mask),
                         VALUE: value[keep], "_raw": raw[keep],
                         TIE: tie_keys(batch.column("id").to_pylist())[keep],
                         CHARS: pc.utf8_length(batch.column("text")).cast(pa.int64()).filter(mask),
                         SOURCE: sources.cast(pa.string()).fill_null(NULL_GROUP).filter(mask)})

    schema = pa.schema([(GROUP, pa.string()), (VALUE, pa.float64()), ("_raw", pa.float64()), (TIE, pa.uint64()),
                        (CHARS, pa.int64()), (SOURCE, pa.string())])
    files, gathered = _gather_projection(op.label, project, schema, ctx)
    projected = None if gathered else _projected_dataset(files, schema)
    sizes: dict[str, list[int]] = {}
    if p.mode == "colossal":
        # Bin sizes need every group's size first.
        if not gathered:
            with sort_shuffle(projected):
                rows = projected.groupby(GROUP, num_partitions=ctx.num_partitions).count().take_all()
            counts = {row[GROUP]: int(row["count()"]) for row in rows}
        else:
            counts = run_in_one_task(ctx, _group_counts, files, schema)
        names = sorted(counts)
        matrix = proportional_bin_sizes([counts[g] for g in names], k)
        sizes = {g: [int(x) for x in row] for g, row in zip(names, matrix)}

    def summarize(group: pa.Table) -> pa.Table:
        name = group.column(GROUP)[0].as_py()
        values = group.column(VALUE).to_numpy()
        ties = group.column(TIE).to_numpy()
        n = len(values)
        ranks = ranks_from_sizes(sizes[name]) if sizes else equal_split_ranks(n, k)
        bounds = boundaries_at(values, ties, ranks)
        buckets = count_boundaries(values, ties, bounds)
        summary = {"docs": n, "boundaries": bounds,
                   "boundary_values": [None if b is None else _finite_or_none(sign * b[0]) for b in bounds],
                   "buckets": bucket_summary(buckets, group.column("_raw").to_numpy(), group.column(CHARS).to_numpy(),
                                             group.column(SOURCE).to_pylist(), k)}
        return _summary_table(name, summary)

    if gathered:
        summaries = run_in_one_task(ctx, _summarize_groups, files, schema, summarize)
    else:
        summaries = _summaries(projected, summarize, ctx)
    bounds = {g: [_bound(b) for b in s["boundaries"]] for g, s in summaries.items()}
    bucket_column = p.bucket_column

    def assign(batch: pa.Table) -> pa.Table:
        _, value = difficulty(batch)
        ties = tie_keys(batch.column("id").to_pylist())
        groups = np.asarray(group_names(batch, keys), dtype=object)
        buckets = np.full(batch.num_rows, -1, dtype=np.int64)
        for name in np.unique(groups):
            rows = (groups == name) & ~np.isnan(value)
            if rows.any():
                buckets[rows] = count_boundaries(value[rows], ties[rows], bounds.get(name, []))
        missing = np.isnan(value)
        batch = set_column(batch, bucket_column, pa.array(buckets, pa.int32(), mask=missing))
        if missing.any():
            reasons = np.where(missing, "no_difficulty", None)
            batch = set_column(batch, DECISION_REASON, pa.array(reasons.tolist(), pa.string()))
            return apply_decisions(batch, op.label, ctx.analyze)
        return batch

    names = p.bucket_names()
    merged = merge_bucket_summaries([s["buckets"] for s in summaries.values()], k)
    buckets_extra = [{"bucket": i, "name": names[i], **merged[i]} for i in range(k)]
    ctx.extra.update({
        "column": p.column,
        "higher_is_harder": p.higher_is_harder,
        "mode": p.mode,
        "groups": keys,
        "bucket_column": bucket_column,
        "buckets": buckets_extra,
        "curriculum": list(range(k)),
        "curriculum_names": names,
        "boundaries": {g: s["boundary_values"] for g, s in sorted(summaries.items())},
        "docs_bucketed": sum(b["docs"] for b in buckets_extra),
        "missing": p.missing,
    })
    curriculum = {"bucket_column": bucket_column, "order": list(range(k)), "names": names,
                  "difficulty": {"column": p.column, "higher_is_harder": p.higher_is_harder, "mode": p.mode,
                                 "groups": keys},
                  "buckets": buckets_extra}
    (ctx.output_dir / "curriculum.json").write_text(json.dumps(curriculum, indent=2, ensure_ascii=False) + "\n")
    return ctx.get_engine().map_batches(ds, assign, ctx.batch_size)
