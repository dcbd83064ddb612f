"""From stored rows to what the page and the API show, for one user: only syncs of DAGs they may read.

Kept apart from SQL (``reader.py``) and from HTTP (``app.py``) so the rules are tested on their own: which
DAG a sync belongs to, what counts as a warning, where its state lives, which rejected rows may be read.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol
from urllib.parse import quote

from pydantic import ValidationError

from airflow_provider_zeotap.sync.models import CommittedState, Plan, SyncResult
from airflow_provider_zeotap.sync.records import FAILURE_KEY, SETTINGS_KEY, RunFailure, RunSettings
from airflow_provider_zeotap.ui import rejected
from airflow_provider_zeotap.ui.models import (
    PlanCountsView,
    RejectedRowsPage,
    SyncDetail,
    SyncRun,
    SyncSummary,
)
from airflow_provider_zeotap.ui.reader import RETURN_KEY, SyncAssetRow, TaskRef, TaskRunRow

#: Task states that end a run badly even without a failure record (a diff that failed, say).
BAD_STATES = frozenset({"failed", "upstream_failed"})
DEFAULT_RUNS = 30
MAX_RUNS = 500


class Reader(Protocol):
    def syncs(self, sync_id: str | None = None) -> list[SyncAssetRow]: ...

    def runs(
        self, tasks: Collection[TaskRef], diff_tasks: Collection[TaskRef], *, limit: int, run_id: str | None = None
    ) -> list[TaskRunRow]: ...


class NotFound(Exception):
    """No such sync or run for this user (a sync of a DAG they may not read is not there for them)."""


class SyncsService:
    """What one user may see of the syncs: ``readable_dags`` is the auth manager's answer for that user."""

    def __init__(self, reader: Reader, readable_dags: Collection[str], state_uri: str) -> None:
        self.reader = reader
        self.readable = set(readable_dags)
        self.state_uri = state_uri.rstrip("/")

    # -- the index -------------------------------------------------------------------------------
    def list_syncs(self) -> list[SyncSummary]:
        summaries = []
        for row in self.reader.syncs():
            if self._visible(row):
                runs = self._runs(row, limit=1)
                summaries.append(self._summary(row, runs[0] if runs else None))
        return summaries

    # -- one sync --------------------------------------------------------------------------------
    def detail(self, sync_id: str, *, limit: int = DEFAULT_RUNS) -> SyncDetail:
        row = self._sync(sync_id)
        runs = self._runs(row, limit=limit)
        settings = next((run.settings for run in runs if run.settings is not None), None)
        return SyncDetail(
            sync=self._summary(row, runs[0] if runs else None),
            runs=runs,
            settings=settings,
            sync_tasks=[f"{d}.{t}" for d, t in self._sync_tasks(row)],
            diff_tasks=[f"{d}.{t}" for d, t in row.consumers if d in self.readable],
        )

    def runs(self, sync_id: str, *, limit: int = DEFAULT_RUNS) -> list[SyncRun]:
        row = self._sync(sync_id)
        return self._runs(row, limit=limit)

    def rejected_rows(self, sync_id: str, run_id: str, *, search: str = "", page: int = 1, page_size: int = 50) -> RejectedRowsPage:
        row = self._sync(sync_id)
        found = self.reader.runs(self._sync_tasks(row), row.consumers, limit=10, run_id=run_id)
        if not found:
            raise NotFound(f"Sync {sync_id!r} has no run {run_id!r}.")
        result = _result_of(found[0])
        page_size = max(1, min(page_size, rejected.MAX_PAGE_SIZE))
        page = max(1, page)
        empty = RejectedRowsPage(sync_id=sync_id, run_id=run_id, search=search, page=page, page_size=page_size,
                                 total=0, rows=[])
        if result is None or not result.rejected_rows_uri:
            note = None if result is not None else "This run has no result: it did not get to deliver rows."
            return empty.model_copy(update={"note": note})
        try:
            rejected.check_location(result.rejected_rows_uri, state_uri=self.state_uri, sync_id=sync_id,
                                    plan_id=result.plan_id)
            total, rows = rejected.read_page(result.rejected_rows_uri, search=search, page=page, page_size=page_size)
        except rejected.RejectedRowsUnavailable as error:
            return empty.model_copy(update={"note": str(error)})
        return empty.model_copy(update={"total": total, "rows": rows})

    # -- rules -----------------------------------------------------------------------------------
    def _sync(self, sync_id: str) -> SyncAssetRow:
        rows = self.reader.syncs(sync_id)
        if not rows or not self._visible(rows[0]):
            raise NotFound(f"No sync {sync_id!r} in a DAG you may read.")
        return rows[0]

    def _visible(self, row: SyncAssetRow) -> bool:
        """A sync belongs to the DAG of its baseline's binding, else of its first sync task."""
        owner = _owner(row)
        return owner is not None and owner[0] in self.readable

    def _sync_tasks(self, row: SyncAssetRow) -> list[TaskRef]:
        """The readable tasks whose runs are this sync's: its outlets, and the task its baseline is bound to."""
        tasks = list(row.producers)
        state = _committed(row)
        if state is not None and state.binding is not None:
            bound = (state.binding.dag_id, state.binding.task_id)
            if bound not in tasks:
                tasks.append(bound)
        return [task for task in tasks if task[0] in self.readable]

    def _runs(self, row: SyncAssetRow, *, limit: int) -> list[SyncRun]:
        limit = max(1, min(limit, MAX_RUNS))
        diff_tasks = [task for task in row.consumers if task[0] in self.readable]
        return [_run(run, row.sync_id) for run in self.reader.runs(self._sync_tasks(row), diff_tasks, limit=limit)]

    def _summary(self, row: SyncAssetRow, last: SyncRun | None) -> SyncSummary:
        state = _committed(row)
        binding = state.binding if state is not None else None
        owner = _owner(row)
        location = None
        if state is not None:
            location = state.snapshot_uri.rsplit("/committed/", 1)[0]
        elif last is not None and last.settings is not None:
            location = f"{last.settings.state_uri.rstrip('/')}/{row.sync_id}"
        return SyncSummary(
            sync_id=row.sync_id,
            dag_id=owner[0] if owner else None,
            task_id=owner[1] if owner else None,
            destination=binding.destination if binding else (last.settings.destination if last and last.settings else None),
            target=dict(binding.target) if binding else {},
            conn_id=binding.conn_id if binding else None,
            mode=(state.mode if state else None) or (last.settings.mode if last and last.settings else None),
            committed_rows=state.rows if state else None,
            committed_at=state.committed_at if state else None,
            snapshot_id=state.snapshot_id if state else None,
            state_location=location,
            last_run=last,
            rejected_last_run=((last.rejected or 0) + (last.failed or 0)) if last else 0,
            warning=last.warning if last else None,
        )


