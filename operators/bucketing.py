"""Selection by perplexity quantiles and difficulty buckets: parameters and exact kernels.

Both need the whole stage input, so they are global operators; their Ray Data executors
live in `pipeline/global_ops/scoring.py`. What is here is pure numpy, used by the executors
on each group's values and tested directly on known distributions.

- `perplexity_select` (Ziya2, CCNet): per language (optionally per source) keep the
  `keep_fraction` of documents with the lowest perplexity; label them `head` (the best
  `head_fraction`), `middle` (the rest of what is kept) and `tail` (rejected, reason
  `perplexity`).
- `difficulty_bucket` (Ziya-LLaMA's easy-to-hard curriculum, Colossal-LLaMA-2's bins): a
  difficulty per document from a statistic (perplexity by default), K buckets by quantile,
  a `bucket` column (0 = easiest) on every row. In `colossal` mode every source is split
  into K bins of its own and bucket k is the union of bin k of every source, with bin sizes
  rounded so that each source's share of each bucket is within one document of its share
  of the corpus.

Everything is rank based and exact. The documents of a group are ordered by (value, tie
key), the tie key being a 64-bit hash of the document id, so equal values are ordered too
and a fraction or a bucket always gets the planned number of documents: a fraction f of n
documents is k = floor(f*n + 1/2) of them; K equal buckets start at ranks floor(j*n/K).
A boundary is the (value, tie key) pair at such a rank, so assigning a document needs only
the group's few boundaries: the executors compute them per group and then label every row
in a streaming pass, without a join.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from operators.base import GlobalOperator, Params
from operators.registry import register

HEAD, MIDDLE, TAIL = "head", "middle", "tail"


# --------------------------------------------------------------------------- kernels

Boundary = tuple[float, int]  # (value, tie key) of the first document at or above a rank


def tie_keys(ids: Sequence[str | None]) -> np.ndarray:
    """64-bit hashes of document ids: a stable order among equal values."""
    import xxhash

    return np.fromiter((xxhash.xxh64_intdigest((i or "").encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids))


def rank_count(fraction: float, n: int) -> int:
    """How many of n documents a fraction selects: floor(f*n + 1/2), in [0, n]."""
    return max(0, min(n, math.floor(fraction * n + 0.5)))


def equal_split_ranks(n: int, num_buckets: int) -> list[int]:
    """Start ranks of buckets 1..K-1 when n documents are split into K near-equal buckets."""
    return [(j * n) // num_buckets for j in range(1, num_buckets)]


def sorted_order(values: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Indices ordering documents by (value, tie key), ascending."""
    return np.lexsort((np.asarray(ties, dtype=np.uint64), np.asarray(values, dtype=float)))


def boundaries_at(values: np.ndarray, ties: np.ndarray, ranks: Sequence[int]) -> list[Boundary | None]:
    """The (value, tie key) of the document at each rank; None for a rank past the end (a
    boundary no document reaches)."""
    values = np.asarray(values, dtype=float)
    ties = np.asarray(ties, dtype=np.uint64)
    order = sorted_order(values, ties)
    n = len(order)
    out: list[Boundary | None] = []
    for rank in ranks:
        if rank >= n:
            out.append(None)
        else:
            i = order[rank]
            out.append((float(values[i]), int(ties[i])))
    return out


def at_or_above(values: np.ndarray, ties: np.ndarray, boundary: Boundary | None) -> np.ndarray:
    """Which documents sort at or after a boundary."""
    values = np.asarray(values, dtype=float)
    if boundary is None:
        return np.zeros(len(values), dtype=bool)
    value, tie = boundary
    ties = np.asarray(ties, dtype=np.uint64)
    return (values > value) | ((values == value) & (ties >= np.uint64(tie)))


def count_boundaries(values: np.ndarray, ties: np.ndarray, boundaries: Sequence[Boundary | None]) -> np.ndarray:
    """Bucket of each document: how many boundaries it sorts at or after."""
    out = np.zeros(len(values), dtype=np.int64)
    for boundary in boundaries:
        out += at_or_above(values, ties, boundary)
    return out


def select_boundaries(values: np.ndarray, ties: np.ndarray, keep_fraction: float,
                      head_fraction: float) -> dict[str, Boundary | None]:
    """First document past the head and first past what is kept, in one group."""
    n = len(values)
    head, keep = boundaries_at(values, ties, [rank_count(head_fraction, n), rank_count(keep_fraction, n)])
    return {"head": head, "keep": keep}


def select_labels(values: np.ndarray, ties: np.ndarray, head: Boundary | None,
                  keep: Boundary | None) -> np.ndarray:
    """head / middle / tail for each document of a group."""
    labels = np.full(len(values), HEAD, dtype=object)
    labels[at_or_above(values, ties, head)] = MIDDLE
    labels[at_or_above(values, ties, keep)] = TAIL
    return labels


