"""One `kiln run` per run folder at a time: a lock file holding the owner's pid and host.

Two runs of one config would share stage folders: the second removed the first's unfinished
`.tmp-` folder as "left by an interrupted run" and the first died. The lock is
`RUN/.kiln-lock`, created exclusively (O_EXCL), holding JSON with pid, host, start time and
command line. A second run reads it and stops with one line naming the owner (exit 2). A
lock whose process is gone (same host, pid not alive: a `kill -9`, a crash) is stale: it is
taken over, and only then are stale `.tmp-` folders removed. A lock from another host cannot
be checked from here; the message says how to remove it by hand.

On a URI run folder (object stores have no exclusive create) the lock is advisory: written
and checked, but two runs starting in the same instant could both pass.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from common import storage
from common.errors import KilnError

LOCK_NAME = ".kiln-lock"


class RunLocked(KilnError):
    """Another live run holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner_text(owner: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')}, since {started} ({owner.get('command', '?')})"


class RunLock:
    """`with RunLock(run_dir):` holds the run folder for this process; see the module doc."""

    def __init__(self, run_dir: Any, echo: Any = print) -> None:
        self.path = run_dir / LOCK_NAME
        self.echo = echo
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                   "command": " ".join(["kiln", *sys.argv[1:]])[:200]}
        self.held = False

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by an owner that died at once: treated as stale below

    def _create(self) -> bool:
        body = json.dumps(self.me).encode()
        if storage.is_uri(self.path):
            if self.path.exists():
                return False
            self.path.write_bytes(body)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return True

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                self.held = True
                return
            owner = self._read_owner()
            if owner is None:
                continue  # released between our two looks
            local = owner.get("host") == self.me["host"]
            if owner and (not local or _alive(int(owner.get("pid", 0)))):
                hint = "" if local else f"; if that run is gone, delete {self.path}"
                raise RunLocked(f"{self.path.parent} is in use by another kiln run: {_owner_text(owner)}; wait "
                                f"for it to finish or stop it{hint}")
            # Stale: its process is gone. Move it aside (atomic locally), so two runs that
            # both found it stale cannot both take it over.
            aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
            try:
                self.path.rename(aside)
                aside.unlink()
            except OSError:
                continue
            if owner:
                self.echo(f"took over the lock of a run that is gone ({_owner_text(owner)})")
        raise RunLocked(f"could not take the lock {self.path}; another kiln run is starting on this folder")

    def release(self) -> None:
        if self.held:
            self.held = False
            owner = self._read_owner()
            if owner and owner.get("pid") == self.me["pid"] and owner.get("host") == self.me["host"]:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
