"""Sync customer profiles from the warehouse to Personyze users (upsert), sending only what changed.

Connections: ``warehouse`` (any SQL connection; the demo uses SQLite) and ``personyze_default``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

with DAG(
    dag_id="personyze_users_sync",
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
        task_id="diff_customers",
        sync_id="personyze_users",
        conn_id="warehouse",
        sql="SELECT customer_id, email, first_name, last_name, company, plan FROM customers",
        primary_key="customer_id",
    )
    PersonyzeSyncOperator(
        task_id="sync_users",
        plan=diff.output,
        object_type="users",
        sync_mode="upsert",
        field_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "company": "company",
            "internal_id": "customer_id",
            "plan": "plan",
        },
        normalize_email=True,
    )
