"""Keep a Personyze user list equal to the warehouse's VIP customers (audience mirror).

The list must exist in Personyze; its numeric id comes from the Airflow Variable ``personyze_list_id``.
Mirror only ever removes members this sync added.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

with DAG(
    dag_id="personyze_list_mirror",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried sync task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "personyze"],
) as dag:
    diff = SyncDiffOperator(
        task_id="diff_vips",
        sync_id="personyze_vip_list",
        conn_id="warehouse",
        sql="SELECT lower(email) AS email FROM customers WHERE plan = 'vip'",
        primary_key="email",
    )
    PersonyzeSyncOperator(
        task_id="mirror_vip_list",
        plan=diff.output,
        object_type="user_list_members",
        audience_mode="mirror",
        list_id="{{ var.value.personyze_list_id }}",
    )