def proportional_bin_sizes(source_counts: Sequence[int], num_buckets: int) -> np.ndarray:
    """Colossal mode: how many documents of each source go to each bucket.

    Bucket sizes are fixed first (N/K rounded, the first N mod K buckets one larger); the
    exact proportional share of source s in bucket k is x[s,k] = n_s * B_k / N, and the
    result rounds every x[s,k] up or down so that each source's row still sums to n_s and
    each bucket's column to B_k. Such a rounding exists because all margins are integers
    (the transportation polytope is integral); it is found as a flow: every entry starts at
    floor(x), and the missing units of each row are routed to columns still short of their
    size through entries with a fractional part. So each source's count in each bucket is
    within one document of proportional, whatever the sources' sizes."""
    counts = np.asarray(source_counts, dtype=np.int64)
    total = int(counts.sum())
    k = num_buckets
    if total == 0:
        return np.zeros((len(counts), k), dtype=np.int64)
    sizes = np.full(k, total // k, dtype=np.int64)
    sizes[: total % k] += 1
    # Exact rationals: x[s,k] = n_s * B_k / N, floor and remainder in integers.
    numerators = np.outer(counts, sizes)
    result = numerators // total
    fractional = (numerators % total) > 0
    row_need = counts - result.sum(axis=1)
    col_need = sizes - result.sum(axis=0)
    # Max flow from rows to columns over fractional entries (capacity 1 each). A greedy pass
    # (rows needing most first, each to the columns with most room, as in Gale-Ryser) places
    # nearly every unit; augmenting paths place the rest.
    assigned = np.zeros_like(fractional)
    col_free = col_need.copy()
    short: list[tuple[int, int]] = []
    for s in np.argsort(-row_need, kind="stable"):
        need = int(row_need[s])
        if need == 0:
            continue
        room = np.where(fractional[s] & (col_free > 0), col_free, 0)
        best = [int(c) for c in np.argsort(-room, kind="stable")[:need] if room[c] > 0]
        assigned[s, best] = True
        col_free[best] -= 1
        if len(best) < need:
            short.append((int(s), need - len(best)))
    for s, missing in short:
        for _ in range(missing):
            if not _augment(s, fractional, assigned, col_free):
                raise AssertionError("no proportional rounding found; this cannot happen for integer margins")
    return result + assigned.astype(np.int64)


def _augment(start: int, eligible: np.ndarray, assigned: np.ndarray, col_free: np.ndarray) -> bool:
    """Find a path start -> column with free capacity, alternating unused and used edges,
    and flip it (one more unit out of `start`, one more into the free column)."""
    cols = eligible.shape[1]
    seen_cols = np.zeros(cols, dtype=bool)
    # Iterative DFS: stack of (row, next column to try); parent links to rebuild the path.
    parent_row = np.full(cols, -1)
    via_col = {start: -1}
    stack = [(start, 0)]
    while stack:
        row, col = stack.pop()
        while col < cols and (seen_cols[col] or not eligible[row, col] or assigned[row, col]):
            col += 1
        if col == cols:
            continue
        stack.append((row, col + 1))
        seen_cols[col] = True
        parent_row[col] = row
        if col_free[col] > 0:
            # Flip the path back to start.
            col_free[col] -= 1
            c = col
            while True:
                r = parent_row[c]
                assigned[r, c] = True
                previous = via_col[r]
                if previous == -1:
                    return True
                assigned[r, previous] = False
                c = previous
        # Continue through rows already holding a unit in this column: moving their unit
        # elsewhere frees this column for the path.
        for other in np.nonzero(assigned[:, col])[0]:
            other = int(other)
            if other not in via_col:
                via_col[other] = col
                stack.append((other, 0))
    return False


def ranks_from_sizes(sizes: Sequence[int]) -> list[int]:
    """Start ranks of bins 1..K-1 given consecutive bin sizes (easy to hard)."""
    return [int(r) for r in np.cumsum(np.asarray(sizes, dtype=np.int64))[:-1]]


def bucket_summary(buckets: np.ndarray, values: np.ndarray, chars: np.ndarray, sources: Sequence[str],
                   num_buckets: int) -> list[dict]:
    """Per bucket of one group: documents, characters, lowest and highest value (finite
    ones), documents per source. Summaries of groups add up with `merge_bucket_summaries`."""
    buckets = np.asarray(buckets)
    values = np.asarray(values, dtype=float)
    chars = np.asarray(chars, dtype=np.int64)
    sources = np.asarray(sources, dtype=object)
    out = []
    for k in range(num_buckets):
        mask = buckets == k
        finite = values[mask & np.isfinite(values)]
        names, counts = np.unique(sources[mask].astype(str), return_counts=True) if mask.any() else ([], [])
        out.append({"docs": int(mask.sum()), "chars": int(chars[mask].sum()),
                    "low": float(finite.min()) if finite.size else None,
                    "high": float(finite.max()) if finite.size else None,
                    "sources": {str(n): int(c) for n, c in zip(names, counts)}})
    return out


def merge_bucket_summaries(parts: Sequence[list[dict]], num_buckets: int) -> list[dict]:
    merged = [{"docs": 0, "chars": 0, "low": None, "high": None, "sources": {}} for _ in range(num_buckets)]
    for part in parts:
        for total, one in zip(merged, part):
            total["docs"] += one["docs"]
            total["chars"] += one["chars"]
            if one["low"] is not None:
                total["low"] = one["low"] if total["low"] is None else min(total["low"], one["low"])
                total["high"] = one["high"] if total["high"] is None else max(total["high"], one["high"])
            for name, n in one["sources"].items():
                total["sources"][name] = total["sources"].get(name, 0) + n
    return merged


def default_bucket_names(num_buckets: int) -> list[str]:
    if num_buckets == 2:
        return ["easy", "hard"]
    if num_buckets == 3:
        return ["easy", "medium", "hard"]
    return [f"level{i}" for i in range(num_buckets)]


# --------------------------------------------------------------------------- operators


GroupKey = Literal["lang", "source"]


class PerplexitySelectParams(Params):
    column: str = "stat.ppl"
    keep_fraction: float = 0.6  # Ziya2 keeps the best 60%
    head_fraction: float = 0.3  # the best 30% are `head`, the rest of what is kept `middle`
    group_by: list[GroupKey] = Field(default_factory=lambda: ["lang"])  # cut-offs per language, optionally also per source
    label_column: str = "stat.ppl_label"
    # Documents without a score (no model for their language): keep them unlabelled, or
    # reject them with reason `no_ppl`.
    missing: Literal["keep", "reject"] = "keep"
    histogram_bins: int = 40  # of log10(value), per group, for the report

    @model_validator(mode="after")
    def _fractions(self) -> PerplexitySelectParams:
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError("keep_fraction must be in (0, 1]")
        if not 0.0 <= self.head_fraction <= self.keep_fraction:
            raise ValueError("head_fraction must be between 0 and keep_fraction")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a column twice")
        return self


@register
class PerplexitySelect(GlobalOperator):
    """Keep the `keep_fraction` of documents with the lowest perplexity per language (and
    source when asked), from exact cut-offs over the whole stage input; label kept ones
    head/middle, reject the tail with reason `perplexity`. Cut-offs, counts and a histogram
    per group go to the stage statistics."""

    name = "perplexity_select"
    Params = PerplexitySelectParams


class DifficultyBucketParams(Params):
    column: str = "stat.ppl"  # the difficulty statistic
    higher_is_harder: bool = True  # false for scores where higher is easier (stat.quality)
    num_buckets: int = 3
    names: list[str] | None = None  # default easy/medium/hard for 3, level0.. otherwise
    # quantile: boundaries from quantiles of the difficulty, over the whole input or within
    # each group of `normalize_by` (a document's bucket is then its rank in its group).
    # colossal: every source split into its own K bins, bucket k = bin k of every source.
    mode: Literal["quantile", "colossal"] = "quantile"
    normalize_by: list[GroupKey] = Field(default_factory=list)
    bucket_column: str = "bucket"
    # Documents without a difficulty value: put them in the hardest or easiest bucket, or
    # reject them (reason `no_difficulty`).
    missing: Literal["hardest", "easiest", "reject"] = "hardest"

    @field_validator("num_buckets")
    @classmethod
    def _k(cls, v: int) -> int:
        if not 2 <= v <= 1000:
            raise ValueError("num_buckets must be between 2 and 1000")
        return v

    @model_validator(mode="after")
    def _names(self) -> DifficultyBucketParams:
        if self.names is not None and len(self.names) != self.num_buckets:
            raise ValueError(f"names has {len(self.names)} entries for {self.num_buckets} buckets")
        if len(set(self.normalize_by)) != len(self.normalize_by):
            raise ValueError("normalize_by names a column twice")
        return self

    def bucket_names(self) -> list[str]:
        return list(self.names) if self.names is not None else default_bucket_names(self.num_buckets)

    def group_keys(self) -> list[str]:
        """Columns whose groups are bucketed separately."""
        if self.mode == "colossal":
            return ["source", *[k for k in self.normalize_by if k != "source"]]
        return list(self.normalize_by)


@register
class DifficultyBucket(GlobalOperator):
    """A `bucket` column (0 = easiest) on every document, from quantiles of a difficulty
    statistic; the curriculum order and per-bucket document and character counts go to
    the stage statistics (and `curriculum.json` in the stage folder) for the trainer."""

    name = "difficulty_bucket"
    Params = DifficultyBucketParams
