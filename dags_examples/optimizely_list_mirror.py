"""Keep an Optimizely list attribute equal to the warehouse's VIP customers (audience mirror).

The list attribute must exist in Optimizely (Audiences > Attributes); its numeric id and the project's
come from the Airflow Variables ``optimizely_list_attribute_id`` and ``optimizely_project_id``. Each run
reads the list, applies every addition and removal, and writes it back once. Mirror only ever removes ids
this sync added; ids put in the list by anyone else stay.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator

with DAG(
    dag_id="optimizely_list_mirror",
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
        task_id="diff_vips",
        sync_id="optimizely_vip_list",
        conn_id="warehouse",
        sql="SELECT 'customer-' || customer_id AS user_id FROM customers WHERE plan = 'vip'",
        primary_key="user_id",
    )
    OptimizelySyncOperator(
        task_id="mirror_vip_list",
        plan=diff.output,
        object_type="list_attributes",
        audience_mode="mirror",
        project_id="{{ var.value.optimizely_project_id }}",
        list_attribute_id="{{ var.value.optimizely_list_attribute_id }}",
    )
