"""A mirror killed half-way (a real ``airflow dags test`` process, SIGKILL) costs about one request per batch to
finish on the next run, and everything it sent is its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

BATCHES, BATCH_SIZE = 12, 50


def writes_with_operations(emulator) -> list:
    return [r for r in emulator.requests if r.method == "PATCH" and r.json and r.json.get("operations")]


@pytest.mark.slow
def test_a_killed_12_batch_mirror_finishes_with_at_most_14_writes(dag_runner, warehouse, permutive_emulator,
                                                                  monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT",
        connection_env("permutive", permutive_emulator.url, permutive_emulator.write_key,
                       backoff_initial=0.01, backoff_max=0.05),
    )
    import_id = permutive_emulator.create_import("Resumed")
    rows = [{"code": f"seg-{i:05d}", "name": f"Segment {i}"} for i in range(BATCHES * BATCH_SIZE)]
    warehouse.replace("segments", rows, ["code", "name"])
    dag_id = "killed_mirror_it"
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

        with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{dag_id}", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
            PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}", audience_mode="mirror",
                                  batch_size={BATCH_SIZE},
                                  field_mapping={{"segment_code": "code", "segment_name": "name"}})
    ''')

    # Run 1, in its own process, is killed once six batches have landed: nothing after that runs, not even
    # the commit of what was acknowledged.
    permutive_emulator.set_faults(latency_ms=250, method="PATCH")
    child = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, "2026-02-01"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    # Batches go one after another: when the seventh arrives, six have landed.
    while len(writes_with_operations(permutive_emulator)) < 7 and time.monotonic() < deadline:
        assert child.poll() is None, "the first run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    landed = len(permutive_emulator.segments(import_id))
    assert BATCH_SIZE * 6 <= landed < BATCH_SIZE * BATCHES, "the first run was not killed half-way"

    # Run 2: a new plan against the same (empty) baseline re-sends all 12 batches. The landed ones meet
    # "already exists", are read once and settled as the sync's own (it recorded them before sending).
    permutive_emulator.set_faults()
    permutive_emulator.clear_requests()
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (BATCHES * BATCH_SIZE, 0, 0)
    sent = writes_with_operations(permutive_emulator)
    assert len(sent) <= BATCHES + 2, [len(r.json["operations"]) for r in sent]
    assert sorted(permutive_emulator.segments(import_id)) == [row["code"] for row in rows]
    committed = pq.read_table(result["committed"]["snapshot_uri"].removeprefix("file://"))
    assert sorted(committed.column("code").to_pylist()) == [row["code"] for row in rows]

    # And because they are its own, a mirror removes them when the source does.
    warehouse.replace("segments", rows[:-10], ["code", "name"])
    assert dag_runner.run(dag).state == "success"
    assert len(permutive_emulator.segments(import_id)) == len(rows) - 10
