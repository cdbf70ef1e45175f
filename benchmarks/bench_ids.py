"""What making ids unique at read time costs (pipeline/ids.py): one IdClaims holder for a
whole read, asked once per batch by every read task.

Two measurements, both in one process (the Ray actor adds one round trip per batch on top):

- claims alone: N ids of the demo's shape (`web:<16 hex>`) in batches of 4096, claimed in
  order; CPU seconds, ids/s, and the holder's memory (its sorted hash runs) at 1M and 10M;
- beside the reader: kiln's reader over real JSONL (every line of ../shared/data's
  zh_uer_corpora, repeated to 1M records) with and without the claim per batch, CPU seconds
  side by side, so the claim's share of reading is a ratio on the same machine and load.

Usage: python benchmarks/bench_ids.py [--ids 1000000 10000000] [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from common.ids import IdClaims, make_unique  # noqa: E402

BATCH = 4096


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def bench_claims(n: int) -> dict[str, float]:
    claims = IdClaims()
    started = cpu()
    renamed = 0
    for lo in range(0, n, BATCH):
        ids = [f"web:{i:016x}" for i in range(lo, min(n, lo + BATCH))]
        renamed += len(claims.claim(ids))
    seconds = cpu() - started
    # The ids' own making is in `seconds` too; measure it alone to subtract.
    started = cpu()
    for lo in range(0, n, BATCH):
        [f"web:{i:016x}" for i in range(lo, min(n, lo + BATCH))]
    making = cpu() - started
    held = sum(run.nbytes for run in claims.runs)
    assert renamed == 0 and len(claims) == n
    return {"ids": n, "cpu_s": round(seconds - making, 3), "ids_per_cpu_s": round(n / max(1e-9, seconds - making)),
            "held_mb": round(held / 1e6, 1), "runs": len(claims.runs)}


def bench_reader(records: int) -> dict[str, float]:
    from common.inputs import InputSpec
    from common.readers import expand_inputs, read_file

    lines = []
    for name in ("CLUECorpusSmall_sampled.txt", "chnsenticorp.txt", "book_review_cls.txt"):
        lines += [line for line in (SHARED / "zh_uer_corpora/corpora" / name).read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        with open(path, "w") as f:
            for i in range(records):
                f.write(json.dumps({"id": f"d{i}", "text": lines[i % len(lines)]}, ensure_ascii=False) + "\n")
        spec = InputSpec(path=str(path), source="web", id_field="id")
        file = expand_inputs([spec])[0]
        result = {"records": records, "bytes": path.stat().st_size}
        for label in ("plain", "with_claims", "plain_again"):
            claims = IdClaims()
            started = cpu()
            for table in read_file(file, spec, BATCH):
                if label == "with_claims":
                    make_unique(table, claims.claim)
            result[f"{label}_cpu_s"] = round(cpu() - started, 2)
    plain = (result["plain_cpu_s"] + result["plain_again_cpu_s"]) / 2
    result["claims_share_of_reading"] = round(result["with_claims_cpu_s"] / plain - 1, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for n in args.ids:
        print("claims:", json.dumps(bench_claims(n)))
    if SHARED.is_dir():
        print("reader:", json.dumps(bench_reader(args.records)))
    else:
        print("reader: skipped (../shared/data is not present)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
