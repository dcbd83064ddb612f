"""Mirror the warehouse's segment catalogue into a Permutive import (batches of up to 5,000).

The import's UUID comes from the Airflow Variable ``permutive_import_id``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

with DAG(
    dag_id="permutive_segments_mirror",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried sync task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "permutive"],
) as dag:
    diff = SyncDiffOperator(
        task_id="diff_segments",
        sync_id="permutive_segments",
        conn_id="warehouse",
        sql="SELECT code, name, description FROM segments",
        primary_key="code",
    )
    PermutiveSyncOperator(
        task_id="mirror_segments",
        plan=diff.output,
        import_id="{{ var.value.permutive_import_id }}",
        audience_mode="mirror",
        field_mapping={"segment_code": "code", "segment_name": "name", "description": "description"},
    )
