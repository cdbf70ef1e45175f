"""Executors of the dedup operators: exact, URL and MinHash LSH near-duplicates.

Each runs in one of two forms, chosen per stage from the size of what it gathers against the
run's `ray.global_memory` budget (default 2 GB), both giving the same decisions:

Gathered (the default, up to millions of documents on one machine): the narrow columns a
decision needs (a 128-bit key and rank key for exact/URL; row key, rank key and signature for
MinHash) are computed from the input files in plain Ray tasks, one per file, then one task
decides, as datatrove, rensa and datasketch do: a hash sort of the keys (exact/URL), or, for
MinHash, per band a sort of band keys giving star edges (member -> the bucket's member with the
smallest id hash), verification of every candidate pair by its signatures, and connected components
(scipy.sparse.csgraph) whose survivor is each component's smallest rank key. Its decision
table is applied to the rows by row key (input file and row position): no shuffle, no join.

Distributed (above the budget): a hash shuffle is the grouping primitive.
`repartition(k, keys=[key])` puts every row of a key into the same block, and a
`map_batches(batch_size=None)` handles all groups of the block at once with vectorized sorts.
- exact_dedup / url_dedup: one shuffle by key; the smallest rank key of each group survives.
- minhash_dedup: (document, band) rows shuffled by band key give star edges; edges are
  deduplicated, joined with the signatures and verified; connected components by alternating
  large-star / small-star rounds (Kiveris et al., "Connected Components in MapReduce and
  Beyond", 2014), each one shuffle, until every component is a star around its smallest rank
  key; one shuffle by survivor gives the decisions. Intermediates are written as parquet under
  the stage's scratch folder, so lineage does not grow round after round.
Decisions are joined back by row key, never by id, so repeated ids cannot mix rows up.
Rejected rows carry `dup_of` (the survivor's id) and every member of a cluster, survivor
included, `dup_cluster` (the survivor's id).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import storage
from common.errors import KilnError
from operators import dedup as kernels
from operators.base import GlobalOperator
from operators.exact_keys import exact_keys
from pipeline import stats as stats_lib
from pipeline.global_ops import (
    ROW_KEY,
    GlobalContext,
    global_executor,
    keyed_dataset,
    map_input_files,
    mark_rejected,
    marked_dataset,
    run_in_one_task,
    write_decisions,
)

# Decision columns that are folded into existing dup_of / dup_cluster columns after the join.
_NEW_PREFIX = "_kiln.new."
# Rows per block the shuffles aim at (more partitions for bigger corpora).
_ROWS_PER_PARTITION = 2_000_000
_BYTES_PER_PARTITION = 256 << 20
INDEX_FOLDER = "minhash_index"
INDEX_META = "index.json"

DECISION_SCHEMA = pa.schema([
    (ROW_KEY, pa.int64()),
    ("id", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    (kernels.DUP_OF, pa.string()),
    (kernels.DUP_CLUSTER, pa.string()),
    ("_size", pa.int64()),   # cluster size, on survivor rows
    ("_bytes", pa.int64()),  # text bytes, on removed rows
])


# --------------------------------------------------------------------------- helpers


def _ray_data():
    import ray.data

    return ray.data


def _partitions(ctx: GlobalContext, rows: int, row_bytes: int = 32) -> int:
    """Partitions for a shuffle of `rows` rows of about `row_bytes` each: at least the
    context's count, more for big inputs so that no block outgrows memory."""
    return max(ctx.num_partitions, math.ceil(rows / _ROWS_PER_PARTITION),
               math.ceil(rows * row_bytes / _BYTES_PER_PARTITION))


