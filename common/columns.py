"""Names of the bookkeeping columns every row carries through a run: which operator rejected
it, why, and with what detail. The readers stamp them on lines they cannot read, operators on
documents they drop, and the stage writer sends such rows to `rejected/`."""

REJECT_OP = "reject_op"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
