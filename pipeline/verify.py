"""`kiln verify RUN`: prove that every document of every stage is accounted for.

For each finished stage: docs_in = docs_out + rejected in its statistics; the files hold
exactly those counts; every rejected row names its operator and reason; and the ids of the
stage's input (the re-read inputs for stage 1, the previous stage's kept rows otherwise) are
exactly the kept ids plus the rejected ids, each once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from common import storage
from common.errors import KilnError
from common.readers import read_inputs
from operators.base import REJECT_OP, REJECT_REASON
from pipeline.config import parse_inputs

EXAMPLES = 5


@dataclass
class StageCheck:
    folder: str
    docs_in: int = 0
    docs_out: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _ids(folder: Path) -> pa.Array:
    table = storage.read_table(folder, ["id"])
    return table.column("id").combine_chunks() if table.num_rows else pa.array([], pa.string())


def _duplicates(ids: pa.Array) -> list[str]:
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    return dup.field("values").to_pylist()[:EXAMPLES]


def _compare(expected: pa.Array, kept: pa.Array, rejected: pa.Array, check: StageCheck, what: str) -> None:
    for name, ids in (("kept", kept), ("rejected", rejected), (what, expected)):
        dups = _duplicates(ids)
        if dups:
            check.problems.append(f"{name} ids are not unique, e.g. {dups}")
    both = kept.filter(pc.is_in(kept, value_set=rejected)) if len(rejected) else kept.slice(0, 0)
    if len(both):
        check.problems.append(f"{len(both)} ids are both kept and rejected, e.g. {both.to_pylist()[:EXAMPLES]}")
    produced = pa.concat_arrays([kept, rejected]) if len(rejected) else kept
    missing = expected.filter(pc.invert(pc.is_in(expected, value_set=produced))) if len(expected) else expected
    extra = produced.filter(pc.invert(pc.is_in(produced, value_set=expected))) if len(produced) else produced
    if len(missing):
        check.problems.append(f"{len(missing)} {what} ids are neither kept nor rejected (lost), "
                              f"e.g. {missing.to_pylist()[:EXAMPLES]}")
    if len(extra):
        check.problems.append(f"{len(extra)} ids appear that are not in the {what}, "
                              f"e.g. {extra.to_pylist()[:EXAMPLES]}")


def verify_run(run_dir: str | Path) -> list[StageCheck]:
    run_dir = storage.location(run_dir)  # a local folder or a URI
    if not (run_dir / storage.STATS).exists():
        raise KilnError(f"{run_dir} is not a kiln run folder (no {storage.STATS}); run `kiln run CONFIG` first")
    run_stats = storage.read_json(run_dir / storage.STATS)
    inputs = None
    if (run_dir / "config.yaml").exists():
        inputs = parse_inputs((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("inputs"))
    checks: list[StageCheck] = []
    previous: dict[str, Any] | None = None
    for st in run_stats["stages"]:
        stage_dir = run_dir / st["folder"]
        check = StageCheck(st["folder"], st["docs_in"], st["docs_out"], st["rejected_total"])
        checks.append(check)
        if not storage.is_finished(stage_dir):
            check.problems.append("stage folder is missing or unfinished (no _SUCCESS)")
            previous = None
            continue
        st = storage.read_json(stage_dir / storage.STATS)
        if st["docs_in"] != st["docs_out"] + st["rejected_total"]:
            check.problems.append(f"docs_in {st['docs_in']} != docs_out {st['docs_out']} + rejected {st['rejected_total']}")
        if sum(st["rejected"].values()) != st["rejected_total"]:
            check.problems.append("rejected reasons do not add up to rejected_total")
        kept_rows = storage.count_rows(stage_dir / storage.DATA)
        rejected_rows = storage.count_rows(stage_dir / storage.REJECTED)
        if kept_rows != st["docs_out"]:
            check.problems.append(f"data/ holds {kept_rows} rows, stats say docs_out {st['docs_out']}")
        if rejected_rows != st["rejected_total"]:
            check.problems.append(f"rejected/ holds {rejected_rows} rows, stats say {st['rejected_total']}")
        if rejected_rows:
            marks = storage.read_table(stage_dir / storage.REJECTED, [REJECT_OP, REJECT_REASON])
            unmarked = marks.num_rows - pc.sum(pc.and_(pc.is_valid(marks.column(REJECT_OP)),
                                                       pc.is_valid(marks.column(REJECT_REASON)))).as_py()
            if unmarked:
                check.problems.append(f"{unmarked} rejected rows lack reject_op or reject_reason")
        kept, rejected = _ids(stage_dir / storage.DATA), _ids(stage_dir / storage.REJECTED)
        if st["index"] == 0:
            if inputs is None:
                check.problems.append("config.yaml is missing: cannot re-read the inputs")
                continue
            try:
                expected = pa.concat_arrays([t.column("id").combine_chunks() for t in read_inputs(inputs)])
            except KilnError as e:
                check.problems.append(f"cannot re-read the inputs: {e}")
                continue
            _compare(expected, kept, rejected, check, "input")
        else:
            if previous is None or st.get("input_run_id") != previous.get("run_id"):
                check.problems.append("its input is not the finished previous stage (stale stage; rerun the pipeline)")
                previous = st
                continue
            expected = _ids(run_dir / previous["folder"] / storage.DATA)
            _compare(expected, kept, rejected, check, "previous stage's kept")
        previous = st
    return checks
