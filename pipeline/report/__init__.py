"""`kiln report RUN`: what a run did to the data, as one self-contained HTML page and JSON.

The report reads the run folder only: `RUN/stats.json` (the stages' counts, per-operator
rejections and the statistics global operators leave under `extra`), the stages' parquet
folders (streamed a bounded batch of a few columns at a time, see `pipeline.report.data`, so
its memory does not grow with the corpus; a histogram of more values than `--hist-sample`
takes its bin edges and quantiles from a seeded uniform sample, and the page says so), and
`RUN/shards/manifest.json` when the run tokenized. It writes `RUN/report/report.json` (every
number on the page) and `RUN/report/index.html` (plots embedded as SVG data URIs, no script,
no network), and prints a terminal summary.

Sections appear when their data is in the run, with a one-line note otherwise, so a run with
any mix of operators gets a report. The conventions other operators follow in `extra` are
drawn specially: dedup (`cluster_size_histogram`, `clusters`, `docs_removed`,
`bytes_removed`), perplexity (`cutoffs` per language on `stat.ppl`), buckets (`buckets`,
`curriculum`); anything else an operator reports is listed as is.

The output depends only on the run folder and the options (no clock, seeded samples,
deterministic SVG), so reporting twice writes the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import storage
from common.errors import KilnError
from operators.base import REJECT_DETAIL, REJECT_OP, REJECT_REASON, WOULD_REJECT
from pipeline.report.data import (
    HIST_SAMPLE,
    HistogramBuilder,
    file_batches,
    files_of,
    flagged,
    iter_batches,
    label_groups,
    numeric_values,
    row_groups,
    schema_of,
    stat_columns,
    take_rows,
    tally,
)
from pipeline.report.eval import EvalOptions, evaluate, excerpt

REPORT_VERSION = 1
PPL_COLUMN = "stat.ppl"
REJECTED_EXAMPLES = 2
MAX_REASONS_WITH_EXAMPLES = 40
MAX_SHARD_ROWS = 50
# Memory the histograms' samples of the columns read together may hold.
SAMPLES_BYTES = 32 << 20


@dataclass
class ReportOptions:
    out_dir: str | None = None  # default RUN/report
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    rejected_examples: int = REJECTED_EXAMPLES
    example_chars: int = 400
    # Values per side of a statistic kept for its bins and quantiles (see HistogramBuilder).
    hist_sample: int = HIST_SAMPLE


@dataclass
class ReportResult:
    html: Path
    json: Path
    model: dict[str, Any]


# --------------------------------------------------------------------------- run folder


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KilnError(f"{run_dir} is not a folder (give a run folder, e.g. runs/demo)")
    path = run_dir / storage.STATS
    if not path.exists():
        hint = " (an analyze run lives in RUN/analyze)" if (run_dir / "analyze" / storage.STATS).exists() else ""
        raise KilnError(f"{path} is missing: not a kiln run folder, or no stage has finished yet{hint}")
    try:
        run = storage.read_json(path)
    except json.JSONDecodeError as e:
        raise KilnError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(run, dict) or not isinstance(run.get("stages"), list):
        raise KilnError(f"{path}: no `stages` list: not a kiln run statistics file")
    return run


def _pct(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _sorted_mix(entries: dict[str, list[int]]) -> list[dict[str, Any]]:
    total_docs = sum(d for d, _ in entries.values()) or 1
    total_chars = sum(c for _, c in entries.values()) or 1
    rows = [{"value": k, "docs": d, "chars": c, "docs_share": d / total_docs, "chars_share": c / total_chars}
            for k, (d, c) in entries.items()]
    return sorted(rows, key=lambda r: (-r["docs"], r["value"]))


def _merge_tallies(*tallies: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"docs": 0, "chars": 0, "lang": {}, "source": {}, "reasons": {}, "would_reject": {}}
    for t in tallies:
        out["docs"] += t["docs"]
        out["chars"] += t["chars"]
        for key in ("lang", "source", "reasons", "would_reject"):
            for k, (d, c) in t[key].items():
                entry = out[key].setdefault(k, [0, 0])
                entry[0] += d
                entry[1] += c
    return out


# --------------------------------------------------------------------------- sections


def _funnel(run: dict[str, Any], stage_tallies: list[dict[str, Any]], analyze: bool) -> dict[str, Any]:
    stages = run["stages"]
    run_docs_in = stages[0]["docs_in"] if stages else 0
    steps, stage_rows = [], []
    chars_in: int | None = None
    for st, tallies in zip(stages, stage_tallies):
        kept_t, rejected_t = tallies["kept"], tallies["rejected"]
        if st is stages[0] and kept_t is not None:
            chars_in = kept_t["chars"] + rejected_t["chars"]
        kept_chars = kept_t["chars"] if kept_t else None
        rejected_chars = rejected_t["chars"] if rejected_t else None
        edited = None
        if st is not stages[0] and chars_in is not None and kept_chars is not None:
            edited = chars_in - kept_chars - (rejected_chars or 0)
        stage_rows.append({
            "folder": st.get("folder"), "name": st.get("name"), "docs_in": st.get("docs_in", 0),
            "docs_out": st.get("docs_out", 0), "rejected": st.get("rejected_total", 0),
            "kept_share": _pct(st.get("docs_out", 0), st.get("docs_in", 0)),
            "chars_in": chars_in, "chars_kept": kept_chars, "chars_rejected": rejected_chars,
            "chars_edited_away": edited, "bytes_in": st.get("bytes_in"), "bytes_out": st.get("bytes_out"),
            "seconds": st.get("seconds"), "docs_per_s": st.get("docs_per_s"),
            "would_reject": st.get("would_reject", {}),
        })
        reason_chars = (rejected_t or {}).get("reasons", {})
        would_chars = (kept_t or {}).get("would_reject", {})
        for op in st.get("ops", []):
            label = op.get("label", op.get("op", "?"))
            counts = op.get("would_reject", {}) if analyze else op.get("reasons", {})
            chars_table = would_chars if analyze else reason_chars
            reasons = []
            for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                chars = chars_table.get(f"{label}/{reason}", [None, None])[1]
                reasons.append({"reason": reason, "docs": n, "chars": chars,
                                "share_of_op_input": _pct(n, op.get("docs_in", 0)),
                                "share_of_run_input": _pct(n, run_docs_in)})
            dropped = sum(counts.values()) if analyze else op.get("rejected", 0)
            chars_dropped = sum(r["chars"] or 0 for r in reasons) if reasons else 0
            steps.append({
                "stage": st.get("folder"), "label": label, "op": op.get("op"), "kind": op.get("kind"),
                "docs_in": op.get("docs_in", 0), "docs_out": op.get("docs_out", 0), "dropped": dropped,
                "chars_dropped": chars_dropped, "share_of_op_input": _pct(dropped, op.get("docs_in", 0)),
                "share_of_run_input": _pct(dropped, run_docs_in), "seconds": op.get("seconds"),
                "docs_per_s": op.get("docs_per_s"), "reasons": reasons,
            })
        chars_in = kept_chars
    return {"analyze": analyze, "docs_in": run_docs_in, "docs_out": stages[-1]["docs_out"] if stages else 0,
            "stages": stage_rows, "steps": steps}


def _folder_sides(stage_dir: Path, analyze: bool) -> list[tuple[Path, str | None]]:
    """Where a stage's kept and rejected documents are: (folder, side), with side None
    when the folder holds both, told apart by `would_reject` (an analyze run)."""
    if analyze:
        return [(stage_dir / storage.DATA, None)]
    return [(stage_dir / storage.DATA, "kept"), (stage_dir / storage.REJECTED, "rejected")]


def _stream_sides(stage_dir: Path, columns: list[str], analyze: bool) -> Iterator[tuple[str, pa.Table]]:
    """A stage's rows as (side, batch of `columns`), a bounded batch at a time."""
    for folder, side in _folder_sides(stage_dir, analyze):
        for batch in iter_batches(folder, [*columns, WOULD_REJECT] if side is None else columns):
            if side is not None:
                yield side, batch
                continue
            would = pa.array(flagged(batch.column(WOULD_REJECT)))
            yield "kept", batch.filter(pc.invert(would))
            yield "rejected", batch.filter(would)


