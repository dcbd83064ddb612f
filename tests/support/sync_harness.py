"""Pieces for testing the sync engine without Airflow: an in-memory state store and a test destination."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.sync.destination import BatchRefused, Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.diff import diff_snapshots
from airflow_provider_zeotap.sync.models import Plan
from airflow_provider_zeotap.sync.modes import AUDIENCE_MODES, RECORD_MODES, Operation
from airflow_provider_zeotap.sync.runner import DeliveryRunner
from airflow_provider_zeotap.sync.sources import rows_to_parts
from airflow_provider_zeotap.sync.state import CommittedPointer
from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id


class DictStore:
    """Stands in for Airflow's asset and task state stores (same get/set/delete calls)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        assert value is not None
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Killed(BaseException):
    """What a worker being killed looks like from inside the task: nothing after it runs normally."""


class RecordingDestination(Destination):
    """Acknowledges rows, except those a test chose to reject, fail, or refuse as a whole batch."""

    capabilities = Capabilities(
        name="Test destination",
        mode_argument="sync_mode",
        modes=MappingProxyType({**RECORD_MODES, **{f"audience_{k}": v for k, v in AUDIENCE_MODES.items()}}),
        batch_size=3,
        max_batch_size=100,
        required_fields=("email",),
        default_fields=("email", "name"),
    )

    def __init__(
        self,
        *,
        reject: Callable[[OutboundRow], str | None] = lambda row: None,
        fail: Callable[[OutboundRow], bool] = lambda row: False,
        poison: Callable[[OutboundRow], bool] = lambda row: False,
        invalid: Callable[[OutboundRow], bool] = lambda row: False,
        kill_at_call: int | None = None,
    ) -> None:
        self.reject = reject
        self.fail = fail
        self.poison = poison
        self.invalid = invalid
        self.kill_at_call = kill_at_call
        self.calls: list[tuple[Operation, list[dict[str, Any]]]] = []
        self.delivered: list[tuple[Operation, dict[str, Any]]] = []

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        self.calls.append((operation, [dict(r.payload) for r in rows]))
        if self.kill_at_call is not None and len(self.calls) == self.kill_at_call:
            raise Killed()
        if any(self.poison(row) for row in rows):
            raise BatchRefused("ValidationError: one operation is invalid")
        outcomes = []
        for row in rows:
            if self.invalid(row):
                outcomes.append(RowOutcome.rejected(row, "ValidationError: invalid data", permanent=True))
            elif reason := self.reject(row):
                outcomes.append(RowOutcome.rejected(row, reason))
            elif self.fail(row):
                outcomes.append(RowOutcome.failed(row, "HTTP 503 after 5 attempts"))
            else:
                outcomes.append(RowOutcome.ok(row))
                self.delivered.append((operation, dict(row.payload)))
        return outcomes


class SyncHarness:
    """One sync's state on disk plus its committed pointer: diff, then deliver, like two Airflow tasks."""

    def __init__(self, root: str, sync_id: str = "test_sync", primary_key: Sequence[str] = ("id",)) -> None:
        self.storage = SyncStorage(f"file://{root}", sync_id)
        self.pointer_store = DictStore()
        self.pointer = CommittedPointer(self.pointer_store)
        self.checkpoints = DictStore()
        self.primary_key = list(primary_key)

    def plan(self, rows: list[dict[str, Any]], *, full_refresh: bool = False, columns: list[str] | None = None) -> Plan:
        base = self.pointer.read()
        plan_id = new_plan_id()
        out_dir = self.storage.local_dir(self.storage.plan_uri(plan_id))
        parts = rows_to_parts(rows, f"{out_dir}/source")
        output = diff_snapshots(
            source_parts=parts,
            base_snapshot=self.storage.fetch(base.snapshot_uri) if base else None,
            primary_key=self.primary_key,
            columns=columns,
            full_refresh=full_refresh,
            out_dir=out_dir,
        )
        return Plan(
            sync_id=self.storage.sync_id,
            plan_id=plan_id,
            primary_key=self.primary_key,
            columns=output.columns,
            source_columns=output.source_columns,
            counts=output.counts,
            full_refresh=full_refresh,
            state_uri=self.storage.state_uri,
            snapshot_uri="file://" + output.snapshot_path,
            changes_uri="file://" + output.changes_path,
            invalid_uri="file://" + output.invalid_path,
            base=base,
            created_at=datetime.now(timezone.utc),
        )

    def runner(self, plan: Plan, destination: Destination, mode: str = "upsert", **kwargs: Any) -> DeliveryRunner:
        kwargs.setdefault("checkpoints", self.checkpoints)
        return DeliveryRunner(
            plan=plan, destination=destination, mode=mode, storage=self.storage, pointer=self.pointer, **kwargs
        )

    def sync(self, rows: list[dict[str, Any]], destination: Destination, mode: str = "upsert", **kwargs: Any):
        plan = self.plan(rows)
        return plan, self.runner(plan, destination, mode, **kwargs).run()
