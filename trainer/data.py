"""The trainer's data: kiln shards in a fixed, seeded order, cut into per-rank micro-batches.

The whole run's order is a pure function of (manifest, data config, seed, global batch), so
the data position in a checkpoint is just the step: a resumed run recomputes the order and
continues at that step, and every rank computes the same order and takes its own slice.

Order inside a phase:
- `curriculum`: buckets in the manifest's curriculum order (easy to hard), each bucket
  shuffled by seed; when the phase needs more sequences than it has, another epoch follows
  with a new shuffle.
- `shuffle`: every selected sequence shuffled together, epoch after epoch.
- `mix` (per phase): pools (buckets or sources) interleaved by ratio, each pool cycled with
  a fresh shuffle per epoch, so a small high-quality pool can be up-sampled.

Phases run in order, each for its own token budget (Ziya2's three stages). Rows are read
memory-mapped from the Arrow stream files and copied only when a batch is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import ConfigError, InputError
from trainer.config import DataOptions, Phase
from trainer.shards import Manifest, ShardFormatError, check_tokenizer, read_shard, validate_shards


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, seq_len) int64
    position_ids: torch.Tensor  # (b, seq_len) int64, restarting at 0 per segment
    labels: torch.Tensor  # (b, seq_len) int64, -100 where loss_mask is 0


@dataclass
class PhasePlan:
    name: str
    train: str  # "all" | "embeddings"
    first_step: int
    steps: int


class ShardData:
    """Every row of a shard folder, addressable by a global row number."""

    def __init__(self, folder: str | Path, check_hashes: bool = True) -> None:
        self.folder = Path(folder)
        if not (self.folder / "manifest.json").exists():
            raise InputError(f"no shard manifest at {self.folder / 'manifest.json'} "
                             "(produce shards with the pipeline's pack stage, e.g. `make demo`)")
        try:
            self.manifest: Manifest = validate_shards(self.folder, check_hashes=check_hashes)
            check_tokenizer(self.folder, self.manifest)
        except ShardFormatError as e:
            raise InputError(str(e)) from None
        if not self.manifest.shards:
            raise InputError(f"{self.folder}: the manifest lists no shards")
        self.seq_len = self.manifest.seq_len
        self._chunks: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (first row, ids, pos, mask)
        buckets, sources = [], []
        row = 0
        for info in self.manifest.shards:
            table = read_shard(self.folder / info.path)
            for i in range(table.column("input_ids").num_chunks):
                ids = table.column("input_ids").chunk(i)
                n = len(ids)
                if n == 0:
                    continue
                self._chunks.append((row, *(_rows2d(table, col, i, self.seq_len)
                                            for col in ("input_ids", "position_ids", "loss_mask"))))
                row += n
            buckets.append(np.full(table.num_rows, info.bucket, dtype=np.int32))
            sources.append(np.array([info.source] * table.num_rows, dtype=object))
        self.rows = row
        # Token ids beyond the tokenizer would index past the embedding (an IndexError deep
        # in the model); say so here, naming the numbers.
        top = max((int(chunk[1].max()) for chunk in self._chunks if chunk[1].size), default=-1)
        if top >= self.manifest.tokenizer.vocab_size:
            raise InputError(f"{self.folder}: the shards hold token id {top:,}, but the manifest's tokenizer has "
                             f"only {self.manifest.tokenizer.vocab_size:,} tokens: shards and manifest.json do not "
                             "belong together; pack the shards again")
        self.bucket = np.concatenate(buckets)
        self.source = np.concatenate(sources)
        self._starts = np.array([c[0] for c in self._chunks], dtype=np.int64)

    def batch(self, rows: np.ndarray) -> Batch:
        ids = np.empty((len(rows), self.seq_len), dtype=np.int64)
        pos = np.empty_like(ids)
        mask = np.empty_like(ids)
        for j, r in enumerate(rows):
            c = int(np.searchsorted(self._starts, r, side="right")) - 1
            start, cid, cpos, cmask = self._chunks[c]
            ids[j], pos[j], mask[j] = cid[r - start], cpos[r - start], cmask[r - start]
        labels = np.where(mask > 0, ids, -100)
        return Batch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(labels))


def _rows2d(table, column: str, chunk: int, seq_len: int) -> np.ndarray:
    # flatten() honours slice offsets; int values without nulls stay zero-copy (memory-mapped).
    values = table.column(column).chunk(chunk).flatten().to_numpy()
    return values.reshape(-1, seq_len)


def _shuffled(rows: np.ndarray, seed: int, *salt: int) -> np.ndarray:
    return rows[np.random.default_rng([seed, *salt]).permutation(len(rows))]


def _cycle(pool: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    """n rows from a pool, epoch after epoch, reshuffled each epoch."""
    out, epoch = [], 0
    while sum(len(o) for o in out) < n:
        out.append(_shuffled(pool, seed, salt, epoch))
        epoch += 1
    return np.concatenate(out)[:n] if out else pool[:0]


def phase_order(data: ShardData, phase: Phase, order: str, n: int, seed: int, salt: int) -> np.ndarray:
    """The first n rows a phase trains on."""
    rows = np.arange(data.rows)
    keep = np.ones(data.rows, dtype=bool)
    if phase.buckets is not None:
        keep &= np.isin(data.bucket, phase.buckets)
    if phase.sources is not None:
        keep &= np.isin(data.source, phase.sources)
    rows = rows[keep]
    if not len(rows):
        raise ConfigError(f"phase {phase.name!r}: no sequences match buckets={phase.buckets} sources={phase.sources}")
    if phase.mix:
        pools, ratios = [], []
        for key, ratio in phase.mix.items():
            sel = rows[data.source[rows] == key]
            if not len(sel) and key.lstrip("-").isdigit():
                sel = rows[data.bucket[rows] == int(key)]
            if not len(sel):
                raise ConfigError(f"phase {phase.name!r}: mix key {key!r} is neither a source nor a bucket id of the shards "
                                  f"(sources: {sorted(set(data.source))}, buckets: {sorted(set(data.bucket.tolist()))})")
            pools.append(sel)
            ratios.append(ratio)
        weights = np.array(ratios) / sum(ratios)
        # Deterministic smooth interleave: pool k's j-th sequence is due at time (j + 0.5) / w_k;
        # merging all pools by due time gives every prefix its shares (to within one sequence).
        due = [(np.arange(math.ceil(n * w) + 1) + 0.5) / w for w in weights]
        owner = np.concatenate([np.full(len(d), k) for k, d in enumerate(due)])
        choice = owner[np.argsort(np.concatenate(due), kind="stable")][:n]
        counts = np.bincount(choice, minlength=len(pools))
        streams = [_cycle(pool, int(counts[k]), seed, salt * 1000 + k) for k, pool in enumerate(pools)]
        out = np.empty(n, dtype=np.int64)
        for k, stream in enumerate(streams):
            out[choice == k] = stream
        return out
    if order == "shuffle":
        return _cycle(rows, n, seed, salt)
    # curriculum: bucket by bucket in the manifest's order (unknown buckets last), then again.
    rank = {b: i for i, b in enumerate(data.manifest.curriculum)}
    buckets = sorted(set(data.bucket[rows].tolist()), key=lambda b: (rank.get(b, len(rank)), b))
    out, epoch = [], 0
    while sum(len(o) for o in out) < n:
        out.extend(_shuffled(rows[data.bucket[rows] == b], seed, salt, epoch, b) for b in buckets)
        epoch += 1
    return np.concatenate(out)[:n]


class DataPlan:
    """The run's sequence order, its phases, and each rank's micro-batches for a step."""

    def __init__(self, data: ShardData, opts: DataOptions, seed: int, micro_batch: int, accum: int, world: int,
                 max_steps: int | None, max_tokens: int | None) -> None:
        self.data = data
        self.micro_batch, self.accum, self.world = micro_batch, accum, world
        self.global_batch = micro_batch * accum * world
        tokens_per_step = self.global_batch * data.seq_len
        phases = opts.phases or [Phase(name="main", max_tokens=max_tokens or (max_steps or 1) * tokens_per_step)]
        cap = math.ceil(max_tokens / tokens_per_step) if max_tokens else max_steps
        self.phases: list[PhasePlan] = []
        orders, step = [], 0
        for i, phase in enumerate(phases):
            steps = math.ceil(phase.max_tokens / tokens_per_step)
            if not opts.phases and max_steps and not max_tokens:
                steps = max_steps
            if cap is not None:
                steps = min(steps, cap - step)
            if steps <= 0:
                break
            orders.append(phase_order(data, phase, opts.order, steps * self.global_batch, seed, i))
            self.phases.append(PhasePlan(phase.name, phase.train, step, steps))
            step += steps
        self.steps = step
        self.order = np.concatenate(orders)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.data.seq_len

    def phase_at(self, step: int) -> PhasePlan:
        for p in self.phases:
            if p.first_step <= step < p.first_step + p.steps:
                return p
        return self.phases[-1]

    def micro_batches(self, step: int, rank: int) -> list[Batch]:
        """This rank's `accum` micro-batches of a step: global batch rows, interleaved by rank."""
        base = step * self.global_batch
        out = []
        for m in range(self.accum):
            start = base + (m * self.world + rank) * self.micro_batch
            out.append(self.data.batch(self.order[start:start + self.micro_batch]))
        return out
