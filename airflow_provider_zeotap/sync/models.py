"""Pydantic models for everything that crosses a task boundary (XCom) or the state store.

XCom carries only these small JSON documents: counts and file locations, never row data, so a
ten-million-row sync costs the metadata database a few hundred bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import Enum

from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.storage import (
    PLAN_ID_PATTERN,
    SNAPSHOT_ID_PATTERN,
    SYNC_ID_PATTERN,
    is_under,
    join,
    unsafe_uri_reason,
)

#: Columns the engine adds to the snapshot and changes files. The ``__`` prefix keeps them apart from
#: user columns; a source column with this prefix is refused at extract time.
CHANGE_COLUMN = "__change"
ROW_ID_COLUMN = "__row_id"
INTERNAL_PREFIX = "__"
#: Columns the commit keeps beside each committed row: what the destination was given for it.
#: ``__identity`` is the record the row became (a normalised email, a segment code);
#: ``__payload_hash`` fingerprints the payload that was acknowledged; ``__payload_fields`` lists the
#: fields it held with a value (so a value that becomes empty later is sent as a clear).
IDENTITY_COLUMN = "__identity"
PAYLOAD_HASH_COLUMN = "__payload_hash"
PAYLOAD_FIELDS_COLUMN = "__payload_fields"
DELIVERY_COLUMNS = (IDENTITY_COLUMN, PAYLOAD_HASH_COLUMN, PAYLOAD_FIELDS_COLUMN)


class Change(str, Enum):
    """What happened to a primary key between the committed snapshot and the current source."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"
    #: Unchanged, sent again on request (``full_refresh``, or a baseline bound to a new target).
    REFRESH = "refresh"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _one_segment(value: str) -> str:
    """An id that becomes a file or folder name must be one plain segment: no ``/``, no ``..``, no newline."""
    if not SYNC_ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain name (1-128 letters, digits, '_', '.' or '-', starting with a letter or digit)"
        )
    return value


def _safe_uri(value: str | None) -> str | None:
    """A URI the runner reads or writes must not climb out of its folder (``..``) or carry a query or newline."""
    if value is not None and (reason := unsafe_uri_reason(value)):
        raise ValueError(f"{value!r} cannot name a state file: {reason}")
    return value


class PlanCounts(_Frozen):
    added: int = 0
    changed: int = 0
    removed: int = 0
    #: Unchanged rows a full refresh sends again; counted apart from real changes.
    refresh: int = 0
    unchanged: int = 0
    invalid: int = 0
    #: Rows read from the source, invalid ones included.
    total: int = 0


class Binding(_Frozen):
    """What a baseline was delivered to. A baseline is only ever used for the target it describes.

    Two DAGs sharing a ``sync_id``, or one sync task re-pointed at another list, would otherwise read
    a baseline that says "already delivered" about rows the new target never received, and send
    removals to a target that never had those rows.
    """

    dag_id: str
    task_id: str
    operator: str
    conn_id: str
    destination: str
    #: Vendor object and target, e.g. {"list_id": "12"} or {"import_id": "..."}; values as text.
    target: dict[str, str] = Field(default_factory=dict)
    #: "delivers" for modes that create or add, "removes" for the remove mode: a baseline of removed
    #: members means the opposite of one of delivered members.
    mode_family: str

    def describe(self) -> str:
        target = ", ".join(f"{k}={v}" for k, v in sorted(self.target.items()))
        return (
            f"DAG {self.dag_id!r} task {self.task_id!r} ({self.operator}) -> {self.destination}"
            f"{' ' + target if target else ''} via connection {self.conn_id!r}, {self.mode_family} rows"
        )

    def differences(self, other: Binding) -> list[str]:
        mine, theirs = self.model_dump(), other.model_dump()
        return [name for name in mine if mine[name] != theirs[name]]

    def target_key(self) -> str:
        """Names the destination target alone (not the DAG or task): ownership records follow the target."""
        content = json.dumps([self.conn_id, self.destination, self.target, self.mode_family], sort_keys=True)
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


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
    #: What this baseline was delivered to (None only for baselines written before bindings existed).
    binding: Binding | None = None
    #: The Airflow run that committed it, for messages about stale plans.
    run_id: str | None = None
    mode: str | None = None

    _plain_ids = field_validator("snapshot_id", "plan_id")(_one_segment)
    _safe_uris = field_validator("snapshot_uri", "rejected_uri")(_safe_uri)


#: A committed state kept in the warehouse is named in the state store by a small marker file (where
#: the state table is, its version) in place of a snapshot: the pointer, binding and pruning stay as they are.
WAREHOUSE_MARKER_SUFFIX = ".warehouse.json"