def _committed(row: SyncAssetRow) -> CommittedState | None:
    if not row.pointer:
        return None
    try:
        return CommittedState.model_validate(row.pointer)
    except ValidationError:
        return None


def _owner(row: SyncAssetRow) -> TaskRef | None:
    state = _committed(row)
    if state is not None and state.binding is not None:
        return state.binding.dag_id, state.binding.task_id
    return row.producers[0] if row.producers else None


def _model(model: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _result_of(run: TaskRunRow) -> SyncResult | None:
    result = _model(SyncResult, run.xcom.get(RETURN_KEY))
    if result is None:
        failure = _model(RunFailure, run.xcom.get(FAILURE_KEY))
        result = failure.result if failure is not None else None
    return result


def _plan_for(run: TaskRunRow, sync_id: str, plan_id: str | None) -> Plan | None:
    plans = [plan for plan in (_model(Plan, value) for value in run.plans) if plan is not None and plan.sync_id == sync_id]
    if plan_id is not None:
        return next((plan for plan in plans if plan.plan_id == plan_id), None)
    return plans[0] if len(plans) == 1 else None


def _run(run: TaskRunRow, sync_id: str) -> SyncRun:
    failure = _model(RunFailure, run.xcom.get(FAILURE_KEY))
    settings = _model(RunSettings, run.xcom.get(SETTINGS_KEY))
    result = _result_of(run)
    plan = _plan_for(run, sync_id, result.plan_id if result else None)
    if failure is not None:
        outcome = failure.kind.value
    elif result is not None:
        outcome = "dry_run" if result.dry_run else "succeeded"
    else:
        outcome = run.state or "none"
    warning = None
    if failure is not None:
        warning = {"stale": "stale plan", "guard": "guard", "binding": "other binding",
                   "rejected_rows": "too many rejected rows"}.get(failure.kind.value, "failed")
    elif (run.state or "") in BAD_STATES:
        warning = run.state.replace("_", " ") if run.state else "failed"
    return SyncRun(
        dag_id=run.dag_id,
        task_id=run.task_id,
        run_id=run.run_id,
        state=run.state,
        outcome=outcome,
        warning=warning,
        try_number=run.try_number,
        start_date=run.start_date,
        end_date=run.end_date,
        run_after=run.run_after,
        task_instance_url=task_instance_url(run.dag_id, run.run_id, run.task_id),
        plan=PlanCountsView(**{name: getattr(plan.counts, name) for name in PlanCountsView.model_fields})
        if plan is not None else None,
        succeeded=result.succeeded if result else None,
        unchanged_payload=result.unchanged_payload if result else None,
        skipped=result.skipped if result else None,
        rejected=result.rejected if result else None,
        failed=result.failed if result else None,
        operations={op: counts.model_dump() for op, counts in result.operations.items()} if result else {},
        dry_run=result.dry_run if result else False,
        committed_rows=result.committed.rows if result and result.committed else None,
        has_rejected_rows=bool(result and result.rejected_rows_uri),
        failure=failure,
        settings=settings,
    )


def task_instance_url(dag_id: str, run_id: str, task_id: str) -> str:
    """The task instance's page in the Airflow UI (its route in Airflow 3)."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