def _checkpoint(ds: Any, path: Path, schema: pa.Schema, summarize: Any = None) -> tuple[Any, dict[str, Any]]:
    """Write `ds` as parquet under `path` and read it back, with the sum of a small summary
    computed by each write task (`summarize(table) -> (rows to write, dict of numbers)`).

    Later steps start from the files, so lineage stays short and nothing upstream runs twice;
    the summaries come back with the write, so statistics and convergence checks cost no
    extra pass. Files are named by write task, so a retried task overwrites its own file."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class CheckpointSink(Datasink):
        def __init__(self) -> None:
            self.summary: dict[str, Any] = {}

        def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
            parts = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            parts = [t for t in parts if t.num_rows]
            if not parts:
                return {"rows": 0}
            table = pa.concat_tables(parts, promote_options="permissive")
            summary: dict[str, Any] = {}
            if summarize is not None:
                table, summary = summarize(table)
            if table.num_rows:
                storage.write_parquet_atomic(table.select(schema.names).cast(schema),
                                             path / f"part-{ctx.task_idx:05d}.parquet")
            return stats_lib.merge({"rows": table.num_rows}, summary)

        def on_write_complete(self, write_result: Any) -> None:
            returns = [r for r in write_result.write_returns if r]
            self.summary = stats_lib.merge(*returns) if returns else {}

        def get_name(self) -> str:
            return "KilnCheckpoint"

    sink = CheckpointSink()
    ds.write_datasink(sink)
    files = sorted(str(f) for f in path.glob("part-*.parquet")) if path.is_dir() else []
    summary = {"rows": 0, **sink.summary}
    if not files:
        return _ray_data().from_arrow(schema.empty_table()), summary
    return _ray_data().read_parquet(files, schema=schema), summary


def _shuffle_blocks(ds: Any, key: list[str], partitions: int, fn: Any) -> Any:
    """Hash-shuffle by `key` and run `fn` on whole blocks: every row of a key is in one block
    (one block per partition, never split), so `fn` sees each group complete."""
    return ds.repartition(partitions, keys=key).map_batches(fn, batch_size=None, batch_format="pyarrow",
                                                            zero_copy_batch=True)


def _check_survivor_column(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> None:
    params = op.params
    if params.keep != "best":
        return  # asking a lazy frame for its columns runs part of it: only when needed
    names = ctx.get_engine().schema_names(ds)
    if params.best_column not in names:
        raise KilnError(f"{op.label}: keep: best needs the column {params.best_column!r}, which the documents "
                        f"do not have at this point (columns: {', '.join(names)})")


def _refuse_distributed(op: GlobalOperator, ctx: GlobalContext, need: int) -> None:
    """The distributed form is Ray Data's (shuffles and joins); the Spark engine has the
    gathered form only, so above the budget it stops before any work, naming the setting."""
    engine = ctx.get_engine()
    if engine.name != "ray":
        raise KilnError(f"{op.label}: what it gathers (about {need / 1e9:.2f} GB) is over ray.global_memory "
                        f"({ctx.memory_budget / 1e9:.2f} GB), and the {engine.name} engine has only the gathered "
                        "form: raise ray.global_memory (the task's memory) or run this stage with --engine ray")


def _record(summary: dict[str, Any], ctx: GlobalContext) -> None:
    ctx.extra.update({
        "clusters": int(summary.get("clusters", 0)),
        "docs_removed": int(summary.get("removed", 0)),
        "bytes_removed": int(summary.get("bytes", 0)),
        "cluster_size_histogram": {k: int(v) for k, v in sorted(summary.get("sizes", {}).items(),
                                                                  key=lambda kv: int(kv[0]))},
    })
    if summary.get("seen_before"):
        ctx.extra["docs_seen_before"] = int(summary["seen_before"])


def _decision_columns(batch: pa.Table) -> pa.Table:
    """Decision rows as the marking step takes them: dup_of / dup_cluster under temporary
    names (folded into existing columns afterwards), statistics columns dropped."""
    batch = batch.drop_columns(["_size", "_bytes", "id"])
    names = {kernels.DUP_OF: _NEW_PREFIX + kernels.DUP_OF, kernels.DUP_CLUSTER: _NEW_PREFIX + kernels.DUP_CLUSTER}
    return batch.rename_columns([names.get(c, c) for c in batch.column_names])


def _finish(op: GlobalOperator, ds: Any, decisions: Any, summary: dict[str, Any], ctx: GlobalContext) -> Any:
    """Distributed form: record the statistics and join the decisions (a Dataset) onto the
    rows by row key; dup_of / dup_cluster from earlier dedup operators are kept where this
    one has nothing to say."""
    _record(summary, ctx)
    if not summary.get("rows"):
        return ds  # no duplicates: nothing to mark (and nothing to join)
    marked = mark_rejected(keyed_dataset(ctx), decisions.map_batches(_decision_columns, batch_format="pyarrow"),
                           op.label, ctx, on=ROW_KEY)
    return marked.map_batches(_fold_and_drop_key, batch_format="pyarrow", batch_size=ctx.batch_size)


def _finish_gathered(op: GlobalOperator, ds: Any, decisions_dir: Path, summary: dict[str, Any],
                     ctx: GlobalContext) -> Any:
    """Gathered form: record the statistics and apply the per-file decision tables that the
    one task wrote (`write_decisions`) by row position."""
    _record(summary, ctx)
    if not summary.get("rows"):
        return ds
    return marked_dataset(ctx, decisions_dir, op.label, post=_fold_dup_columns)


def _fold_and_drop_key(batch: pa.Table) -> pa.Table:
    return _fold_dup_columns(batch.drop_columns([ROW_KEY]))


def _fits(ctx: GlobalContext, gathered_bytes: int, factor: float) -> bool:
    """Whether a step that gathers `gathered_bytes` of narrow columns, needing `factor` times
    that while it works, stays within the memory budget."""
    return gathered_bytes * factor <= ctx.memory_budget


def _fold_dup_columns(batch: pa.Table) -> pa.Table:
    for name in (kernels.DUP_OF, kernels.DUP_CLUSTER):
        new_name = _NEW_PREFIX + name
        if new_name not in batch.column_names:
            continue
        new = batch.column(new_name)
        if name in batch.column_names:
            new = pc.coalesce(new, batch.column(name).cast(pa.string()))
            batch = batch.set_column(batch.schema.get_field_index(name), name, new)
        else:
            batch = batch.append_column(name, new)
        batch = batch.drop_columns([new_name])
    return batch


def _decision_summary(block: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    sizes = block.column("_size").drop_null().to_numpy()
    removed = pc.is_valid(block.column("reason"))
    values, counts = np.unique(sizes, return_counts=True)
    seen = pc.sum(pc.equal(block.column("reason"), kernels.REASON_SEEN)).as_py() or 0
    return block, {
        "clusters": len(sizes),
        "sizes": {str(int(v)): int(c) for v, c in zip(values, counts)},
        "removed": int(pc.sum(removed).as_py() or 0),
        "bytes": int(pc.sum(block.column("_bytes")).as_py() or 0),
        "seen_before": int(seen),
    }


def _decision_table(rows: list[int], ids: list[str], reasons: list[str | None], details: list[str | None],
                    dup_of: list[str | None], cluster: list[str | None], sizes: list[int | None],
                    sizes_bytes: list[int | None]) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array(rows, pa.int64()), pa.array(ids, pa.string()), pa.array(reasons, pa.string()), pa.array(details, pa.string()),
        pa.array(dup_of, pa.string()), pa.array(cluster, pa.string()), pa.array(sizes, pa.int64()),
        pa.array(sizes_bytes, pa.int64())], schema=DECISION_SCHEMA)


# --------------------------------------------------------------------------- exact and URL

KEY_SCHEMA = pa.schema([("k1", pa.int64()), ("k2", pa.int64()), ("rank", pa.string()), ("what", pa.string())])


def _exact_keys(batch: pa.Table, params: kernels.ExactDedupParams) -> pa.Table:
    texts = pc.fill_null(batch.column("text"), "").combine_chunks()
    high, low = exact_keys(texts, params)
    ranks = kernels.rank_keys(batch, params, row_keys=batch.column(ROW_KEY).to_numpy())
    return pa.Table.from_arrays([pa.array(high.view(np.int64)), pa.array(low.view(np.int64)), ranks,
                                 pa.nulls(batch.num_rows, pa.string())], schema=KEY_SCHEMA)


def _url_keys(batch: pa.Table, params: kernels.UrlDedupParams) -> pa.Table:
    if "url" not in batch.column_names:
        return KEY_SCHEMA.empty_table()
    urls = [kernels.normalize_url(u, params) for u in batch.column("url").to_pylist()]
    present = np.array([u is not None for u in urls], dtype=bool)
    if not present.any():
        return KEY_SCHEMA.empty_table()
    batch = batch.filter(pa.array(present))
    normalized = pa.array([u for u in urls if u is not None], pa.string())
    high, low = kernels.hash128(normalized)
    return pa.Table.from_arrays([pa.array(high.view(np.int64)), pa.array(low.view(np.int64)),
                                 kernels.rank_keys(batch, params, row_keys=batch.column(ROW_KEY).to_numpy()),
                                 normalized], schema=KEY_SCHEMA)


def _group_decisions(block: pa.Table, reason: str, what: str) -> pa.Table:
    """Decisions for every group of equal keys with two or more members: the smallest rank
    key survives, the others are rejected."""
    if block.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    block = block.sort_by([("k1", "ascending"), ("k2", "ascending"), ("rank", "ascending")])
    k1, k2 = block.column("k1").to_numpy(), block.column("k2").to_numpy()
    starts = kernels.group_starts([k1, k2])
    group = np.cumsum(starts) - 1
    sizes = np.bincount(group)
    in_dup = sizes[group] > 1
    if not in_dup.any():
        return DECISION_SCHEMA.empty_table()
    rows = np.flatnonzero(in_dup)
    ranks = block.column("rank").take(pa.array(rows))
    ids, nbytes, row_keys = kernels.split_rank_keys(ranks)
    ids, nbytes = ids.to_pylist(), nbytes.to_pylist()
    starts_sel, group_sel = starts[rows], group[rows]
    wht = block.column("what").take(pa.array(rows)).to_pylist()
    out: dict[str, list[Any]] = {k: [] for k in ("id", "reason", "detail", "dup_of", "cluster", "size", "bytes")}
    survivor = ""
    for i, identifier in enumerate(ids):
        size = int(sizes[group_sel[i]])
        if starts_sel[i]:
            survivor = identifier
            out["reason"].append(None), out["detail"].append(None), out["dup_of"].append(None)
            out["size"].append(size), out["bytes"].append(None)
        else:
            detail = f"{what} (group of {size})" if wht[i] is None else f"{what} {wht[i]} (group of {size})"
            out["reason"].append(reason), out["detail"].append(detail[:500]), out["dup_of"].append(survivor)
            out["size"].append(None), out["bytes"].append(nbytes[i])
        out["id"].append(identifier)
        out["cluster"].append(survivor)
    return _decision_table(row_keys.to_pylist(), out["id"], out["reason"], out["detail"], out["dup_of"], out["cluster"], out["size"],
                           out["bytes"])


def _group_in_one_task(key_files: list[str], reason: str, what: str, decisions_dir: str) -> dict[str, Any]:
    """Gathered exact/URL dedup: every key in memory, one sort, decisions per input file."""
    tables = [storage.parquet_file(f).read() for f in key_files]
    keys = pa.concat_tables(tables) if tables else KEY_SCHEMA.empty_table()
    decisions = _group_decisions(keys, reason=reason, what=what)
    del keys, tables
    decisions, summary = _decision_summary(decisions)
    write_decisions(_decision_columns(decisions), storage.location(decisions_dir))
    return {"rows": decisions.num_rows, **summary}


# Working memory of the gathered exact/URL step per byte of keys: the keys, their sorted copy,
# the decision table (a fraction of it).
_GROUP_MEMORY_FACTOR = 3.0


def _run_grouped(op: GlobalOperator, ds: Any, ctx: GlobalContext, keys_fn: Any, reason: str, what: str) -> Any:
    _check_survivor_column(op, ds, ctx)
    started = time.perf_counter()
    keys_dir = ctx.work_dir / "keys"
    gathered = map_input_files(ctx, keys_fn, keys_dir, KEY_SCHEMA)
    key_files = sorted(str(f) for f in keys_dir.glob("part-*.parquet")) if keys_dir.is_dir() else []
    keys_seconds = round(time.perf_counter() - started, 3)
    ctx.extra["keys"] = gathered["rows"]
    if _fits(ctx, gathered["bytes"], _GROUP_MEMORY_FACTOR):
        ctx.extra["execution"] = "gathered"
        summary = run_in_one_task(ctx, _group_in_one_task, key_files, reason, what, str(ctx.work_dir / "decisions"))
        ctx.extra["phase_seconds"] = {"keys": keys_seconds, "group": round(time.perf_counter() - started - keys_seconds, 3)}
        return _finish_gathered(op, ds, ctx.work_dir / "decisions", summary, ctx)
    _refuse_distributed(op, ctx, int(gathered["bytes"] * _GROUP_MEMORY_FACTOR))
    ctx.extra["execution"] = "distributed"
    if not key_files:
        _record({}, ctx)
        return ds
    keys = _ray_data().read_parquet(key_files, schema=KEY_SCHEMA)
    decisions = _shuffle_blocks(keys, ["k1"], _partitions(ctx, gathered["rows"], 64),
                                functools.partial(_group_decisions, reason=reason, what=what))
    decisions, summary = _checkpoint(decisions, ctx.work_dir / "decisions", DECISION_SCHEMA, _decision_summary)
    ctx.extra["phase_seconds"] = {"keys": keys_seconds, "group": round(time.perf_counter() - started - keys_seconds, 3)}
    return _finish(op, ds, decisions, summary, ctx)


@global_executor("exact_dedup", reads_files=True)
def run_exact_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    return _run_grouped(op, ds, ctx, functools.partial(_exact_keys, params=op.params), kernels.REASON_EXACT,
                        "same normalized text")


@global_executor("url_dedup", reads_files=True)
def run_url_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    return _run_grouped(op, ds, ctx, functools.partial(_url_keys, params=op.params), kernels.REASON_URL,
                        "same URL")


# --------------------------------------------------------------------------- MinHash: signatures


def _sig_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("node", pa.int64()), ("id", pa.string()), ("rank", pa.string()),
                      ("sig", pa.binary(num_perm * 4)), ("earlier", pa.bool_())])


def _signature_rows(batch: pa.Table, params: kernels.MinHashParams) -> pa.Table:
    """Signature, id, rank key and row key (the graph node) of every document that has shingles."""
    langs = batch.column("lang") if "lang" in batch.column_names else None
    sigs, per_doc = kernels.signatures(batch.column("text"), langs, params)
    keep = per_doc > 0
    if not keep.all():
        mask = pa.array(keep)
        batch, sigs = batch.filter(mask), sigs[keep]
    ids = batch.column("id")
    nodes = batch.column(ROW_KEY).to_numpy()
    return pa.Table.from_arrays([
        pa.array(nodes), ids.combine_chunks().cast(pa.string()),
        kernels.rank_keys(batch, params, row_keys=nodes), kernels.signature_bytes(sigs),
        pa.array(np.zeros(batch.num_rows, dtype=bool))], schema=_sig_schema(params.num_perm))


def _earlier_rows(batch: pa.Table, index_number: int, num_perm: int) -> pa.Table:
    """Rows of an earlier run's index as graph nodes: rank keys starting with '!' sort before
    every rank key of this run, so an earlier document is always its cluster's survivor. Their
    nodes are negative (a surrogate of the id), apart from this run's row keys."""
    ids = batch.column("id").combine_chunks()
    sep = kernels.RANK_SEPARATOR
    ranks = pa.array([f"!{index_number:04d}{kernels.natural_key(i)}{sep}{0:016x}{sep}{i}{sep}0"
                      for i in ids.to_pylist()], pa.string())
    nodes = kernels.id_surrogates(ids, salt=f"earlier-{index_number}:") | np.int64(-(1 << 63))
    return pa.Table.from_arrays([
        pa.array(nodes), ids, ranks,
        batch.column("sig").combine_chunks().cast(pa.binary(num_perm * 4)),
        pa.array(np.ones(batch.num_rows, dtype=bool))], schema=_sig_schema(num_perm))


