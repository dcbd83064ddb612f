"""Pull the Zeotap profiles of the warehouse's customers into a Parquet file, for analysis.

Profiles are fetched 5 ids a call, concurrently and paced, and streamed to ``output_uri`` (any
ObjectStoragePath: ``s3://``, ``gs://``, ``file://``). The location comes from the Airflow Variable
``zeotap_profiles_folder``; XCom gets the counts and the file's location, never the profiles.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.zeotap import ZeotapProfileFetchOperator

with DAG(
    dag_id="zeotap_profiles_fetch",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    # A retried fetch reads every id again and rewrites its file; a stuck run is stopped after an hour.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": 2.0,
                  "execution_timeout": timedelta(hours=1)},
    tags=["zeotap-sync", "zeotap"],
) as dag:
    ZeotapProfileFetchOperator(
        task_id="fetch_profiles",
        id_type="user_id",
        sql="SELECT customer_id FROM customers",
        conn_id="warehouse",
        id_column="customer_id",
        output_uri="{{ var.value.zeotap_profiles_folder }}/profiles-{{ ds_nodash }}.parquet",
    )
