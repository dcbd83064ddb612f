"""Deliver a plan to Personyze users in this process: ``python -m tests.support.deliver_plan <work dir>``.

The crash test runs this in a child process and kills it with SIGKILL half-way through.
"""

from __future__ import annotations

import os
import sys

from airflow_provider_zeotap.destinations.personyze import PersonyzeUsers
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.models import Plan
from airflow_provider_zeotap.sync.runner import DeliveryRunner
from airflow_provider_zeotap.sync.state import CommittedPointer
from airflow_provider_zeotap.sync.storage import SyncStorage
from tests.support.json_store import JsonFileStore


def deliver(work_dir: str):
    with open(f"{work_dir}/plan.json", encoding="utf-8") as handle:
        plan = Plan.model_validate_json(handle.read())
    runner = DeliveryRunner(
        plan=plan,
        destination=PersonyzeUsers(PersonyzeHook()),
        mode="upsert",
        storage=SyncStorage(plan.state_uri, plan.sync_id),
        pointer=CommittedPointer(JsonFileStore(f"{work_dir}/asset_state.json")),
        checkpoints=JsonFileStore(f"{work_dir}/task_state.json"),
        batch_size=5,
        warehouse_hook=_warehouse_hook(work_dir),
    )
    return runner.run()


def _warehouse_hook(work_dir: str):
    """A plan diffed in PostgreSQL commits there: ``warehouse_dsn`` in the work dir names the server."""
    path = f"{work_dir}/warehouse_dsn"
    if not os.path.exists(path):
        return None
    import psycopg2

    from tests.support.warehouse_harness import ConnectHook

    dsn = open(path, encoding="utf-8").read().strip()
    return ConnectHook(lambda: psycopg2.connect(dsn))


if __name__ == "__main__":
    deliver(sys.argv[1])