def _earlier_indexes(params: kernels.MinHashParams) -> list[tuple[int, list[str]]]:
    """(number, parquet files) of the indexes named in `against`, checked to be comparable
    with this run."""
    indexes = []
    for number, folder in enumerate(params.against):
        path = Path(folder).expanduser()
        meta_path = path / INDEX_META
        if not meta_path.is_file():
            raise KilnError(f"minhash_dedup against: {folder} is not a minhash index (no {INDEX_META}); "
                            f"point it at RUN/NN-stage/{INDEX_FOLDER} of an earlier run")
        meta = json.loads(meta_path.read_text())
        expected = params.index_fingerprint()
        different = [f"{k} {meta.get('fingerprint', {}).get(k)!r} != {v!r}" for k, v in expected.items()
                     if meta.get("fingerprint", {}).get(k) != v]
        if different:
            raise KilnError(f"minhash_dedup against: {folder} was built with other MinHash settings "
                            f"({'; '.join(different)}); use the same settings or rebuild the index")
        files = sorted(str(f) for f in path.glob("*.parquet"))
        if files:
            indexes.append((number, files))
    return indexes


def _load_earlier(indexes: list[tuple[int, list[str]]], num_perm: int) -> list[Any]:
    """The earlier indexes as Datasets of graph nodes (distributed form)."""
    return [_ray_data().read_parquet(files).select_columns(["id", "sig"]).map_batches(
        functools.partial(_earlier_rows, index_number=number, num_perm=num_perm), batch_format="pyarrow")
        for number, files in indexes]


