"""Zeotap profiles over real Airflow runs (dag.test on a SQLite metadata DB) against the local emulator."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.testing.zeotap import NO_ORG_ID
from tests.integration.conftest import FAST_RETRIES, connection_env

pytestmark = pytest.mark.integration

COLUMNS = ["user_id", "first_name", "gdpr_ok", "sms"]
MAPPING = {"profile.first_name": "first_name", "consent.gdpr_advertising": "gdpr_ok",
           "mkt_preferences.sms_optin": "sms"}


def sync_dag(dag_runner, sync_id: str, mode: str = "upsert", mapping: dict | None = MAPPING, extra: str = "") -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT * FROM customers", primary_key="user_id")
            ZeotapProfileSyncOperator(task_id="sync", plan=diff.output, id_type="user_id", sync_mode="{mode}",
                                      field_mapping={mapping!r}{extra})
    ''')


def customer(i: int, **overrides) -> dict:
    return {"user_id": f"u-{i:05d}", "first_name": f"First{i}", "gdpr_ok": i % 2 == 0, "sms": i % 3 == 0,
            **overrides}


def writes(emulator) -> list[dict]:
    return [r.json for r in emulator.requests if r.method == "POST" and r.path == "/cdp/v1/users"]


def deletes(emulator) -> list[dict]:
    return [r.json for r in emulator.requests if r.path == "/cdp/v1/users/_delete"]


def by_user_id(emulator) -> dict[str, dict]:
    return {p["ids"]["user_id"]: p for p in emulator.profiles.values()}


@pytest.fixture
def zeotap_process(monkeypatch):
    """The emulator in its own process: the time bound measures the sync, not a server sharing its interpreter."""
    from airflow_provider_zeotap.testing.process import EmulatorProcess

    with EmulatorProcess("zeotap") as emulator:
        connection = json.loads(emulator.airflow_env["AIRFLOW_CONN_ZEOTAP_DEFAULT"])
        connection["extra"].update(FAST_RETRIES)
        monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", json.dumps(connection))
        yield emulator


def test_a_2000_profile_upsert_one_id_per_post_then_only_changes_then_nothing(dag_runner, warehouse,
                                                                               zeotap_process):
    zeotap = zeotap_process
    zeotap.set_faults(latency_ms=50)
    warehouse.replace("customers", [customer(i) for i in range(2000)], COLUMNS)
    dag = sync_dag(dag_runner, "zeotap_upsert_it")

    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    result = first.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (2000, 0, 0)
    assert result["duration_seconds"] < 25
    sent = writes(zeotap)
    assert len(sent) == 2000 and all(len(body["ids"]) == 1 for body in sent)
    assert {body["ids"]["user_id"] for body in sent} == {f"u-{i:05d}" for i in range(2000)}
    assert not [r for r in zeotap.requests if r.status == 429]
    assert zeotap.max_in_flight_seen() <= 200
    profiles = {p["ids"]["user_id"]: p for p in zeotap.state()["profiles"]}
    assert (profiles["u-00006"]["profile"], profiles["u-00006"]["consent"], profiles["u-00006"]["mkt_preferences"]) == (
        {"first_name": "First6"}, {"gdpr_advertising": True}, {"sms_optin": True})
    assert sent[0]["orgId"] == int(zeotap.credentials["org_id"]) and sent[0]["region"] == "EU"

    # Second run: two changed, one added; only those are written.
    zeotap.set_faults()
    zeotap.clear_requests()
    rows = [customer(i) for i in range(2000)] + [customer(2000)]
    rows[5] = customer(5, first_name="Renamed")
    rows[8] = customer(8, gdpr_ok=False)
    warehouse.replace("customers", rows, COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success"
    assert sorted(body["ids"]["user_id"] for body in writes(zeotap)) == ["u-00005", "u-00008", "u-02000"]
    profiles = {p["ids"]["user_id"]: p for p in zeotap.state()["profiles"]}
    assert profiles["u-00005"]["profile"]["first_name"] == "Renamed"
    assert profiles["u-00008"]["consent"] == {"gdpr_advertising": False}

    zeotap.clear_requests()
    assert dag_runner.run(dag).state == "success"
    assert zeotap.requests == []


def test_without_a_mapping_every_non_key_column_goes_to_profile(dag_runner, warehouse, zeotap):
    warehouse.replace("customers", [customer(1)], COLUMNS)
    run = dag_runner.run(sync_dag(dag_runner, "zeotap_default_mapping_it", mapping=None))
    assert run.state == "success", run.task_states
    assert writes(zeotap)[0]["upsert"] == {"profile": {"first_name": "First1", "gdpr_ok": False, "sms": False}}


def test_mirror_deletes_100_removed_ids_in_calls_of_at_most_400_and_leaves_others_profiles(dag_runner, warehouse,
                                                                                           zeotap):
    zeotap.create_profile("user_id", "u-00003", profile={"made_by": "the web SDK"})
    warehouse.replace("customers", [customer(i) for i in range(300)], COLUMNS)
    dag = sync_dag(dag_runner, "zeotap_mirror_it", mode="mirror")
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    result = first.result("sync")
    assert (result["succeeded"], result["skipped"]) == (299, 1)  # u-00003 was someone else's
    assert by_user_id(zeotap)["u-00003"]["profile"] == {"made_by": "the web SDK"}

    zeotap.clear_requests()
    warehouse.replace("customers", [customer(i) for i in range(200)], COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    calls = deletes(zeotap)
    assert calls and all(len(call["ids"]["user_id"]) <= 400 for call in calls)
    assert sorted(i for call in calls for i in call["ids"]["user_id"]) == [f"u-{i:05d}" for i in range(200, 300)]
    assert second.result("sync")["operations"]["delete"]["succeeded"] == 100
    assert sorted(by_user_id(zeotap)) == sorted([f"u-{i:05d}" for i in range(200)])

    # The foreign profile is never the sync's: removing its row deletes nothing.
    zeotap.clear_requests()
    warehouse.replace("customers", [customer(i) for i in range(200) if i != 3], COLUMNS)
    assert dag_runner.run(dag).state == "success"
    assert deletes(zeotap) == []
    assert "u-00003" in by_user_id(zeotap)


def test_a_400_about_one_row_rejects_that_row_with_the_api_reason(dag_runner, warehouse, zeotap):
    zeotap.set_faults(error_rate=1.0, error_status=400, method="POST", body_contains='"u-00007"')
    warehouse.replace("customers", [customer(i) for i in range(20)] + [customer(99, user_id="")], COLUMNS)
    run = dag_runner.run(sync_dag(dag_runner, "zeotap_row_rejected_it"))
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (19, 2)
    rejected = {r["user_id"]: r["reason"] for r in
                map(json.loads, open(result["rejected_rows_uri"].removeprefix("file://")))}
    assert rejected["u-00007"] == "Zeotap refused this profile (HTTP 400): Bad Request"
    assert "empty id" in rejected[""] and "Search failed as no Identifier found" in rejected[""]
    assert "" not in {body["ids"]["user_id"] for body in writes(zeotap)}  # refused before any call


def test_a_missing_org_id_or_scope_fails_the_task_with_the_api_message(dag_runner, warehouse, zeotap, monkeypatch,
                                                                       capfd):
    warehouse.replace("customers", [customer(i) for i in range(1000)], COLUMNS)
    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env("zeotap", zeotap.url, zeotap.api_key,
                                                                      region="EU"))
    capfd.readouterr()
    run = dag_runner.run(sync_dag(dag_runner, "zeotap_no_org_it"))
    output = capfd.readouterr()
    assert run.state == "failed" and run.task_states["sync"] == "failed"
    assert NO_ORG_ID in output.out + output.err
    assert zeotap.requests == []

    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env(
        "zeotap", zeotap.url, zeotap.api_key, org_id=str(zeotap.org_id), region="EU", scopes="profile.read"))
    run = dag_runner.run(sync_dag(dag_runner, "zeotap_no_scope_it"))
    output = capfd.readouterr()
    assert run.task_states["sync"] == "failed"
    assert "The request lacks the scope profile.write" in output.out + output.err
    # Stopped at the first refusals: the rows not started yet are never sent (1,000 rows take 6 s of pacing).
    assert 0 < len(writes(zeotap)) < 500
    assert zeotap.profiles == {}


def test_the_deletion_operator_by_list_and_by_plan(dag_runner, warehouse, zeotap, tmp_path):
    for i in range(5):
        zeotap.create_profile("user_id", f"u-{i:05d}")
    ids = [f"u-{i:05d}" for i in range(450)] + [""]
    listed = str(tmp_path / "deleted.jsonl")
    run = dag_runner.run(dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.zeotap import ZeotapProfileDeleteOperator

        with DAG(dag_id="zeotap_delete_list_it", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            ZeotapProfileDeleteOperator(task_id="delete", id_type="user_id", ids={ids!r},
                                        output_uri="file://{listed}")
    '''))
    assert run.state == "success", run.task_states
    result = run.result("delete")
    assert (result["deleted"], result["not_found"], result["ids"], result["empty_ids"]) == (5, 445, 450, 1)
    assert [len(call["ids"]["user_id"]) for call in deletes(zeotap)] == [400, 50]
    lines = [json.loads(line) for line in open(listed)]
    assert sorted(line["id"] for line in lines if line["result"] == "deleted") == [f"u-{i:05d}" for i in range(5)]
    assert sum(line["result"] == "not_found" for line in lines) == 445
    assert result["deletions_uri"] == f"file://{listed}"

    # A table of deletion requests through a plan: each request is sent once.
    for i in range(10):
        zeotap.create_profile("user_id", f"v-{i}")
    zeotap.clear_requests()
    dag = dag_runner.write('''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.zeotap import ZeotapProfileDeleteOperator

        with DAG(dag_id="zeotap_delete_plan_it", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="zeotap_delete_plan_it", conn_id="warehouse",
                                    sql="SELECT * FROM requests", primary_key="user_id")
            ZeotapProfileDeleteOperator(task_id="delete", plan=diff.output, id_type="user_id")
    ''')
    warehouse.replace("requests", [{"user_id": f"v-{i}"} for i in range(4)] + [{"user_id": "nobody"}], ["user_id"])
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    assert (first.result("delete")["deleted"], first.result("delete")["not_found"]) == (4, 1)
    assert sorted(by_user_id(zeotap)) == [f"v-{i}" for i in range(4, 10)]
    warehouse.replace("requests", [{"user_id": f"v-{i}"} for i in range(6)] + [{"user_id": "nobody"}], ["user_id"])
    zeotap.clear_requests()
    second = dag_runner.run(dag)
    assert second.state == "success"
    assert [sorted(call["ids"]["user_id"]) for call in deletes(zeotap)] == [["v-4", "v-5"]]
    listed = second.result("delete")["deletions_uri"].removeprefix("file://")
    assert sorted(json.loads(line)["id"] for line in open(listed)) == ["v-4", "v-5"]


def test_the_fetch_operator_streams_profiles_to_parquet_and_json_lines(dag_runner, warehouse, zeotap, tmp_path):
    for i in range(12):
        zeotap.create_profile("user_id", f"u-{i:05d}", profile={"n": i}, consent={"gdpr": i % 2 == 0})
    warehouse.replace("customers", [customer(i) for i in range(15)] + [customer(99, user_id=None)], COLUMNS)
    parquet, lines = tmp_path / "profiles.parquet", tmp_path / "profiles.jsonl"
    run = dag_runner.run(dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.zeotap import ZeotapProfileFetchOperator

        with DAG(dag_id="zeotap_fetch_it", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            ZeotapProfileFetchOperator(task_id="from_sql", id_type="user_id", conn_id="warehouse",
                                       sql="SELECT user_id FROM customers", output_uri="file://{parquet}")
            ZeotapProfileFetchOperator(task_id="from_list", id_type="user_id", ids=["u-00001", "nobody"],
                                       output_uri="file://{lines}")
    '''))
    assert run.state == "success", run.task_states
    result = run.result("from_sql")
    assert {k: result[k] for k in ("ids", "found", "not_found", "empty_ids", "profiles", "requests")} == {
        "ids": 15, "found": 12, "not_found": 3, "empty_ids": 1, "profiles": 12, "requests": 3}
    assert result["output_uri"] == f"file://{parquet}" and "profile" not in result
    table = pq.read_table(parquet).to_pylist()
    assert sorted(json.loads(row["profile"])["n"] for row in table) == list(range(12))
    assert json.loads(next(r for r in table if json.loads(r["ids"])["user_id"] == "u-00002")["consent"]) == {
        "gdpr": True}
    searches = [r.json for r in zeotap.requests if r.path == "/cdp/v1/users/_search"]
    assert all(len(s["search"]["user_id"]) <= 5 for s in searches)
    profiles = [json.loads(line) for line in open(lines)]
    assert [p["ids"]["user_id"] for p in profiles] == ["u-00001"]
    assert (run.result("from_list")["found"], run.result("from_list")["not_found"]) == (1, 1)
