"""Documents per second of a filter pipeline submitted with `kiln submit` to a Ray cluster of
one, then two, worker nodes started with `ray start` on this machine.

The head offers no CPUs (it runs GCS, the dashboard, the job server and the job's driver), so
every read, operator and write task runs on the worker nodes, 1 CPU each. The corpus is the
real Chinese text bench_runner.py uses (../shared/data), written once as JSONL; the pipeline
is one stage: normalize, length_filter, chinese_quality, gopher_repetition.

Figures: the stage's own docs/s (from its stats.json: read to _SUCCESS) and the job's wall
time from submission to its end (job start, runtime environment, Ray Data start-up included).
On one machine the worker nodes share its cores with each other, the head and anything else
running, so this measures kiln's scaling mechanics (tasks spread over nodes, the stage
written from both), not what a second machine adds.

Usage: python benchmarks/bench_cluster.py [--workers 1 2] [--docs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_runner import SHARED, build_corpus  # noqa: E402

from pipeline.cluster import LocalCluster  # noqa: E402
from pipeline.submit import SubmitRequest, submit  # noqa: E402

OPS = [{"normalize": {}}, {"length_filter": {"min_chars": 10}}, {"chinese_quality": {}}, {"gopher_repetition": {}}]


def run_once(workers: int, corpus: Path, work: Path) -> dict:
    root = tempfile.mkdtemp(prefix="kb-", dir="/tmp")
    cluster = LocalCluster(root=root, object_store_bytes=300 << 20)
    output = work / f"run-{workers}"
    shutil.rmtree(output, ignore_errors=True)
    config = work / f"bench-{workers}.yaml"
    config.write_text(json.dumps({
        "run": {"name": "bench-cluster", "output": str(output)},
        "ray": {"batch_size": 1024},
        "inputs": [{"path": str(corpus), "source": "zh"}],
        "stages": [{"name": "filter", "ops": OPS}],
    }))
    try:
        cluster.up(head_cpus=0, workers=workers, worker_cpus=1)
        started = time.perf_counter()
        logs: list[str] = []
        _, status = submit(SubmitRequest(address=cluster.dashboard_url, token=cluster.token,
                                         kiln_args=["run", str(config), "--no-progress"]),
                           out=logs.append, echo=lambda _: None)
        wall = time.perf_counter() - started
        if status != "SUCCEEDED":
            raise SystemExit(f"the job {status}:\n{''.join(logs)[-3000:]}")
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)
    stage = json.loads((output / "01-filter" / "stats.json").read_text())
    return {"workers": workers, "docs": stage["docs_in"], "kept": stage["docs_out"],
            "stage_seconds": stage["seconds"], "stage_docs_per_s": round(stage["docs_in"] / stage["seconds"], 1),
            "job_wall_seconds": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--docs", type=int, default=0, help="use only the first N documents (default all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the benchmark uses its real text")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-cluster-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        n = build_corpus(corpus)
        if args.docs and args.docs < n:
            lines = corpus.read_text().splitlines()[: args.docs]
            corpus.write_text("\n".join(lines) + "\n")
            n = args.docs
        print(f"corpus: {n:,} documents; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
              f"Python {platform.python_version()}")
        results = []
        for workers in args.workers:
            result = run_once(workers, corpus, work)
            results.append(result)
            print(f"{workers} worker node(s) x 1 CPU: stage {result['stage_docs_per_s']:>9,.0f} docs/s "
                  f"({result['stage_seconds']:.1f} s), job wall {result['job_wall_seconds']:.1f} s, "
                  f"{result['kept']:,} kept")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
