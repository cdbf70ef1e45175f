"""The same pipeline config on the Ray engine and on the Spark engine, per stage, side by side.

Each round runs `kiln run CONFIG --engine E --redo` into a fresh run folder for both engines in
turn (Ray, Spark, Ray, Spark, ...), so load from other work on a shared machine hits both
alike. For every run it records each stage's wall seconds (stats.json), the whole command's
wall seconds (engine start and stop included), and the CPU seconds of the whole process tree
(the driver, Ray's raylet and workers, or Spark's JVM and Python workers), sampled every
0.2 s with psutil. Medians over the rounds are reported, with the load average before and after.

It also checks that both engines kept and rejected the same documents in every stage.

With --corpus-mb N the config's stages run on a generated zh+en corpus of about N MB instead
of its inputs (benchmarks/pipeline_corpus.py, the whole-pipeline benchmark's generator, files
of --file-mb MB; made once under --work), so fixed costs can be told from per-document ones.

Usage: python benchmarks/bench_engines.py [--config configs/pipeline/demo.yaml] [--rounds 2]
       [--cpus 2] [--corpus-mb 24 --file-mb 3] [--work runs/bench-engines]
       [--json runs/bench-engines/bench-engines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINES = ("ray", "spark")


def tree_cpu_seconds(proc: subprocess.Popen, interval: float = 0.2) -> tuple[float, float]:
    """Wall seconds until `proc` exits, and the CPU seconds of it and every descendant seen
    (each process's last sampled user+system time: a process that lives less than one
    interval is missed, so this is a lower bound)."""
    started = time.perf_counter()
    seen: dict[tuple[int, float], float] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                times = p.cpu_times()
                seen[(p.pid, p.create_time())] = times.user + times.system
            except psutil.Error:
                pass
        time.sleep(interval)
    return time.perf_counter() - started, sum(seen.values())


def run_once(config: Path, engine: str, run_dir: Path, cpus: int) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--engine", engine, "--output", str(run_dir),
           "--num-cpus", str(cpus), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        wall, cpu = tree_cpu_seconds(proc)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed (see {log})")
    stats = json.loads((run_dir / "stats.json").read_text())
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "stages": {s["folder"]: s["seconds"] for s in stats["stages"]},
            "docs_in": stats["stages"][0]["docs_in"]}


def outcomes(run_dir: Path) -> dict:
    from common import storage

    out = {}
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        kept = storage.read_table(stage / "data", ["id"]) if storage.parquet_files(stage / "data") else None
        rej = (storage.read_table(stage / "rejected", ["id", "reject_op", "reject_reason"])
               if storage.parquet_files(stage / "rejected") else None)
        out[stage.name] = (sorted(kept.column("id").to_pylist()) if kept is not None else [],
                           sorted(zip(*(rej.column(c).to_pylist() for c in ("id", "reject_op", "reject_reason"))))
                           if rej is not None else [])
    return out


def corpus_config(config: Path, work: Path, total_mb: float, file_mb: float) -> Path:
    """`config`'s stages on a generated corpus of about `total_mb` MB (made once)."""
    import yaml
    from pipeline_corpus import SOURCES, generate  # benchmarks/, this script's folder

    corpus = work / f"corpus-{total_mb:g}mb"
    if not (corpus / "corpus.json").is_file():
        summary = generate(corpus, total_mb, file_mb)
        (corpus / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    data = yaml.safe_load(config.read_text())
    data["inputs"] = [{"path": str(corpus / source / "*.jsonl"), "source": source, "id_field": "id",
                       **({"url_field": "url"} if source == "web" else {})} for source in SOURCES]
    path = work / f"{config.stem}-{total_mb:g}mb.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pipeline/demo.yaml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-engines")
    ap.add_argument("--json", default=None)
    ap.add_argument("--corpus-mb", type=float, default=None, help="run on a generated corpus of this size")
    ap.add_argument("--file-mb", type=float, default=3.0, help="file size of the generated corpus")
    args = ap.parse_args()
    config, work = (REPO / args.config).resolve(), (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.corpus_mb:
        config = corpus_config(config, work, args.corpus_mb, args.file_mb)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
    for r in range(args.rounds):
        for engine in ENGINES:
            result = run_once(config, engine, work / engine, args.cpus)
            runs[engine].append(result)
            print(f"round {r + 1} {engine}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} CPU s, "
                  f"stages {result['stages']}", flush=True)
    same = outcomes(work / "ray") == outcomes(work / "spark")
    load_after = os.getloadavg()
    stages = list(runs["ray"][0]["stages"])
    summary = {
        "config": args.config, "rounds": args.rounds, "cpus": args.cpus, "docs_in": runs["ray"][0]["docs_in"],
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "same_outcomes": same,
        "median": {e: {"wall_s": statistics.median(x["wall_s"] for x in runs[e]),
                       "cpu_s": statistics.median(x["cpu_s"] for x in runs[e]),
                       "stages": {s: statistics.median(x["stages"][s] for x in runs[e]) for s in stages}}
                   for e in ENGINES},
        "runs": runs,
    }
    print(f"\n{args.config}: {summary['docs_in']:,} documents, {args.cpus} CPUs, {args.rounds} rounds (medians); "
          f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'stage':<16}{'ray s':>10}{'spark s':>10}{'spark/ray':>11}")
    for s in stages:
        a, b = summary["median"]["ray"]["stages"][s], summary["median"]["spark"]["stages"][s]
        print(f"{s:<16}{a:>10.1f}{b:>10.1f}{b / a if a else float('nan'):>11.2f}")
    for key, label in (("wall_s", "whole command"), ("cpu_s", "CPU s (tree)")):
        a, b = summary["median"]["ray"][key], summary["median"]["spark"][key]
        print(f"{label:<16}{a:>10.1f}{b:>10.1f}{b / a if a else float('nan'):>11.2f}")
    print(f"same kept and rejected ids in every stage: {same}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if not same:
        raise SystemExit("the engines disagree")


if __name__ == "__main__":
    main()
