"""A slow operator for tests/test_chaos.py and the runner's progress test: it keeps a stage
busy long enough to kill the driver in the middle of it, to start a second run beside it, or
to see progress lines. Importing this module
registers it; Ray workers import it through PYTHONPATH (tests/ is on it)."""

from __future__ import annotations

import time

import pyarrow as pa

from operators.base import Mapper, Params
from operators.registry import register


class SlowParams(Params):
    seconds_per_batch: float = 0.5


@register
class SlowIdentity(Mapper):
    name = "chaos_slow"
    Params = SlowParams

    def map(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.params.seconds_per_batch)
        return batch
