"""Send one audience, the warehouse's VIP customers, to every tool that uses it, in parallel.

Fan-out: a ``sync_id`` names one baseline, and a baseline belongs to one destination target, so each
destination gets its own diff task and ``sync_id`` over the same audience query. The branches share nothing:
a destination that is down or slow fails or delays only its own branch, and each one receives exactly the
changes it has not acknowledged yet, however far behind the others it is.

The branches are written out in a loop rather than mapped with ``expand()``: a sync task's Asset (which holds
its state and gives the lineage, see ``vip_audience_report``) must be known when the DAG is parsed, and a
mapped task's arguments are only known at run time. The report DAG maps over the syncs that landed, where
the set is only known at run time.

Connections: ``warehouse`` (any SQL connection; the demo uses SQLite), ``personyze_default``,
``optimizely_default``, ``zeotap_default`` (extras ``org_id`` and ``region``).
Variables: ``personyze_list_id`` (a Personyze user list), ``optimizely_project_id`` and
``optimizely_list_attribute_id`` (an Optimizely list attribute of that project).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator

#: The audience, once: every branch selects the identifier its destination needs from it.
AUDIENCE = "SELECT customer_id, email, first_name FROM customers WHERE plan = 'vip'"

#: What a production sync DAG needs: retries that resume after the last acknowledged batch, a bound on a
#: stuck run, and no row silently lost (a run whose rows are mostly refused fails after its commit).
DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,  # 2, 4 minutes
    "execution_timeout": timedelta(hours=1),
}
#: A sync task fails (after committing what landed) when more than half of its rows were refused: then a
#: mapping or the source broke, which a few bad rows (reported in the result, sent again once fixed) do not mean.
MAX_REJECTED_RATIO = 0.5

with DAG(
    dag_id="vip_audience_fanout",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one sync at once race for its baseline
    dagrun_timeout=timedelta(hours=3),
    default_args=DEFAULT_ARGS,
    tags=["zeotap-sync", "fan-out", "personyze", "optimizely", "zeotap"],
) as dag:
    personyze_members = SyncDiffOperator(
        task_id="diff_personyze",
        sync_id="vip_audience_personyze",
        conn_id="warehouse",
        # Personyze matches emails case-sensitively; a list member is identified by its email.
        sql=f"SELECT lower(trim(email)) AS email FROM ({AUDIENCE})",
        primary_key="email",
    )
    PersonyzeSyncOperator(
        task_id="sync_personyze",
        plan=personyze_members.output,
        object_type="user_list_members",
        audience_mode="mirror",
        list_id="{{ var.value.personyze_list_id }}",
        max_rejected_ratio=MAX_REJECTED_RATIO,
    )

    zeotap_profiles = SyncDiffOperator(
        task_id="diff_zeotap",
        sync_id="vip_audience_zeotap",
        conn_id="warehouse",
        sql=f"SELECT CAST(customer_id AS TEXT) AS customer_id, first_name, 'vip' AS audience FROM ({AUDIENCE})",
        primary_key="customer_id",
    )
    # Upsert, not mirror: a Zeotap mirror deletes the whole profile of a row that leaves, and a customer who
    # leaves the VIP audience is still a customer. Their profile keeps its last traits.
    ZeotapProfileSyncOperator(
        task_id="sync_zeotap",
        plan=zeotap_profiles.output,
        id_type="user_id",
        sync_mode="upsert",
        field_mapping={"first_name": "first_name", "profile.audience": "audience"},
        max_rejected_ratio=MAX_REJECTED_RATIO,
    )

    optimizely_members = SyncDiffOperator(
        task_id="diff_optimizely",
        sync_id="vip_audience_optimizely",
        conn_id="warehouse",
        # An Optimizely list attribute holds ids its SDKs see; here the customer id the site sends as user_id.
        sql=f"SELECT 'customer-' || customer_id AS user_id FROM ({AUDIENCE})",
        primary_key="user_id",
    )
    OptimizelySyncOperator(
        task_id="sync_optimizely",
        plan=optimizely_members.output,
        object_type="list_attributes",
        audience_mode="mirror",
        project_id="{{ var.value.optimizely_project_id }}",
        list_attribute_id="{{ var.value.optimizely_list_attribute_id }}",
        max_rejected_ratio=MAX_REJECTED_RATIO,
    )
