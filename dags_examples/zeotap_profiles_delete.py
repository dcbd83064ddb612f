"""Honour deletion requests: every new row of ``deletion_requests`` deletes that Zeotap profile, once.

The diff sees each request as an added row the first time, and the commit records it, so a request is sent
once even though the table keeps it. Deletions go 400 ids a call; the result counts deleted and not-found ids,
and a JSON-lines file lists each id with its result.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.zeotap import ZeotapProfileDeleteOperator

with DAG(
    dag_id="zeotap_profiles_delete",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "zeotap"],
) as dag:
    requests = SyncDiffOperator(
        task_id="diff_deletion_requests",
        sync_id="zeotap_deletion_requests",
        conn_id="warehouse",
        sql="SELECT customer_id FROM deletion_requests",
        primary_key="customer_id",
    )
    ZeotapProfileDeleteOperator(task_id="delete_profiles", plan=requests.output, id_type="user_id")
