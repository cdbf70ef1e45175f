"""tokenize_pack through Ray against its own kernels in one process, at the scale of a real run.

`bench_pack.py` measures on the 12.6 MB of text ../shared/data holds for it, where a Ray run's
fixed costs (worker start, the tokenizer folder, the manifest) are half of the operator's time.
This benchmark takes a finished run whose config has a `tokenize_pack` stage and runs two
things back to back on the same rows, the stage's input:

1. `kiln run CONFIG --stage STAGE --redo` (a subprocess). The operator's seconds and phases
   are read from the stage's stats.json.
2. The same kernels in this process (`bench_pack.kiln_in_process`: encode, group, token files,
   plan, pack, with the stage's parameters) over the input table read whole into memory.

Both must write the same number of shards and tokens. Run, for the 1 GB pipeline of
`make bench-pipeline`:
`python benchmarks/bench_pack_scale.py --config /work/bp1g/kiln-full.yaml --stage pack`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_pack

from operators import tokenize as K
from pipeline.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config of a finished run")
    parser.add_argument("--stage", required=True, help="its tokenize_pack stage")
    parser.add_argument("--work", default="/tmp/kiln-bench-pack-scale")
    args = parser.parse_args()
    config = load_config(args.config)
    names = [stage.name for stage in config.stages]
    index = names.index(args.stage)
    ops = config.stages[index].ops
    spec = next(op for op in ops if op.name == "tokenize_pack")
    run_dir = Path(config.run.output)
    previous = sorted(run_dir.glob(f"{index:02d}-*/data")) if index else []
    if not previous:
        sys.exit(f"{args.stage}: its input (the data of stage {index}) is not in {run_dir}")
    files = sorted(glob.glob(str(previous[0] / "*.parquet")))

    load = os.getloadavg()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", args.config, "--stage", args.stage, "--redo",
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    stats = json.loads((run_dir / f"{index + 1:02d}-{args.stage}" / "stats.json").read_text())
    extra = stats["extra"]["tokenize_pack"]
    ray_run = {"whole_run_s": round(time.perf_counter() - started, 1), "stage_s": stats["seconds"],
               "operator_s": extra["wall_seconds"], "phases": extra["phase_seconds"], "shards": extra["shards"],
               "tokens": extra["tokens"]}

    table = pa.concat_tables([pq.read_table(f) for f in files])
    params = K.TokenizePackParams(**spec.params)
    folder = Path(params.tokenizer)
    wall, cpu = time.perf_counter(), time.process_time()
    kernels = bench_pack.kiln_in_process(folder, table, 1024, params, Path(args.work))
    in_process = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                  "shards": kernels["shards"], "tokens": kernels["tokens"]}
    result = {"documents": table.num_rows, "text_mb": round(table.column("text").nbytes / 1e6, 1),
              "load_before": load, "load_after": os.getloadavg(), "ray": ray_run, "in_process": in_process,
              "ray_vs_in_process": round(in_process["wall_s"] / ray_run["operator_s"], 2)}
    print(json.dumps(result, indent=1))
    if (kernels["shards"], kernels["tokens"]) != (extra["shards"], extra["tokens"]):
        print("the two runs wrote different shards or tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
