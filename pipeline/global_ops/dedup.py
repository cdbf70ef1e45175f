"""Ray Data executors of the dedup operators: exact, URL and MinHash LSH near-duplicates.

Everything here is distributed; the driver only coordinates and adds up per-block summaries
(a few numbers per block). The one grouping primitive is a hash shuffle:
`repartition(k, keys=[key])` puts every row of a key into the same block (one block per
partition, never split), and a `map_batches(batch_size=None)` then handles all groups of the
block at once with vectorized sorts, instead of one Python call per group.

- exact_dedup / url_dedup: a 128-bit key per document -> one shuffle by key -> in each block,
  the smallest rank key of each group survives (operators/dedup.py defines rank keys).
- minhash_dedup:
  1. signatures per batch (vectorized), written to the scratch folder with id and rank key;
  2. one row per (document, band) -> shuffle by band key -> each bucket of two or more
     documents gives star edges (member -> bucket minimum), O(n) instead of O(n^2);
  3. edges deduplicated (shuffle by edge), joined once with the signatures, then verified:
     the signatures' estimated Jaccard must reach the threshold;
  4. connected components by alternating large-star / small-star rounds (Kiveris et al.,
     "Connected Components in MapReduce and Beyond", 2014), each one shuffle, until the edge
     set is a forest of stars centred on each component's smallest rank key, which is the
     survivor, so chains A~B~C end in one cluster;
  5. one shuffle by survivor gives the decisions and the cluster sizes.
  Every intermediate is written as parquet under the stage's scratch folder, so lineage does
  not grow round after round and nothing is recomputed.
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

from operators import dedup as kernels
from operators.base import GlobalOperator
from pipeline import stats as stats_lib
from pipeline import storage
from pipeline.errors import KilnError
from pipeline.global_ops import GlobalContext, global_executor, mark_rejected

# Decision columns that are folded into existing dup_of / dup_cluster columns after the join.
_NEW_PREFIX = "_kiln.new."
# Rows per block the shuffles aim at (more partitions for bigger corpora).
_ROWS_PER_PARTITION = 2_000_000
_BYTES_PER_PARTITION = 256 << 20
INDEX_FOLDER = "minhash_index"
INDEX_META = "index.json"

DECISION_SCHEMA = pa.schema([
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


def _schema_names(ds: Any) -> list[str]:
    schema = ds.schema()
    return list(schema.names) if schema is not None else []


def _check_survivor_column(op: GlobalOperator, ds: Any) -> None:
    params = op.params
    if params.keep == "best" and params.best_column not in _schema_names(ds):
        raise KilnError(f"{op.label}: keep: best needs the column {params.best_column!r}, which the documents "
                        f"do not have at this point (columns: {', '.join(_schema_names(ds))})")


def _finish(op: GlobalOperator, ds: Any, decisions: Any, summary: dict[str, Any], ctx: GlobalContext) -> Any:
    """Record the statistics and mark the rejected rows; dup_of / dup_cluster from earlier
    dedup operators are kept where this one has nothing to say."""
    ctx.extra.update({
        "clusters": int(summary.get("clusters", 0)),
        "docs_removed": int(summary.get("removed", 0)),
        "bytes_removed": int(summary.get("bytes", 0)),
        "cluster_size_histogram": {k: int(v) for k, v in sorted(summary.get("sizes", {}).items(),
                                                                  key=lambda kv: int(kv[0]))},
    })
    if summary.get("seen_before"):
        ctx.extra["docs_seen_before"] = int(summary["seen_before"])
    if not summary.get("rows"):
        return ds  # no duplicates: nothing to mark (and nothing to join)

    def rename(batch: pa.Table) -> pa.Table:
        batch = batch.drop_columns(["_size", "_bytes"])
        names = {kernels.DUP_OF: _NEW_PREFIX + kernels.DUP_OF, kernels.DUP_CLUSTER: _NEW_PREFIX + kernels.DUP_CLUSTER}
        return batch.rename_columns([names.get(c, c) for c in batch.column_names])

    marked = mark_rejected(ds, decisions.map_batches(rename, batch_format="pyarrow"), op.label, ctx)
    return marked.map_batches(_fold_dup_columns, batch_format="pyarrow", batch_size=ctx.batch_size)


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


def _decision_table(ids: list[str], reasons: list[str | None], details: list[str | None],
                    dup_of: list[str | None], cluster: list[str | None], sizes: list[int | None],
                    sizes_bytes: list[int | None]) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array(ids, pa.string()), pa.array(reasons, pa.string()), pa.array(details, pa.string()),
        pa.array(dup_of, pa.string()), pa.array(cluster, pa.string()), pa.array(sizes, pa.int64()),
        pa.array(sizes_bytes, pa.int64())], schema=DECISION_SCHEMA)


# --------------------------------------------------------------------------- exact and URL

KEY_SCHEMA = pa.schema([("k1", pa.int64()), ("k2", pa.int64()), ("rank", pa.string()), ("what", pa.string())])


def _exact_keys(batch: pa.Table, params: kernels.ExactDedupParams) -> pa.Table:
    texts = pc.fill_null(batch.column("text"), "").combine_chunks()
    high, low = kernels.hash128(kernels.normalize_for_exact(texts, params))
    ranks = kernels.rank_keys(batch, params)
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
                                 kernels.rank_keys(batch, params), normalized], schema=KEY_SCHEMA)


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
    ids, nbytes = kernels.split_rank_keys(ranks)
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
    return _decision_table(out["id"], out["reason"], out["detail"], out["dup_of"], out["cluster"], out["size"],
                           out["bytes"])


def _run_grouped(op: GlobalOperator, ds: Any, ctx: GlobalContext, keys_fn: Any, reason: str, what: str) -> Any:
    _check_survivor_column(op, ds)
    started = time.perf_counter()
    keys = ds.map_batches(keys_fn, batch_format="pyarrow", batch_size=ctx.batch_size)
    decisions = _shuffle_blocks(keys, ["k1"], ctx.num_partitions,
                                functools.partial(_group_decisions, reason=reason, what=what))
    decisions, summary = _checkpoint(decisions, ctx.work_dir / "decisions", DECISION_SCHEMA, _decision_summary)
    ctx.extra["phase_seconds"] = {"group": round(time.perf_counter() - started, 3)}
    return _finish(op, ds, decisions, summary, ctx)


@global_executor("exact_dedup")
def run_exact_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    return _run_grouped(op, ds, ctx, functools.partial(_exact_keys, params=op.params), kernels.REASON_EXACT,
                        "same normalized text")


@global_executor("url_dedup")
def run_url_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    return _run_grouped(op, ds, ctx, functools.partial(_url_keys, params=op.params), kernels.REASON_URL,
                        "same URL")


# --------------------------------------------------------------------------- MinHash: signatures


def _sig_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("node", pa.int64()), ("id", pa.string()), ("rank", pa.string()),
                      ("sig", pa.binary(num_perm * 4)), ("earlier", pa.bool_())])


def _signature_rows(batch: pa.Table, params: kernels.MinHashParams) -> pa.Table:
    """Signature, id, rank key and surrogate of every document that has shingles."""
    langs = batch.column("lang") if "lang" in batch.column_names else None
    sigs, per_doc = kernels.signatures(batch.column("text"), langs, params)
    keep = per_doc > 0
    if not keep.all():
        mask = pa.array(keep)
        batch, sigs = batch.filter(mask), sigs[keep]
    ids = batch.column("id")
    return pa.Table.from_arrays([
        pa.array(kernels.id_surrogates(ids)), ids.combine_chunks().cast(pa.string()),
        kernels.rank_keys(batch, params), kernels.signature_bytes(sigs),
        pa.array(np.zeros(batch.num_rows, dtype=bool))], schema=_sig_schema(params.num_perm))


def _earlier_rows(batch: pa.Table, index_number: int, num_perm: int) -> pa.Table:
    """Rows of an earlier run's index as graph nodes: rank keys starting with '!' sort before
    every rank key of this run, so an earlier document is always its cluster's survivor."""
    ids = batch.column("id").combine_chunks()
    ranks = pa.array([f"!{index_number:04d}{kernels.natural_key(i)}{kernels.RANK_SEPARATOR}{i}{kernels.RANK_SEPARATOR}0"
                      for i in ids.to_pylist()], pa.string())
    return pa.Table.from_arrays([
        pa.array(kernels.id_surrogates(ids, salt=f"earlier-{index_number}:")), ids, ranks,
        batch.column("sig").combine_chunks().cast(pa.binary(num_perm * 4)),
        pa.array(np.ones(batch.num_rows, dtype=bool))], schema=_sig_schema(num_perm))


