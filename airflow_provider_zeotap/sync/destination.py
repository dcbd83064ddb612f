"""The port the engine owns: what a destination adapter must do for the delivery runner.

A destination knows how a batch of rows becomes requests for one operation and what came back per row;
it does not know how the rows were chosen. The runner owns batching, splitting refused batches,
ownership records, checkpoints, outcomes files and the commit. Adapters live in ``destinations/`` and
import this module; this module imports nothing of theirs.

What ``send`` may do:
- return one ``RowOutcome`` per row (a row without one counts as failed);
- raise ``BatchRefused`` when the API refused the whole batch without naming rows: the runner halves it;
- raise ``DeliveryStopped`` (a fatal error after some rows were answered) or a ``FatalError``: the
  runner commits what was acknowledged and stops.
Any other exception stops the delivery the same way. Errors a later run could get past (timeouts,
5xx after retries) must come back as ``failed`` outcomes, not as exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from airflow_provider_zeotap.sync.models import Change, Outcome
from airflow_provider_zeotap.sync.modes import Operation, OperationTable


@dataclass(frozen=True)
class OutboundRow:
    row_id: int
    change: Change
    #: Primary-key values, for logs and the rejected rows file.
    key: Mapping[str, Any]
    #: The row as destination fields (after field mapping). A field whose value is None is a clear:
    #: the value was delivered before and is now empty. The adapter sends it the way its API clears.
    payload: dict[str, Any]
    #: This sync owns the record: it is in the committed baseline, this sync recorded it as attempted
    #: before an earlier send, or the author passed ``take_over_existing=True``. "Already there" means
    #: "done" only for such rows; for others it means someone else's record, which is left alone.
    ours: bool = False


@dataclass(frozen=True)
class RowOutcome:
    row_id: int
    outcome: Outcome
    reason: str | None = None
    #: The row itself is at fault (invalid data): sent unchanged, it would be refused again. Such rows are
    #: remembered and not re-sent until they change; other rejections (not found, conflict) are retried.
    permanent: bool = False

    @classmethod
    def ok(cls, row: OutboundRow) -> RowOutcome:
        return cls(row.row_id, Outcome.SUCCEEDED)

    @classmethod
    def rejected(cls, row: OutboundRow, reason: str, *, permanent: bool = False) -> RowOutcome:
        return cls(row.row_id, Outcome.REJECTED, reason, permanent)

    @classmethod
    def skipped(cls, row: OutboundRow, reason: str) -> RowOutcome:
        return cls(row.row_id, Outcome.SKIPPED, reason)

    @classmethod
    def failed(cls, row: OutboundRow, reason: str) -> RowOutcome:
        return cls(row.row_id, Outcome.FAILED, reason)


class BatchRefused(Exception):
    """The API refused a whole batch without saying which rows: the runner splits it to find them."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class DeliveryStopped(Exception):
    """A fatal error stopped a batch part-way; ``outcomes`` holds the rows that were answered before it.

    Those answers are kept (their rows are committed), so a bad key found mid-batch costs no resend.
    """

    def __init__(self, error: Exception, outcomes: Sequence[RowOutcome]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = list(outcomes)


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do; the engine decides what to send from this."""

    name: str
    #: "sync_mode" for records, "audience_mode" for audiences: the operator argument users set.
    mode_argument: str
    modes: Mapping[str, OperationTable]
    batch_size: int
    max_batch_size: int
    required_fields: Sequence[str] = ()
    default_fields: Sequence[str] = ()
    #: Schemaless objects take any field; others only their default fields.
    accepts_any_field: bool = False
    #: The fields that say which member a row is, first mapped one wins. A mode that removes must find
    #: them in the primary key: a member whose identity changed would otherwise be added, and the old one
    #: never removed.
    identity_fields: Sequence[str] = ()
    #: How a cleared field reaches this destination (for logs and the README): "null" or "empty string".
    clears_with: str = "null"
    #: False: the write is whole or nothing; a ``BatchRefused`` rejects every row of the batch, never split.
    split_refused_batches: bool = True
    #: True: one batch may carry several operations, delivered by ``send_combined`` in one write.
    combined_operations: bool = False

    def operations_for(self, mode: str) -> OperationTable:
        """The mode's table, with ``refresh`` rows sent like added ones (unless that would remove)."""
        if mode not in self.modes:
            raise ValueError(
                f"{self.name} does not support {self.mode_argument}={mode!r}; supported: {sorted(self.modes)}."
            )
        table = dict(self.modes[mode])
        added = table.get(Change.ADDED)
        if added is not None and not added.removes:
            table.setdefault(Change.REFRESH, added)
        return table


class Destination(ABC):
    capabilities: ClassVar[Capabilities]

    def prepare(self, *, dry_run: bool) -> None:
        """Read-only checks before anything is sent (the list exists, the key may write)."""

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        """A reason to reject this row without sending it, or None."""
        return None

    def identity(self, row: OutboundRow) -> str | None:
        """The record this row becomes at the destination, as the destination will see it.

        After the adapter's own normalisation (a lowercased email, a generated code). Two rows of one
        run with the same identity would overwrite each other, so the runner rejects both; a removal
        whose identity a current row still has is not sent. None: the row cannot be identified (it will
        be rejected by ``validate``), or the destination keys records by the primary key alone.
        """
        return None

    def target(self) -> dict[str, Any]:
        """What this adapter writes to, beyond the connection (list id, import id, object type).

        Part of the sync's binding: a baseline delivered to one target is never used for another.
        """
        return {}

    @abstractmethod
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        """Deliver one batch; return one outcome per row, or raise (see the module docstring)."""

    def close(self) -> None:
        """Release connections."""
