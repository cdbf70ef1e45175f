"""One run per run folder (issue 17 item 2): a second run is refused with the owner's pid and
host, exit 2, and never removes the live run's unfinished stage folder; a lock left by a
killed run is taken over."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import yaml

from pipeline.cli import main
from pipeline.lock import LOCK_NAME, RunLock, RunLocked


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                 "started": 0, "command": "kiln run other.yaml"}))


def test_a_second_lock_on_one_folder_is_refused_and_released_after(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLocked, match=r"in use by another kiln run: pid \d+ on "):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        pass


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    write_lock(tmp_path, dead_pid())
    said = []
    with RunLock(tmp_path, said.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != 0
    assert said and "a run that is gone" in said[0]


def test_a_lock_from_another_host_says_how_to_remove_it(tmp_path):
    write_lock(tmp_path, 1, host="elsewhere")
    with pytest.raises(RunLocked, match=r"on elsewhere.*if that run is gone, delete .*\.kiln-lock"):
        RunLock(tmp_path).acquire()


def test_kiln_run_on_a_folder_in_use_exits_2_with_one_line_and_keeps_its_tmp_folder(tmp_path, live_pid, capsys):
    (tmp_path / "in.txt").write_text("one document\n")
    run_dir = tmp_path / "run"
    config = {"run": {"name": "t", "output": str(run_dir)}, "inputs": [{"path": str(tmp_path / "in.txt")}],
              "stages": [{"name": "clean", "ops": [{"normalize": {}}]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    write_lock(run_dir, live_pid)
    (run_dir / ".tmp-01-clean-abcd1234").mkdir()  # the live run's stage in progress
    assert main(["run", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {live_pid} on {socket.gethostname()}" in err[0], err
    assert (run_dir / ".tmp-01-clean-abcd1234").is_dir()
    assert not (run_dir / "config.yaml").exists()
