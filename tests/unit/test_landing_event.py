"""What a finished sync puts on its Asset's event, for DAGs scheduled on the sync."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from types import SimpleNamespace

from airflow_provider_zeotap.operators.deployment import describe_landing
from airflow_provider_zeotap.sync.models import CommittedState, SyncResult
from airflow_provider_zeotap.sync.state import sync_asset


def result(**counts) -> SyncResult:
    committed = CommittedState(snapshot_id="snap-2", snapshot_uri="file:///state/s/committed/snap-2.parquet",
                               plan_id="plan-2", rows=7, committed_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                               primary_key=["email"])
    return SyncResult(sync_id="vips", plan_id="plan-2", destination="Personyze user list", mode="mirror",
                      committed=committed, rejected_rows_uri="file:///state/s/plans/plan-2/rejected_rows.jsonl",
                      **counts)


def test_the_sync_assets_event_carries_the_counts_and_where_the_rejected_rows_are():
    events = defaultdict(lambda: SimpleNamespace(extra={}))
    describe_landing({"outlet_events": events}, "vips", result(succeeded=7, rejected=2, failed=1, skipped=3))
    assert set(events) == {sync_asset("vips")}
    assert events[sync_asset("vips")].extra == {
        "sync_id": "vips", "destination": "Personyze user list", "mode": "mirror", "dry_run": False,
        "succeeded": 7, "rejected": 2, "failed": 1, "skipped": 3,
        "rejected_rows_uri": "file:///state/s/plans/plan-2/rejected_rows.jsonl",
        "plan_id": "plan-2", "snapshot_id": "snap-2",
    }


def test_an_event_extra_the_author_set_is_kept_and_a_context_without_outlet_events_is_left_alone():
    events = defaultdict(lambda: SimpleNamespace(extra={"team": "crm"}))
    describe_landing({"outlet_events": events}, "vips", result(succeeded=1))
    assert events[sync_asset("vips")].extra["team"] == "crm"
    assert events[sync_asset("vips")].extra["succeeded"] == 1
    describe_landing({}, "vips", result(succeeded=1))  # no outlet events (a bare context): nothing to describe
