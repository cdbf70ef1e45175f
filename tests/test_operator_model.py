"""The operator model's bookkeeping: rejection marking, skipping, analyze mode, error isolation."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators import registry
from operators.base import (
    REJECT_DETAIL,
    REJECT_OP,
    REJECT_REASON,
    SECONDS_PREFIX,
    WOULD_REJECT,
    Filter,
    Mapper,
    OperatorBug,
    Params,
    apply_operator,
    reasons_where,
    run_operators,
    split_rejected,
)
from operators.normalize import Normalize
from operators.rules import LengthFilter


def docs(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts})


class ContainsParams(Params):
    needle: str = "spam"


class RejectContaining(Filter):
    name = "test_reject_containing"
    Params = ContainsParams

    def compute(self, batch: pa.Table) -> pa.Table:
        hits = [t.count(self.params.needle) for t in batch.column("text").to_pylist()]
        return batch.append_column("stat.hits", pa.array(hits, pa.int64()))

    def decide(self, batch: pa.Table) -> pa.Array:
        return reasons_where([h > 0 for h in batch.column("stat.hits").to_pylist()], "contains_needle")


class Upper(Mapper):
    name = "test_upper"

    def map(self, batch: pa.Table) -> pa.Table:
        return batch.set_column(1, "text", pa.array([t.upper() for t in batch.column("text").to_pylist()]))


class FailsOnBoom(Mapper):
    name = "test_fails_on_boom"

    def map(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        if any("boom" in t for t in texts):
            raise ValueError("cannot handle boom")
        return batch


def test_filter_marks_rejected_rows_with_operator_and_reason():
    out = apply_operator(RejectContaining(), docs(["good text", "spam here", "more spam spam"]))
    kept, rejected = split_rejected(out)
    assert kept.column("id").to_pylist() == ["d0"]
    assert sorted(rejected.column("id").to_pylist()) == ["d1", "d2"]
    assert set(rejected.column(REJECT_OP).to_pylist()) == {"test_reject_containing"}
    assert set(rejected.column(REJECT_REASON).to_pylist()) == {"contains_needle"}
    assert rejected.column("stat.hits").to_pylist() == [1, 2]
    # kept rows carry no reject columns and no internal timing columns
    assert REJECT_OP not in kept.column_names
    assert not [c for c in kept.column_names if c.startswith(SECONDS_PREFIX)]


def test_later_operators_do_not_see_rejected_rows():
    out = run_operators([RejectContaining(), Upper()], docs(["good text", "spam here"]))
    kept, rejected = split_rejected(out)
    assert kept.column("text").to_pylist() == ["GOOD TEXT"]
    assert rejected.column("text").to_pylist() == ["spam here"]  # untouched after rejection


def test_analyze_mode_drops_nothing_and_records_every_would_be_rejection():
    ops = [RejectContaining(), LengthFilter(min_chars=10)]
    out = run_operators(ops, docs(["good text here", "spam", "spam and long enough"]), analyze=True)
    kept, rejected = split_rejected(out)
    assert rejected.num_rows == 0 and kept.num_rows == 3
    assert kept.column(WOULD_REJECT).to_pylist() == [
        None,
        "test_reject_containing/contains_needle;length_filter/too_short",
        "test_reject_containing/contains_needle",
    ]
    # every statistic is computed for every row, including would-be rejected ones
    assert kept.column("stat.chars").to_pylist() == [14, 4, 20]


def test_a_document_that_makes_an_operator_raise_is_rejected_alone():
    out = apply_operator(FailsOnBoom(), docs(["fine", "boom goes here", "also fine"]))
    kept, rejected = split_rejected(out)
    assert kept.column("id").to_pylist() == ["d0", "d2"]
    assert rejected.column(REJECT_REASON).to_pylist() == ["error"]
    assert "cannot handle boom" in rejected.column(REJECT_DETAIL)[0].as_py()


def test_an_operator_failing_on_every_row_is_a_bug_not_bad_input():
    with pytest.raises(OperatorBug, match="failed on all 10 rows"):
        apply_operator(FailsOnBoom(), docs(["boom"] * 10))


def test_an_operator_that_drops_rows_breaks_the_contract():
    class Dropper(Mapper):
        name = "test_dropper"

        def map(self, batch):
            return batch.slice(0, 1)

    with pytest.raises(OperatorBug, match="must keep every row"):
        apply_operator(Dropper(), docs(["a", "b"]))


def test_params_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="extra"):
        LengthFilter(min_char=3)
    with pytest.raises(ValidationError, match="below min_chars"):
        LengthFilter(min_chars=10, max_chars=5)


def test_registry_finds_operators_by_name_and_suggests_close_names():
    assert registry.get("normalize") is Normalize
    with pytest.raises(registry.UnknownOperator, match="did you mean length_filter"):
        registry.get("lenght_filter")


def test_operators_need_setup_only_when_they_override_it():
    class WithModel(Mapper):
        name = "test_with_model"

        def setup(self):
            self.model = object()

        def map(self, batch):
            return batch

    assert WithModel.needs_setup() and not Normalize.needs_setup()


def test_normalize_on_real_weibo_text(shared_data):
    lines = (shared_data / "zh_uer_corpora/datasets/smp2020-ewect/usual/train.tsv").read_text().splitlines()[1:200]
    texts = [line.split("\t", 1)[-1] for line in lines]
    noisy = [f"\u200b{t}\u00a0\u00a0ＡＢＣ１２３\x07" for t in texts]
    out = run_operators([Normalize()], docs(noisy))
    kept, _ = split_rejected(out)
    for before, after in zip(texts, kept.column("text").to_pylist()):
        assert "\u200b" not in after and "\x07" not in after and "\u00a0" not in after
        assert after.endswith("ABC123")
        # Chinese full-width punctuation survives NFKC
        for mark in "，！？":
            assert before.count(mark) == after.count(mark)


def test_normalize_rejects_documents_it_empties_and_collapses_whitespace():
    out = run_operators([Normalize()], docs(["\u200b\u200d\ufeff  \x00", "a  b\t\tc\n\n\n\n d  \r\ne"]))
    kept, rejected = split_rejected(out)
    assert rejected.column(REJECT_REASON).to_pylist() == ["empty"]
    assert kept.column("text").to_pylist() == ["a b c\n\nd\ne"]
