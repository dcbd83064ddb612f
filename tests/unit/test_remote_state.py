"""The operators end to end with the state on a non-local ObjectStoragePath (an in-memory filesystem).

Files are staged locally for DuckDB and copied up; the next run reads them back from the remote store.
"""

from __future__ import annotations

import fsspec
import pytest

from airflow_provider_zeotap.operators.base import BaseSyncOperator
from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from tests.support.sync_harness import DictStore, RecordingDestination

ROWS = [{"id": i, "email": f"user{i}@example.com", "name": f"User {i}"} for i in range(1, 6)]


class RecordingSyncOperator(BaseSyncOperator):
    def __init__(self, *, destination: RecordingDestination, **kwargs):
        super().__init__(**kwargs)
        self.destination = destination
        self.check_settings()

    @property
    def mode(self) -> str:
        return "upsert"

    @property
    def connection_id(self) -> str:
        return "recording_default"

    def capabilities(self):
        return RecordingDestination.capabilities

    def make_destination(self):
        return self.destination


class AssetStores:
    """``context["asset_state_store"][asset]``: one store per asset, as Airflow gives it."""

    def __init__(self) -> None:
        self.stores: dict[str, DictStore] = {}

    def __getitem__(self, asset) -> DictStore:
        return self.stores.setdefault(asset.name, DictStore())


@pytest.fixture
def memory_fs():
    from airflow.sdk.io import attach

    fs = fsspec.filesystem("memory")
    attach(protocol="memory", fs=fs)
    yield fs
    fs.rm("/bucket", recursive=True) if fs.exists("/bucket") else None


def run_once(rows, context) -> tuple[dict, dict, RecordingDestination]:
    diff = SyncDiffOperator(task_id="diff", sync_id="remote_sync", rows=rows, primary_key="id",
                            state_uri="memory://bucket/state")
    plan = diff.execute(context)
    destination = RecordingDestination()
    result = RecordingSyncOperator(task_id="sync", plan=plan, sync_id="remote_sync", destination=destination).execute(
        context
    )
    return plan, result, destination


def test_a_remote_state_uri_carries_snapshots_between_runs(memory_fs):
    from airflow.sdk import ObjectStoragePath

    context = {"asset_state_store": AssetStores(), "task_state_store": DictStore()}
    plan, result, destination = run_once(ROWS, context)
    assert plan["changes_uri"].startswith("memory://bucket/state/remote_sync/plans/")
    assert result["succeeded"] == 5
    assert ObjectStoragePath(result["committed"]["snapshot_uri"]).exists()

    changed = [dict(r, name="Renamed") if r["id"] == 3 else r for r in ROWS]
    plan, result, destination = run_once(changed, context)
    assert plan["counts"]["changed"] == 1 and plan["counts"]["unchanged"] == 4
    assert [p["name"] for _, batch in destination.calls for p in batch] == ["Renamed"]
