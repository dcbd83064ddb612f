"""Deliver a plan to Zeotap profiles in this process: ``python -m tests.support.deliver_zeotap <work dir>``.

The kill test runs this in a child process and kills it with SIGKILL while batches are in flight.
"""

from __future__ import annotations

import sys

from airflow_provider_zeotap.destinations.zeotap import ZeotapProfiles
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.sync.models import Plan
from airflow_provider_zeotap.sync.runner import DeliveryRunner
from airflow_provider_zeotap.sync.state import CommittedPointer
from airflow_provider_zeotap.sync.storage import SyncStorage
from tests.support.json_store import JsonFileStore

BATCH_SIZE = 100


def deliver(work_dir: str):
    with open(f"{work_dir}/plan.json", encoding="utf-8") as handle:
        plan = Plan.model_validate_json(handle.read())
    runner = DeliveryRunner(
        plan=plan,
        destination=ZeotapProfiles(ZeotapProfileHook(), id_type="user_id"),
        mode="upsert",
        storage=SyncStorage(plan.state_uri, plan.sync_id),
        pointer=CommittedPointer(JsonFileStore(f"{work_dir}/asset_state.json")),
        checkpoints=JsonFileStore(f"{work_dir}/task_state.json"),
        batch_size=BATCH_SIZE,
        field_mapping={"profile.first_name": "first_name"},
    )
    return runner.run()


if __name__ == "__main__":
    deliver(sys.argv[1])
