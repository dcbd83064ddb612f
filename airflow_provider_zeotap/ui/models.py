"""The JSON the Syncs API answers with (and the HTML page renders). Documented in docs/ui.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from airflow_provider_zeotap.sync.records import RunFailure, RunSettings


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PlanCountsView(_Model):
    """What the diff found for this run (the rows selected to send)."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    refresh: int = 0
    invalid: int = 0


class SyncRun(_Model):
    """One run of a sync task: the task instance, what the diff found and what the destination answered."""

    dag_id: str
    task_id: str
    run_id: str
    #: The task instance's state (success, failed, running, upstream_failed, ...).
    state: str | None
    #: ``succeeded``, or the kind of stop (stale, guard, binding, rejected_rows, configuration, error), or
    #: the task state when the run has no result yet.
    outcome: str
    #: Set when the run failed, was stale or hit a guard: the badge on the page, the thing to alert on.
    warning: str | None = None
    try_number: int
    start_date: datetime | None = None
    end_date: datetime | None = None
    run_after: datetime | None = None
    #: Path of the task instance in the Airflow UI.
    task_instance_url: str
    plan: PlanCountsView | None = None
    succeeded: int | None = None
    unchanged_payload: int | None = None
    skipped: int | None = None
    rejected: int | None = None
    failed: int | None = None
    #: Counts per operation and outcome, as in the task's summary.
    operations: dict[str, dict[str, int]] = {}
    dry_run: bool = False
    committed_rows: int | None = None
    has_rejected_rows: bool = False
    failure: RunFailure | None = None
    settings: RunSettings | None = None


class SyncSummary(_Model):
    """One sync, as the index lists it."""

    sync_id: str
    dag_id: str | None
    task_id: str | None
    destination: str | None = None
    #: The destination object and target from the baseline's binding, e.g. {"list_id": "12"}.
    target: dict[str, str] = {}
    conn_id: str | None = None
    mode: str | None = None
    committed_rows: int | None = None
    committed_at: datetime | None = None
    snapshot_id: str | None = None
    #: ``state_uri/<sync_id>``: where the sync's snapshots, plans and rejected-rows files live.
    state_location: str | None = None
    last_run: SyncRun | None = None
    #: Rows rejected or failed in the last run.
    rejected_last_run: int = 0
    warning: str | None = None


class SyncDetail(_Model):
    sync: SyncSummary
    runs: list[SyncRun]
    #: The guard settings and rejection limits of the newest run that recorded them.
    settings: RunSettings | None = None
    #: The sync tasks (outlets of the sync's Asset) and diff tasks (inlets) the user may read.
    sync_tasks: list[str] = []
    diff_tasks: list[str] = []


class RejectedRow(_Model):
    #: The row's primary key, column by column.
    key: dict[str, Any]
    change: str | None = None
    operation: str | None = None
    outcome: str | None = None
    reason: str | None = None


class RejectedRowsPage(_Model):
    sync_id: str
    run_id: str
    search: str = ""
    page: int
    page_size: int
    #: Rows that match ``search`` in the whole file.
    total: int
    rows: list[RejectedRow]
    #: Why there are no rows to show although the run rejected some (the file was pruned, is elsewhere, ...).
    note: str | None = None