def _stage_histograms(stage_dir: Path, columns: list[str], analyze: bool, sample: int,
                      seed: int) -> list[dict[str, Any]]:
    """One histogram per column, the values streamed a few columns at a time (twice where a
    side holds more than `sample` values: once for the samples, once to count the bins).
    As many columns are read together as keep their samples within `SAMPLES_BYTES`."""
    out = []
    together = max(1, SAMPLES_BYTES // (HistogramBuilder.bytes_per_value * max(1, sample)))
    for start in range(0, len(columns), together):
        group = columns[start:start + together]
        builders = {c: HistogramBuilder(sample, seed, f"{stage_dir.name}/{c}") for c in group}
        for side, batch in _stream_sides(stage_dir, group, analyze):
            for c in group:
                builders[c].add(side, numeric_values(batch.column(c)))
        counting = [c for c in group if builders[c].needs_counting]
        for c in counting:
            builders[c].edges()
        if counting:
            for side, batch in _stream_sides(stage_dir, counting, analyze):
                for c in counting:
                    builders[c].count_values(side, numeric_values(batch.column(c)))
        out.extend({"column": c, "stage": stage_dir.name, **builders[c].result()} for c in group)
    return out


def _rejected_examples(stage_dir: Path, per_reason: int, max_chars: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """A few documents per rejection reason, chosen at random (seeded) from the rejected
    folder; only their rows' text is read.

    Taking a row's text decodes its whole row group's text (a batch at a time), so examples
    are drawn from row groups already chosen for another reason where the reason occurs there: a stage with forty reasons then
    reads a few row groups of text, not forty. The choice needs only how many rows of each
    reason each row group holds (counted a batch at a time); the rows themselves are then
    found by reading the reasons of the chosen row groups again."""
    folder = stage_dir / storage.REJECTED
    files = files_of(folder)
    if not files or per_reason <= 0:
        return {}
    groups = row_groups(files)
    counts: dict[str, dict[int, int]] = {}
    for index, (f, g, _, _) in enumerate(groups):
        for label, n in _label_counts(files[f], g).items():
            counts.setdefault(label, {})[index] = n
    frequent = sorted(((label, sum(by_group.values())) for label, by_group in counts.items()),
                      key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS_WITH_EXAMPLES]
    rng = np.random.default_rng(seed)
    opened: set[int] = set()
    chosen: dict[str, list[tuple[int, int]]] = {}  # label -> (row group, n-th row of the label there)
    for label, total in frequent:
        by_group = counts[label]
        need = min(per_reason, total)
        pool = {g: n for g, n in by_group.items() if g in opened}
        if sum(pool.values()) < need:
            first = _nth_row(by_group, int(rng.integers(total)))[0]
            pool = {first: by_group[first]} if by_group[first] >= per_reason else by_group
        picked = rng.choice(sum(pool.values()), size=need, replace=False)
        chosen[label] = sorted(_nth_row(pool, int(i)) for i in picked)
        opened.update(g for g, _ in chosen[label])
    positions = _positions_of(files, groups, chosen)
    table = take_rows(files, sorted(p for ps in positions.values() for p in ps),
                      ["id", "text", "source", "lang", REJECT_DETAIL])
    rows = dict(zip(sorted(p for ps in positions.values() for p in ps), table.to_pylist()))
    return {label: [{"id": rows[p].get("id"), "source": rows[p].get("source"), "lang": rows[p].get("lang"),
                     "detail": rows[p].get(REJECT_DETAIL), "text": excerpt(rows[p].get("text"), max_chars)}
                    for p in sorted(positions[label])] for label, _ in frequent}


def _reason_labels(batch: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(pc.fill_null(batch.column(REJECT_OP).cast(pa.string()), "?"),
                                       pc.fill_null(batch.column(REJECT_REASON).cast(pa.string()), "unspecified"),
                                       "/").combine_chunks()


def _label_counts(path: str, group: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for batch in file_batches(path, [REJECT_OP, REJECT_REASON], [group]):
        counts = pc.value_counts(_reason_labels(batch))
        for label, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            out[label] = out.get(label, 0) + n
    return out


def _nth_row(by_group: dict[int, int], i: int) -> tuple[int, int]:
    """The i-th row of a label counted across row groups in order, as (row group, n-th
    row of the label in that group)."""
    for group in sorted(by_group):
        if i < by_group[group]:
            return group, i
        i -= by_group[group]
    raise IndexError(i)


def _positions_of(files: list[str], groups: list[tuple[int, int, int, int]],
                  chosen: dict[str, list[tuple[int, int]]]) -> dict[str, list[int]]:
    """Row positions (across files) of each label's chosen (row group, n-th row) pairs,
    reading the reasons of those row groups only."""
    wanted: dict[int, dict[str, list[int]]] = {}
    for label, picks in chosen.items():
        for group, nth in picks:
            wanted.setdefault(group, {}).setdefault(label, []).append(nth)
    out: dict[str, list[int]] = {label: [] for label in chosen}
    for group, by_label in sorted(wanted.items()):
        f, g, start, _ = groups[group]
        seen = dict.fromkeys(by_label, 0)
        offset = start
        for batch in file_batches(files[f], [REJECT_OP, REJECT_REASON], [g]):
            labels = _reason_labels(batch)
            for label, nths in by_label.items():
                rows = np.flatnonzero(pc.equal(labels, label).to_numpy(zero_copy_only=False))
                for nth in nths:
                    if seen[label] <= nth < seen[label] + rows.size:
                        out[label].append(offset + int(rows[nth - seen[label]]))
                seen[label] += rows.size
            offset += batch.num_rows
    return out


def _is_dedup(extra: dict[str, Any]) -> bool:
    return "cluster_size_histogram" in extra or ("clusters" in extra and "docs_removed" in extra)


def _dedup_section(stage: dict[str, Any], label: str, extra: dict[str, Any]) -> dict[str, Any]:
    raw = extra.get("cluster_size_histogram") or {}
    sizes = []
    for size, n in raw.items():
        try:
            sizes.append((int(str(size).rstrip("+")), int(n)))  # "100+": the open last class
        except (TypeError, ValueError):
            continue
    sizes.sort()
    return {"stage": stage.get("folder"), "op": label, "clusters": extra.get("clusters"),
            "docs_removed": extra.get("docs_removed"), "bytes_removed": extra.get("bytes_removed"),
            "docs_in": stage.get("docs_in"), "cluster_sizes": [{"size": s, "clusters": n} for s, n in sizes],
            "largest_cluster": sizes[-1][0] if sizes else None}


def _ppl_section(run_dir: Path, stages: list[dict[str, Any]], first_seen: dict[str, str], sample: int,
                 seed: int) -> dict[str, Any] | None:
    """Perplexity per language with the cut lines, from the stage whose operator reported
    `cutoffs` (else the stage where the perplexity column first appears, without lines),
    streamed like the statistics (`HistogramBuilder`)."""
    found: tuple[dict[str, Any], str, dict[str, Any]] | None = None
    for st in stages:
        for label, extra in (st.get("extra") or {}).items():
            if isinstance(extra, dict) and isinstance(extra.get("cutoffs"), dict):
                found = (st, label, extra)
                break
        if found:
            break
    if found:
        st, label, extra = found
        column = next((v for k in ("column", "stat", "stat_column") if isinstance(v := extra.get(k), str)
                       and v.startswith("stat.")), PPL_COLUMN)
        folder, cutoffs = st.get("folder"), extra["cutoffs"]
    elif PPL_COLUMN in first_seen:
        label, column, folder, cutoffs = None, PPL_COLUMN, first_seen[PPL_COLUMN], {}
    else:
        return None
    stage_dir = run_dir / folder
    analyze = any(s.get("analyze") for s in stages)
    builders: dict[str, HistogramBuilder] = {}

    def by_lang() -> Iterator[tuple[str, str, np.ndarray]]:
        for side, batch in _stream_sides(stage_dir, [column, "lang"], analyze):
            values = numeric_values(batch.column(column))
            for lang, mask in label_groups(batch.column("lang")):
                yield side, lang, values[mask]

    for side, lang, values in by_lang():
        if lang not in builders and np.isfinite(values).any():
            builders[lang] = HistogramBuilder(sample, seed, f"{folder}/{column}/{lang}")
        if lang in builders:
            builders[lang].add(side, values)
    if any(b.needs_counting for b in builders.values()):
        for b in builders.values():
            if b.needs_counting:
                b.edges()
        for side, lang, values in by_lang():
            if lang in builders and builders[lang].needs_counting:
                builders[lang].count_values(side, values)
    per_lang = []
    for lang in sorted(builders):
        hist = builders[lang].result()
        lines = {k: float(v) for k, v in (cutoffs.get(lang) or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        per_lang.append({"lang": lang, "cutoffs": lines, **hist})
    return {"stage": folder, "op": label, "column": column, "cutoffs": cutoffs, "per_lang": per_lang}


def _bucket_section(stage: dict[str, Any], label: str, extra: dict[str, Any],
                    manifest: dict[str, Any] | None) -> dict[str, Any]:
    buckets = [b for b in extra.get("buckets", []) if isinstance(b, dict)]
    tokens = (manifest or {}).get("tokens_by_bucket", {})
    rows = []
    for b in buckets:
        row = {k: b.get(k) for k in ("bucket", "name", "docs", "chars", "low", "high")}
        row["tokens"] = tokens.get(str(b.get("bucket")))
        rows.append(row)
    return {"stage": stage.get("folder"), "op": label, "buckets": rows, "curriculum": extra.get("curriculum")}


def _shards_section(run_dir: Path) -> dict[str, Any] | None:
    from trainer.shards import Manifest, ShardFormatError

    folder = run_dir / "shards"
    if not (folder / "manifest.json").exists():
        return None
    try:
        manifest = Manifest.load(folder)
    except ShardFormatError as e:
        return {"error": str(e)}
    shards = manifest.shards
    sequences = np.array([s.sequences for s in shards], dtype=float)
    missing = [s.path for s in shards if not (folder / s.path).exists()]
    names = manifest.bucket_names or {}
    return {
        "folder": os.path.relpath(folder.resolve(), run_dir.resolve()) if folder.exists() else "shards",
        "seq_len": manifest.seq_len, "pack_mode": manifest.pack_mode, "documents": manifest.documents,
        "shards": len(shards), "sequences": int(sequences.sum()), "total_tokens": manifest.total_tokens,
        "target_tokens": sum(s.target_tokens for s in shards), "padding_tokens": manifest.padding_tokens,
        "truncated_tokens": manifest.truncated_tokens,
        "tokenizer": {"path": manifest.tokenizer.path, "vocab_size": manifest.tokenizer.vocab_size,
                      "sha256": manifest.tokenizer.sha256},
        "curriculum": manifest.curriculum,
        "tokens_by_bucket": [{"bucket": k, "name": names.get(k, ""), "tokens": v}
                             for k, v in sorted(manifest.tokens_by_bucket.items(), key=lambda kv: _int_or(kv[0]))],
        "tokens_by_source": dict(sorted(manifest.tokens_by_source.items(), key=lambda kv: -kv[1])),
        "tokens_by_lang": dict(sorted(manifest.tokens_by_lang.items(), key=lambda kv: -kv[1])),
        "sequences_per_shard": ({"min": int(sequences.min()), "median": float(np.median(sequences)),
                                 "max": int(sequences.max())} if len(shards) else None),
        "shard_rows": [{"path": s.path, "bucket": s.bucket, "source": s.source, "sequences": s.sequences,
                        "tokens": s.tokens, "padding_tokens": s.padding_tokens} for s in shards[:MAX_SHARD_ROWS]],
        "missing_files": missing,
        "pipeline_config_sha256": manifest.pipeline_config_sha256,
    }


def _ablation_section(run_dir: Path) -> dict[str, Any] | None:
    """`kiln ablate`'s comparison when this run is an ablation's clean arm
    (RUN/ablation/results.json): one row per arm, the loss curves, the split and leak check."""
    from pipeline.ablate import ABLATION_DIR, RESULTS, comparison_rows

    path = run_dir / ABLATION_DIR / RESULTS
    if not path.exists():
        return None
    try:
        results = storage.read_json(path)
        rows = comparison_rows(results)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        return {"error": f"{path}: unreadable ablation results: {e}"}
    curves = {arm: [{"tokens": p.get("tokens"), "loss": p.get("loss")} for p in a.get("train", {}).get("curve", [])
                    if p.get("tokens") is not None and p.get("loss") is not None]
              for arm, a in results.get("arms", {}).items()}
    return {"results": str(path), "config": results.get("config"), "pipeline": results.get("pipeline"),
            "budget_tokens": results.get("budget_tokens"), "tokenizer": results.get("tokenizer"),
            "model": results.get("model"), "split": results.get("split"), "leak_check": results.get("leak_check"),
            "heldout_clean_docs": results.get("heldout_clean_docs"), "heldout_raw_docs": results.get("heldout_raw_docs"),
            "seconds": results.get("seconds"), "rows": rows, "curves": curves,
            "curriculum_coverage": results.get("arms", {}).get("curriculum", {}).get("curriculum_coverage")}


def _int_or(value: str) -> tuple[int, str]:
    try:
        return int(value), ""
    except ValueError:
        return 1 << 30, value


def _generic_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """An operator's statistics as flat `key: value` rows for scalars; larger values kept as
    JSON, cut to a readable length."""
    scalars, nested = {}, {}
    for key, value in extra.items():
        if value is None or isinstance(value, (int, float, str, bool)):
            scalars[key] = value
        elif isinstance(value, dict) and all(v is None or isinstance(v, (int, float, str, bool)) for v in value.values()) \
                and len(value) <= 12:
            for k, v in value.items():
                scalars[f"{key}.{k}"] = v
        else:
            text = json.dumps(value, ensure_ascii=False, default=str)
            nested[key] = text if len(text) <= 4000 else text[:4000] + " …"
    return {"scalars": scalars, "nested": nested}


# --------------------------------------------------------------------------- the model


def build_report(run_dir: str | os.PathLike, options: ReportOptions | None = None) -> dict[str, Any]:
    """Every number the report shows, as one JSON-able dict."""
    options = options or ReportOptions()
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    stages = [s for s in run["stages"] if isinstance(s, dict)]
    analyze = bool(run.get("analyze")) or any(s.get("analyze") for s in stages)
    notes: dict[str, str] = {}
    seed = options.evaluation.seed

    stage_tallies, stage_sections, statistics = [], [], []
    first_seen: dict[str, str] = {}
    for st in stages:
        stage_dir = run_dir / str(st.get("folder", ""))
        section: dict[str, Any] = {"folder": st.get("folder"), "name": st.get("name"), "analyze": st.get("analyze"),
                                   "seconds": st.get("seconds"), "docs_in": st.get("docs_in"),
                                   "docs_out": st.get("docs_out"), "rejected_total": st.get("rejected_total"),
                                   "rejected": st.get("rejected", {}), "would_reject": st.get("would_reject", {}),
                                   "ops": st.get("ops", []), "histograms": [], "extra": {}}
        if not (stage_dir / storage.DATA).is_dir():
            section["missing"] = f"{stage_dir} has no data/ folder (moved or deleted?): counts come from stats.json only"
            stage_tallies.append({"kept": None, "rejected": None})
            stage_sections.append(section)
            continue
        stage_tallies.append({"kept": tally(stage_dir / storage.DATA), "rejected": tally(stage_dir / storage.REJECTED)})
        schema = schema_of(files_of(stage_dir / storage.DATA) + files_of(stage_dir / storage.REJECTED))
        numeric, other = stat_columns(schema)
        # A column without a value in this stage (`stat.decode_replacements` outside
        # `on_decode_error: replace`) has nothing to plot yet: it counts as new where it has one.
        histograms = [h for h in _stage_histograms(stage_dir, [c for c in numeric if c not in first_seen], analyze,
                                                   options.hist_sample, seed)
                      if h["count_kept"] + h["count_rejected"] > 0]
        new = [h["column"] for h in histograms]
        for c in new:
            first_seen[c] = st.get("folder")
        section["stat_columns_new"] = new
        section["stat_columns_not_numeric"] = other
        section["histograms"] = histograms
        statistics.extend(section["histograms"])
        section["rejected_examples"] = _rejected_examples(stage_dir, options.rejected_examples,
                                                          options.example_chars, seed)
        stage_sections.append(section)

    manifest_json = None
    shards = _shards_section(run_dir)
    ablation = _ablation_section(run_dir)
    if shards and "error" not in shards:
        manifest_json = storage.read_json(run_dir / "shards" / "manifest.json")
    dedup, buckets = [], []
    for st, section in zip(stages, stage_sections):
        for label, extra in (st.get("extra") or {}).items():
            if not isinstance(extra, dict):
                continue
            section["extra"][label] = _generic_extra(extra)
            if _is_dedup(extra):
                dedup.append(_dedup_section(st, label, extra))
            if isinstance(extra.get("buckets"), list):
                buckets.append(_bucket_section(st, label, extra, manifest_json))
    perplexity = _ppl_section(run_dir, stages, first_seen, options.hist_sample, seed)

    mix: dict[str, Any] = {}
    if stage_tallies and stage_tallies[0]["kept"] is not None:
        before = _merge_tallies(stage_tallies[0]["kept"], stage_tallies[0]["rejected"])
        mix["before"] = {"where": f"input of {stages[0].get('folder')} (kept + rejected)", "docs": before["docs"],
                         "chars": before["chars"], "lang": _sorted_mix(before["lang"]),
                         "source": _sorted_mix(before["source"])}
    if stage_tallies and stage_tallies[-1]["kept"] is not None:
        after = stage_tallies[-1]["kept"]
        mix["after"] = {"where": f"kept by {stages[-1].get('folder')}", "docs": after["docs"], "chars": after["chars"],
                        "lang": _sorted_mix(after["lang"]), "source": _sorted_mix(after["source"])}

    evaluation = None
    if stages and (run_dir / str(stages[-1].get("folder")) / storage.DATA).is_dir():
        last = run_dir / str(stages[-1].get("folder")) / storage.DATA
        evaluation = evaluate(last, f"kept by {stages[-1].get('folder')}", options.evaluation)

    funnel = _funnel(run, stage_tallies, analyze) if stages else None
    if not stages:
        notes["funnel"] = "no stage has finished yet"
    if not statistics:
        notes["statistics"] = "no numeric stat.* columns in this run"
    if not dedup:
        notes["dedup"] = "no deduplication operator ran (no cluster statistics in stats.json)"
    if perplexity is None:
        notes["perplexity"] = f"no perplexity scores ({PPL_COLUMN}) in this run"
    if not buckets:
        notes["buckets"] = "no bucketing operator ran (no `buckets` in stats.json)"
    if shards is None:
        notes["shards"] = "no RUN/shards/manifest.json: the run has no tokenize_pack stage yet"
    if evaluation is None:
        notes["evaluation"] = "no kept documents to sample"

    overview = {
        "stages": len(stages), "docs_in": funnel["docs_in"] if funnel else 0,
        "docs_out": funnel["docs_out"] if funnel else 0,
        "chars_in": mix.get("before", {}).get("chars"), "chars_out": mix.get("after", {}).get("chars"),
        "bytes_in": stages[0].get("bytes_in") if stages else None,
        "bytes_out": stages[-1].get("bytes_out") if stages else None,
        "seconds": round(sum(s.get("seconds") or 0 for s in stages), 3),
        "tokens": shards.get("total_tokens") if shards and "error" not in shards else None,
        "verdict": evaluation.get("verdict") if evaluation else None,
    }
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else None
    return {
        "kiln_report": REPORT_VERSION,
        "run": {"name": run.get("run"), "folder": str(run_dir), "analyze": analyze, "config": run.get("config"),
                "updated": run.get("updated"),
                "analyze_run": str(run_dir / "analyze") if (run_dir / "analyze" / storage.STATS).exists() else None},
        "overview": overview,
        "funnel": funnel,
        "mix": mix,
        "statistics": statistics,
        "stages": stage_sections,
        "dedup": dedup,
        "perplexity": perplexity,
        "buckets": buckets,
        "shards": shards,
        "ablation": ablation,
        "evaluation": evaluation,
        "notes": notes,
        "config_yaml": config_text,
    }


def write_report(run_dir: str | os.PathLike, options: ReportOptions | None = None) -> ReportResult:
    """Build the report and write index.html and report.json (atomically)."""
    from pipeline.report.html import render_html

    options = options or ReportOptions()
    model = build_report(run_dir, options)
    out_dir = Path(options.out_dir) if options.out_dir else Path(run_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    storage.write_json(json_path, model)
    html_path = out_dir / "index.html"
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(render_html(model), encoding="utf-8")
    os.replace(tmp, html_path)
    return ReportResult(html=html_path, json=json_path, model=model)


# --------------------------------------------------------------------------- terminal


def print_summary(result: ReportResult, console: Any = None) -> None:
    """Stages with documents in and out and their top reasons, the evaluation verdict, and
    where the page is."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    model = result.model
    funnel = model.get("funnel")
    analyze = model["run"]["analyze"]
    table = Table(title=f"kiln report: {model['run']['name']}" + (" (analyze: nothing dropped)" if analyze else ""),
                  title_justify="left")
    table.add_column("stage")
    table.add_column("docs in", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("kept %", justify="right")
    table.add_column("would reject" if analyze else "top reasons")
    for st in (funnel or {}).get("stages", []):
        counts = st["would_reject"] if analyze else next(
            (s["rejected"] for s in model["stages"] if s["folder"] == st["folder"]), {})
        top = ", ".join(f"{k} {v:,}" for k, v in list(sorted(counts.items(), key=lambda kv: -kv[1]))[:3])
        more = len(counts) - 3
        table.add_row(str(st["folder"]), f"{st['docs_in']:,}", f"{st['docs_out']:,}",
                      f"{st['kept_share']:.1%}" if st["kept_share"] is not None else "-",
                      top + (f", +{more} more" if more > 0 else ""))
    console.print(table)
    shards = model.get("shards")
    if shards and "error" not in shards:
        console.print(f"shards: {shards['shards']:,} files, {shards['total_tokens']:,} tokens "
                      f"(seq_len {shards['seq_len']})")
    ev = model.get("evaluation")
    if ev:
        console.print(f"data evaluation ({ev.get('sample', 0):,} sampled): [bold]{ev['verdict']}[/bold]"
                      f" - {ev.get('verdict_note', '')}", highlight=False)
    console.print(f"report: {result.html}", highlight=False)
