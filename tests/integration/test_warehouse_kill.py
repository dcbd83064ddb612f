"""A delivery of a warehouse-diff plan SIGKILLed mid-batch, then resumed: the same end state as the worker diff.

The kill is of a child process delivering the plan (as ``test_kill.py`` does), not of a whole Airflow
task process: the resume reads only what the dead process left (checkpoint, outcome files, the
warehouse), which is what a retried task reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg2
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.destinations.personyze import PersonyzeUsers
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.warehouse.store import state_table_name
from tests.integration.conftest import Postgres, connection_env
from tests.support.deliver_plan import deliver
from tests.support.json_store import JsonFileStore
from tests.support.reliability import reliability_case
from tests.support.warehouse_harness import ConnectHook, DiffHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 40


def load(uri: str) -> None:
    with psycopg2.connect(uri) as pg, pg.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS kill_people")
        cursor.execute("CREATE TABLE kill_people (id BIGINT, email TEXT, first_name TEXT, score NUMERIC(6, 2))")
        cursor.executemany("INSERT INTO kill_people VALUES (%s, %s, %s, %s)",
                           [(i, f"user{i}@example.com", f"U{i}", f"{i / 4:.2f}") for i in range(ROWS)])


def held(emulator) -> list[dict]:
    """The users the emulator holds, less the time of their last write."""
    users = [{k: v for k, v in user.items() if k != "data_last_modified"} for user in emulator.users.values()]
    return sorted(users, key=lambda user: user["email"])


@reliability_case("kill", "warehouse diff (PostgreSQL)", "SIGKILL of the process delivering a warehouse-diff plan",
                  "the retry resumes after the last acknowledged batch (at most one batch sent twice) and commits in the "
                  "warehouse the same state the worker diff commits")
def test_sigkill_mid_delivery_of_a_warehouse_plan_then_resume(tmp_path, postgres: Postgres, personyze_emulator,
                                                              monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT",
                       connection_env("personyze", personyze_emulator.url, personyze_emulator.api_key))
    monkeypatch.setenv("AIRFLOW_CONN_KILL_PG", postgres.airflow_connection())
    load(postgres.uri)
    hook = ConnectHook(lambda: psycopg2.connect(postgres.uri))
    sides = {path: DiffHarness(str(tmp_path / path / "state"), sync_id=f"kill_{path}", conn_id="kill_pg", hook=hook,
                               diff_in=path, sql="SELECT * FROM kill_people", state_schema="zeotap_kill")
             for path in ("worker", "warehouse")}

    # The worker diff, delivered without a kill: the reference.
    reference = sides["worker"].runner(sides["worker"].plan(), PersonyzeUsers(PersonyzeHook()), "upsert",
                                       batch_size=5).run()
    assert reference.succeeded == ROWS
    expected_users = held(personyze_emulator)
    personyze_emulator.reset()

    work = tmp_path / "warehouse"
    plan = sides["warehouse"].plan()
    (work / "plan.json").write_text(plan.model_dump_json())
    (work / "warehouse_dsn").write_text(postgres.uri)
    personyze_emulator.users_post_latency_ms = 40
    child = subprocess.Popen([sys.executable, "-m", "tests.support.deliver_plan", str(work)], cwd=os.getcwd(),
                             env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    posts = lambda: [r for r in personyze_emulator.requests if r.method == "POST"]  # noqa: E731
    deadline = time.monotonic() + 60
    while len(posts()) < 17 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    sent_before = len(posts())
    assert 17 <= sent_before < ROWS, "the child was not killed mid-delivery"
    table = f'zeotap_kill."{state_table_name("kill_warehouse")}"'
    with psycopg2.connect(postgres.uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        assert cursor.fetchone()[0] == 0  # killed before its commit: nothing is in the state yet

    checkpoint = JsonFileStore(str(work / "task_state.json")).get(f"delivery:{plan.plan_id}")
    personyze_emulator.users_post_latency_ms = 0
    result = deliver(str(work))  # the retry, in a fresh process state, from what the dead one left
    assert result.resumed_from_batch == checkpoint["next_batch"] > 0
    assert result.succeeded == ROWS and result.committed.rows == ROWS
    emails = [r.json["email"] for r in posts()]
    assert set(emails) == {f"user{i}@example.com" for i in range(ROWS)}
    assert len(emails) - ROWS <= 5  # at most one batch (5 rows) went twice
    assert held(personyze_emulator) == expected_users

    worker_state = pq.read_table(reference.committed.snapshot_uri.removeprefix("file://")).to_pylist()
    with psycopg2.connect(postgres.uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} ORDER BY id")
        names = [c[0] for c in cursor.description]
        warehouse_state = [dict(zip(names, row)) for row in cursor.fetchall()]
        cursor.execute("SELECT version, plan_id FROM zeotap_kill.sync_versions WHERE sync_id = 'kill_warehouse'")
        assert cursor.fetchone() == (1, plan.plan_id)
    for row in warehouse_state:
        row.pop("__row_hash")
        row["__payload_fields"] = json.loads(row["__payload_fields"])
    assert warehouse_state == sorted(worker_state, key=lambda row: row["id"])
