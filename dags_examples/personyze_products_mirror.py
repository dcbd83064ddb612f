"""Keep the Personyze product catalog (what recommendations are built from) in step with the warehouse.

Mirror: new products are created, changed ones patched, and products that leave the source are deleted,
but only those this sync created; products someone else put in the catalog are left alone.
Connections: ``warehouse`` (any SQL connection; the demo uses SQLite) and ``personyze_default``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

with DAG(
    dag_id="personyze_products_mirror",
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
        task_id="diff_products",
        sync_id="personyze_products",
        conn_id="warehouse",
        sql="SELECT sku, title, price, brand, category, in_stock, image_url FROM products",
        primary_key="sku",  # mirror deletes by internal_id, so the key is the column mapped to it
    )
    PersonyzeSyncOperator(
        task_id="sync_products",
        plan=diff.output,
        object_type="products",
        sync_mode="mirror",
        field_mapping={
            "internal_id": "sku",
            "title": "title",
            "price": "price",
            "brand": "brand",
            "category": "category",
            "is_in_stock": "in_stock",  # a boolean (or 0/1) is sent as 'yes'/'no'
            "image_1": "image_url",  # stored by Personyze as image_big_url
        },
    )
