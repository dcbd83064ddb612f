"""A report that runs once the VIP audience has landed in every destination (data-aware scheduling).

Each sync task updates its sync's Asset (``zeotap-sync://<sync_id>``) when it finishes, and the event
carries what it delivered: succeeded, rejected, failed and skipped rows, and where the rejected rows are
listed. This DAG is scheduled on the Assets of ``vip_audience_fanout``'s syncs, so it runs after a fan-out
run in which every branch finished, without a sensor and without knowing that DAG's schedule. Its graph
is the lineage: the Assets page shows which DAG feeds which.

The report is mapped over the syncs that landed (``expand``): one task instance per destination, each
with its own log line and state, however many destinations the fan-out grows to.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_zeotap.sync.state import sync_asset

#: The fan-out's sync ids, one per destination (see vip_audience_fanout).
FANOUT_SYNCS = ("vip_audience_personyze", "vip_audience_optimizely", "vip_audience_zeotap")
FANOUT_ASSETS = [sync_asset(sync_id) for sync_id in FANOUT_SYNCS]

with DAG(
    dag_id="vip_audience_report",
    schedule=FANOUT_ASSETS,  # every one of them updated since the last report
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["zeotap-sync", "report"],
) as dag:

    @task(inlets=FANOUT_ASSETS)
    def landed(*, inlet_events: Any = None) -> list[dict[str, Any]]:
        """The latest event of each sync's Asset: what each destination acknowledged, and when."""
        landings = []
        for asset in FANOUT_ASSETS:
            events = list(inlet_events[asset])
            if not events:
                raise ValueError(f"{asset.name} has no event yet: run vip_audience_fanout first.")
            event = events[-1]
            landings.append({**event.extra, "landed_at": event.timestamp.isoformat(),
                             "source_run_id": event.source_run_id})
        return landings

    @task
    def report(landing: dict[str, Any]) -> str:
        """One line per destination; a warning names the rejected-rows file when rows did not arrive."""
        line = (f"{landing['sync_id']} ({landing['destination']}, {landing['mode']}): {landing['succeeded']} "
                f"delivered, {landing['rejected']} rejected, {landing['failed']} failed, {landing['skipped']} left "
                f"alone, in run {landing['source_run_id']}")
        print(line)
        if landing["rejected"] or landing["failed"]:
            print(f"Rows that did not arrive, with the reason for each: {landing['rejected_rows_uri']}")
        return line

    report.expand(landing=landed())