class WarehousePlan(_Frozen):
    """Where a plan's committed state lives when the diff ran in the warehouse (``diff_in="warehouse"``).

    The state table and the version row are in ``state_schema``; ``base_version`` is the version the
    diff read, which the commit's compare-and-set checks; ``hashes_uri`` holds each change row's hash.
    """

    conn_id: str
    dialect: str
    state_schema: str
    state_table: str
    base_version: int
    hashes_uri: str

    _safe_uris = field_validator("hashes_uri")(_safe_uri)


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
    #: Set when the diff ran in the warehouse: the commit merges into its state table there.
    warehouse: WarehousePlan | None = None

    _plain_ids = field_validator("sync_id", "plan_id")(_one_segment)
    _safe_uris = field_validator("state_uri", "snapshot_uri", "changes_uri", "invalid_uri")(_safe_uri)

    def check_paths(self, trusted_state_uris: Collection[str] | None = None) -> None:
        """Refuse a plan that would make the runner read or write outside this sync's state folder.

        A plan arrives through XCom, or through ``dag_run.conf`` when a DAG takes it from a template, so its
        ids and URIs are input, not facts: the runner builds every path it writes from ``state_uri``,
        ``sync_id`` and ``plan_id``, and reads the URIs as given. This runs before any read or write.
        ``trusted_state_uris`` are the state locations the deployment knows for this sync (the configured
        one, the diff task's); the plan's ``state_uri`` must be one of them. Each error names the field.
        """
        problems: list[str] = []
        if not SYNC_ID_PATTERN.fullmatch(self.sync_id):
            problems.append(f"sync_id {self.sync_id!r} is not a valid sync id")
        if not PLAN_ID_PATTERN.fullmatch(self.plan_id):
            problems.append(
                f"plan_id {self.plan_id!r} is not a plan id as the diff task makes them (like 20260102T030405123456-0a1b2c3d)"
            )
        state_uri = self.state_uri.rstrip("/")
        if trusted_state_uris is not None and state_uri not in {uri.rstrip("/") for uri in trusted_state_uris}:
            problems.append(
                f"state_uri {self.state_uri!r} is not this sync's state location (expected one of "
                f"{sorted({uri.rstrip('/') for uri in trusted_state_uris})}); pass the diff task's output as plan, or "
                "compute the plan with the configured [zeotap_sync] state_uri"
            )
        root = join(state_uri, self.sync_id)
        plan_folder = join(root, "plans", self.plan_id)
        named = {name: getattr(self, name) for name in ("snapshot_uri", "changes_uri", "invalid_uri")}
        if self.warehouse is not None:
            named["warehouse.hashes_uri"] = self.warehouse.hashes_uri
        for name, uri in named.items():
            if not is_under(uri, plan_folder):
                problems.append(f"{name} {uri!r} is not inside the plan's folder {plan_folder}/")
        if self.base is not None:
            if not SNAPSHOT_ID_PATTERN.fullmatch(self.base.snapshot_id):
                problems.append(f"base.snapshot_id {self.base.snapshot_id!r} is not a snapshot id as the commit makes them")
            if not PLAN_ID_PATTERN.fullmatch(self.base.plan_id):
                problems.append(f"base.plan_id {self.base.plan_id!r} is not a plan id as the diff task makes them")
            committed = join(root, "committed")
            for name in ("snapshot_uri", "rejected_uri"):
                uri = getattr(self.base, name)
                if uri is not None and not is_under(uri, committed):
                    problems.append(f"base.{name} {uri!r} is not inside the sync's committed folder {committed}/")
        if problems:
            raise ConfigurationError(
                f"Plan {self.plan_id!r} of sync {self.sync_id!r} is refused before any read or write: "
                + "; ".join(problems)
                + ". A plan must be the diff task's output, unchanged: every file it names lies under "
                "state_uri/<sync_id>. If the plan came from dag_run.conf, pass the diff task's output instead."
            )


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    #: Left alone on purpose (say, a list member this sync did not add): not sent, not committed.
    SKIPPED = "skipped"
    #: A changed row whose payload equals the one the destination acknowledged: committed, not sent.
    UNCHANGED_PAYLOAD = "unchanged_payload"
    #: A removal not sent because a current row has the same identity (the record is still wanted).
    IDENTITY_KEPT = "identity_kept"


#: Outcomes that move the baseline forward: the destination holds what the row says.
APPLIED_OUTCOMES = (Outcome.SUCCEEDED, Outcome.UNCHANGED_PAYLOAD, Outcome.IDENTITY_KEPT)


class OperationCounts(_Frozen):
    selected: int = 0
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    unchanged_payload: int = 0
    identity_kept: int = 0


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
    unchanged_payload: int = 0
    identity_kept: int = 0
    #: Rows sent again by a full refresh or a rebind (also counted in the outcomes above).
    refreshed: int = 0
    #: The baseline was bound to another target and ``rebind=True`` started this one afresh.
    rebound: bool = False
    #: Records at the target that the source lacks, removed by a ``take_over_existing`` mirror (also
    #: counted in the outcomes above).
    taken_over_removals: int = 0
    #: Records this sync sent as creates without a confirming answer, whose rows then left the source,
    #: removed by a mirror (also counted in the outcomes above).
    unconfirmed_removals: int = 0
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
