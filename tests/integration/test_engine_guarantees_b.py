"""What the engine guarantees, over real Airflow runs against the emulators: clears, payload-level change,
identity after normalisation, write-ahead ownership and values without a faithful JSON form.

Each test shows the emulator's end state, the committed state, and the request count where cost is the point.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration


def sync_dag(dag_runner, dag_id: str, *, source: str, primary_key: str, sync_args: str) -> str:
    """A diff task on ``source`` (a SyncDiffOperator argument list) feeding one Personyze sync task."""
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{dag_id}", primary_key="{primary_key}", {source})
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, {sync_args})
    ''')


def users_dag(dag_runner, dag_id: str, mapping: dict[str, str], **options) -> str:
    extra = "".join(f", {name}={value!r}" for name, value in options.items())
    return sync_dag(
        dag_runner, dag_id, source='conn_id="warehouse", sql="SELECT * FROM customers"', primary_key="customer_id",
        sync_args=f'object_type="users", sync_mode="upsert", users_write="per_row", field_mapping={mapping!r}{extra}',
    )


def committed_rows(result: dict, key: str) -> dict:
    """The committed snapshot as {key: row}, read from the file the pointer names."""
    path = result["committed"]["snapshot_uri"].removeprefix("file://")
    return {row[key]: row for row in pq.read_table(path).to_pylist()}


def writes(emulator) -> list:
    return [r for r in emulator.requests if r.method in ("POST", "PUT", "DELETE", "PATCH")]


def rejected_rows(result: dict) -> list[dict]:
    return [json.loads(line) for line in open(result["rejected_rows_uri"].removeprefix("file://"))]


CUSTOMERS = ["customer_id", "email", "first_name", "phone", "updated_at"]


def customer(i: int, **overrides) -> dict:
    return {"customer_id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "phone": f"555-010{i}",
            "updated_at": "2026-01-01", **overrides}


def test_a_value_cleared_in_the_source_is_cleared_at_the_destination(dag_runner, warehouse, personyze):
    mapping = {"email": "email", "first_name": "first_name", "phone": "phone"}
    dag = users_dag(dag_runner, "clears_it", mapping)
    warehouse.replace("customers", [customer(1), customer(2, phone=None)], CUSTOMERS)
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    assert "phone" not in next(p.json for p in writes(personyze) if p.json["email"] == "user2@example.com")

    personyze.clear_requests()
    warehouse.replace("customers", [customer(1, phone=None), customer(2, phone=None)], CUSTOMERS)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    # Only the row whose delivered value became empty is sent, and it carries the clear.
    assert [r.json for r in writes(personyze)] == [
        {"email": "user1@example.com", "first_name": "First1", "phone": ""}
    ]
    by_email = {u["email"]: u for u in personyze.users.values()}
    assert by_email["user1@example.com"]["phone"] == "" and "phone" not in by_email["user2@example.com"]
    committed = committed_rows(second.result("sync"), "customer_id")
    assert committed[1]["phone"] is None and committed[1]["__payload_fields"] == ["email", "first_name"]

    personyze.clear_requests()
    third = dag_runner.run(dag)
    assert third.state == "success" and writes(personyze) == []


def test_a_change_only_in_columns_nobody_sends_costs_no_request(dag_runner, warehouse, personyze):
    mapping = {"email": "email", "first_name": "first_name"}
    dag = users_dag(dag_runner, "unmapped_change_it", mapping)
    warehouse.replace("customers", [customer(i) for i in range(1, 6)], CUSTOMERS)
    assert dag_runner.run(dag).state == "success"
    assert len(writes(personyze)) == 5

    personyze.clear_requests()
    rows = [customer(i, updated_at="2026-02-02", phone="000") for i in range(1, 6)]
    rows[2]["first_name"] = "Renamed"
    warehouse.replace("customers", rows, CUSTOMERS)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    result = second.result("sync")
    assert [r.json["email"] for r in writes(personyze)] == ["user3@example.com"]
    assert (result["succeeded"], result["unchanged_payload"]) == (1, 4)
    committed = committed_rows(result, "customer_id")
    assert {row["updated_at"] for row in committed.values()} == {"2026-02-02"}  # the baseline moved all the same
    assert committed[3]["first_name"] == "Renamed"


def test_two_spellings_of_one_email_are_both_rejected_never_merged(dag_runner, warehouse, personyze):
    mapping = {"email": "email", "first_name": "first_name"}
    dag = users_dag(dag_runner, "collision_it", mapping, normalize_email=True)
    rows = [customer(1, email="Jo@Ex.com", first_name="Alice"), customer(2, email="jo@ex.com", first_name="Bob"),
            customer(3)]
    warehouse.replace("customers", rows, CUSTOMERS)
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert [r.json["email"] for r in writes(personyze)] == ["user3@example.com"]
    assert {u["email"] for u in personyze.users.values()} == {"user3@example.com"}
    reasons = {r["customer_id"]: r["reason"] for r in rejected_rows(result)}
    assert set(reasons) == {1, 2}
    assert '"jo@ex.com"' in reasons[1] and '{"customer_id": 2}' in reasons[1]
    assert '{"customer_id": 1}' in reasons[2]
    assert set(committed_rows(result, "customer_id")) == {3}

    # Bob's address is corrected: both rows now go out, Alice's under her own address.
    personyze.clear_requests()
    rows[1]["email"] = "bob@ex.com"
    warehouse.replace("customers", rows, CUSTOMERS)
    fixed = dag_runner.run(dag)
    assert sorted(r.json["email"] for r in writes(personyze)) == ["bob@ex.com", "jo@ex.com"]
    assert set(committed_rows(fixed.result("sync"), "customer_id")) == {1, 2, 3}


def test_a_new_row_colliding_with_an_unchanged_committed_one_is_rejected(dag_runner, warehouse, personyze):
    mapping = {"email": "email", "first_name": "first_name"}
    dag = users_dag(dag_runner, "collision_base_it", mapping, normalize_email=True)
    warehouse.replace("customers", [customer(1, email="jo@ex.com")], CUSTOMERS)
    assert dag_runner.run(dag).state == "success"
    personyze.clear_requests()
    warehouse.replace("customers", [customer(1, email="jo@ex.com"), customer(2, email=" JO@ex.com")], CUSTOMERS)
    run = dag_runner.run(dag)
    assert writes(personyze) == []
    (rejected,) = rejected_rows(run.result("sync"))
    assert rejected["customer_id"] == 2 and 'committed row {"customer_id":1}' in rejected["reason"]
    assert set(committed_rows(run.result("sync"), "customer_id")) == {1}


def list_dag(dag_runner, dag_id: str, list_id: int, **options) -> str:
    extra = "".join(f", {name}={value!r}" for name, value in options.items())
    return sync_dag(
        dag_runner, dag_id, source='conn_id="warehouse", sql="SELECT email FROM audience"', primary_key="email",
        sync_args=f'object_type="user_list_members", audience_mode="mirror", list_id={list_id}{extra}',
    )


def member_deletes(emulator) -> list:
    return [r for r in emulator.requests if r.method == "DELETE"]


def test_a_removal_is_never_sent_for_an_identity_a_current_row_still_has(dag_runner, warehouse, personyze):
    list_id = personyze.create_list("Newsletter")
    dag = list_dag(dag_runner, "respelled_member_it", list_id, normalize_email=True)
    warehouse.replace("audience", [{"email": "A@Ex.com"}, {"email": "b@ex.com"}], ["email"])
    assert dag_runner.run(dag).state == "success"
    assert personyze.list_member_emails(list_id) == {"a@ex.com", "b@ex.com"}

    # The same person, spelled the way the API stores them: one key leaves, one arrives, one identity.
    personyze.clear_requests()
    warehouse.replace("audience", [{"email": "a@ex.com"}, {"email": "b@ex.com"}], ["email"])
    second = dag_runner.run(dag)
    result = second.result("sync")
    assert second.state == "success", second.task_states
    assert member_deletes(personyze) == []
    assert (result["identity_kept"], result["succeeded"], result["skipped"]) == (1, 1, 0)
    assert personyze.list_member_emails(list_id) == {"a@ex.com", "b@ex.com"}
    committed = committed_rows(result, "email")
    assert set(committed) == {"a@ex.com", "b@ex.com"} and committed["a@ex.com"]["__identity"] == "a@ex.com"

    personyze.clear_requests()
    assert dag_runner.run(dag).state == "success" and writes(personyze) == []  # nothing changed

    # The record is the sync's own under its new key: removing that key removes the member.
    warehouse.replace("audience", [{"email": "b@ex.com"}], ["email"])
    assert dag_runner.run(dag).state == "success"
    assert len(member_deletes(personyze)) == 1
    assert personyze.list_member_emails(list_id) == {"b@ex.com"}


def test_an_add_whose_answer_was_lost_is_still_ours_and_mirror_removes_it_later(dag_runner, warehouse, personyze,
                                                                                monkeypatch):
    list_id = personyze.create_list("VIPs")
    outsider = personyze.create_user(email="manual@example.com")
    personyze.add_to_list(list_id, outsider)
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERSONYZE_DEFAULT",
        connection_env("personyze", personyze.url, personyze.api_key, backoff_initial=0.01, backoff_max=0.02,
                       max_attempts=2),
    )
    dag = list_dag(dag_runner, "lost_answer_member_it", list_id)
    warehouse.replace("audience", [{"email": "a@example.com"}, {"email": "b@example.com"}], ["email"])

    # Every add lands, and every answer is lost: the run cannot know, so nothing is committed.
    personyze.set_faults(drop_rate=1.0, path_prefix="/rest/user_list_users", method="POST")
    first = dag_runner.run(dag)
    assert first.result("sync")["failed"] == 2 and first.result("sync")["committed"]["rows"] == 0
    assert personyze.list_member_emails(list_id) == {"a@example.com", "b@example.com", "manual@example.com"}

    # Next run: the members are there, and this sync recorded them before sending, so they are its own.
    personyze.set_faults()
    second = dag_runner.run(dag)
    result = second.result("sync")
    assert (result["succeeded"], result["skipped"], result["failed"]) == (2, 0, 0)
    assert set(committed_rows(result, "email")) == {"a@example.com", "b@example.com"}

    # The outsider joins the source: it was there first and nobody recorded it, so it is left alone.
    warehouse.replace("audience", [{"email": e} for e in ("a@example.com", "manual@example.com")], ["email"])
    personyze.clear_requests()
    third = dag_runner.run(dag)
    assert third.result("sync")["skipped"] == 1 and len(member_deletes(personyze)) == 1  # b is removed
    assert personyze.list_member_emails(list_id) == {"a@example.com", "manual@example.com"}


def test_nan_and_infinity_reject_the_row_and_change_no_value(dag_runner, personyze, tmp_path):
    path = tmp_path / "scores.parquet"
    table = pa.table({
        "customer_id": [1, 2, 3],
        "email": ["a@example.com", "b@example.com", "c@example.com"],
        "score": [0.5, math.nan, math.inf],
    })
    pq.write_table(table, path)
    dag = sync_dag(
        dag_runner, "nan_it", source=f'source_uri="file://{path}"', primary_key="customer_id",
        sync_args='object_type="users", sync_mode="upsert", users_write="per_row", '
                  'field_mapping={"email": "email", "score": "score"}',
    )
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert [r.json for r in writes(personyze)] == [{"email": "a@example.com", "score": 0.5}]
    reasons = {r["customer_id"]: r["reason"] for r in rejected_rows(result)}
    assert reasons[2].startswith("field 'score' (from column 'score'): nan has no JSON form")
    assert reasons[3].startswith("field 'score' (from column 'score'): inf has no JSON form")
    assert set(committed_rows(result, "customer_id")) == {1}


def test_take_over_existing_claims_a_member_that_was_there_first(dag_runner, warehouse, personyze):
    list_id = personyze.create_list("Claimed")
    personyze.add_to_list(list_id, personyze.create_user(email="manual@example.com"))
    dag = list_dag(dag_runner, "take_over_it", list_id, take_over_existing=True)
    warehouse.replace("audience", [{"email": "manual@example.com"}, {"email": "a@example.com"}], ["email"])
    run = dag_runner.run(dag)
    assert (run.result("sync")["succeeded"], run.result("sync")["skipped"]) == (2, 0)
    assert set(committed_rows(run.result("sync"), "email")) == {"manual@example.com", "a@example.com"}
    # Claimed, so it is the sync's to remove.
    warehouse.replace("audience", [{"email": "a@example.com"}], ["email"])
    assert dag_runner.run(dag).state == "success"
    assert personyze.list_member_emails(list_id) == {"a@example.com"}


def test_take_over_existing_makes_the_list_equal_the_source(dag_runner, warehouse, personyze):
    list_id = personyze.create_list("Taken over")
    for email in ("manual@example.com", "stranger@example.com", "other@example.com"):
        personyze.add_to_list(list_id, personyze.create_user(email=email))
    dag = list_dag(dag_runner, "take_over_all_it", list_id, take_over_existing=True)
    warehouse.replace("audience", [{"email": "manual@example.com"}, {"email": "a@example.com"}], ["email"])
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert personyze.list_member_emails(list_id) == {"manual@example.com", "a@example.com"}
    assert run.result("sync")["taken_over_removals"] == 2
    # Without the opt-in, a stranger added by hand later is left alone.
    personyze.add_to_list(list_id, personyze.create_user(email="later@example.com"))
    plain = list_dag(dag_runner, "take_over_all_it", list_id)
    assert dag_runner.run(plain).state == "success"
    assert personyze.list_member_emails(list_id) == {"manual@example.com", "a@example.com", "later@example.com"}


def test_a_numeric_column_whose_type_widens_resends_nothing_but_the_new_row(dag_runner, personyze, tmp_path):
    import decimal

    path = tmp_path / "prices.parquet"
    rows = 300

    def write(extra: list[tuple[int, str]], precision: int, scale: int) -> None:
        ids = list(range(1, rows + 1)) + [i for i, _ in extra]
        prices = [decimal.Decimal("1.50")] * rows + [decimal.Decimal(p) for _, p in extra]
        pq.write_table(pa.table({
            "customer_id": ids,
            "email": [f"user{i}@example.com" for i in ids],
            "price": pa.array(prices, type=pa.decimal128(precision, scale)),
        }), path)

    dag = sync_dag(
        dag_runner, "type_drift_it", source=f'source_uri="file://{path}"', primary_key="customer_id",
        sync_args='object_type="users", sync_mode="upsert", users_write="per_row", '
                  'field_mapping={"email": "email", "price": "price"}',
    )
    write([], 3, 2)  # DECIMAL(3,2)
    assert dag_runner.run(dag).state == "success"
    assert len(writes(personyze)) == rows

    personyze.clear_requests()
    write([(rows + 1, "12345.125")], 8, 3)  # one new row widens the column to DECIMAL(8,3)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    assert [r.json for r in writes(personyze)] == [{"email": f"user{rows + 1}@example.com", "price": 12345.125}]
    result = second.result("sync")
    assert (result["succeeded"], result["unchanged_payload"]) == (1, 0)
    committed = committed_rows(result, "customer_id")
    assert len(committed) == rows + 1 and committed[1]["price"] == decimal.Decimal("1.50")


def test_a_large_delivery_finishes_under_a_small_memory_limit(dag_runner, warehouse, permutive):
    """Every DuckDB step of the diff, the delivery and the commit runs under ``memory_limit`` and spills past it."""
    import_id = permutive.create_import("Large")
    rows = [{"code": f"seg-{i:06d}", "name": f"Segment {i}"} for i in range(20_000)]
    warehouse.replace("segments", rows, ["code", "name"])
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

        with DAG(dag_id="small_memory_it", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="small_memory_it", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code", memory_limit="128MB")
            PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}", audience_mode="mirror",
                                  memory_limit="128MB", field_mapping={{"segment_code": "code", "segment_name": "name"}})
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["batches"]) == (20_000, 4)
    assert len(permutive.segments(import_id)) == 20_000 and result["committed"]["rows"] == 20_000