# --------------------------------------------------------------------------- MinHash: candidates

BAND_SCHEMA = pa.schema([("band", pa.int64()), ("node", pa.int64()), ("earlier", pa.bool_()), ("center", pa.string())])


def _center_order(ranks: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each node's position in survivor order (its rank key): the order in which a bucket's
    members compete to be its star's centre. Every member of a bucket is verified against the
    centre, so the centre is the member that would be kept: a rejected document is compared
    with the one kept in its place, and a false match at the centre cannot join two clusters
    (a hash of the id as centre cost 1.7 points of precision on Chinese copies). Rank keys
    depend on ids, not on how rows are split into files, so neither do the candidate pairs."""
    order = pc.sort_indices(ranks).to_numpy()
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(len(order), dtype=np.int64)
    return positions


EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])


def _band_rows(batch: pa.Table, bands: int, rows: int, num_perm: int) -> pa.Table:
    sigs = kernels.signatures_from_bytes(batch.column("sig"), num_perm)
    keys = kernels.band_keys(sigs, bands, rows)
    nodes = batch.column("node").to_numpy()
    earlier = batch.column("earlier").to_numpy(zero_copy_only=False)
    each_row = pa.array(np.repeat(np.arange(batch.num_rows, dtype=np.int64), bands))
    return pa.Table.from_arrays([pa.array(keys.reshape(-1).view(np.int64)), pa.array(np.repeat(nodes, bands)),
                                 pa.array(np.repeat(earlier, bands)),
                                 batch.column("rank").combine_chunks().take(each_row)], schema=BAND_SCHEMA)


def _bucket_edges(block: pa.Table) -> pa.Table:
    """Star edges of every bucket with two or more documents (not among earlier ones only),
    each member linked to the member with the smallest rank key (`_center_order`)."""
    if block.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    block = block.sort_by([("band", "ascending"), ("center", "ascending"), ("node", "ascending")])
    band = block.column("band").to_numpy()
    node = block.column("node").to_numpy()
    earlier = block.column("earlier").to_numpy(zero_copy_only=False)
    start = kernels.group_starts([band])
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)[group]
    keep = (~start) & (node != node[first]) & ~(earlier & earlier[first])
    return pa.Table.from_arrays([pa.array(node[keep]), pa.array(node[first][keep])], schema=EDGE_SCHEMA)


def _unique_pairs(block: pa.Table, a: str, b: str) -> pa.Table:
    if block.num_rows == 0:
        return block
    block = block.sort_by([(a, "ascending"), (b, "ascending")])
    first = kernels.group_starts([block.column(a).to_numpy(zero_copy_only=False),
                                  block.column(b).to_numpy(zero_copy_only=False)])
    return block.filter(pa.array(first))


PAIR_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string()), ("jaccard", pa.float32())])


def _join_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("node", pa.int64()), ("a", pa.int64()), ("b", pa.int64()), ("side", pa.int8()),
                      ("rank", pa.string()), ("sig", pa.binary(num_perm * 4))])


def _endpoint_rows(batch: pa.Table, num_perm: int) -> pa.Table:
    """Both endpoints of every candidate edge, waiting for their signatures."""
    a, b = batch.column("a").combine_chunks(), batch.column("b").combine_chunks()
    n = batch.num_rows
    return pa.Table.from_arrays([pa.concat_arrays([a, b]), pa.concat_arrays([a, a]), pa.concat_arrays([b, b]),
                                 pa.array(np.repeat(np.array([0, 1], np.int8), n)),
                                 pa.nulls(2 * n, pa.string()), pa.nulls(2 * n, pa.binary(num_perm * 4))],
                                schema=_join_schema(num_perm))


def _node_rows(batch: pa.Table, num_perm: int) -> pa.Table:
    n = batch.num_rows
    return pa.Table.from_arrays([batch.column("node").combine_chunks(), pa.nulls(n, pa.int64()),
                                 pa.nulls(n, pa.int64()), pa.nulls(n, pa.int8()),
                                 batch.column("rank").combine_chunks(),
                                 batch.column("sig").combine_chunks().cast(pa.binary(num_perm * 4))],
                                schema=_join_schema(num_perm))


def _attach_signatures(block: pa.Table) -> pa.Table:
    """Inner join, inside one block of the shuffle by node, of edge endpoints with the
    nodes' rank keys and signatures (a hash join in Arrow)."""
    is_endpoint = pc.is_valid(block.column("side"))
    endpoints = block.filter(is_endpoint).select(["node", "a", "b", "side"])
    nodes = block.filter(pc.invert(is_endpoint)).select(["node", "rank", "sig"])
    if endpoints.num_rows == 0 or nodes.num_rows == 0:
        return block.schema.empty_table()
    return endpoints.join(nodes, "node", join_type="inner").select(block.schema.names).cast(block.schema)


def _verify_pairs(block: pa.Table, num_perm: int, threshold: float | None) -> pa.Table:
    """Pair up the two endpoints of each edge (now with rank keys and signatures) and keep
    the pairs whose signatures agree on at least `threshold` of their values. Both rows of
    an edge are in this block (shuffled by edge); surrogate collisions, astronomically rare,
    give more than one row per side and are paired in full."""
    if block.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    block = block.sort_by([("a", "ascending"), ("b", "ascending"), ("side", "ascending"), ("rank", "ascending")])
    a, b = block.column("a").to_numpy(), block.column("b").to_numpy()
    side = block.column("side").to_numpy()
    start = kernels.group_starts([a, b])
    group = np.cumsum(start) - 1
    counts = np.bincount(group)
    sides1 = np.bincount(group, weights=side).astype(np.int64)
    simple = (counts == 2) & (sides1 == 1)
    first_rows = np.flatnonzero(start)
    left = first_rows[simple]
    right = left + 1
    extra_left, extra_right = [], []
    for g in np.flatnonzero(~simple):  # surrogate collisions: every side-0 row with every side-1 row
        rows = np.arange(first_rows[g], first_rows[g] + counts[g])
        for i in rows[side[rows] == 0]:
            for j in rows[side[rows] == 1]:
                extra_left.append(i)
                extra_right.append(j)
    if extra_left:
        left = np.concatenate([left, np.array(extra_left, np.int64)])
        right = np.concatenate([right, np.array(extra_right, np.int64)])
    sigs = kernels.signatures_from_bytes(block.column("sig"), num_perm)
    jaccard = kernels.estimated_jaccard(sigs[left], sigs[right]).astype(np.float32)
    ranks = block.column("rank")
    u, v = ranks.take(pa.array(left)), ranks.take(pa.array(right))
    keep = pc.not_equal(u, v).to_numpy(zero_copy_only=False)
    if threshold is not None:
        keep &= jaccard >= np.float32(threshold) - np.float32(1e-6)
    mask = pa.array(keep)
    return pa.Table.from_arrays([u.filter(mask), v.filter(mask), pa.array(jaccard[keep])], schema=PAIR_SCHEMA)


# --------------------------------------------------------------------------- connected components

CC_SCHEMA = pa.schema([("x", pa.string()), ("y", pa.string()), ("unstable", pa.int64())])
EDGE_XY_SCHEMA = pa.schema([("x", pa.string()), ("y", pa.string())])


def _split_marker_rows(block: pa.Table) -> tuple[pa.Table, int]:
    """Edge rows, and the sum of the `unstable` counts carried by marker rows (x null)."""
    if "unstable" not in block.column_names:
        return block.select(["x", "y"]), 0
    markers = pc.is_null(block.column("x"))
    unstable = int(pc.sum(block.column("unstable").filter(markers)).as_py() or 0)
    return block.filter(pc.invert(markers)).select(["x", "y"]), unstable


def _sorted_groups(block: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Deduplicated (x, y) rows sorted by x then y, the group-start mask and group numbers."""
    block = _unique_pairs(block, "x", "y")
    x = block.column("x").combine_chunks()
    start = np.ones(len(x), dtype=bool)
    if len(x) > 1:
        start[1:] = pc.not_equal(x.slice(1), x.slice(0, len(x) - 1)).to_numpy(zero_copy_only=False)
    return block, start, np.cumsum(start) - 1


def _cc_rows(x: pa.Array, y: pa.Array, unstable: int) -> pa.Table:
    """Edge rows plus one marker row (x null) that carries a count of unstable nodes."""
    return pa.Table.from_arrays([
        pa.concat_arrays([x.cast(pa.string()), pa.nulls(1, pa.string())]),
        pa.concat_arrays([y.cast(pa.string()), pa.nulls(1, pa.string())]),
        pa.array(np.concatenate([np.zeros(len(x), np.int64), [unstable]]))], schema=CC_SCHEMA)


def _both_directions(batch: pa.Table) -> pa.Table:
    x, y = batch.column("x").combine_chunks(), batch.column("y").combine_chunks()
    return pa.table({"x": pa.concat_arrays([x, y]), "y": pa.concat_arrays([y, x])})


def _large_star(block: pa.Table) -> pa.Table:
    """For each node x with neighbourhood N(x) and m = min(N(x) + {x}): link every larger
    neighbour to m. Also counts the nodes that keep the graph from being a forest of stars
    centred on their minimum: nodes with a smaller neighbour and more than one neighbour
    (when there are none, every component is already a star around its smallest node)."""
    block, _ = _split_marker_rows(block)
    block, start, group = _sorted_groups(block)
    if block.num_rows == 0:
        return _cc_rows(pa.array([], pa.string()), pa.array([], pa.string()), 0)
    x, y = block.column("x").combine_chunks(), block.column("y").combine_chunks()
    first_index = np.flatnonzero(start)
    min_neighbour = y.take(pa.array(first_index[group]))
    m = pc.if_else(pc.less(min_neighbour, x), min_neighbour, x)
    larger = pc.greater(y, x)
    degree = np.bincount(group)
    has_smaller = pc.less(y.take(pa.array(first_index)), x.take(pa.array(first_index))).to_numpy(zero_copy_only=False)
    unstable = int(np.count_nonzero(has_smaller & (degree > 1)))
    return _cc_rows(y.filter(larger), m.filter(larger), unstable)


def _orient_larger_first(batch: pa.Table) -> pa.Table:
    x, y = batch.column("x"), batch.column("y")
    swap = pc.fill_null(pc.less(x, y), False)
    return pa.table({"x": pc.if_else(swap, y, x), "y": pc.if_else(swap, x, y), "unstable": batch.column("unstable")})


def _small_star(block: pa.Table) -> pa.Table:
    """Edges oriented larger -> smaller and grouped by the larger end x: with m the smallest
    neighbour, link every neighbour and x itself to m. Marker rows pass through as one."""
    block, unstable = _split_marker_rows(block)
    block, start, group = _sorted_groups(block)
    if block.num_rows == 0:
        return _cc_rows(pa.array([], pa.string()), pa.array([], pa.string()), unstable)
    x, y = block.column("x").combine_chunks(), block.column("y").combine_chunks()
    m = y.take(pa.array(np.flatnonzero(start)[group]))
    others = pc.not_equal(y, m)
    firsts = pa.array(np.flatnonzero(start))
    return _cc_rows(pa.concat_arrays([y.filter(others), x.take(firsts)]),
                    pa.concat_arrays([m.filter(others), m.take(firsts)]), unstable)


def _count_unstable(block: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    edges, unstable = _split_marker_rows(block)
    return edges, {"unstable": unstable}


def connected_components(pairs: Any, work_dir: Path, partitions: int, max_rounds: int = 64) -> tuple[Any, int]:
    """(x = member, y = root) for every non-root document of a non-trivial component, the
    root being the component's smallest rank key, from undirected edges (u, v).

    Each round is one large-star and one small-star step (two shuffles, one pass). The
    large-star step counts the nodes that keep its input from being a forest of stars around
    each component's minimum; when there are none, the input was final and both steps return
    it unchanged, so the round's output is the answer."""
    edges = pairs.map_batches(lambda b: pa.table({"x": b.column("u"), "y": b.column("v")}), batch_format="pyarrow")
    for round_number in range(1, max_rounds + 1):
        large = _shuffle_blocks(edges.map_batches(_both_directions, batch_format="pyarrow"), ["x"], partitions,
                                _large_star)
        small = _shuffle_blocks(large.map_batches(_orient_larger_first, batch_format="pyarrow"), ["x"],
                                partitions, _small_star)
        edges, summary = _checkpoint(small, work_dir / f"cc-{round_number:02d}", EDGE_XY_SCHEMA, _count_unstable)
        if summary.get("unstable", 0) == 0:
            return edges, round_number
    raise KilnError(f"connected components did not converge in {max_rounds} rounds")


def _cluster_decisions(block: pa.Table, threshold: float) -> pa.Table:
    """Decisions from the final star forest, grouped by root: members are rejected, the root
    (when it belongs to this run) gets its cluster column and the cluster size."""
    if block.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    block = block.sort_by([("y", "ascending"), ("x", "ascending")])
    leaf_ids, leaf_bytes, leaf_rows = kernels.split_rank_keys(block.column("x"))
    roots = block.column("y").combine_chunks()
    start = np.ones(len(roots), dtype=bool)
    if len(roots) > 1:
        start[1:] = pc.not_equal(roots.slice(1), roots.slice(0, len(roots) - 1)).to_numpy(zero_copy_only=False)
    group = np.cumsum(start) - 1
    sizes = np.bincount(group) + 1
    root_rows = np.flatnonzero(start)
    root_ids, _, root_keys = kernels.split_rank_keys(roots.take(pa.array(root_rows)))
    root_ids, root_keys = root_ids.to_pylist(), root_keys.to_pylist()
    root_earlier = [r.startswith("!") for r in roots.take(pa.array(root_rows)).to_pylist()]
    leaf_earlier = pc.starts_with(block.column("x"), "!").to_numpy(zero_copy_only=False)
    out: dict[str, list[Any]] = {k: [] for k in ("row", "id", "reason", "detail", "dup_of", "cluster", "size",
                                                  "bytes")}
    for g, root in enumerate(root_ids):
        if root_earlier[g]:
            continue
        out["row"].append(root_keys[g]), out["id"].append(root), out["reason"].append(None), out["detail"].append(None)
        out["dup_of"].append(None), out["cluster"].append(root), out["size"].append(int(sizes[g]))
        out["bytes"].append(None)
    leaves, nbytes, leaf_rows = leaf_ids.to_pylist(), leaf_bytes.to_pylist(), leaf_rows.to_pylist()
    for i, leaf in enumerate(leaves):
        if leaf_earlier[i]:
            continue
        g = group[i]
        if root_earlier[g]:
            reason, detail = kernels.REASON_SEEN, f"near-duplicate of {root_ids[g]} in an earlier corpus"
        else:
            reason, detail = kernels.REASON_NEAR, f"MinHash cluster of {sizes[g]} at Jaccard >= {threshold}"
        out["row"].append(leaf_rows[i]), out["id"].append(leaf), out["reason"].append(reason), out["detail"].append(detail[:500])
        out["dup_of"].append(root_ids[g]), out["cluster"].append(root_ids[g]), out["size"].append(None)
        out["bytes"].append(nbytes[i])
    return _decision_table(out["row"], out["id"], out["reason"], out["detail"], out["dup_of"], out["cluster"],
                           out["size"], out["bytes"])


# --------------------------------------------------------------------------- MinHash: executor


# --------------------------------------------------------------------------- MinHash: gathered form


def _star_edges_by_band(band_keys: np.ndarray, nodes: np.ndarray, earlier: np.ndarray,
                        centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (as row indexes) of every band: in each bucket of two or more
    documents, every member linked to the member with the smallest rank key
    (`_center_order`, then node), as the distributed
    form's `_bucket_edges` links them (so both forms verify the same pairs); buckets of
    earlier documents only give nothing. Each pair once."""
    n = len(nodes)
    parts_a, parts_b = [], []
    for band in range(band_keys.shape[1]):
        order = np.lexsort((nodes, centers, band_keys[:, band]))
        start = kernels.group_starts([band_keys[order, band]])
        first = order[np.flatnonzero(start)[np.cumsum(start) - 1]]
        keep = ~start & ~(earlier[order] & earlier[first])
        parts_a.append(order[keep])
        parts_b.append(first[keep])
    if not parts_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.concatenate(parts_a).astype(np.int64) * n + np.concatenate(parts_b))
    return pairs // n, pairs % n


def _verified(sigs: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the pairs whose signatures agree on at least `threshold` of their values (the
    distributed form's test, in chunks so that the compared rows stay small)."""
    keep = np.zeros(len(a), dtype=bool)
    for start in range(0, len(a), 1 << 16):
        stop = start + (1 << 16)
        jaccard = kernels.estimated_jaccard(sigs[a[start:stop]], sigs[b[start:stop]]).astype(np.float32)
        keep[start:stop] = jaccard >= np.float32(threshold) - np.float32(1e-6)
    return keep


def _component_decisions(nodes: pa.Table, a: np.ndarray, b: np.ndarray, threshold: float) -> pa.Table:
    """Decisions from verified pairs: connected components (scipy), each one's smallest rank
    key its survivor; members rejected as near duplicates (seen_before when the survivor
    belongs to an earlier index); earlier documents themselves get no decision."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = nodes.num_rows
    if len(a) == 0:
        return DECISION_SCHEMA.empty_table()
    count, labels = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)),
                                         directed=False)
    sizes = np.bincount(labels, minlength=count)
    earlier = nodes.column("earlier").to_numpy(zero_copy_only=False)
    rank_order = pc.sort_indices(nodes.column("rank")).to_numpy()
    labels_by_rank = labels[rank_order]
    present, first = np.unique(labels_by_rank, return_index=True)
    root_of = np.empty(count, dtype=np.int64)
    root_of[present] = rank_order[first]
    root = root_of[labels]
    decided = np.flatnonzero((sizes[labels] > 1) & ~earlier)
    survivors = decided[root[decided] == decided]
    members = decided[root[decided] != decided]
    ids = nodes.column("id").combine_chunks()
    member_ids, member_bytes, _ = kernels.split_rank_keys(nodes.column("rank").take(pa.array(members)))
    member_roots = root[members]
    seen = earlier[member_roots]
    member_sizes = sizes[labels[members]]
    root_ids = ids.take(pa.array(member_roots)).to_pylist()
    details = [(f"near-duplicate of {r} in an earlier corpus" if s else
                f"MinHash cluster of {z} at Jaccard >= {threshold}")[:500]
               for r, s, z in zip(root_ids, seen.tolist(), member_sizes.tolist())]
    survivor_ids = ids.take(pa.array(survivors))
    node_keys = nodes.column("node").combine_chunks()
    k = len(survivors)
    return pa.Table.from_arrays([
        pa.concat_arrays([node_keys.take(pa.array(survivors)), node_keys.take(pa.array(members))]),
        pa.concat_arrays([survivor_ids, member_ids]),
        pa.array([None] * k + np.where(seen, kernels.REASON_SEEN, kernels.REASON_NEAR).tolist(), pa.string()),
        pa.array([None] * k + details, pa.string()),
        pa.array([None] * k + root_ids, pa.string()),
        pa.concat_arrays([survivor_ids, pa.array(root_ids, pa.string())]),
        pa.array(np.concatenate([sizes[labels[survivors]], np.zeros(len(members), np.int64)]),
                 mask=np.concatenate([np.zeros(k, bool), np.ones(len(members), bool)])),
        pa.array(np.concatenate([np.zeros(k, np.int64), member_bytes.to_numpy()]),
                 mask=np.concatenate([np.ones(k, bool), np.zeros(len(members), bool)])),
    ], schema=DECISION_SCHEMA)


def _cluster_in_one_task(signature_files: list[str], earlier: list[tuple[int, list[str]]],
                         params: kernels.MinHashParams, decisions_dir: str) -> dict[str, Any]:
    """Gathered MinHash dedup: candidates, verification, components and decisions of every
    document (and earlier index) in this one task; decisions written per input file."""
    clock = time.perf_counter()
    phases: dict[str, float] = {}
    num_perm = params.num_perm
    bands, rows = params.band_rows
    nodes, sigs = _gather_nodes(signature_files, earlier, num_perm)
    node_keys = nodes.column("node").to_numpy()
    earlier_mask = nodes.column("earlier").to_numpy(zero_copy_only=False)
    a, b = _star_edges_by_band(kernels.band_keys(sigs, bands, rows), node_keys, earlier_mask,
                               _center_order(nodes.column("rank")))
    candidates = len(a)
    phases["lsh_buckets"] = round(time.perf_counter() - clock, 3)
    if params.verify_threshold is not None and candidates:
        keep = _verified(sigs, a, b, params.verify_threshold)
        a, b = a[keep], b[keep]
    del sigs
    phases["verify"] = round(time.perf_counter() - clock - sum(phases.values()), 3)
    decisions = _component_decisions(nodes, a, b, params.threshold)
    decisions, summary = _decision_summary(decisions)
    write_decisions(_decision_columns(decisions), storage.location(decisions_dir))
    phases["components"] = round(time.perf_counter() - clock - sum(phases.values()), 3)
    return {"rows": decisions.num_rows, "candidate_pairs": candidates, "verified_pairs": len(a),
            "phase_seconds": phases, **summary}


def _gather_nodes(signature_files: list[str], earlier: list[tuple[int, list[str]]],
                  num_perm: int) -> tuple[pa.Table, np.ndarray]:
    """Every node's columns but its signature, and the signatures as one (nodes x num_perm)
    matrix filled file by file, so that no second copy of them is ever held."""
    def sources():
        for file in signature_files:
            yield lambda f=file: storage.parquet_file(f).read()
        for number, files in earlier:
            for file in files:
                yield lambda f=file, n=number: _earlier_rows(storage.parquet_file(f).read(columns=["id", "sig"]), n, num_perm)

    counts = [storage.parquet_file(f).metadata.num_rows for f in signature_files]
    counts += [storage.parquet_file(f).metadata.num_rows for _, files in earlier for f in files]
    sigs = np.empty((sum(counts), num_perm), dtype=np.uint32)
    parts, start = [], 0
    for read in sources():
        table = read()
        sigs[start:start + table.num_rows] = kernels.signatures_from_bytes(table.column("sig"), num_perm)
        start += table.num_rows
        parts.append(table.drop_columns(["sig"]))
    schema = _sig_schema(num_perm)
    nodes = pa.concat_tables(parts) if parts else schema.empty_table().drop_columns(["sig"])
    return nodes, sigs[:start]


def _gathered_bytes(signature_bytes: int, nodes: int, bands: int) -> int:
    """Memory of the gathered MinHash step: the node rows (the signatures as a matrix), one
    file's rows while reading, the band keys and the sort orders of one band, with room."""
    return int(1.5 * signature_bytes) + nodes * (8 * bands + 64)


# --------------------------------------------------------------------------- MinHash: executor


@global_executor("minhash_dedup", reads_files=True)
def run_minhash_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    params: kernels.MinHashParams = op.params  # type: ignore[assignment]
    _check_survivor_column(op, ds, ctx)
    bands, rows = params.band_rows
    num_perm = params.num_perm
    work = ctx.work_dir
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    earlier = _earlier_indexes(params)
    gathered = map_input_files(ctx, functools.partial(_signature_rows, params=params), work / "signatures",
                               _sig_schema(num_perm))
    signature_files = sorted(str(f) for f in (work / "signatures").glob("part-*.parquet"))
    docs_compared = gathered["rows"]
    phase("signatures")
    earlier_rows = sum(storage.parquet_file(f).metadata.num_rows for _, files in earlier for f in files)
    per_row = gathered["bytes"] / max(1, docs_compared)
    estimate = _gathered_bytes(int(per_row * (docs_compared + earlier_rows)), docs_compared + earlier_rows, bands)
    ctx.extra.update({"bands": bands, "rows": rows, "num_perm": num_perm, "threshold": params.threshold,
                      "docs_compared": int(docs_compared), "gathered_bytes_estimate": estimate})
    if _fits(ctx, estimate, 1.0):
        ctx.extra["execution"] = "gathered"
        summary = run_in_one_task(ctx, _cluster_in_one_task, signature_files, earlier, params, str(work / "decisions"))
        phases.update(summary.pop("phase_seconds"))
        phase("one_task")
        ctx.extra.update({"candidate_pairs": int(summary["candidate_pairs"]),
                          "verified_pairs": int(summary["verified_pairs"]), "cc_rounds": 0, "phase_seconds": phases})
        result = _finish_gathered(op, ds, work / "decisions", summary, ctx)
    else:
        _refuse_distributed(op, ctx, estimate)
        ctx.extra["execution"] = "distributed"
        result = _distributed_minhash(op, ds, ctx, signature_files, earlier, int(docs_compared), phases, phase)
    if params.save_index and not ctx.analyze:
        _save_index(work / "signatures", params, ctx, int(docs_compared))
    return result


def _distributed_minhash(op: GlobalOperator, ds: Any, ctx: GlobalContext, signature_files: list[str],
                         earlier: list[tuple[int, list[str]]], docs_compared: int, phases: dict[str, float],
                         phase: Any) -> Any:
    params: kernels.MinHashParams = op.params  # type: ignore[assignment]
    bands, rows = params.band_rows
    num_perm = params.num_perm
    work = ctx.work_dir
    if not signature_files:
        _record({}, ctx)
        ctx.extra.update({"candidate_pairs": 0, "verified_pairs": 0, "cc_rounds": 0, "phase_seconds": phases})
        return ds
    sigs = _ray_data().read_parquet(signature_files, schema=_sig_schema(num_perm))
    earlier_nodes = _load_earlier(earlier, num_perm)

    # Candidates: a shuffle by band key, star edges per bucket, a shuffle by edge to drop
    # the same pair found in several bands.
    nodes = sigs.union(*earlier_nodes) if earlier_nodes else sigs
    band_ds = nodes.map_batches(functools.partial(_band_rows, bands=bands, rows=rows, num_perm=num_perm),
                                batch_format="pyarrow")
    edges = _shuffle_blocks(band_ds, ["band"], _partitions(ctx, docs_compared * bands), _bucket_edges)
    edges = _shuffle_blocks(edges, ["a"], _partitions(ctx, docs_compared), functools.partial(_unique_pairs, a="a", b="b"))
    edges, summary = _checkpoint(edges, work / "candidates", EDGE_SCHEMA)
    candidates = summary["rows"]
    phase("lsh_buckets")

    # A stage without candidate pairs (or without verified ones) has nothing to cluster; the
    # later shuffles are skipped, since Ray's hash shuffle cannot concatenate the schema-less
    # blocks that an empty dataset's map_batches yields.
    verified = rounds = 0
    decisions, summary = None, {"rows": 0}
    if candidates:
        # Verification: endpoints meet their signatures in a shuffle by node, then the two
        # ends of each edge meet in a shuffle by edge.
        sides = edges.map_batches(functools.partial(_endpoint_rows, num_perm=num_perm), batch_format="pyarrow")
        node_side = nodes.map_batches(functools.partial(_node_rows, num_perm=num_perm), batch_format="pyarrow")
        joined = _shuffle_blocks(sides.union(node_side), ["node"],
                                 _partitions(ctx, docs_compared + 2 * candidates, 4 * num_perm + 64),
                                 _attach_signatures)
        pairs = _shuffle_blocks(joined, ["a", "b"], _partitions(ctx, 2 * candidates, 4 * num_perm + 64),
                                functools.partial(_verify_pairs, num_perm=num_perm,
                                                  threshold=params.verify_threshold))
        pairs, pair_summary = _checkpoint(pairs, work / "pairs", PAIR_SCHEMA)
        verified = pair_summary["rows"]
    phase("verify")

    if verified:
        forest, rounds = connected_components(pairs, work, _partitions(ctx, 2 * verified))
        phase("components")
        decisions = _shuffle_blocks(forest, ["y"], _partitions(ctx, verified),
                                    functools.partial(_cluster_decisions, threshold=params.threshold))
        decisions, summary = _checkpoint(decisions, work / "decisions", DECISION_SCHEMA, _decision_summary)
        phase("clusters")
    ctx.extra.update({"candidate_pairs": int(candidates), "verified_pairs": int(verified), "cc_rounds": rounds,
                      "phase_seconds": phases})
    return _finish(op, ds, decisions, summary, ctx)


def _save_index(signatures: Path, params: kernels.MinHashParams, ctx: GlobalContext, documents: int) -> None:
    """Publish the signatures of every document this stage compared (moved, not copied) as
    an index a later run can deduplicate against (`against:`)."""
    folder = ctx.output_dir / INDEX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(signatures.glob("part-*.parquet")):
        file.rename(folder / file.name)
    (folder / INDEX_META).write_text(json.dumps({
        "fingerprint": params.index_fingerprint(), "documents": documents, "stage": ctx.stage_name,
        "config_sha256": ctx.config_sha256,
        "note": "signatures of every document the stage compared, near-duplicates included"}, indent=2) + "\n")
