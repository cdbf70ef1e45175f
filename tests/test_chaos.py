"""Chaos: kiln as a hostile user and a bad day would treat it (`make chaos`, also in `make test`).

- a battery of bad input files (more than 20 kinds) in one run: every record kept or
  rejected with its reason, nothing doubled, `kiln verify` clean;
- what is checked before Ray starts: a missing model, an output folder that is read-only,
  not permitted or under a file, too little free disk; one line each with the YAML path;
- two runs of one config at once: the second is refused (exit 2, one line naming the first)
  and leaves the first's unfinished stage alone; then `kill -9` of the first driver in the
  middle of its stage (none of its Ray processes may outlive it), and a rerun that takes
  over the stale lock and finishes with every document once;
- a disk that fills up in the middle of a stage (a 4 MB tmpfs; skipped where mounting one
  is not allowed): one line, nothing published, and the rerun on a disk with room is whole.

Each asserts nothing lost, nothing doubled, and one clear line. About two minutes on 2 CPUs.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chaos_ops  # noqa: F401  (registers chaos_slow here; the subprocess driver imports it too)
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from common import storage
from common.errors import StageError
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.runner import RunRequest, run_pipeline
from pipeline.verify import verify_run

pytestmark = [pytest.mark.chaos]
REPO = Path(__file__).resolve().parents[1]


def real_lines(shared_data: Path, n: int) -> list[str]:
    return (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[:n]


def run(config: dict, output: Path, echo=None, **request):
    config = {**config, "run": {"name": "chaos", "output": str(output)}}
    return run_pipeline(parse_config(config), RunRequest(progress=False, **request), echo=echo or (lambda _: None))


def all_ids(run_dir: Path, folder: str) -> list[str]:
    ids = []
    for part in ("data", "rejected"):
        table = storage.read_table(run_dir / folder / part, ["id"])
        ids += table.column("id").to_pylist() if table.num_rows else []
    return ids


def assert_whole(run_dir: Path) -> None:
    """Every stage adds up, every id once, and verify agrees."""
    checks = verify_run(run_dir)
    assert checks and all(c.ok for c in checks), [c.problems for c in checks]
    for st in json.loads((run_dir / "stats.json").read_text())["stages"]:
        ids = all_ids(run_dir, st["folder"])
        assert len(ids) == len(set(ids)) == st["docs_in"] == st["docs_out"] + st["rejected_total"]


# --------------------------------------------------------------------------- bad input battery


def write_battery(folder: Path, lines: list[str]) -> dict[str, str]:
    """Bad (and awkward but good) input files; returns {file: what it tests}."""
    folder.mkdir(parents=True)
    good = [json.dumps({"id": f"g{i}", "text": t}, ensure_ascii=False).encode() for i, t in enumerate(lines)]
    kinds: dict[str, bytes] = {
        "01-good.jsonl": b"\n".join(good[:10]) + b"\n",
        "02-bom.jsonl": b"\xef\xbb\xbf" + b"\n".join(good[10:12]) + b"\n",
        "03-crlf.jsonl": b"\r\n".join(good[12:14]) + b"\r\n",
        "04-malformed.jsonl": b'{"id": "m", "text": "unterminated\n' + good[14] + b"\n",
        "05-invalid-utf8.jsonl": b'{"id": "u", "text": "bad \xff\xfe bytes"}\n',
        "06-missing-text.jsonl": b'{"id": "nt", "body": "wrong field"}\n',
        "07-text-not-string.jsonl": b'{"id": "ns", "text": 42}\n{"id": "nl", "text": null}\n',
        "08-empty-text.jsonl": b'{"id": "e1", "text": ""}\n{"id": "e2", "text": "   \\n\\t "}\n',
        "09-not-object.jsonl": b"[1, 2, 3]\nnull\n\"a string\"\n",
        "10-huge.jsonl": json.dumps({"id": "big", "text": "x" * 300_000}).encode() + b"\n",
        "11-empty.jsonl": b"",
        "12-blank-lines.jsonl": b"\n\n   \n\r\n",
        "13-no-final-newline.jsonl": good[15],
        "14-repeated-ids.jsonl": good[0] + b"\n" + good[0] + b"\n" + good[1] + b"\n",
        "15-script-and-path-tricks.jsonl": b"\n".join(json.dumps(r).encode() for r in [
            {"id": "../../etc/passwd", "text": "<script>alert('x')</script> " + lines[16]},
            {"id": "/abs\\path\x00nul", "text": "\u202e\u200bRTL and zero-width " + lines[17]}]) + b"\n",
        "16-deep.jsonl": b'{"id": "deep", "text": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
        "17-utf16.jsonl": json.dumps({"id": "w", "text": lines[18]}, ensure_ascii=False).encode("utf-16"),
        "18-binary.txt": bytes(range(256)) * 4 + b"\n" + lines[19].encode() + b"\n",
        "19-nul-bytes.txt": b"text with \x00 NUL \x00 bytes " + lines[20].encode() + b"\n",
        "20-control-only.txt": b"\x01\x02\x03\x1b[31m\n",
    }
    for name, data in kinds.items():
        (folder / name).write_bytes(data)
    whole = gzip.compress(b"\n".join(good[21:40]) + b"\n")
    (folder / "21-truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "22-not-really.jsonl.bz2").write_bytes(b"this is not bzip2 at all\n")
    (folder / "23-good.jsonl.bz2").write_bytes(bz2.compress(b"\n".join(good[40:45]) + b"\n"))
    table = pa.table({"id": ["p1", "p2", "p3", "g0"], "text": [lines[45], None, "", lines[46]]})
    pq.write_table(table, folder / "24-nulls.parquet")
    # The same file name under another folder of the same source: ids collide across files.
    (folder / "sub").mkdir()
    (folder / "sub/01-good.jsonl").write_bytes(b"\n".join(good[:3]) + b"\n")
    return {name: name for name in [*kinds, "21-truncated.jsonl.gz", "22-not-really.jsonl.bz2", "23-good.jsonl.bz2",
                                    "24-nulls.parquet", "sub/01-good.jsonl"]}


@pytest.mark.ray
def test_bad_input_battery_every_record_accounted_for_once(tmp_path, ray_local, shared_data):
    files = write_battery(tmp_path / "in", real_lines(shared_data, 50))
    assert len(files) >= 20
    config = {"ray": {"batch_size": 8},
              "inputs": [{"path": str(tmp_path / "in"), "source": "web", "id_field": "id", "format": "auto",
                          "max_doc_bytes": 100_000}],
              "stages": [{"name": "clean", "ops": [{"normalize": {}}, {"length_filter": {"min_chars": 5}}]},
                         {"name": "dedup", "ops": [{"exact_dedup": {}}]}]}
    txt_input = {"path": str(tmp_path / "in/*.txt"), "source": "txt"}
    config["inputs"][0]["path"] = str(tmp_path / "in/**/*.[jp][sa]*")  # jsonl, jsonl.gz/.bz2, parquet
    config["inputs"].append(txt_input)
    stats = run(config, tmp_path / "run")
    run_dir = tmp_path / "run"
    assert_whole(run_dir)
    first, second = stats["stages"]
    reasons = {k.split("/", 1)[1] for k in first["rejected"] if k.startswith("read/")}
    assert {"malformed_json", "invalid_utf8", "missing_text", "text_not_string", "empty_text", "not_an_object",
            "too_large", "corrupt_file"} <= reasons, first["rejected"]
    kept = storage.read_table(run_dir / "01-clean/data", ["id", "text"])
    kept_ids = set(kept.column("id").to_pylist())
    # The BOM and CRLF files' good lines, the file without a final newline, parquet's good rows.
    assert {"web:g10", "web:g11", "web:g12", "web:g13", "web:g15", "web:p1"} <= kept_ids
    # g0 is in 01-good, twice in 14-repeated-ids, in sub/01-good and in the parquet file.
    assert {"web:g0", "web:g0#2", "web:g0#3", "web:g0#4", "web:g0#5"} <= kept_ids
    dedup_rejected = storage.read_table(run_dir / "02-dedup/rejected", ["id"]).column("id").to_pylist()
    assert sum(i.startswith("web:g0") for i in dedup_rejected) == 3  # identical copies; the parquet g0 differs
    assert second["docs_in"] == first["docs_out"]


# --------------------------------------------------------------------------- before Ray starts


def cli_run(tmp_path: Path, config: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / f"c{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), "--no-progress"])
    return code, capsys.readouterr().err.strip().splitlines()


def small_config(tmp_path: Path, output: str, ops: list | None = None) -> dict:
    (tmp_path / "in.txt").write_text("one document of plain text\n")
    return {"run": {"name": "t", "output": output}, "inputs": [{"path": str(tmp_path / "in.txt")}],
            "stages": [{"name": "clean", "ops": ops or [{"normalize": {}}]}]}


def test_missing_model_files_are_one_line_each_with_the_yaml_path_before_ray(tmp_path, capsys):
    """Issue 17 item 6: a missing perplexity model was found after Ray started (227 lines)."""
    ops = [{"perplexity": {"models": {"zh": str(tmp_path / "no/zh.binary")}}},
           {"quality_classifier": {"model": str(tmp_path / "no/q.ftz")}},
           {"lm_perplexity": {"model": str(tmp_path / "no-lm")}}]
    code, err = cli_run(tmp_path, small_config(tmp_path, str(tmp_path / "run"), ops), capsys)
    assert code == 2 and len(err) == 3, err
    assert err[0].startswith("kiln run: error: stages[0].ops[0].perplexity.models.zh: kenlm model ")
    assert err[1].startswith("stages[0].ops[1].quality_classifier.model: fasttext model ")
    assert err[2].startswith("stages[0].ops[2].lm_perplexity.model: ") and "does not exist" in err[2]
    assert not (tmp_path / "run").exists()


def test_an_output_folder_under_a_file_or_not_permitted_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    for output, why in [(str(tmp_path / "a-file/run"), "a file is in the way"),
                        ("/sys/kiln-chaos-run", "Operation not permitted")]:
        code, err = cli_run(tmp_path, small_config(tmp_path, output), capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("kiln run: error: run.output: cannot write"), err
        assert why in err[0]


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only); skip cleanly where that is not allowed."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        target = tmp_path / f"tmpfs-{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_output_and_too_little_free_disk_are_one_line(tmp_path, tmpfs, capsys):
    code, err = cli_run(tmp_path, small_config(tmp_path, str(tmpfs("1m", read_only=True) / "run")), capsys)
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0], err
    small = tmpfs("1m")
    config = small_config(tmp_path, str(small / "run"))
    (tmp_path / "in.txt").write_text("a line of text that repeats\n" * 200_000)  # 5.6 MB
    code, err = cli_run(tmp_path, config, capsys)
    assert code == 2 and len(err) == 1, err
    assert "run.output: " in err[0] and "GB free, but the 1 stage(s) to run need about" in err[0]


# --------------------------------------------------------------------------- disk full mid-stage


@pytest.mark.ray
def test_a_disk_that_fills_up_mid_stage_is_one_line_and_publishes_nothing(tmp_path, tmpfs, ray_local):
    import base64

    # Random text does not compress: 6.7 MB of it passes the free-space estimate (half) on a
    # 4 MB disk and then fills it.
    rng = __import__("random").Random(0)
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"text": base64.b64encode(rng.randbytes(700)).decode()}) + "\n" for _ in range(7000)))
    config = {"inputs": [{"path": str(tmp_path / "in.jsonl"), "source": "web"}],
              "stages": [{"name": "clean", "ops": [{"length_filter": {"min_chars": 5}}]}]}
    disk = tmpfs("4m")
    with pytest.raises(StageError) as failed:
        run(config, disk / "run")
    message = str(failed.value)
    assert "\n" not in message and "stage 01-clean failed" in message and "No space left on device" in message
    assert not (disk / "run/01-clean").exists() and not list((disk / "run").glob(".tmp-*"))
    stats = run(config, tmp_path / "roomy")
    assert stats["stages"][0]["docs_in"] == 7000
    assert_whole(tmp_path / "roomy")


# --------------------------------------------------------------------------- two runs, kill -9


DRIVER = "import sys, chaos_ops; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"


def group_members(pgid: int) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid:
                found.append(" ".join(proc.info["cmdline"] or [])[:80])
    return found


@pytest.mark.ray
def test_two_runs_at_once_then_kill_9_mid_stage_then_rerun(tmp_path, ray_local, shared_data, capsys):
    """Issue 17 item 2: a second run deleted the live run's stage folder and the first died;
    here the second is refused, the first is killed mid-stage, and a rerun is whole."""
    lines = real_lines(shared_data, 400)
    (tmp_path / "in").mkdir()
    for k in range(4):  # four files: four read tasks
        (tmp_path / f"in/part{k}.txt").write_text("\n".join(lines[k * 100:(k + 1) * 100]) + "\n")
    run_dir = tmp_path / "run"
    config = {"run": {"name": "chaos", "output": str(run_dir)},
              "ray": {"num_cpus": 2, "object_store_memory": "200MB", "batch_size": 10},
              "inputs": [{"path": str(tmp_path / "in"), "source": "web"}],
              "stages": [{"name": "slow", "ops": [{"chaos_slow": {"seconds_per_batch": 0.3}}]}]}
    config_path = tmp_path / "slow.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    first = subprocess.Popen([sys.executable, "-c", DRIVER, "run", str(config_path), "--no-progress"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        # The stage's folder exists from its start; its files are written in bundles of tens
        # of MB, so here only at the end: wait for the folder, then give the slow operator a
        # moment (the stage takes about 6 s of its 0.3 s batches on 2 CPUs).
        while not list(run_dir.glob(".tmp-01-slow-*")):
            assert first.poll() is None and time.time() < deadline, "the first run never started its stage"
            time.sleep(0.2)
        time.sleep(1.0)
        tmp_folder = next(run_dir.glob(".tmp-01-slow-*"))
        code = main(["run", str(config_path), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"in use by another kiln run: pid {first.pid} on " in err[0], err
        assert tmp_folder.is_dir() and first.poll() is None  # the live run goes on
        os.kill(first.pid, signal.SIGKILL)  # kill -9 of the driver, mid-stage
        first.wait(timeout=30)
        # Issue 17 item 7: Ray's agents outlived a killed driver for minutes; kiln's watchdog
        # stops every process the driver started (all in the driver's process group here).
        deadline = time.time() + 30
        while group_members(first.pid) and time.time() < deadline:
            time.sleep(0.5)
        assert group_members(first.pid) == [], group_members(first.pid)
    finally:
        # The killed driver's Ray processes, which kill -9 gives no chance to stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    assert not storage.is_finished(run_dir / "01-slow")
    said: list[str] = []
    stats = run_pipeline(parse_config(config), RunRequest(progress=False), echo=said.append)
    assert any("took over the lock of a run that is gone" in line for line in said), said
    assert any(f"removed the unfinished stage folder {tmp_folder.name}" in line for line in said), said
    assert stats["stages"][0]["docs_in"] == stats["stages"][0]["docs_out"] == 400
    assert_whole(run_dir)