def _load_earlier(params: kernels.MinHashParams) -> list[Any]:
    """Datasets of the indexes named in `against`, checked to be comparable with this run."""
    datasets = []
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
        if not files:
            continue
        ds = _ray_data().read_parquet(files).select_columns(["id", "sig"])
        datasets.append(ds.map_batches(functools.partial(_earlier_rows, index_number=number,
                                                         num_perm=params.num_perm), batch_format="pyarrow"))
    return datasets


# --------------------------------------------------------------------------- MinHash: candidates

BAND_SCHEMA = pa.schema([("band", pa.int64()), ("node", pa.int64()), ("earlier", pa.bool_())])
EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])


def _band_rows(batch: pa.Table, bands: int, rows: int, num_perm: int) -> pa.Table:
    sigs = kernels.signatures_from_bytes(batch.column("sig"), num_perm)
    keys = kernels.band_keys(sigs, bands, rows)
    nodes = batch.column("node").to_numpy()
    earlier = batch.column("earlier").to_numpy(zero_copy_only=False)
    return pa.Table.from_arrays([pa.array(keys.reshape(-1).view(np.int64)), pa.array(np.repeat(nodes, bands)),
                                 pa.array(np.repeat(earlier, bands))], schema=BAND_SCHEMA)


def _bucket_edges(block: pa.Table) -> pa.Table:
    """Star edges of every bucket with two or more documents (not among earlier ones only)."""
    if block.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    band = block.column("band").to_numpy()
    node = block.column("node").to_numpy()
    earlier = block.column("earlier").to_numpy(zero_copy_only=False)
    order = np.lexsort((node, band))
    band, node, earlier = band[order], node[order], earlier[order]
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
    leaf_ids, leaf_bytes = kernels.split_rank_keys(block.column("x"))
    roots = block.column("y").combine_chunks()
    start = np.ones(len(roots), dtype=bool)
    if len(roots) > 1:
        start[1:] = pc.not_equal(roots.slice(1), roots.slice(0, len(roots) - 1)).to_numpy(zero_copy_only=False)
    group = np.cumsum(start) - 1
    sizes = np.bincount(group) + 1
    root_rows = np.flatnonzero(start)
    root_ids, _ = kernels.split_rank_keys(roots.take(pa.array(root_rows)))
    root_ids = root_ids.to_pylist()
    root_earlier = [r.startswith("!") for r in roots.take(pa.array(root_rows)).to_pylist()]
    leaf_earlier = pc.starts_with(block.column("x"), "!").to_numpy(zero_copy_only=False)
    out: dict[str, list[Any]] = {k: [] for k in ("id", "reason", "detail", "dup_of", "cluster", "size", "bytes")}
    for g, root in enumerate(root_ids):
        if root_earlier[g]:
            continue
        out["id"].append(root), out["reason"].append(None), out["detail"].append(None)
        out["dup_of"].append(None), out["cluster"].append(root), out["size"].append(int(sizes[g]))
        out["bytes"].append(None)
    leaves, nbytes = leaf_ids.to_pylist(), leaf_bytes.to_pylist()
    for i, leaf in enumerate(leaves):
        if leaf_earlier[i]:
            continue
        g = group[i]
        if root_earlier[g]:
            reason, detail = kernels.REASON_SEEN, f"near-duplicate of {root_ids[g]} in an earlier corpus"
        else:
            reason, detail = kernels.REASON_NEAR, f"MinHash cluster of {sizes[g]} at Jaccard >= {threshold}"
        out["id"].append(leaf), out["reason"].append(reason), out["detail"].append(detail[:500])
        out["dup_of"].append(root_ids[g]), out["cluster"].append(root_ids[g]), out["size"].append(None)
        out["bytes"].append(nbytes[i])
    return _decision_table(out["id"], out["reason"], out["detail"], out["dup_of"], out["cluster"], out["size"],
                           out["bytes"])


