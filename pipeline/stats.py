"""Stage statistics: counted per write task, merged by addition, summarised per operator.

Write tasks return plain nested dicts of numbers (`BlockCounts`); `merge` adds them up. The
per-operator view is derived from the ordered operator list: an operator sees every row of the
stage except those rejected by operators before it (in analyze mode, every row).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from operators.base import REJECT_OP, REJECT_REASON, SECONDS_PREFIX, WOULD_REJECT

Counts = dict[str, Any]


def merge(*parts: Mapping[str, Any]) -> Counts:
    """Add nested dicts of numbers key by key."""
    out: Counts = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                out[key] = merge(out.get(key, {}), value)
            else:
                out[key] = out.get(key, 0) + value
    return out


def count_block(table: pa.Table) -> Counts:
    """Counts of one block as it reaches a stage writer (before kept/rejected are split)."""
    counts: Counts = {"rows": table.num_rows, "rejected": {}, "seconds": {}, "would_reject": {}}
    if "_kiln.bytes_in" in table.column_names:
        counts["bytes_in"] = int(pc.sum(table.column("_kiln.bytes_in")).as_py() or 0)
    rejected_mask = None
    if REJECT_OP in table.column_names:
        rejected_mask = pc.is_valid(table.column(REJECT_OP))
        rejected = table.filter(rejected_mask).select([REJECT_OP, REJECT_REASON])
        if rejected.num_rows:
            grouped = rejected.group_by([REJECT_OP, REJECT_REASON]).aggregate([([], "count_all")])
            for op, reason, n in zip(*(grouped.column(i).to_pylist() for i in range(3))):
                counts["rejected"][f"{op}/{reason}"] = n
    kept = table if rejected_mask is None else table.filter(pc.invert(rejected_mask))
    counts["kept"] = kept.num_rows
    counts["bytes_out"] = int(pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0) if kept.num_rows else 0
    for name in table.column_names:
        if name.startswith(SECONDS_PREFIX):
            counts["seconds"][name[len(SECONDS_PREFIX):]] = float(pc.sum(table.column(name)).as_py() or 0.0)
    if WOULD_REJECT in table.column_names:
        for entry in table.column(WOULD_REJECT).drop_null().to_pylist():
            for item in entry.split(";"):
                counts["would_reject"][item] = counts["would_reject"].get(item, 0) + 1
    return counts


def op_rows(labels: Iterable[tuple[str, str, str]], docs_in: int, rejected: Mapping[str, int],
            seconds: Mapping[str, float], analyze: bool, would_reject: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per-operator docs in/out, rejections, seconds and docs/s, in stage order.
    `labels` holds (label, operator name, kind)."""
    rows = []
    remaining = docs_in
    for label, name, kind in labels:
        own = {k.split("/", 1)[1]: v for k, v in rejected.items() if k.split("/", 1)[0] == label}
        would = {k.split("/", 1)[1]: v for k, v in would_reject.items() if k.split("/", 1)[0] == label}
        dropped = sum(own.values())
        secs = float(seconds.get(label, 0.0))
        row = {"label": label, "op": name, "kind": kind, "docs_in": remaining, "docs_out": remaining - dropped,
               "rejected": dropped, "reasons": own, "seconds": round(secs, 4),
               "docs_per_s": round(remaining / secs, 1) if secs > 0 else None}
        if analyze:
            row["would_reject"] = would
        rows.append(row)
        if not analyze:
            remaining -= dropped
    return rows

