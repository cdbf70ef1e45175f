"""Rule filters on whole documents: length first; the quality rules of Ziya2 grow from here."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from operators.base import Filter, Params, first_reason, reasons_where, set_column
from operators.registry import register


class LengthParams(Params):
    min_chars: int = 1
    max_chars: int | None = None

    @model_validator(mode="after")
    def _check_range(self) -> LengthParams:
        if self.min_chars < 0:
            raise ValueError("min_chars must be >= 0")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


@register
class LengthFilter(Filter):
    """Rejects documents shorter than `min_chars` (`too_short`) or longer than `max_chars`
    (`too_long`), counted in Unicode characters; records `stat.chars`."""

    name = "length_filter"
    Params = LengthParams

    def compute(self, batch: pa.Table) -> pa.Table:
        return set_column(batch, "stat.chars", pc.utf8_length(batch.column("text")).cast(pa.int64()))

    def decide(self, batch: pa.Table) -> pa.Array:
        chars = batch.column("stat.chars").to_numpy()
        reasons = [reasons_where(chars < self.params.min_chars, "too_short")]
        if self.params.max_chars is not None:
            reasons.append(reasons_where(chars > self.params.max_chars, "too_long"))
        return first_reason(*reasons) if len(reasons) > 1 else reasons[0]

