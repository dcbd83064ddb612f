"""The contract between the delivery runner and one vendor object.

A destination knows how a batch of rows becomes requests for one operation and what came back per row;
it does not know how the rows were chosen. The runner owns batching, splitting refused batches,
checkpoints, outcomes files and the commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from airflow_provider_zeotap.http import ApiError, AuthenticationError, PermissionDeniedError
from airflow_provider_zeotap.sync.models import Change, Outcome
from airflow_provider_zeotap.sync.modes import Operation, OperationTable


@dataclass(frozen=True)
class OutboundRow:
    row_id: int
    change: Change
    #: Primary-key values, for logs and the rejected rows file.
    key: Mapping[str, Any]
    #: The row as destination fields (after field mapping).
    payload: dict[str, Any]


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


#: Errors that no row-level retry can fix: stop the task (after committing what was acknowledged).
FATAL_ERRORS: tuple[type[Exception], ...] = (AuthenticationError, PermissionDeniedError)


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

    def operations_for(self, mode: str) -> OperationTable:
        if mode not in self.modes:
            raise ValueError(
                f"{self.name} does not support {self.mode_argument}={mode!r}; supported: {sorted(self.modes)}."
            )
        return self.modes[mode]


class Destination(ABC):
    capabilities: ClassVar[Capabilities]

    def prepare(self, *, dry_run: bool) -> None:
        """Read-only checks before anything is sent (the list exists, the key may write)."""

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        """A reason to reject this row without sending it, or None."""
        return None

    @abstractmethod
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        """Deliver one batch; return one outcome per row, or raise ``BatchRefused``."""

    def close(self) -> None:
        """Release connections."""


def outcome_for_error(row: OutboundRow, error: Exception) -> RowOutcome:
    """A row whose request ended in ``error``: failed if a later run could succeed, else rejected."""
    if isinstance(error, FATAL_ERRORS):
        raise error
    if isinstance(error, ApiError) and error.retryable:
        return RowOutcome.failed(row, str(error))
    return RowOutcome.rejected(row, str(error))


def send_each(
    rows: Sequence[OutboundRow], send_one: Callable[[OutboundRow], RowOutcome], *, max_in_flight: int
) -> list[RowOutcome]:
    """Per-row APIs: one request per row, at most ``max_in_flight`` at once, an outcome for every row.

    A fatal error (bad key, no permission) stops the rows not yet started and raises ``DeliveryStopped``
    with the outcomes of those that were answered.
    """
    stop = threading.Event()

    def guarded(row: OutboundRow) -> RowOutcome | Exception | None:
        if stop.is_set():
            return None
        try:
            return send_one(row)
        except FATAL_ERRORS as error:
            stop.set()
            return error
        except ApiError as error:
            return outcome_for_error(row, error)

    if max_in_flight <= 1 or len(rows) <= 1:
        results = [guarded(row) for row in rows]
    else:
        with ThreadPoolExecutor(max_workers=min(max_in_flight, len(rows)), thread_name_prefix="zeotap-send") as pool:
            results = list(pool.map(guarded, rows))
    fatal = next((r for r in results if isinstance(r, Exception)), None)
    outcomes = [r for r in results if isinstance(r, RowOutcome)]
    if fatal is not None:
        raise DeliveryStopped(fatal, outcomes)
    return outcomes
