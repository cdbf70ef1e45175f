"""Runner overhead: documents per second through kiln's Ray Data runner with identity
operators, side by side with a plain pyarrow loop over the same real text.

The corpus is every line of ../shared/data/zh_uer_corpora's corpora and Weibo posts (about
80k Chinese documents), written once as JSONL. Three ways to move it from JSONL to parquet:

- pyarrow: `pyarrow.json.read_json` + a loop applying the identity operators + `write_table`
  (what a user would write by hand; no per-record error handling, one process);
- kiln in process: kiln's reader and `run_operators` in one process (the operator model's
  own overhead, no Ray);
- kiln runner: `kiln run` on a local Ray with all cores (reader, operators, atomic stage
  writer, accounting).

In process and through Ray run in turns (--repeats rounds, medians reported, with the CPU\nseconds of all processes: the driver, Ray's raylet and workers), so that load from other\nwork on a shared machine hits both alike.\n\nUsage: python benchmarks/bench_runner.py [--ops 3] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def build_corpus(path: Path) -> int:
    sources = [
        SHARED / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt",
        SHARED / "zh_uer_corpora/corpora/chnsenticorp.txt",
        SHARED / "zh_uer_corpora/corpora/book_review_cls.txt",
    ]
    weibo = [SHARED / f"zh_uer_corpora/datasets/smp2020-ewect/{d}/{s}.tsv"
             for d in ("usual", "virus") for s in ("train", "dev", "test")]
    n = 0
    with open(path, "w") as out:
        for src in sources + weibo:
            for line in src.read_text(errors="replace").splitlines():
                text = line.split("\t")[-1].strip()
                if text:
                    out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    n += 1
    return n


def bench_pyarrow(corpus: Path, out: Path, n_ops: int) -> float:
    from operators.base import run_operators
    from operators.normalize import Identity

    ops = [Identity() for _ in range(n_ops)]
    started = time.perf_counter()
    table = pajson.read_json(corpus, read_options=pajson.ReadOptions(block_size=16 << 20))
    parts = [run_operators(ops, pa.Table.from_batches([b])) if n_ops else pa.Table.from_batches([b])
             for b in table.to_batches(max_chunksize=1024)]
    pq.write_table(pa.concat_tables(parts).select(["text"]), out / "pyarrow.parquet", compression="zstd")
    return time.perf_counter() - started


def bench_plain_loop(corpus: Path, out: Path, n_ops: int) -> float:
    """pyarrow reading, identity as plain function calls: the floor."""
    started = time.perf_counter()
    table = pajson.read_json(corpus, read_options=pajson.ReadOptions(block_size=16 << 20))
    parts = []
    for batch in table.to_batches(max_chunksize=1024):
        t = pa.Table.from_batches([batch])
        for _ in range(n_ops):
            t = t  # identity
        parts.append(t)
    pq.write_table(pa.concat_tables(parts), out / "plain.parquet", compression="zstd")
    return time.perf_counter() - started


def bench_kiln_in_process(corpus: Path, out: Path, n_ops: int) -> float:
    from common.inputs import InputSpec
    from common.readers import read_inputs
    from operators.base import run_operators, split_rejected
    from operators.normalize import Identity

    ops = [Identity() for _ in range(n_ops)]
    started = time.perf_counter()
    kept_parts = []
    for table in read_inputs([InputSpec(path=str(corpus))], batch_rows=1024):
        kept, _ = split_rejected(run_operators(ops, table))
        kept_parts.append(kept)
    pq.write_table(pa.concat_tables(kept_parts), out / "kiln.parquet", compression="zstd")
    return time.perf_counter() - started


def bench_kiln_runner(corpus: Path, out: Path, n_ops: int) -> tuple[float, float]:
    """Returns (wall seconds including Ray start, seconds of the stage itself)."""
    from pipeline.config import parse_config
    from pipeline.runner import RunRequest, run_pipeline

    config = parse_config({
        "run": {"name": "bench", "output": str(out / "run")},
        "ray": {"object_store_memory": "1GB", "batch_size": 1024},
        "inputs": [{"path": str(corpus), "source": "zh"}],
        "stages": [{"name": "identity", "ops": [{"identity": {}} for _ in range(max(1, n_ops))]}],
    })
    started = time.perf_counter()
    stats = run_pipeline(config, RunRequest(progress=False, redo=True), echo=lambda _: None)
    return time.perf_counter() - started, stats["stages"][0]["seconds"]


def _cpu_by_process() -> dict[int, float]:
    """CPU seconds of this process and of every process under it (Ray's raylet and workers
    when Ray was started here), by pid."""
    import psutil

    me = psutil.Process()
    seconds = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
    return seconds


def _measure(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process tree) of fn(); a stage's own seconds if fn
    returns a number. A process that ended in between (an actor killed after its stage) is
    not counted, so Ray's figure is a lower bound."""
    before, wall = _cpu_by_process(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - wall
    after = _cpu_by_process()
    cpu = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return (result if isinstance(result, float) else wall), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=3, help="identity operators in the stage")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of in-process and Ray")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print("skipped: ../shared/data is not present")
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        docs = build_corpus(corpus)
        mb = corpus.stat().st_size / 1e6
        rows = []
        t = bench_plain_loop(corpus, tmp, args.ops)
        rows.append(("pyarrow read_json + loop (1 process)", [t], []))
        t = bench_pyarrow(corpus, tmp, args.ops)
        rows.append((f"pyarrow read_json + kiln run_operators x{args.ops} (1 process)", [t], []))
        import ray

        cpus = os.cpu_count()
        started = time.perf_counter()
        ray.init(num_cpus=cpus, object_store_memory=1 << 30, include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - started
        cold = bench_kiln_runner(corpus, tmp, args.ops)[1]
        # In process and through Ray in turns, so that load from other work hits both alike.
        inproc_wall, inproc_cpu, ray_wall, ray_cpu = [], [], [], []
        for _ in range(args.repeats):
            wall, cpu = _measure(lambda: bench_kiln_in_process(corpus, tmp, args.ops))
            inproc_wall.append(wall)
            inproc_cpu.append(cpu)
            wall, cpu = _measure(lambda: bench_kiln_runner(corpus, tmp, args.ops)[1])
            ray_wall.append(wall)
            ray_cpu.append(cpu)
        ray.shutdown()
        rows.append((f"kiln reader + run_operators x{args.ops} (1 process, no Ray)", inproc_wall, inproc_cpu))
        rows.append((f"kiln run on local Ray ({cpus} CPUs), warm workers (stage seconds)", ray_wall, ray_cpu))
        rows.append((f"kiln run on local Ray ({cpus} CPUs), first stage (workers start)", [cold], []))
        rows.append(("(Ray start, once per `kiln run`)", [ray_start], []))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_after = os.getloadavg()
    print(f"\ncorpus: {docs:,} Chinese documents, {mb:.1f} MB JSONL; identity operators: {args.ops}; "
          f"{args.repeats} interleaved rounds; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| pipeline | seconds (median, min-max) | docs/s (median) | CPU s (median, all processes) |")
    print("|---|---:|---:|---:|")
    results = []
    for name, walls, cpus_used in rows:
        median = statistics.median(walls)
        spread = f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else ""
        cpu = f"{statistics.median(cpus_used):.2f}" if cpus_used else ""
        print(f"| {name} | {median:.2f}{spread} | {docs / median:,.0f} | {cpu} |")
        results.append({"pipeline": name, "seconds": walls, "cpu_seconds": cpus_used, "docs_per_s": docs / median})
    ratios = sorted(i / r for i, r in zip(inproc_wall, ray_wall))
    print(f"\nRay stage / in process, docs/s per round: median {statistics.median(ratios):.2f}x "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); CPU seconds in process / through Ray: "
          f"{statistics.median(inproc_cpu) / statistics.median(ray_cpu):.2f}x")
    print(f"driver peak RSS: {peak_mb:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"docs": docs, "mb": mb, "load": [load_before, load_after],
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
