"""Push traits, consent and marketing preferences from the warehouse into Zeotap profiles (upsert).

One ``POST /users`` per changed customer, paced at the Profile API's limit (10,000 a minute, 200 at once).
Connections: ``warehouse`` (any SQL connection; the demo uses SQLite) and ``zeotap_default`` (API key, extras
``org_id`` and ``region``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator

with DAG(
    dag_id="zeotap_profiles_sync",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "zeotap"],
) as dag:
    diff = SyncDiffOperator(
        task_id="diff_customers",
        sync_id="zeotap_profiles",
        conn_id="warehouse",
        sql="SELECT customer_id, first_name, plan, gdpr_ok, sms_optin FROM customers",
        primary_key="customer_id",
    )
    ZeotapProfileSyncOperator(
        task_id="sync_profiles",
        plan=diff.output,
        id_type="user_id",  # the key column's values are the profiles' user_id
        sync_mode="upsert",
        field_mapping={
            "first_name": "first_name",  # no section: profile.first_name
            "profile.plan": "plan",
            "consent.gdpr_advertising": "gdpr_ok",
            "mkt_preferences.sms_optin": "sms_optin",
        },
    )
