"""Create the warehouse's tracked events as Optimizely custom events (insert: existing keys are left alone).

The project's numeric id comes from the Airflow Variable ``optimizely_project_id``. An event key that already
exists in the project is reported as a rejected row with Optimizely's message; the others are created.
Requests are paced under Optimizely's 2 per second.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator

with DAG(
    dag_id="optimizely_custom_events",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried sync task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "optimizely"],
) as dag:
    diff = SyncDiffOperator(
        task_id="diff_events",
        sync_id="optimizely_custom_events",
        conn_id="warehouse",
        sql="SELECT event_key, event_name, description FROM tracked_events",
        primary_key="event_key",
    )
    OptimizelySyncOperator(
        task_id="create_events",
        plan=diff.output,
        object_type="custom_events",
        sync_mode="insert",
        project_id="{{ var.value.optimizely_project_id }}",
        field_mapping={"key": "event_key", "name": "event_name", "description": "description"},
    )
