"""Reads what Airflow's metadata DB holds about syncs. The only module of the page that speaks SQL.

A sync is an Asset ``zeotap-sync://<sync_id>``: its diff tasks declare it as an inlet, its sync task as an
outlet, and its asset state store holds the committed pointer. The runs of a sync are the task instances of
its sync task(s); their XComs hold the result, the settings and the failure record (``sync/records.py``),
and the diff task's XCom in the same DAG run holds the plan's counts. Every query is bounded: one sync's
last N runs, never a whole table.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session

from airflow_provider_zeotap.sync.records import FAILURE_KEY, SETTINGS_KEY
from airflow_provider_zeotap.sync.state import ASSET_SCHEME, POINTER_KEY

RETURN_KEY = "return_value"
#: The group ``sync/state.py:sync_asset`` gives every sync Asset.
ASSET_GROUP = "zeotap-sync"
SYNC_URI_PREFIX = f"{ASSET_SCHEME}://"

TaskRef = tuple[str, str]  # (dag_id, task_id)


@dataclass
class SyncAssetRow:
    asset_id: int
    sync_id: str
    #: The sync task(s): tasks that declare the Asset as an outlet.
    producers: list[TaskRef] = field(default_factory=list)
    #: The diff task(s): tasks that declare the Asset as an inlet.
    consumers: list[TaskRef] = field(default_factory=list)
    #: The committed pointer as stored (JSON text), None before the first commit.
    pointer: Any = None


@dataclass
class TaskRunRow:
    dag_id: str
    task_id: str
    run_id: str
    state: str | None
    try_number: int
    start_date: datetime | None
    end_date: datetime | None
    run_after: datetime | None
    #: XCom values of this task instance by key (result, settings, failure record).
    xcom: dict[str, Any] = field(default_factory=dict)
    #: ``return_value`` XComs of the sync's diff tasks in the same DAG run.
    plans: list[Any] = field(default_factory=list)


class MetadataReader:
    """Queries of the metadata DB, one session per request (the API server's)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def syncs(self, sync_id: str | None = None) -> list[SyncAssetRow]:
        from airflow.models.asset import AssetModel, TaskInletAssetReference, TaskOutletAssetReference

        # By name: Airflow keeps the name as given and normalises the URI (a trailing slash is added).
        query = select(AssetModel.id, AssetModel.name).where(
            AssetModel.group == ASSET_GROUP, AssetModel.name.startswith(SYNC_URI_PREFIX, autoescape=True)
        )
        if sync_id is not None:
            query = query.where(AssetModel.name == SYNC_URI_PREFIX + sync_id)
        rows = {asset_id: SyncAssetRow(asset_id, name[len(SYNC_URI_PREFIX):])
                for asset_id, name in self.session.execute(query.order_by(AssetModel.name))}
        if not rows:
            return []
        for model, target in ((TaskOutletAssetReference, "producers"), (TaskInletAssetReference, "consumers")):
            refs = self.session.execute(
                select(model.asset_id, model.dag_id, model.task_id)
                .where(model.asset_id.in_(rows))
                .order_by(model.dag_id, model.task_id)
            )
            for asset_id, dag_id, task_id in refs:
                getattr(rows[asset_id], target).append((dag_id, task_id))
        for row in rows.values():
            row.pointer = self._state(row.asset_id, POINTER_KEY)
        return list(rows.values())

    def _state(self, asset_id: int, key: str) -> Any:
        """One value of an asset's state store, through the configured state backend (not the table itself)."""
        from airflow.state import AssetScope, get_state_backend

        value = get_state_backend().get(AssetScope(asset_id=asset_id), key, session=self.session)
        return json.loads(value) if value else None

    def runs(
        self, tasks: Collection[TaskRef], diff_tasks: Collection[TaskRef], *, limit: int, run_id: str | None = None
    ) -> list[TaskRunRow]:
        """The newest ``limit`` task instances of ``tasks`` (newest first), with their XComs and plans."""
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance as TI

        if not tasks:
            return []
        query = (
            select(TI.dag_id, TI.task_id, TI.run_id, TI.state, TI.try_number, TI.start_date, TI.end_date, DagRun.run_after)
            .join(DagRun, and_(DagRun.dag_id == TI.dag_id, DagRun.run_id == TI.run_id))
            .where(_task_in(TI, tasks), TI.map_index == -1)
            .order_by(DagRun.run_after.desc(), TI.dag_id, TI.task_id)
            .limit(limit)
        )
        if run_id is not None:
            query = query.where(TI.run_id == run_id)
        runs = [TaskRunRow(*row) for row in self.session.execute(query)]
        if not runs:
            return runs
        by_key = {(r.dag_id, r.task_id, r.run_id): r for r in runs}
        for dag_id, task_id, run, key, value in self._xcoms(
            tasks, {r.run_id for r in runs}, (RETURN_KEY, SETTINGS_KEY, FAILURE_KEY)
        ):
            if (dag_id, task_id, run) in by_key:
                by_key[(dag_id, task_id, run)].xcom[key] = value
        by_run: dict[tuple[str, str], list[TaskRunRow]] = {}
        for r in runs:
            by_run.setdefault((r.dag_id, r.run_id), []).append(r)
        for dag_id, _task_id, run, _key, value in self._xcoms(diff_tasks, {r.run_id for r in runs}, (RETURN_KEY,)):
            for r in by_run.get((dag_id, run), []):
                r.plans.append(value)
        return runs

    def _xcoms(
        self, tasks: Collection[TaskRef], run_ids: Collection[str], keys: Iterable[str]
    ) -> Iterable[tuple[str, str, str, str, Any]]:
        from airflow.models.xcom import XComModel

        if not tasks or not run_ids:
            return []
        query = select(XComModel.dag_id, XComModel.task_id, XComModel.run_id, XComModel.key, XComModel.value).where(
            _task_in(XComModel, tasks), XComModel.run_id.in_(list(run_ids)), XComModel.key.in_(list(keys)),
            XComModel.map_index == -1,
        )
        return [(d, t, r, k, _decoded(v)) for d, t, r, k, v in self.session.execute(query)]


def _task_in(model: Any, tasks: Collection[TaskRef]) -> Any:
    if not tasks:
        return false()
    return or_(*(and_(model.dag_id == dag_id, model.task_id == task_id) for dag_id, task_id in tasks))


def _decoded(value: Any) -> Any:
    """An XCom value as the task pushed it: stored as JSON, sometimes as JSON text inside JSON."""
    for _ in range(2):
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError:
                return value
    return value
