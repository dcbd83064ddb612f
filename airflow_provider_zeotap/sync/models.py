"""Pydantic models for everything that crosses a task boundary (XCom) or the state store.

XCom carries only these small JSON documents: counts and file locations, never row data, so a
ten-million-row sync costs the metadata database a few hundred bytes.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

#: Columns the engine adds to the snapshot and changes files. The ``__`` prefix keeps them apart from
#: user columns; a source column with this prefix is refused at extract time.
CHANGE_COLUMN = "__change"
ROW_ID_COLUMN = "__row_id"
INTERNAL_PREFIX = "__"


class Change(str, Enum):
    """What happened to a primary key between the committed snapshot and the current source."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanCounts(_Frozen):
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    invalid: int = 0
    #: Rows read from the source, invalid ones included.
    total: int = 0


class CommittedState(_Frozen):
    """The pointer kept in the Airflow metadata store: which snapshot is the baseline of a sync.

    ``snapshot_id`` identifies the commit; ``plan_id`` says which plan wrote it, so a retried sync task
    may commit its own plan again (with more acknowledged rows) without tripping compare-and-set.
    """

    snapshot_id: str
    snapshot_uri: str
    plan_id: str
    rows: int
    committed_at: datetime
    primary_key: list[str]
    #: JSON lines of rows refused for their own data ({fingerprint, reason, since}): not re-sent unchanged.
    rejected_uri: str | None = None


class Plan(_Frozen):
    """What the diff task found; the sync task's whole input. Small JSON in XCom."""

    sync_id: str
    plan_id: str
    primary_key: list[str]
    #: Columns whose change counts (the hash covers these).
    columns: list[str]
    #: Every column of the source, in source order.
    source_columns: list[str]
    counts: PlanCounts
    full_refresh: bool = False
    #: The state URI the sync's files live under (its folder is named after the sync id).
    state_uri: str
    #: The current source rows that passed validation (primary key not null, not duplicated).
    snapshot_uri: str
    #: One row per added/changed/removed key, with ``__change`` and ``__row_id`` columns; removed rows
    #: carry the committed values (they are no longer in the source).
    changes_uri: str
    #: Rows set aside with a ``__reason`` column.
    invalid_uri: str
    #: The committed state this plan was computed against (None on a first run).
    base: CommittedState | None = None
    created_at: datetime


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    #: Left alone on purpose (say, a list member this sync did not add): not sent, not committed.
    SKIPPED = "skipped"


class OperationCounts(_Frozen):
    selected: int = 0
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0


class SyncResult(_Frozen):
    """What a destination sync task did. Small JSON in XCom."""

    sync_id: str
    plan_id: str
    destination: str
    mode: str
    dry_run: bool = False
    #: Counts per operation name (create, update, upsert, delete, add, remove).
    operations: dict[str, OperationCounts] = Field(default_factory=dict)
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    #: Changes the mode does not act on; committed as seen.
    not_acted_on: int = 0
    #: JSON-lines file of rejected and failed rows with their reasons (None when there are none).
    rejected_rows_uri: str | None = None
    #: In a dry run, the JSON-lines file holding the first payloads that would have been sent.
    dry_run_payloads_uri: str | None = None
    committed: CommittedState | None = None
    batches: int = 0
    resumed_from_batch: int = 0
    duration_seconds: float = 0.0
