"""Benchmark of `tokenize_pack`: tokens per second against a plain `tokenizers` batch encode
of the same text, and the padding each packing mode leaves.

What a user would otherwise write is `tokenizer.encode_batch_fast(texts)` in batches and a
concatenate-and-split loop; the baseline here is the encode alone (the packing loop would only
add to it), so the ratio is the cost of everything kiln adds: BOS/EOS framing, the per-group
token files, planning, packing with boundaries and loss masks, writing Arrow shards.

Measured, on the same documents (real Chinese and English text from ../shared/data):
1. baseline: `Tokenizer.encode_batch_fast` in batches of `--batch` documents;
2. kiln in process, the executor's per-worker kernels in order (`encode_batch_table`,
   `group_token_table`, `write_token_file`, then `plan_shards` and `pack_shard` per shard);
3. kiln end to end: `kiln run` of a one-stage config through Ray (stage wall time, reading
   and writing the stage's rows included), with `parallel_encode` unset (the default: the
   Rust thread pool when the encode pass has fewer tasks than CPUs, as this one input file
   gives), `false` (one encoder thread per Ray worker) and `true` (the pool in every worker);
4. the non-padding fraction and the share of documents cut, per mode and seq_len.

Run: `make bench-pack` (or `python benchmarks/bench_pack.py --help`). Prints Markdown tables
for docs/benchmarks.md (`--json PATH` also writes the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from operators import tokenize as K  # noqa: E402
from pipeline import tokenizer as T  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def load_corpus(max_mb: float) -> tuple[list[str], list[str], list[str]]:
    """Documents, their source and a task type (for same_type_pad: the BBC topic for English
    news, the review's label for book reviews, one type for the rest)."""
    if not SHARED.is_dir():
        sys.exit(f"benchmark text not found: {SHARED} (../shared/data)")
    docs, sources, types = [], [], []
    zh = SHARED / "zh_uer_corpora/corpora"
    for name, source in (("CLUECorpusSmall_sampled.txt", "web_zh"), ("chnsenticorp.txt", "reviews_zh"),
                         ("book_review_cls.txt", "books_zh")):
        for line in (zh / name).read_text().splitlines():
            label, tab, text = line.partition("\t")
            labelled = bool(tab) and label.isdigit()
            if labelled:
                line = text
            if line.strip():
                docs.append(line)
                sources.append(source)
                types.append(f"label{label}" if labelled else source)
    for path in sorted((SHARED / "en_bbc_news/bbc").glob("*/*.txt")):
        docs.append(path.read_text(encoding="latin-1"))
        sources.append("news_en")
        types.append(path.parent.name)
    # Interleave the sources (a stride over the list) and stop at max_mb of UTF-8 text.
    order = sorted(range(len(docs)), key=lambda i: (i * 7919) % len(docs))
    picked, size = [], 0
    for i in order:
        size += len(docs[i].encode())
        picked.append(i)
        if size >= max_mb * (1 << 20):
            break
    return [docs[i] for i in picked], [sources[i] for i in picked], [types[i] for i in picked]


def tokenizer_for(work: Path, docs: list[str], vocab: int) -> Path:
    folder = work / f"tokenizer-{vocab}"
    if not (folder / "tokenizer.json").is_file():
        print(f"training a {vocab:,}-piece BPE tokenizer on the benchmark text ...", flush=True)
        T.train_sentencepiece(docs, folder, T.TrainOptions(vocab_size=vocab, character_coverage=0.9995))
    return folder


def interleaved(repeats: int, *fns):
    """Run the functions in turn `repeats` times (so that load from other processes on a
    shared machine hits them alike). Per function: best and median wall seconds, median CPU
    seconds of this process (all its threads: the encoder's Rust threads included; less
    sensitive than wall time to other processes on the machine), and the result."""
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    results: list = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            wall, cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            walls[i].append(time.perf_counter() - wall)
            cpus[i].append(time.process_time() - cpu)
    return [(min(w), statistics.median(w), statistics.median(c), r) for w, c, r in zip(walls, cpus, results)]


def baseline(tok, docs: list[str], batch: int) -> int:
    tokens = 0
    for lo in range(0, len(docs), batch):
        tokens += sum(len(e.ids) for e in tok.encode_batch_fast(docs[lo:lo + batch], add_special_tokens=False))
    return tokens


def kiln_in_process(folder: Path, table: pa.Table, batch: int, params: K.TokenizePackParams, out: Path) -> dict:
    """The executor's worker kernels, in the same order, in this process."""
    shutil.rmtree(out, ignore_errors=True)
    tok, special = K.load_tokenizer(str(folder)), K.special_ids(folder)
    files = []
    text_tokens = 0
    for i, lo in enumerate(range(0, table.num_rows, batch)):
        encoded = K.encode_batch_table(table.slice(lo, batch), params, tok, special)
        text_tokens += int(np.nansum(encoded.tokens_stat.to_numpy(zero_copy_only=False)))
        sorted_table, groups = K.group_token_table([encoded.token_table])
        K.write_token_file(sorted_table, out / "tokens" / f"part-{i:05d}.arrow")
        files.append((f"part-{i:05d}.arrow", groups))
    plans = K.plan_shards(files, params.seq_len, params.mode, params.shard_tokens)
    results = [K.pack_shard(out / "tokens", out / "shards", plan, params.seq_len, params.mode, special.pad,
                            params.shuffle, params.seed) for plan in plans]
    total = sum(r.info.tokens for r in results if r.info)
    padding = sum(r.info.padding_tokens for r in results if r.info)
    return {"text_tokens": text_tokens, "content_tokens": total - padding, "tokens": total, "padding": padding,
            "shards": len([r for r in results if r.info]), "documents": sum(r.documents for r in results),
            "documents_split": sum(r.documents_split for r in results), "files": files}


def pack_only(folder: Path, files, out: Path, mode: str, seq_len: int, shard_tokens: int) -> dict:
    special = K.special_ids(folder)
    plans = K.plan_shards(files, seq_len, mode, max(shard_tokens, seq_len))
    shards_dir = out / f"shards-{mode}-{seq_len}"
    shutil.rmtree(shards_dir, ignore_errors=True)
    results = [K.pack_shard(out / "tokens", shards_dir, plan, seq_len, mode, special.pad) for plan in plans]
    total = sum(r.info.tokens for r in results if r.info)
    padding = sum(r.info.padding_tokens for r in results if r.info)
    docs = sum(r.documents for r in results)
    return {"mode": mode, "seq_len": seq_len, "non_padding_fraction": 1 - padding / total,
            "documents_split_fraction": sum(r.documents_split for r in results) / docs, "sequences": total // seq_len}


def end_to_end(folder: Path, work: Path, docs: list[str], sources: list[str], seq_len: int, parallel: bool | None,
               num_cpus: int) -> dict:
    """`kiln run` in a subprocess (a fresh Ray), one stage: tokenize_pack."""
    data = work / "e2e.jsonl"
    if not data.exists():
        with open(data, "w") as f:
            for i, (text, source) in enumerate(zip(docs, sources)):
                f.write(json.dumps({"id": str(i), "text": text, "source": source}, ensure_ascii=False) + "\n")
    run = work / f"run-{ {None: 'default', False: 'single', True: 'parallel'}[parallel]}"
    shutil.rmtree(run, ignore_errors=True)
    config = {"run": {"name": "bench-pack", "output": str(run)},
              "ray": {"num_cpus": num_cpus, "object_store_memory": "500MB", "batch_size": 1024},
              "inputs": [{"path": str(data)}],
              "stages": [{"name": "pack", "ops": [{"tokenize_pack": {"tokenizer": str(folder), "seq_len": seq_len,
                                                                   "parallel_encode": parallel}}]}]}
    if parallel is None:
        del config["stages"][0]["ops"][0]["tokenize_pack"]["parallel_encode"]
    import yaml

    (work / "e2e.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(work / "e2e.yaml"), "--no-progress"],
                   check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    stage = json.loads((run / "01-pack/stats.json").read_text())
    extra = stage["extra"]["tokenize_pack"]
    return {"parallel_encode": parallel, "used_parallel_encode": extra.get("parallel_encode"),
            "encode_tasks": extra.get("encode_tasks"), "command_seconds": wall, "stage_seconds": stage["seconds"],
            "op_seconds": extra["wall_seconds"], "phase_seconds": extra.get("phase_seconds", {}),
            "content_tokens": extra["content_tokens"], "non_padding_fraction": extra["non_padding_fraction"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=12.0, help="MB of text (default 12)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=1024, help="documents per encode batch")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="Ray CPUs end to end")
    parser.add_argument("--no-e2e", action="store_true", help="skip the runs through Ray")
    parser.add_argument("--e2e-repeats", type=int, default=3,
                        help="rounds of the kernels in process and `kiln run` through Ray, in turns")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "kiln-bench-pack"))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    docs, sources, types = load_corpus(args.mb)
    mb = sum(len(d.encode()) for d in docs) / (1 << 20)
    print(f"{len(docs):,} documents, {mb:.1f} MB of text, {sum(map(len, docs)):,} characters")
    folder = tokenizer_for(work, docs, args.vocab)
    tok = K.load_tokenizer(str(folder))
    table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "source": sources, "task_type": types})
    params = K.TokenizePackParams(tokenizer=str(folder), seq_len=args.seq_len, shuffle=False)

    (base_best, base_median, base_cpu, base_tokens), (kiln_best, kiln_median, kiln_cpu, kiln) = interleaved(
        args.repeats, lambda: baseline(tok, docs, args.batch),
        lambda: kiln_in_process(folder, table, args.batch, params, work / "in-process"))
    assert kiln["text_tokens"] == base_tokens, "kiln and the baseline encoded different token counts"
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "documents": len(docs), "mb": round(mb, 2), "vocab": args.vocab, "batch": args.batch,
        "seq_len": args.seq_len, "text_tokens": base_tokens,
        "baseline_tokens_per_s": base_tokens / base_best, "baseline_seconds": [base_best, base_median],
        "kiln_tokens_per_s": base_tokens / kiln_best, "kiln_seconds": [kiln_best, kiln_median],
        "ratio": base_best / kiln_best, "ratio_median": base_median / kiln_median,
        "baseline_cpu_seconds": base_cpu, "kiln_cpu_seconds": kiln_cpu, "ratio_cpu": base_cpu / kiln_cpu,
        "concat_non_padding_fraction": 1 - kiln["padding"] / kiln["tokens"],
    }
    # Token files that keep the task type, packed in every mode (not timed).
    typed = kiln_in_process(folder, table, args.batch, params.model_copy(update={"mode": "same_type_pad"}),
                            work / "typed")
    modes = []
    for seq_len in (2048, 4096):
        for mode in K.MODES:
            modes.append(pack_only(folder, typed["files"], work / "typed", mode, seq_len, 1 << 24))
    results["modes"] = modes
    e2e = []
    rounds = []
    if not args.no_e2e:
        # The kernels in process and the operator through Ray in turns, so that load from other
        # work hits both alike; the ratio is taken per round.
        for _ in range(args.e2e_repeats):
            wall = time.perf_counter()
            kiln_in_process(folder, table, args.batch, params, work / "in-process")
            in_process = time.perf_counter() - wall
            row = end_to_end(folder, work, docs, sources, args.seq_len, None, args.num_cpus)
            rounds.append({"in_process_seconds": in_process, **row})
        for parallel in (None, False, True):
            if parallel is None:
                row = dict(sorted(rounds, key=lambda r: r["op_seconds"])[len(rounds) // 2])  # the median round
            else:
                row = end_to_end(folder, work, docs, sources, args.seq_len, parallel, args.num_cpus)
            row["tokens_per_s_stage"] = base_tokens / row["stage_seconds"]
            row["tokens_per_s_op"] = base_tokens / row["op_seconds"]
            e2e.append(row)
    results["end_to_end"] = e2e
    results["rounds"] = rounds
    if rounds:
        ratios = sorted(r["in_process_seconds"] / r["op_seconds"] for r in rounds)
        results["ray_vs_in_process"] = statistics.median(ratios)
        results["ray_vs_in_process_rounds"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{results['machine']}; {len(docs):,} docs, {mb:.1f} MB, {base_tokens:,} tokens, "
          f"vocabulary {args.vocab:,}, batches of {args.batch}, seq_len {args.seq_len}\n")
    print("| what | wall s (best / median) | CPU s (median) | tokens/s (best wall) | vs baseline (best wall / median wall / CPU) |")
    print("|---|---|---|---|---|")
    print(f"| `tokenizers` encode_batch_fast (baseline) | {base_best:.2f} / {base_median:.2f} | {base_cpu:.2f} | "
          f"{results['baseline_tokens_per_s']:,.0f} | 1.00x |")
    print(f"| kiln tokenize_pack kernels, in process (concat) | {kiln_best:.2f} / {kiln_median:.2f} | {kiln_cpu:.2f} | "
          f"{results['kiln_tokens_per_s']:,.0f} | {results['ratio']:.2f}x / {results['ratio_median']:.2f}x / "
          f"{results['ratio_cpu']:.2f}x |")
    for row in e2e:
        threads = {None: f"parallel_encode unset ({row['encode_tasks']} encode task(s): "
                         f"{'pool' if row['used_parallel_encode'] else 'one thread'})",
                   False: "one thread per worker", True: "every core per worker"}[row["parallel_encode"]]
        print(f"| kiln run through Ray, encoder {threads}: operator / whole stage | "
              f"{row['op_seconds']:.2f} / {row['stage_seconds']:.2f} | | {row['tokens_per_s_op']:,.0f} / "
              f"{row['tokens_per_s_stage']:,.0f} | {base_best / row['op_seconds']:.2f}x / "
              f"{base_best / row['stage_seconds']:.2f}x |")
    if rounds:
        print(f"\nkiln tokenize_pack through Ray vs its kernels in process, {len(rounds)} interleaved rounds "
              f"(load average {os.getloadavg()[0]:.1f} at the end):\n")
        print("| round | kernels in process s | Ray operator s | Ray phases s | Ray whole stage s | operator vs in process |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(rounds, 1):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phase_seconds"].items())
            print(f"| {i} | {r['in_process_seconds']:.2f} | {r['op_seconds']:.2f} | {phases} | "
                  f"{r['stage_seconds']:.2f} | {r['in_process_seconds'] / r['op_seconds']:.2f}x |")
        print(f"\nmedian operator vs in process: {results['ray_vs_in_process']:.2f}x")
    print("\n| mode | seq_len | non-padding fraction | documents cut | sequences |")
    print("|---|---|---|---|---|")
    for row in modes:
        print(f"| {row['mode']} | {row['seq_len']} | {row['non_padding_fraction']:.4f} | "
              f"{row['documents_split_fraction']:.1%} | {row['sequences']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
