"""The diff task's other sources in real Airflow runs: an upstream task's rows, and a file URI. Also dry run."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration


@pytest.fixture
def personyze(personyze_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT",
                       connection_env("personyze", personyze_emulator.url, personyze_emulator.api_key))
    return personyze_emulator


def test_rows_from_an_upstream_task_feed_a_list_add(dag_runner, personyze, tmp_path):
    list_id = personyze.create_list("From a task")
    source = tmp_path / "emails.json"
    source.write_text(json.dumps(["A@Example.com ", "b@example.com"]))
    dag = dag_runner.write(f'''
        import json
        from datetime import datetime
        from airflow.sdk import DAG, task
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="rows_from_task", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            @task
            def audience():
                return [{{"email": e}} for e in json.load(open({str(source)!r}))]

            diff = SyncDiffOperator(task_id="diff", sync_id="rows_from_task", rows=audience(), primary_key="email")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="user_list_members",
                                  audience_mode="add", list_id={list_id}, normalize_email=True)
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert personyze.list_member_emails(list_id) == {"a@example.com", "b@example.com"}
    plan = run.result("diff")
    assert plan["counts"]["added"] == 2 and "rows" not in json.dumps(plan["counts"])


def test_a_parquet_file_source_and_a_dry_run_that_sends_and_commits_nothing(dag_runner, personyze, tmp_path):
    path = tmp_path / "customers.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "email": ["a@x.com", "b@x.com", None], "first_name": ["A", "B", "C"]}),
                   path)
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="file_dry_run", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="file_dry_run", source_uri="file://{path}",
                                    primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert",
                                  dry_run=True, dry_run_sample=2)
    ''')
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    result = first.result("sync")
    assert result["dry_run"] and result["operations"]["upsert"] == {"selected": 3, "succeeded": 0, "rejected": 1,
                                                                     "failed": 0, "skipped": 0, "unchanged_payload": 0, "identity_kept": 0}
    payloads = [json.loads(line) for line in open(result["dry_run_payloads_uri"].removeprefix("file://"))]
    assert [p["payload"]["email"] for p in payloads] == ["a@x.com", "b@x.com"]
    assert not [r for r in personyze.requests if r.method in ("POST", "PUT", "DELETE")]
    second = dag_runner.run(dag)  # nothing was committed, so everything is still new
    assert second.result("diff")["counts"]["added"] == 3
