"""Unique document ids across a whole run, decided where ids are made: at read time.

Decisions (dedup clusters, selections, buckets) are joined back to rows by id, so one id on
two rows corrupts them: the same record twice in a file, two files of one source sharing id
values, two inputs with the same source and the same relative file name. The rule: the first
copy of an id that is read keeps it; each later copy becomes `<id>#2`, `<id>#3`, ... (the
smallest suffix not yet taken). Nothing is dropped here: identical copies are then the
dedup stages' business, and different documents that shared an id both go on.

Read tasks run in parallel, so the ids already taken live in one place for the whole read:
an `IdClaims` object, in process for `kiln verify`, or a Ray actor that every read task asks
once per batch. It keeps 64-bit hashes of the ids in sorted numpy runs (8 bytes an id, a few
runs merged like an LSM tree), so ten million ids cost about 80 MB and a batch costs a few
binary searches. A hash collision (about 1 in 10^12 pairs) only renames a document, never
loses one. With several read tasks, which copy is "first" follows the order the tasks reach
it, so between two reruns the `#2` may move to the other copy; the set of ids stays the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

Claim = Callable[[list[str]], dict[int, str]]


def _hashes(ids: list[str]) -> np.ndarray:
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False).astype(np.uint64)


class IdClaims:
    """The set of ids taken so far; `claim` takes a batch and returns the renamed ones."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # sorted, disjoint hash arrays, largest first
        self.next_suffix: dict[int, int] = {}  # for ids seen more than once

    def _taken(self, hashes: np.ndarray) -> np.ndarray:
        # Sorted needles make searchsorted walk each run once, cache-friendly.
        order = np.argsort(hashes)
        needles = hashes[order]
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            where = np.searchsorted(run, needles).clip(max=len(run) - 1)
            found |= run[where] == needles
        taken = np.empty_like(found)
        taken[order] = found
        return taken

    def _add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        run = np.unique(hashes)
        # Merge while the newest run is at least as large as the one before: O(log n) runs.
        # Runs are disjoint (only ids not yet taken are added) and sorted, so a stable sort
        # (timsort, which finds the two runs) merges them in linear time.
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")
        self.runs.append(run)

    def claim(self, ids: list[str]) -> dict[int, str]:
        """Take every id of `ids`; return {position: new id} for those already taken (or
        repeated within the batch)."""
        if not ids:
            return {}
        hashes = _hashes(ids)
        taken = self._taken(hashes)
        # Repeats inside the batch: every occurrence after the first counts as taken.
        _, first = np.unique(hashes, return_index=True)
        repeated = np.ones(len(ids), dtype=bool)
        repeated[first] = False
        taken |= repeated
        self._add(hashes[~taken])
        renamed: dict[int, str] = {}
        for position in np.flatnonzero(taken).tolist():
            key = int(hashes[position])
            suffix = self.next_suffix.get(key, 2)
            while True:
                candidate = f"{ids[position]}#{suffix}"
                candidate_hash = _hashes([candidate])
                suffix += 1
                if not self._taken(candidate_hash)[0]:
                    break
            self.next_suffix[key] = suffix
            self._add(candidate_hash)
            renamed[position] = candidate
        return renamed

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)


def make_unique(table: pa.Table, claim: Claim) -> pa.Table:
    """The batch with every id claimed, repeated ones renamed by the rule above."""
    ids = table.column("id").to_pylist()
    renamed = claim(ids)
    if not renamed:
        return table
    for position, new_id in renamed.items():
        ids[position] = new_id
    index = table.column_names.index("id")
    return table.set_column(index, table.schema.field(index), pa.array(ids, pa.string()))