# --------------------------------------------------------------------------- MinHash: executor


@global_executor("minhash_dedup")
def run_minhash_dedup(op: GlobalOperator, ds: Any, ctx: GlobalContext) -> Any:
    params: kernels.MinHashParams = op.params  # type: ignore[assignment]
    _check_survivor_column(op, ds)
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

    earlier = _load_earlier(params)
    sigs, summary = _checkpoint(ds.map_batches(functools.partial(_signature_rows, params=params),
                                               batch_format="pyarrow", batch_size=ctx.batch_size),
                                work / "signatures", _sig_schema(num_perm))
    docs_compared = summary["rows"]
    phase("signatures")

    # Candidates: a shuffle by band key, star edges per bucket, a shuffle by edge to drop
    # the same pair found in several bands.
    nodes = sigs.union(*earlier) if earlier else sigs
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
                                                  threshold=params.threshold if params.verify else None))
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
    ctx.extra.update({"bands": bands, "rows": rows, "num_perm": num_perm, "threshold": params.threshold,
                      "docs_compared": int(docs_compared), "candidate_pairs": int(candidates),
                      "verified_pairs": int(verified), "cc_rounds": rounds, "phase_seconds": phases})
    if params.save_index and not ctx.analyze:
        _save_index(work / "signatures", params, ctx, int(docs_compared))
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
