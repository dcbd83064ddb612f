"""The diff task (either ``diff_in``) and the delivery outside Airflow, over one warehouse connection.

``SyncDiffOperator.execute`` runs for real with a context holding only the sync's state store, and its
SQL hook is the one given here (a DuckDB file, or a PostgreSQL driver connection): what the operator
would get from the Airflow connection, minus the connection lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.sync.destination import Destination
from airflow_provider_zeotap.sync.models import Plan
from airflow_provider_zeotap.sync.runner import DeliveryRunner
from airflow_provider_zeotap.sync.state import CommittedPointer
from airflow_provider_zeotap.sync.storage import SyncStorage
from tests.support.sync_harness import DictStore


class DuckDBHook:
    """``DbApiHook.get_conn`` of a DuckDB file used as the warehouse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get_conn(self) -> Any:
        return duckdb.connect(self.path)


class ConnectHook:
    """``DbApiHook.get_conn`` over any driver's connect function."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect

    def get_conn(self) -> Any:
        return self.connect()


class _AnyAsset(dict):
    """The context's ``asset_state_store``: every asset of the test's sync maps to one store."""

    def __init__(self, store: DictStore) -> None:
        super().__init__()
        self.store = store

    def __getitem__(self, key: Any) -> DictStore:
        return self.store


class DiffHarness:
    def __init__(self, root: str, *, sync_id: str, conn_id: str, hook: Any, diff_in: str, sql: str,
                 primary_key: str | list[str] = "id", state_schema: str = "zeotap_sync",
                 pointer_store: DictStore | None = None) -> None:
        self.state_uri = f"file://{root}"
        self.sync_id = sync_id
        self.conn_id = conn_id
        self.hook = hook
        self.diff_in = diff_in
        self.sql = sql
        self.primary_key = primary_key
        self.state_schema = state_schema
        self.pointer_store = pointer_store or DictStore()
        self.checkpoints = DictStore()
        self.storage = SyncStorage(self.state_uri, sync_id)

    @property
    def pointer(self) -> CommittedPointer:
        return CommittedPointer(self.pointer_store)

    def plan(self, **kwargs: Any) -> Plan:
        operator = SyncDiffOperator(
            task_id="diff", sync_id=self.sync_id, conn_id=self.conn_id, sql=self.sql, primary_key=self.primary_key,
            diff_in=self.diff_in, state_schema=self.state_schema, state_uri=self.state_uri, **kwargs,
        )
        operator._sql_hook = lambda: self.hook  # type: ignore[method-assign]
        return Plan.model_validate(operator.execute({"asset_state_store": _AnyAsset(self.pointer_store)}))

    def runner(self, plan: Plan, destination: Destination, mode: str = "mirror", **kwargs: Any) -> DeliveryRunner:
        kwargs.setdefault("checkpoints", self.checkpoints)
        return DeliveryRunner(
            plan=plan, destination=destination, mode=mode, storage=self.storage, pointer=self.pointer,
            warehouse_hook=self.hook if plan.warehouse is not None else None, **kwargs,
        )
