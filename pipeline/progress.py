"""Progress a person can read on a long run: per stage, documents written, docs/s and ETA.

A stage's rows are written by Ray tasks on any node, so each write task reports the rows it
has finished to a small counter actor; a thread in the driver reads the counter every
interval and prints one line. On a terminal the line is rewritten in place; otherwise (a log
file, a Ray job's output) one line per interval, so a log of a day-long run shows how it went.
The ETA needs the rows to expect: a later stage knows them from the stage before; the first
stage reads files whose document count is unknown, so it shows the bytes of text read instead.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class ProgressCounter:
    """Rows and text bytes written so far (a Ray actor in the runner, a plain object in tests)."""

    def __init__(self) -> None:
        self.rows = 0
        self.text_bytes = 0

    def add(self, rows: int, text_bytes: int) -> None:
        self.rows += rows
        self.text_bytes += text_bytes

    def read(self) -> tuple[int, int]:
        return self.rows, self.text_bytes

    def reset(self) -> None:
        """Zero the counts: the runner reuses one counter actor for every write of a run."""
        self.rows = 0
        self.text_bytes = 0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(label: str, rows: int, expected: int | None, elapsed: float, text_bytes: int = 0) -> str:
    """`  02-filter: 120,000 / 480,000 docs (25%), 2,345 docs/s, ETA 2m33s` (or text MB and
    MB/s when the number of rows to expect is unknown)."""
    rate = rows / elapsed if elapsed > 0 else 0.0
    if expected:
        share = min(rows / expected, 1.0)
        eta = f", ETA {_duration((expected - rows) / rate)}" if rate > 0 and rows < expected else ""
        return f"  {label}: {rows:,} / {expected:,} docs ({share:.0%}), {rate:,.0f} docs/s{eta}"
    mb = text_bytes / (1 << 20)
    return (f"  {label}: {rows:,} docs, {mb:,.1f} MB of text, {rate:,.0f} docs/s, "
            f"{mb / elapsed if elapsed > 0 else 0:,.1f} MB/s, {_duration(elapsed)} so far")


class ProgressReporter:
    """Prints progress lines for one write at a time (`watch`); disabled when interval <= 0."""

    def __init__(self, echo: Callable[[str], None], interval: float, live: bool | None = None,
                 make_counter: Callable[[], Any] | None = None, read_counter: Callable[[Any], tuple[int, int]] | None = None) -> None:
        self.echo = echo
        self.interval = interval
        self.live = sys.stdout.isatty() if live is None else live
        self.make_counter = make_counter or ProgressCounter
        self.read_counter = read_counter or (lambda counter: counter.read())

    @contextmanager
    def watch(self, label: str, expected: int | None) -> Iterator[Any]:
        """Yields the counter the write tasks add to (None when progress is off)."""
        if self.interval <= 0:
            yield None
            return
        counter = self.make_counter()
        stop = threading.Event()
        started = time.time()
        # On a terminal, refresh often; in a log, one line per interval.
        period = min(self.interval, 2.0) if self.live else self.interval
        printed = False

        def loop() -> None:
            nonlocal printed
            while not stop.wait(period):
                try:
                    rows, text_bytes = self.read_counter(counter)
                except Exception:  # the counter is gone with the stage: nothing to say
                    return
                line = progress_line(label, rows, expected, time.time() - started, text_bytes)
                if self.live:
                    sys.stdout.write("\r" + line[:200].ljust(100))
                    sys.stdout.flush()
                else:
                    self.echo(line)
                printed = True

        thread = threading.Thread(target=loop, name="kiln-progress", daemon=True)
        thread.start()
        try:
            yield counter
        finally:
            stop.set()
            thread.join()
            if self.live and printed:
                sys.stdout.write("\r" + " " * 100 + "\r")
                sys.stdout.flush()
