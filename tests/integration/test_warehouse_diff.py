"""The diff in the warehouse against the diff on the worker, run for run, on a real PostgreSQL server.

Two DAGs read one PostgreSQL table and deliver it to two Zeotap emulators with sync_mode="mirror": one
diffs on the worker (DuckDB), one in the warehouse (``diff_in="warehouse"``). After every run both must
have computed the same plan (the changes files compared column by column and row by row), sent the
same requests (bodies compared), and committed the same state (the worker's snapshot against the
warehouse's state table). The runs cover adds, changes, removals, a row the API rejects and a row
whose request fails, both retried by a later run.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator
from airflow_provider_zeotap.sync.warehouse.store import state_table_name
from tests.integration.conftest import FAST_RETRIES, Postgres, connection_env
from tests.support.reliability import reliability_case

pytestmark = pytest.mark.integration

MAPPING = {"profile.email": "email", "profile.name": "name", "profile.amount": "amount",
           "profile.seen_at": "seen_at", "consent.gdpr_advertising": "ok"}
DELIVERY = ["__identity", "__payload_hash", "__payload_fields"]


def sync_dag(dag_runner, sync_id: str, diff_in: str, zeotap_conn: str) -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse_pg", diff_in="{diff_in}",
                                    state_schema="zeotap_it", sql="SELECT * FROM people", primary_key="user_id",
                                    chunk_size=3)
            ZeotapProfileSyncOperator(task_id="sync", plan=diff.output, id_type="user_id", sync_mode="mirror",
                                      zeotap_conn_id="{zeotap_conn}", field_mapping={MAPPING!r})
    ''')


def person(i: int, **overrides: Any) -> dict[str, Any]:
    return {"user_id": f"u-{i:03d}", "email": f"user{i}@example.com", "name": f"Name {i}",
            "amount": f"{i * 1.25:.3f}", "seen_at": f"2026-01-0{1 + i % 9} 10:00:0{i % 10}+00", "ok": i % 2 == 0,
            **overrides}


def load(pg: Any, rows: list[dict[str, Any]]) -> None:
    with pg.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS people")
        cursor.execute("CREATE TABLE people (user_id TEXT, email TEXT, name TEXT, amount NUMERIC(12, 3), "
                       "seen_at TIMESTAMPTZ, ok BOOLEAN)")
        cursor.executemany("INSERT INTO people VALUES (%(user_id)s, %(email)s, %(name)s, %(amount)s, %(seen_at)s, %(ok)s)",
                           rows)
    pg.commit()


def writes(emulator: ZeotapEmulator) -> list[dict]:
    return sorted((r.json for r in emulator.requests if r.method == "POST" and r.path == "/cdp/v1/users"),
                  key=lambda body: json.dumps(body, sort_keys=True))


def deleted(emulator: ZeotapEmulator) -> list[str]:
    return sorted(v for r in emulator.requests if r.path == "/cdp/v1/users/_delete" for v in r.json["ids"]["user_id"])


def columns(table: Any) -> list[tuple[str, str]]:
    """Names and types (DuckDB marks a column REQUIRED or not from how it was computed, not its values)."""
    return [(field.name, str(field.type)) for field in table.schema]


def local(uri: str) -> str:
    return uri.removeprefix("file://")


def worker_state(result: dict) -> list[dict]:
    table = pq.read_table(local(result["committed"]["snapshot_uri"]))
    return sorted(table.to_pylist(), key=lambda row: row["user_id"])


def warehouse_state(pg: Any, sync_id: str) -> list[dict]:
    with pg.cursor() as cursor:
        cursor.execute(f'SELECT * FROM zeotap_it."{state_table_name(sync_id)}" ORDER BY user_id COLLATE "C"')
        names = [c[0] for c in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    pg.rollback()
    for row in rows:
        assert len(row.pop("__row_hash")) == 32  # an MD5, computed by the warehouse
        row["__payload_fields"] = json.loads(row["__payload_fields"]) if row["__payload_fields"] else None
    return rows


@pytest.fixture
def two_zeotaps(monkeypatch):
    with ZeotapEmulator() as worker, ZeotapEmulator() as warehouse:
        for name, emulator in (("ZEOTAP_WORKER", worker), ("ZEOTAP_WAREHOUSE", warehouse)):
            monkeypatch.setenv(f"AIRFLOW_CONN_{name}", connection_env(
                "zeotap", emulator.url, emulator.api_key, org_id=str(emulator.org_id), region=emulator.region,
                **FAST_RETRIES))
        yield worker, warehouse


@reliability_case("fault", "warehouse diff (PostgreSQL)", "a row the API rejects (400) in a warehouse-diff sync",
                  "rejected and not committed; sent again once the row changes, exactly as the worker diff does")
@reliability_case("fault", "warehouse diff (PostgreSQL)", "a row whose request fails (503 after retries)",
                  "failed and not committed; the next run sends it again, exactly as the worker diff does")
def test_warehouse_diff_matches_the_worker_diff_run_for_run(dag_runner, postgres: Postgres, two_zeotaps, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_PG", postgres.airflow_connection())
    emulator = {"worker": two_zeotaps[0], "warehouse": two_zeotaps[1]}
    dags = {path: sync_dag(dag_runner, f"wh_cmp_{path}", path, f"zeotap_{path}") for path in emulator}
    pg = psycopg2.connect(postgres.uri)

    def run_both() -> dict[str, dict]:
        results = {}
        for path, dag in dags.items():
            emulator[path].clear_requests()
            run = dag_runner.run(dag)
            assert run.state == "success", (path, run.task_states)
            results[path] = {"plan": run.result("diff"), "sync": run.result("sync")}
        worker, warehouse = results["worker"], results["warehouse"]
        assert worker["plan"]["counts"] == warehouse["plan"]["counts"]
        worker_changes = pq.read_table(local(worker["plan"]["changes_uri"]))
        warehouse_changes = pq.read_table(local(warehouse["plan"]["changes_uri"]))
        assert columns(warehouse_changes) == columns(worker_changes)
        assert warehouse_changes.to_pylist() == worker_changes.to_pylist()
        assert writes(emulator["warehouse"]) == writes(emulator["worker"])
        assert deleted(emulator["warehouse"]) == deleted(emulator["worker"])
        for key in ("succeeded", "rejected", "failed", "unchanged_payload"):
            assert warehouse["sync"][key] == worker["sync"][key], key
        assert warehouse["sync"]["committed"]["rows"] == worker["sync"]["committed"]["rows"]
        assert warehouse_state(pg, "wh_cmp_warehouse") == worker_state(worker["sync"])
        return results

    # Run 1: eight people; the API refuses one of them (400) for its name.
    for target in emulator.values():
        target.set_faults(error_rate=1, error_status=400, body_contains="REJECT-ME", path_prefix="/cdp/v1/users")
    load(pg, [person(i, name="REJECT-ME") if i == 3 else person(i) for i in range(1, 9)])
    first = run_both()
    assert first["warehouse"]["plan"]["counts"]["added"] == 8
    assert first["warehouse"]["sync"]["rejected"] == 1 and first["warehouse"]["sync"]["succeeded"] == 7
    assert first["warehouse"]["sync"]["committed"]["rows"] == 7  # the rejected row is not committed

    # Run 2: one changed amount, one removed, one added, and one changed name whose request fails (503).
    for target in emulator.values():
        target.set_faults(error_rate=1, error_status=503, body_contains="FLAKY", path_prefix="/cdp/v1/users")
    rows = [person(i, name="REJECT-ME") if i == 3 else person(i) for i in range(1, 10) if i != 2]
    rows[0]["amount"] = "99.500"
    rows = [dict(r, name="FLAKY") if r["user_id"] == "u-005" else r for r in rows]
    load(pg, rows)
    second = run_both()
    counts = second["warehouse"]["plan"]["counts"]
    assert (counts["added"], counts["changed"], counts["removed"]) == (2, 2, 1)  # u-003 is still un-acknowledged
    assert deleted(emulator["warehouse"]) == ["u-002"]
    assert second["warehouse"]["sync"]["failed"] == 1 and second["warehouse"]["sync"]["rejected"] == 1

    # Run 3: faults gone, the refused name fixed: both rows are sent again; nothing else is.
    for target in emulator.values():
        target.set_faults()
    rows = [dict(r, name="Fixed 3") if r["user_id"] == "u-003" else r for r in rows]
    load(pg, rows)
    third = run_both()
    sent = [body["ids"]["user_id"] for body in writes(emulator["warehouse"])]
    assert sorted(sent) == ["u-003", "u-005"]
    assert third["warehouse"]["sync"]["committed"]["rows"] == 8

    # Run 4: nothing changed: nothing is sent, nothing moves.
    fourth = run_both()
    assert writes(emulator["warehouse"]) == [] and fourth["warehouse"]["plan"]["counts"]["unchanged"] == 8
    pg.close()
