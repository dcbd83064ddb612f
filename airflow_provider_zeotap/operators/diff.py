"""SyncDiffOperator: extract the source, diff it with the committed snapshot, return the plan."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from airflow.sdk import BaseOperator

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.deployment import missing_state_error, warn_if_state_is_local, with_sync_asset
from airflow_provider_zeotap.sync.models import WAREHOUSE_MARKER_SUFFIX, Plan, WarehousePlan
from airflow_provider_zeotap.sync.state import CommittedPointer, asset_store, sync_asset
from airflow_provider_zeotap.sync.storage import (
    SyncStorage,
    default_state_uri,
    is_local,
    local_path,
    new_plan_id,
    validate_sync_id,
)


class SyncDiffOperator(BaseOperator):
    """Compute what changed in a source since the last committed delivery of sync ``sync_id``.

    Give exactly one source: ``sql`` + ``conn_id`` (any Airflow SQL connection, read in chunks),
    ``source_uri`` (Parquet, CSV or JSON-lines at any ObjectStoragePath URI), or ``rows`` (a list of dicts,
    e.g. an upstream task's output). Returns the plan (small JSON: counts and file locations) to XCom.

    :param sync_id: names the sync's state; keep it stable across runs (a new id starts from scratch).
    :param primary_key: a column or a list of columns identifying a row.
    :param columns: the columns whose change counts (default: all).
    :param full_refresh: send every row again (unchanged ones included) and remove nothing.
    :param state_uri: where snapshots live (default ``[zeotap_sync] state_uri`` or
        ``file://$AIRFLOW_HOME/zeotap_sync_state``).
    :param memory_limit: DuckDB memory limit for the diff, e.g. ``"1GB"`` (it spills to disk beyond).
    :param diff_in: ``"worker"`` (default): the source is extracted and diffed on the worker with DuckDB.
        ``"warehouse"``: the diff runs as SQL inside the ``conn_id`` warehouse against a state table kept
        there, and only the changes leave it (needs ``sql`` + ``conn_id``; see docs/warehouse-diff.md).
    :param state_schema: with ``diff_in="warehouse"``, the schema holding the state tables and the version
        rows (created on the first run).
    """

    template_fields: Sequence[str] = ("sql", "source_uri", "rows", "parameters", "state_uri")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql", "rows": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sync_id: str,
        primary_key: str | Sequence[str],
        sql: str | None = None,
        conn_id: str | None = None,
        parameters: Any = None,
        source_uri: str | None = None,
        source_format: str | None = None,
        rows: Any = None,
        columns: Sequence[str] | None = None,
        full_refresh: bool = False,
        state_uri: str | None = None,
        chunk_size: int = 50_000,
        memory_limit: str | None = None,
        diff_in: Literal["worker", "warehouse"] = "worker",
        state_schema: str = "zeotap_sync",
        **kwargs: Any,
    ) -> None:
        self.sync_id = validate_sync_id(sync_id)
        kwargs["inlets"] = with_sync_asset(kwargs.get("inlets"), sync_asset(sync_id))
        super().__init__(**kwargs)
        given = [name for name, value in (("sql", sql), ("source_uri", source_uri), ("rows", rows)) if value is not None]
        if len(given) != 1:
            raise ConfigurationError(
                f"SyncDiffOperator {self.task_id!r} needs exactly one source: sql (+ conn_id), source_uri or rows; "
                f"got {given or 'none'}."
            )
        if sql is not None and not conn_id:
            raise ConfigurationError(f"SyncDiffOperator {self.task_id!r}: sql needs conn_id (an Airflow SQL connection).")
        keys = [primary_key] if isinstance(primary_key, str) else list(primary_key or [])
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigurationError(
                f"SyncDiffOperator {self.task_id!r}: primary_key must be a column name or a list of them, got {primary_key!r}."
            )
        self.primary_key = keys
        self.diff_in = _check_diff_in(self.task_id, diff_in, state_schema, sql)
        self.state_schema = state_schema
        self.sql = sql
        self.conn_id = conn_id
        self.parameters = parameters
        self.source_uri = source_uri
        self.source_format = source_format
        self.rows = rows
        self.columns = list(columns) if columns else None
        self.full_refresh = full_refresh
        self.state_uri = state_uri
        self.chunk_size = chunk_size
        self.memory_limit = memory_limit

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_zeotap.sync.diff import diff_snapshots  # DuckDB loads at run time, not parse time

        storage = SyncStorage(self.state_uri or default_state_uri(), self.sync_id)
        warn_if_state_is_local(self, storage.state_uri, self.log)
        pointer = CommittedPointer(asset_store(context, self.sync_id))
        base = pointer.read()
        if base and _in_warehouse(base.snapshot_uri) != (self.diff_in == "warehouse"):
            where = "in the warehouse" if _in_warehouse(base.snapshot_uri) else "on the worker"
            raise ConfigurationError(
                f"Sync {self.sync_id!r} was committed by a diff {where}, and this task has diff_in={self.diff_in!r}. "
                "The two keep their state in different places: keep the diff_in it was committed with, or start "
                "afresh under a new sync_id."
            )
        if base and not storage.exists(base.snapshot_uri):
            # The pointer (metadata DB) is shared by every worker; the files are only where state_uri says.
            raise missing_state_error(self, self.sync_id, "committed snapshot", base.snapshot_uri, storage.state_uri)
        if base and base.primary_key != self.primary_key:
            raise ConfigurationError(
                f"Sync {self.sync_id!r} was committed with primary_key {base.primary_key}, now {self.primary_key}. "
                "A new key means a new sync: use a new sync_id (and mirror removals start from scratch)."
            )
        plan_id = new_plan_id()
        out_uri = storage.plan_uri(plan_id)
        out_dir = storage.local_dir(out_uri)
        if self.diff_in == "warehouse":
            return self._diff_in_warehouse(storage, base, plan_id, out_uri, out_dir)
        try:
            parts = self._extract(os.path.join(out_dir, "source"), storage)
            output = diff_snapshots(
                source_parts=parts,
                base_snapshot=storage.fetch(base.snapshot_uri) if base else None,
                primary_key=self.primary_key,
                columns=self.columns,
                full_refresh=self.full_refresh,
                out_dir=out_dir,
                memory_limit=self.memory_limit,
            )
        except ValueError as error:
            raise ConfigurationError(f"Sync {self.sync_id!r}: {error}") from None
        finally:
            # The snapshot now holds the valid rows; the extracted chunks would only double the disk used.
            shutil.rmtree(os.path.join(out_dir, "source"), ignore_errors=True)
        try:
            uris = {name: _uri_for(out_uri, out_dir, getattr(output, name))
                    for name in ("snapshot_path", "changes_path", "invalid_path")}
            for uri in uris.values():
                storage.publish(uri)
        finally:
            storage.cleanup()
        plan = Plan(
            sync_id=self.sync_id,
            plan_id=plan_id,
            primary_key=self.primary_key,
            columns=output.columns,
            source_columns=output.source_columns,
            counts=output.counts,
            full_refresh=self.full_refresh,
            state_uri=storage.state_uri,
            snapshot_uri=uris["snapshot_path"],
            changes_uri=uris["changes_path"],
            invalid_uri=uris["invalid_path"],
            base=base,
            created_at=datetime.now(timezone.utc),
        )
        self._log_plan(plan, base)
        return plan.model_dump(mode="json")

    def _log_plan(self, plan: Plan, base: Any) -> None:
        counts = plan.counts
        self.log.info(
            "Sync %r plan %s: %d added, %d changed, %d removed, %d unchanged, %d invalid of %d source rows "
            "(against %s)",
            self.sync_id,
            plan.plan_id,
            counts.added,
            counts.changed,
            counts.removed,
            counts.unchanged,
            counts.invalid,
            counts.total,
            f"committed snapshot {base.snapshot_id}" if base else "nothing: first run",
        )
        if counts.invalid:
            self.log.warning(
                "%d rows set aside (null or duplicate primary key), never sent: %s", counts.invalid, plan.invalid_uri
            )

    def _diff_in_warehouse(self, storage: SyncStorage, base: Any, plan_id: str, out_uri: str, out_dir: str) -> dict[str, Any]:
        """The diff as SQL inside the warehouse; only the changes (and invalid rows) leave it."""
        from airflow.sdk.bases.hook import BaseHook

        from airflow_provider_zeotap.sync.warehouse.dialects import dialect_for
        from airflow_provider_zeotap.sync.warehouse.store import WarehouseState

        conn_id = str(self.conn_id)
        try:
            dialect = dialect_for(BaseHook.get_connection(conn_id).conn_type)
            state = WarehouseState(self._sql_hook(), dialect, sync_id=self.sync_id, state_schema=self.state_schema)
            output = state.diff(
                sql=str(self.sql),
                parameters=self.parameters,
                primary_key=self.primary_key,
                columns=self.columns,
                first_run=base is None,
                full_refresh=self.full_refresh,
                out_dir=out_dir,
                chunk_size=self.chunk_size,
                memory_limit=self.memory_limit,
            )
            descriptor = os.path.join(out_dir, "warehouse.json")
            with open(descriptor, "w", encoding="utf-8") as handle:
                json.dump({"dialect": dialect.name, "state_schema": self.state_schema,
                           "state_table": output.state_table, "base_version": output.version}, handle)
        except ConfigurationError:
            raise
        except ValueError as error:
            raise ConfigurationError(f"Sync {self.sync_id!r}: {error}") from None
        try:
            uris = {name: _uri_for(out_uri, out_dir, path) for name, path in (
                ("snapshot", descriptor), ("changes", output.changes_path),
                ("invalid", output.invalid_path), ("hashes", output.hashes_path))}
            for uri in uris.values():
                storage.publish(uri)
        finally:
            storage.cleanup()
        plan = Plan(
            sync_id=self.sync_id,
            plan_id=plan_id,
            primary_key=self.primary_key,
            columns=output.columns,
            source_columns=output.source_columns,
            counts=output.counts,
            full_refresh=self.full_refresh,
            state_uri=storage.state_uri,
            snapshot_uri=uris["snapshot"],
            changes_uri=uris["changes"],
            invalid_uri=uris["invalid"],
            base=base,
            created_at=datetime.now(timezone.utc),
            warehouse=WarehousePlan(
                conn_id=conn_id, dialect=dialect.name, state_schema=self.state_schema, state_table=output.state_table,
                base_version=output.version, hashes_uri=uris["hashes"],
            ),
        )
        self._log_plan(plan, base)
        return plan.model_dump(mode="json")

    def _extract(self, out_dir: str, storage: SyncStorage) -> list[str]:
        from airflow_provider_zeotap.sync.sources import file_to_parts, rows_to_parts, sql_to_parts

        os.makedirs(out_dir, exist_ok=True)
        if self.rows is not None:
            rows = self.rows
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ConfigurationError(f"rows must be a list of dicts, got {type(rows).__name__}.")
            return rows_to_parts(rows, out_dir)
        if self.sql is not None:
            return sql_to_parts(self._sql_hook(), self.sql, out_dir, chunk_size=self.chunk_size, parameters=self.parameters)
        uri = str(self.source_uri)
        path = local_path(uri) if is_local(uri) else storage.fetch(uri)
        if not os.path.exists(path):
            raise ConfigurationError(f"source_uri {uri!r} does not exist.")
        return file_to_parts(path, out_dir, format=self.source_format)

    def _sql_hook(self) -> Any:
        return sql_hook(str(self.conn_id))


def sql_hook(conn_id: str) -> Any:
    """The common.sql ``DbApiHook`` of an Airflow connection, or an error naming what it is instead."""
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk.bases.hook import BaseHook

    hook = BaseHook.get_hook(conn_id)
    if not isinstance(hook, DbApiHook):
        raise ConfigurationError(
            f"Connection {conn_id!r} ({type(hook).__name__}) is not an SQL connection; use a connection whose "
            "hook is a common.sql DbApiHook (sqlite, postgres, snowflake, bigquery, ...)."
        )
    return hook


def _in_warehouse(snapshot_uri: str) -> bool:
    return snapshot_uri.endswith(WAREHOUSE_MARKER_SUFFIX)


def _check_diff_in(task_id: str, diff_in: Any, state_schema: Any, sql: str | None) -> str:
    """``diff_in`` and ``state_schema`` are checked when the DAG is parsed, each error naming the fix."""
    from airflow_provider_zeotap.sync.warehouse.dialects import validate_schema

    if diff_in not in ("worker", "warehouse"):
        raise ConfigurationError(
            f"SyncDiffOperator {task_id!r}: diff_in must be 'worker' or 'warehouse', got {diff_in!r}."
        )
    if diff_in == "warehouse":
        if sql is None:
            raise ConfigurationError(
                f"SyncDiffOperator {task_id!r}: diff_in='warehouse' runs the diff inside the source's warehouse, so it "
                "needs sql + conn_id; for source_uri or rows use diff_in='worker'."
            )
        try:
            validate_schema(state_schema)
        except ValueError as error:
            raise ConfigurationError(f"SyncDiffOperator {task_id!r}: {error}") from None
    return str(diff_in)


def _uri_for(out_uri: str, out_dir: str, path: str) -> str:
    """The URI of a file the engine wrote under ``out_dir``."""
    relative = os.path.relpath(path, out_dir)
    if relative.startswith(".."):
        return "file://" + os.path.abspath(path)
    return out_uri.rstrip("/") + "/" + relative.replace(os.sep, "/")
