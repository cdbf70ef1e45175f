"""Dedup benchmark: accuracy against exact Jaccard, signature throughput, and end-to-end time
and memory of kiln's minhash_dedup beside a datasketch MinHash + MinHashLSH loop and rensa.

    make bench-dedup                                   # 100k and 1M documents, accuracy, peers
    python benchmarks/bench_dedup.py --docs 100000 1000000 --exact --work runs/bench-dedup --json out.json

Accuracy: predicted duplicate pairs are the pairs of documents kiln puts in one cluster.
They are scored against exact Jaccard on the same shingles (kiln's 32-bit shingle hashes,
all pairs, through a sparse matrix product): "closure" counts a pair as true when the two
documents are connected by a chain of pairs at or above the threshold (what connected
components promise), "direct" only when the pair itself is. Corpora: the Clough & Stevenson
short answers (../shared/data/neardup_clough_stevenson) and a planted corpus from
benchmarks/dedup_corpus.py (English and Chinese, edits at known rates, chains).

Speed: signatures per CPU second (documents per second per core) (kiln's batches; datasketch's and
rensa's per-document loops with a plain Python shingler, as a user writes them), then the
whole `kiln run` of a one-stage minhash_dedup config (read, dedup, write, accounting; with
--exact also one of exact_dedup) on the planted corpora, each a `kiln run` subprocess of its
own, with its driver's peak RSS and the peak total memory (PSS) of all its processes (driver,
raylet, GCS, workers) sampled twice a second; the peers run the usual streaming loop (query
the LSH index, insert if new) in a subprocess each, on the same documents and shingles.
Corpora are generated once into --work and reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import dedup_corpus  # noqa: E402

from operators import dedup as kernels  # noqa: E402

SHARED = dedup_corpus.SHARED
NUM_PERM = 128
THRESHOLD = 0.8


# --------------------------------------------------------------------------- a user's shingler

_PUNCT = re.compile(r"[^\w\s]")
_CJK = re.compile(r"[\u3400-\u9fff]")


def python_shingles(text: str) -> list[str]:
    """What a user of datasketch or rensa writes: lowercase, drop punctuation, word 5-grams
    (character 5-grams for Chinese)."""
    text = _PUNCT.sub(" ", text.lower())
    if len(_CJK.findall(text)) >= 0.3 * max(1, len(text)):
        chars = "".join(text.split())
        return [chars[i:i + 5] for i in range(max(1, len(chars) - 4))] if chars else []
    words = text.split()
    return [" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))] if words else []


# --------------------------------------------------------------------------- memory sampling


class TreeMemorySampler:
    """Peak RSS of one process (a `kiln run` subprocess: kiln's driver) and peak total memory
    of it and all its descendants (the local Ray cluster it starts: raylet, GCS, workers),
    sampled every `interval` seconds. Total memory is the sum of PSS (proportional set size:
    shared pages such as the object store counted once across processes), or of RSS where
    PSS cannot be read. Also the CPU seconds (user + system) of all of them: on a shared
    machine the work's measure that the neighbours do not change."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.driver_rss = 0
        self.tree_pss = 0
        self.tree_processes = 0
        self._cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            self.driver_rss = max(self.driver_rss, self.root.memory_info().rss)
            processes = [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return
        total = 0
        for proc in processes:
            try:
                times = proc.cpu_times()
                self._cpu[(proc.pid, proc.create_time())] = times.user + times.system
            except self.psutil.Error:
                pass
            try:
                total += proc.memory_full_info().pss
            except (self.psutil.Error, AttributeError):
                try:
                    total += proc.memory_info().rss
                except self.psutil.Error:
                    continue
        if total > self.tree_pss:
            self.tree_pss, self.tree_processes = total, len(processes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of every process seen in the tree (up to its last sample)."""
        return sum(self._cpu.values())


# --------------------------------------------------------------------------- kiln runs


def run_kiln(parquet: Path, out: Path, params: dict, num_cpus: int, object_store: int,
             ops: list[dict] | None = None) -> tuple[dict, float, TreeMemorySampler]:
    """The whole `kiln run` of a one-stage dedup config, as a user runs it: a subprocess of
    its own (so its driver's memory is its own), with the memory of its process tree sampled."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "run": {"name": "bench-dedup", "output": str(out)},
        "ray": {"num_cpus": num_cpus, "object_store_memory": object_store},
        "inputs": [{"path": str(parquet), "source": "bench", "id_field": "id"}],
        "stages": [{"name": "dedup", "ops": ops or [{"minhash_dedup": params}]}],
    }
    config_path = out / "bench-dedup.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())",
               "run", str(config_path), "--redo", "--no-progress"]
    started = time.perf_counter()
    with open(out / "kiln-run.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemorySampler(process.pid).start()
        code = process.wait()
        memory.stop()
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"kiln run failed ({code}); see {out / 'kiln-run.log'}")
    stats = json.loads((out / "stats.json").read_text())
    return stats["stages"][0], seconds, memory


def kiln_clusters(run_dir: Path) -> dict[str, str | None]:
    """id -> cluster (survivor id) of every document of the dedup stage."""
    stage = next(run_dir.glob("*-dedup"))
    clusters: dict[str, str | None] = {}
    for part in ("data", "rejected"):
        for file in sorted((stage / part).glob("*.parquet")):
            table = pq.read_table(file, columns=["id", "dup_cluster"])
            clusters.update(zip(table.column("id").to_pylist(), table.column("dup_cluster").to_pylist()))
    return clusters


# --------------------------------------------------------------------------- accuracy


def exact_jaccard_pairs(texts: list[str], params: kernels.MinHashParams, threshold: float) -> set[tuple[int, int]]:
    """All pairs of documents with exact Jaccard >= threshold on kiln's shingle hashes."""
    from scipy.sparse import csr_matrix

    sets = []
    for start in range(0, len(texts), 1024):
        chunk = pa.array(texts[start:start + 1024])
        char_mode = kernels.uses_char_shingles(chunk, None, params)
        hashes, per_doc = kernels.shingle_hashes(chunk, char_mode, params)
        sets += [np.unique(h) for h in np.split(hashes, np.cumsum(per_doc)[:-1])]
    vocabulary, inverse = np.unique(np.concatenate(sets), return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    matrix = csr_matrix((np.ones(len(rows), np.float32), (rows, inverse)), shape=(len(sets), len(vocabulary)))
    sizes = np.array([len(s) for s in sets], np.float64)
    overlap = (matrix @ matrix.T).tocoo()
    a, b, inter = overlap.row, overlap.col, overlap.data
    keep = a < b
    a, b, inter = a[keep], b[keep], inter[keep]
    jaccard = inter / (sizes[a] + sizes[b] - inter)
    hit = jaccard >= threshold - 1e-9
    return set(zip(a[hit].tolist(), b[hit].tolist()))


def _components(n: int, pairs: set[tuple[int, int]]) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return np.arange(n)
    a, b = zip(*pairs)
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


def _cluster_pairs(labels: list) -> set[tuple[int, int]]:
    groups: dict = {}
    for i, label in enumerate(labels):
        if label is not None:
            groups.setdefault(label, []).append(i)
    return {p for members in groups.values() for p in itertools.combinations(sorted(members), 2)}


def score(predicted_labels: list, true_pairs: set[tuple[int, int]]) -> dict:
    n = len(predicted_labels)
    predicted = _cluster_pairs(predicted_labels)
    components = _components(n, true_pairs)
    closure = _cluster_pairs([c if np.count_nonzero(components == c) > 1 else None for c in components])
    out = {"true_pairs_direct": len(true_pairs), "true_pairs_closure": len(closure), "predicted_pairs": len(predicted)}
    for name, truth in (("closure", closure), ("direct", true_pairs)):
        hits = len(predicted & truth)
        out[f"precision_{name}"] = round(hits / len(predicted), 4) if predicted else 1.0
        out[f"recall_{name}"] = round(hits / len(truth), 4) if truth else 1.0
    return out


def local_clusters(ids: list[str], texts: list[str], params: kernels.MinHashParams) -> dict[str, str | None]:
    """minhash_dedup's decisions computed in this process with the functions of its gathered
    form (the one `kiln run` takes below ray.global_memory; the distributed form gives the
    same clusters, tests/test_dedup.py checks it): id -> cluster (survivor id) or None."""
    from pipeline.global_ops import ROW_KEY
    from pipeline.global_ops import dedup as executors

    batch = pa.table({"id": ids, "text": texts, ROW_KEY: np.arange(len(ids), dtype=np.int64)})
    nodes = executors._signature_rows(batch, params)
    sigs = kernels.signatures_from_bytes(nodes.column("sig"), params.num_perm)
    bands, rows = params.band_rows
    a, b = executors._star_edges_by_band(kernels.band_keys(sigs, bands, rows), nodes.column("node").to_numpy(),
                                         nodes.column("earlier").to_numpy(zero_copy_only=False),
                                         executors._center_order(nodes.column("rank")))
    if params.verify_threshold is not None:
        keep = executors._verified(sigs, a, b, params.verify_threshold)
        a, b = a[keep], b[keep]
    decisions = executors._component_decisions(nodes, a, b, params.threshold)
    clusters: dict[str, str | None] = dict.fromkeys(ids)
    clusters.update(zip(decisions.column("id").to_pylist(), decisions.column("dup_cluster").to_pylist()))
    return clusters


def accuracy_clough(work: Path, num_cpus: int, object_store: int, use_ray: bool) -> list[dict]:
    import csv

    folder = SHARED / "neardup_clough_stevenson" / "data"
    labels = {r["File"]: (r["Task"], r["Category"])
              for r in csv.DictReader((folder / "file_information.csv").read_text().splitlines())
              if r["Category"] != "orig"}  # the sources themselves are listed too
    ids = [f"orig_{t}" for t in "abcde"] + [name[:-4] for name in sorted(labels)]
    texts = [(folder / f"orig_task{t}.txt").read_text(encoding="latin-1") for t in "abcde"]
    texts += [(folder / name).read_text(encoding="latin-1") for name in sorted(labels)]
    parquet = work / "clough.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), parquet)
    rows = []
    for threshold in (0.8, 0.5):
        params = kernels.MinHashParams(threshold=threshold)
        if use_ray:
            run_kiln(parquet, work / f"clough-{threshold}", {"threshold": threshold, "save_index": False},
                     num_cpus, object_store)
            clusters = kiln_clusters(work / f"clough-{threshold}")
        else:
            clusters = {f"bench:{k}": v for k, v in local_clusters(ids, texts, params).items()}
        predicted = [clusters[f"bench:{i}"] for i in ids]
        row = {"corpus": "clough_stevenson", "threshold": threshold, "docs": len(ids),
               **score(predicted, exact_jaccard_pairs(texts, params, threshold))}
        index = {doc: i for i, doc in enumerate(ids)}
        for category in ("cut", "light", "heavy", "non"):
            members = [name[:-4] for name, (_, c) in labels.items() if c == category]
            with_source = sum(1 for m in members if predicted[index[m]] is not None
                              and predicted[index[m]] == predicted[index[f"orig_{labels[m + '.txt'][0]}"]])
            row[f"{category}_with_source"] = f"{with_source}/{len(members)}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def accuracy_planted(work: Path, docs: int, num_cpus: int, object_store: int, pool, use_ray: bool) -> list[dict]:
    table = dedup_corpus.generate(docs, seed=1, pool=pool)
    parquet = work / f"planted-{docs}.parquet"
    dedup_corpus.write(table, parquet)
    params = kernels.MinHashParams()
    if use_ray:
        run_kiln(parquet, work / "planted-run", {"save_index": False}, num_cpus, object_store)
        clusters = kiln_clusters(work / "planted-run")
    else:
        clusters = {f"bench:{k}": v for k, v in local_clusters(table.column("id").to_pylist(),
                                                                table.column("text").to_pylist(), params).items()}
    ids, texts, langs = (table.column(c).to_pylist() for c in ("id", "text", "lang"))
    predicted = [clusters[f"bench:{i}"] for i in ids]
    truth = exact_jaccard_pairs(texts, params, THRESHOLD)
    rows = []
    for lang in ("all", "en", "zh"):
        keep = [i for i, lg in enumerate(langs) if lang == "all" or lg == lang]
        position = {old: new for new, old in enumerate(keep)}
        sub_truth = {(position[a], position[b]) for a, b in truth if a in position and b in position}
        row = {"corpus": f"planted ({lang})", "threshold": THRESHOLD, "docs": len(keep),
               **score([predicted[i] for i in keep], sub_truth)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------- signature throughput


def signature_throughput(table: pa.Table, sample: int) -> list[dict]:
    """Documents per second on one core."""
    texts = table.column("text").to_pylist()
    params = kernels.MinHashParams()
    rows = []

    def timed(name: str, fn, n: int) -> None:
        # CPU seconds of this process, best of three after a warm-up: on a shared machine,
        # wall time measures the neighbours as much as the code.
        fn(min(n, 64))
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            fn(n)
            best = min(best, time.process_time() - started)
        rows.append({"method": name, "docs": n, "cpu_seconds": round(best, 3), "docs_per_cpu_s": round(n / best, 1)})
        print(json.dumps(rows[-1]), flush=True)

    def kiln_batches(n: int) -> None:
        for start in range(0, n, 1024):
            kernels.signatures(pa.array(texts[start:min(n, start + 1024)]), None, params)

    def datasketch_loop(n: int) -> None:
        from datasketch import MinHash

        for text in texts[:n]:
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch([s.encode("utf-8") for s in python_shingles(text)])

    def datasketch_kiln_hash(n: int) -> None:
        from datasketch import MinHash

        for text in texts[:n]:
            m = MinHash(num_perm=NUM_PERM, hashfunc=kernels.shingle_hash)
            m.update_batch(kernels.shingles(text, params))

    def rensa_loop(n: int) -> None:
        from rensa import RMinHash

        for text in texts[:n]:
            m = RMinHash(num_perm=NUM_PERM, seed=1)
            m.update(python_shingles(text))

    def rensa_bulk(n: int) -> None:
        from rensa import RMinHash

        for start in range(0, n, 1024):
            RMinHash.digest_matrix_from_token_sets([python_shingles(t) for t in texts[start:min(n, start + 1024)]],
                                                   NUM_PERM, 1)

    timed("kiln signatures (batches of 1024, numba kernel)", kiln_batches, len(texts))
    timed("datasketch MinHash per document (SHA-1, update_batch)", datasketch_loop, sample)
    timed("datasketch MinHash per document (kiln's H, equal signatures)", datasketch_kiln_hash, sample)
    if _has("rensa"):
        timed("rensa RMinHash per document", rensa_loop, min(len(texts), 4 * sample))
        timed("rensa digest_matrix_from_token_sets (batches of 1024)", rensa_bulk, min(len(texts), 4 * sample))
    return rows


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- peers


PEER_SCRIPT = r"""
import json, sys, time, resource
import pyarrow.parquet as pq
sys.path.insert(0, {repo!r}); sys.path.insert(0, {bench!r})
from bench_dedup import python_shingles
tool, path, limit, threshold, num_perm = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()[:limit]
started = time.perf_counter()
removed = 0
if tool == "datasketch":
    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in python_shingles(text)])
        if lsh.query(m):
            removed += 1
        else:
            lsh.insert(i, m)
else:
    from rensa import RMinHash, RMinHashLSH
    from datasketch.lsh import _optimal_param
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    # rensa needs bands that divide num_perm: the divisor nearest datasketch's choice.
    bands = min((d for d in range(2, num_perm + 1) if num_perm % d == 0), key=lambda d: abs(d - bands))
    lsh = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=bands)
    for i, text in enumerate(texts):
        m = RMinHash(num_perm=num_perm, seed=1)
        m.update(python_shingles(text))
        if lsh.query(m):
            removed += 1
        else:
            lsh.insert(i, m)
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"docs": len(texts), "seconds": seconds, "removed": removed, "max_rss": usage.ru_maxrss * 1024,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime}}))
"""


def run_peer(tool: str, parquet: Path, limit: int) -> dict:
    script = PEER_SCRIPT.format(repo=str(REPO), bench=str(REPO / "benchmarks"))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run([sys.executable, f.name, tool, str(parquet), str(limit), str(THRESHOLD), str(NUM_PERM)],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def end_to_end(work: Path, docs: int, peers: list[str], peer_max_docs: int, num_cpus: int, object_store: int,
               pool, exact: bool = False) -> list[dict]:
    parquet = work / f"corpus-{docs}.parquet"
    if not parquet.exists():
        started = time.perf_counter()
        dedup_corpus.write(dedup_corpus.generate(docs, pool=pool), parquet)
        print(f"generated {docs:,} documents in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    stage, seconds, memory = run_kiln(parquet, work / f"run-{docs}", {"save_index": False}, num_cpus, object_store)
    extra = stage["extra"]["minhash_dedup"]
    rows.append({"docs": docs, "tool": f"kiln minhash_dedup ({num_cpus} CPUs, Ray), whole `kiln run`",
                 "seconds": round(seconds, 1), "stage_seconds": stage["seconds"],
                 "docs_per_s": round(docs / seconds, 1), "removed": extra["docs_removed"],
                 "cpu_seconds_all_processes": round(memory.cpu_seconds, 1),
                 "execution": extra.get("execution"), "driver_peak_rss_mb": round(memory.driver_rss / 2**20),
                 "all_processes_peak_pss_mb": round(memory.tree_pss / 2**20),
                 "processes_at_peak": memory.tree_processes, "phases": extra.get("phase_seconds"),
                 "load_average": os.getloadavg()})
    print(json.dumps(rows[-1]), flush=True)
    if exact:
        stage, seconds, memory = run_kiln(parquet, work / f"exact-{docs}", {}, num_cpus, object_store,
                                          ops=[{"exact_dedup": {}}])
        extra = stage["extra"]["exact_dedup"]
        rows.append({"docs": docs, "tool": f"kiln exact_dedup ({num_cpus} CPUs, Ray), whole `kiln run`",
                     "seconds": round(seconds, 1), "stage_seconds": stage["seconds"],
                     "removed": extra["docs_removed"], "execution": extra.get("execution"),
                     "cpu_seconds_all_processes": round(memory.cpu_seconds, 1),
                     "driver_peak_rss_mb": round(memory.driver_rss / 2**20),
                     "all_processes_peak_pss_mb": round(memory.tree_pss / 2**20), "phases": extra.get("phase_seconds"),
                     "load_average": os.getloadavg()})
        print(json.dumps(rows[-1]), flush=True)
    for tool in peers:
        limit = min(docs, peer_max_docs) if tool == "datasketch" else docs
        result = run_peer(tool, parquet, limit)
        row = {"docs": docs, "tool": f"{tool} loop (1 process)", "seconds": round(result["seconds"], 1),
               "docs_per_s": round(result["docs"] / result["seconds"], 1), "removed": result["removed"],
               "peak_rss_mb": round(result["max_rss"] / 2**20), "cpu_seconds": round(result["cpu_seconds"], 1),
               "load_average": os.getloadavg()}
        if limit < docs:
            row["note"] = f"ran on the first {limit:,} documents only"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="kiln dedup benchmark")
    parser.add_argument("--docs", type=int, nargs="*", default=[100_000], help="end-to-end corpus sizes")
    parser.add_argument("--accuracy", action="store_true", help="also the accuracy tables")
    parser.add_argument("--accuracy-docs", type=int, default=4000)
    parser.add_argument("--accuracy-on-ray", action="store_true",
                        help="accuracy through `kiln run` instead of the same functions in one process")
    parser.add_argument("--throughput-docs", type=int, default=8000)
    parser.add_argument("--peers", nargs="*", default=["datasketch", "rensa"])
    parser.add_argument("--peer-max-docs", type=int, default=200_000,
                        help="the datasketch loop runs on at most this many documents (it is slow)")
    parser.add_argument("--exact", action="store_true", help="also a `kiln run` of exact_dedup on each corpus")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run kiln and the peers this many times, interleaved (kiln, peers, kiln, peers, ...)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--object-store", type=int, default=3 << 30)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kiln-bench-dedup")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args.work.mkdir(parents=True, exist_ok=True)
    peers = [p for p in args.peers if _has(p)]
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                     "load_average_at_start": os.getloadavg()}
    pool = dedup_corpus.load_pool()
    if args.accuracy:
        results["accuracy"] = accuracy_clough(args.work, args.num_cpus, args.object_store, args.accuracy_on_ray)
        results["accuracy"] += accuracy_planted(args.work, args.accuracy_docs, args.num_cpus, args.object_store, pool,
                                                args.accuracy_on_ray)
    if args.throughput_docs:
        sample = dedup_corpus.generate(args.throughput_docs, seed=2, pool=pool)
        results["signatures"] = signature_throughput(sample, min(2000, args.throughput_docs))
    results["end_to_end"] = []
    for docs in args.docs:
        for _ in range(args.repeat):
            results["end_to_end"] += end_to_end(args.work, docs, peers, args.peer_max_docs, args.num_cpus,
                                                args.object_store, pool, args.exact)
    results["load_average_at_end"] = os.getloadavg()
    results["self_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
