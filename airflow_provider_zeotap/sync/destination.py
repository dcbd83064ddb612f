"""The port the engine owns: what a destination adapter must do for the delivery runner.

A destination knows how a batch of rows becomes requests for one operation and what came back per row;
it does not know how the rows were chosen. The runner owns batching, splitting refused batches,
ownership records, checkpoints, outcomes files and the commit. Adapters live in ``destinations/`` and
import this module; this module imports nothing of theirs.

The four shapes an API can have, and how a destination declares its own:
- one request per row, or batches of rows per request: ``batch_sizes`` per operation (a batch is the
  checkpoint unit: the runner records each acknowledged batch, and a resumed task skips them);
- batches atomic per request with no per-row errors: raise ``BatchRefused`` and the runner halves the
  batch to isolate the rows at fault, unless ``split_refused_batches`` is False (a whole-list write,
  where splitting only multiplies writes): then every row of the batch is rejected with the reason;
- one write for all the operations of a batch: ``combined_operations``, and ``send_combined``;
- many requests in flight: implement ``asend`` (and ``aclose``). The runner then runs the whole delivery
  on one event loop and keeps ``batches_in_flight`` batches going, so requests flow across batch
  boundaries; the hook's pacer bounds the requests themselves.

What ``send`` (``asend``, ``send_combined``) may do:
- return one ``RowOutcome`` per row (a row without one counts as failed);
- raise ``BatchRefused`` when the API refused the whole batch without naming rows: the runner halves it;
- raise ``DeliveryStopped`` (a fatal error after some rows were answered) or a ``FatalError``: the
  runner commits what was acknowledged and stops.
Any other exception stops the delivery the same way. Errors a later run could get past (timeouts,
5xx after retries) must come back as ``failed`` outcomes, not as exceptions.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    #: Per-operation batch sizes (default and maximum) where they differ from ``batch_size`` and
    #: ``max_batch_size``: a write of one id per request and a delete of 400 ids per request.
    batch_sizes: Mapping[Operation, int] = field(default_factory=dict)
    max_batch_sizes: Mapping[Operation, int] = field(default_factory=dict)
    #: False: a batch is one write that lands whole or not at all, so a refused batch is rejected whole,
    #: never halved (halving a whole-list write only multiplies writes).
    split_refused_batches: bool = True
    #: True: a batch holds rows of several operations (removals first), sent with ``send_combined``.
    combined_operations: bool = False
    #: Batches an async destination keeps going at once (a sync one sends one batch at a time).
    batches_in_flight: int = 1

    def batch_size_for(self, operation: Operation) -> int:
        return self.batch_sizes.get(operation, self.batch_size)

    def max_batch_size_for(self, operation: Operation) -> int:
        return self.max_batch_sizes.get(operation, self.max_batch_size)

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
    """One vendor object. Implement ``send``, or ``asend`` for many requests in flight, or both."""

    capabilities: ClassVar[Capabilities]
    #: Set by the runner for a delivery: where ``answered`` reports each row's answer.
    on_answer: Callable[[RowOutcome], None] | None = None

    def answered(self, outcome: RowOutcome) -> RowOutcome:
        """Report one row's answer as soon as it comes, before the batch ends; returns it.

        For a destination whose batch is many requests (one per row): the runner keeps these answers, so
        a task killed mid-batch re-sends only the rows that had none. One request per batch needs nothing:
        the batch's outcomes are its answers.
        """
        if self.on_answer is not None:
            self.on_answer(outcome)
        return outcome

    @property
    def is_async(self) -> bool:
        """The runner drives this destination on an event loop (see ``asend``)."""
        return type(self).asend is not Destination.asend

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

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        """Deliver one batch; return one outcome per row, or raise (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} delivers with asend")

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        """``send`` on the runner's event loop, for APIs that take many requests in flight.

        Called for several batches at once (``batches_in_flight``); every call of one delivery runs on
        the same loop, so a hook's async client made in the first call serves them all.
        """
        raise NotImplementedError(f"{type(self).__name__} delivers with send")

    def send_combined(self, parts: Sequence[tuple[Operation, Sequence[OutboundRow]]]) -> list[RowOutcome]:
        """One batch of several operations, for ``combined_operations`` destinations: one write for all."""
        raise NotImplementedError(f"{type(self).__name__} does not declare combined_operations")

    def existing_records(self) -> Iterable[dict[str, Any]] | None:
        """What the target holds now, each record in destination fields (enough for ``identity``).

        Read once, at the start of a ``take_over_existing`` mirror, so the records the source lacks can be
        removed and the target ends equal to the source. None: this destination cannot list its target.
        """
        return None

    def close(self) -> None:
        """Release connections."""

    async def aclose(self) -> None:
        """Release the connections made on the runner's event loop (called on that loop)."""
