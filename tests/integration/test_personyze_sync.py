"""Personyze over real Airflow runs (dag.test on a SQLite metadata DB) against the local emulator."""

from __future__ import annotations

import json

import pytest

from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

COLUMNS = ["customer_id", "email", "first_name", "plan"]


def users_dag(dag_runner, sync_id: str, mode: str = "upsert") -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT * FROM customers", primary_key="customer_id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="{mode}",
                                  users_write="per_row",
                                  field_mapping={{"email": "email", "first_name": "first_name",
                                                  "internal_id": "customer_id", "plan": "plan"}})
    ''')


def members_dag(dag_runner, sync_id: str, list_id: int, mode: str = "mirror") -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT email FROM audience", primary_key="email")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="user_list_members",
                                  audience_mode="{mode}", list_id="{list_id}", max_in_flight=4)
    ''')


def customer(i: int, **overrides):
    return {"customer_id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "plan": "basic", **overrides}


def posted_users(emulator) -> list[dict]:
    return [r.json for r in emulator.requests if r.method == "POST" and r.path == "/rest/users"]


def test_users_upsert_sends_only_what_changed_over_three_runs(dag_runner, warehouse, personyze):
    rows = [customer(i) for i in range(1, 7)] + [
        customer(7, email=None),
        customer(8, email="not-an-email"),
    ]
    warehouse.replace("customers", rows, COLUMNS)
    dag = users_dag(dag_runner, "personyze_users_it")

    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    result = first.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (6, 2, 0)
    assert sorted(p["email"] for p in posted_users(personyze)) == [f"user{i}@example.com" for i in range(1, 7)]
    rejected = [json.loads(line) for line in open(result["rejected_rows_uri"].removeprefix("file://"))]
    reasons = {r["customer_id"]: r["reason"] for r in rejected}
    assert "email" in reasons[7] and "not an email address" in reasons[8]
    assert personyze.max_in_flight_seen("POST", "/rest/users") == 1

    # Second run: two changed, one added, one removed (upsert does not act on removals).
    personyze.clear_requests()
    rows = [customer(1, first_name="Renamed"), customer(2, plan="vip")] + [customer(i) for i in (3, 4, 5)] + [
        customer(9), customer(7, email=None), customer(8, email="not-an-email")
    ]
    warehouse.replace("customers", rows, COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success"
    assert sorted(p["email"] for p in posted_users(personyze)) == [
        "user1@example.com", "user2@example.com", "user9@example.com"
    ]
    by_email = {u.get("email"): u for u in personyze.users.values()}
    assert by_email["user1@example.com"]["first_name"] == "Renamed"
    assert by_email["user2@example.com"]["plan"] == "vip"
    assert len(by_email) == 7  # merged on email, never duplicated

    # Third run: nothing changed, nothing is sent.
    personyze.clear_requests()
    third = dag_runner.run(dag)
    assert third.state == "success"
    assert posted_users(personyze) == []
    assert not [r for r in personyze.requests if r.method in ("POST", "PUT", "DELETE")]


def test_update_mode_rejects_unknown_emails_as_not_found(dag_runner, warehouse, personyze):
    personyze.create_user(email="user1@example.com", first_name="Old")
    warehouse.replace("customers", [customer(1, first_name="New"), customer(2)], COLUMNS)
    run = dag_runner.run(users_dag(dag_runner, "personyze_update_it", mode="update"))
    assert run.state == "success"
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (1, 1)
    rejected = [json.loads(line) for line in open(result["rejected_rows_uri"].removeprefix("file://"))]
    assert rejected[0]["customer_id"] == 2 and "no such user" in rejected[0]["reason"]
    assert {u.get("email") for u in personyze.users.values()} == {"user1@example.com"}
    assert next(iter(personyze.users.values()))["first_name"] == "New"


@pytest.mark.parametrize("error_rate", [0.0, 0.15])
def test_list_mirror_tracks_the_source_and_never_removes_members_it_did_not_add(
    dag_runner, warehouse, personyze, error_rate
):
    list_id = personyze.create_list("VIPs")
    outsider = personyze.create_user(email="manual@example.com")
    personyze.add_to_list(list_id, outsider)
    if error_rate:
        personyze.set_faults(error_rate=error_rate, error_status=503, seed=7, path_prefix="/rest/user_list")
    dag = members_dag(dag_runner, f"personyze_mirror_it_{int(error_rate * 100)}", list_id)

    # "manual" was on the list before the sync; it joins the source in run 2 and leaves it in run 3.
    for audience in (["a", "b", "c"], ["b", "c", "d", "manual"], ["d", "e"]):
        emails = [f"{name}@example.com" for name in audience]
        warehouse.replace("audience", [{"email": e} for e in emails], ["email"])
        run = dag_runner.run(dag)
        assert run.state == "success", run.task_states
        assert run.result("sync")["failed"] == 0
        assert run.result("sync")["skipped"] == (1 if "manual" in audience else 0)
        assert personyze.list_member_emails(list_id) == set(emails) | {"manual@example.com"}
    if error_rate:
        assert any(r.status == 503 for r in personyze.requests), "the fault knob injected no 503"


def test_users_upsert_end_state_is_the_same_with_injected_503s(dag_runner, warehouse, personyze):
    personyze.set_faults(error_rate=0.15, error_status=503, seed=3)
    rows = [customer(i) for i in range(1, 21)]
    warehouse.replace("customers", rows, COLUMNS)
    run = dag_runner.run(users_dag(dag_runner, "personyze_users_faults_it"))
    assert run.state == "success"
    assert run.result("sync")["succeeded"] == 20
    assert {u["email"] for u in personyze.users.values()} == {r["email"] for r in rows}
    assert sum(r.status == 503 for r in personyze.requests) >= 1


def test_a_missing_list_fails_before_any_write_with_words_a_user_can_act_on(dag_runner, warehouse, personyze):
    warehouse.replace("audience", [{"email": "a@example.com"}], ["email"])
    run = dag_runner.run(members_dag(dag_runner, "personyze_missing_list_it", list_id=424242))
    assert run.state == "failed"
    assert not [r for r in personyze.requests if r.method in ("POST", "PUT", "DELETE")]
    hook = PersonyzeHook()
    with pytest.raises(Exception, match="create the list in Personyze first"):
        hook.require_user_list(424242)


def test_connection_test_reports_a_bad_key(personyze, monkeypatch):
    ok, message = PersonyzeHook().test_connection()
    assert ok, message
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env("personyze", personyze.url, "wrong-key-123"))
    ok, message = PersonyzeHook().test_connection()
    assert not ok
    assert "refused the API key" in message and "Settings > API" in message
    assert "wrong-key-123" not in message


def test_a_retried_task_resumes_after_the_last_acknowledged_batch(dag_runner, warehouse, personyze, tmp_path):
    """First try dies in its third batch; Airflow retries the task; the retry resumes from the checkpoint."""
    marker = tmp_path / "died-once"
    warehouse.replace("customers", [customer(i) for i in range(1, 51)], COLUMNS)
    dag = dag_runner.write(f'''
        from datetime import datetime, timedelta
        from pathlib import Path
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        MARKER = Path({str(marker)!r})

        class DiesOnce(PersonyzeSyncOperator):
            """The worker dies while the third batch is in flight, on the first try only."""

            def make_destination(self):
                destination = super().make_destination()
                send, calls = destination.send, []

                def dying_send(operation, rows):
                    calls.append(len(rows))
                    if len(calls) == 3 and not MARKER.exists():
                        MARKER.touch()
                        send(operation, rows[:4])  # part of the batch lands before the crash
                        raise RuntimeError("worker lost")
                    return send(operation, rows)

                destination.send = dying_send
                return destination

        with DAG(dag_id="personyze_resume_it", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="personyze_resume_it", conn_id="warehouse",
                                    sql="SELECT * FROM customers", primary_key="customer_id")
            DiesOnce(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert", batch_size=10,
                     users_write="per_row",
                     retries=1, retry_delay=timedelta(seconds=0))
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success" and run.tries["sync"] == 2
    result = run.result("sync")
    assert result["resumed_from_batch"] == 2 and result["succeeded"] == 50 and result["committed"]["rows"] == 50
    emails = [p["email"] for p in posted_users(personyze)]
    assert len(set(emails)) == 50
    assert len(emails) == 50 + 4  # only the part of the interrupted batch that landed went twice

    personyze.clear_requests()
    again = dag_runner.run(dag)
    assert again.state == "success" and posted_users(personyze) == []
