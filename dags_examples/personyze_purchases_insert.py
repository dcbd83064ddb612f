"""Send each new order line to Personyze as a purchase, exactly once, to drive its recommendations.

Insert: every new row becomes one product interaction (status ``goal``, a purchase); rows that change or
disappear in the source are events that already happened and are left as they are. A run killed mid-delivery
and run again looks up what landed before sending anything twice.
Connections: ``warehouse`` (any SQL connection; the demo uses SQLite) and ``personyze_default``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

with DAG(
    dag_id="personyze_purchases_insert",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried sync task resumes after its last acknowledged batch; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "personyze"],
) as dag:
    diff = SyncDiffOperator(
        task_id="diff_order_lines",
        sync_id="personyze_purchases",
        conn_id="warehouse",
        # Personyze matches emails case-sensitively: lowercase them as the users sync does (normalize_email).
        sql="SELECT order_line_id, lower(customer_email) AS customer_email, sku, quantity, line_total, ordered_at, "
        "'goal' AS status FROM order_lines",
        primary_key="order_line_id",
    )
    PersonyzeSyncOperator(
        task_id="sync_purchases",
        plan=diff.output,
        object_type="product_interactions",
        sync_mode="insert",
        field_mapping={
            "user_email": "customer_email",
            "product_internal_id": "sku",
            "status": "status",  # goal = purchase
            "quantity": "quantity",
            "amount": "line_total",
            "transaction_time": "ordered_at",  # a timestamp, sent as unix seconds
        },
    )
