"""Permutive over real Airflow runs against the local emulator: batches, isolation of bad rows, key checks."""

from __future__ import annotations

import json

import pytest

from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

COLUMNS = ["code", "name", "description"]


@pytest.fixture
def permutive(permutive_emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT",
        connection_env("permutive", permutive_emulator.url, permutive_emulator.write_key,
                       backoff_initial=0.01, backoff_max=0.05, max_attempts=10),
    )
    return permutive_emulator


def mirror_dag(dag_runner, sync_id: str, import_id: str, mode: str = "mirror", extra: str = "") -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
            PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}",
                                  audience_mode="{mode}",{extra}
                                  field_mapping={{"segment_code": "code", "segment_name": "name",
                                                  "description": "description"}})
    ''')


def segment(i: int, name: str | None = None) -> dict:
    return {"code": f"seg-{i:05d}", "name": name or f"Segment {i}", "description": f"rows of segment {i}"}


def pq_keys(result: dict) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(result["committed"]["snapshot_uri"].removeprefix("file://")).column("code").to_pylist()


def patches(emulator) -> list[list[dict]]:
    return [r.json["operations"] for r in emulator.requests if r.method == "PATCH" and r.json.get("operations")]


def test_a_12000_segment_mirror_then_changes_with_one_bad_row_then_nothing(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Warehouse segments")
    rows = [segment(i) for i in range(12_000)]
    warehouse.replace("segments", rows, COLUMNS)
    dag = mirror_dag(dag_runner, "permutive_mirror_it", import_id)

    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    sent = patches(permutive)
    assert len(sent) == 3 and all(len(ops) <= 5000 for ops in sent)
    assert sum(len(ops) for ops in sent) == 12_000
    assert len(permutive.segments(import_id)) == 12_000

    # Second run: 100 renamed, 50 removed, 50 added, one added row whose code the API refuses.
    permutive.clear_requests()
    renamed = {i: f"Renamed segment {i}" for i in range(100, 200)}
    source = [segment(i, renamed.get(i)) for i in range(12_000) if not 1000 <= i < 1050]
    source += [segment(i) for i in range(20_000, 20_050)]
    source.append({"code": "bad code with spaces!", "name": "Broken", "description": None})
    warehouse.replace("segments", source, COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    result = second.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (200, 1, 0)
    assert all(len(ops) <= 5000 for ops in patches(permutive))
    stored = permutive.segments(import_id)
    assert len(stored) == 12_000
    assert stored["seg-00150"]["name"] == "Renamed segment 150"
    assert "seg-01010" not in stored and "seg-20010" in stored and "bad code with spaces!" not in stored
    rejected = [json.loads(line) for line in open(result["rejected_rows_uri"].removeprefix("file://"))]
    assert [r["code"] for r in rejected] == ["bad code with spaces!"]
    assert "has a space and the character '!'" in rejected[0]["reason"]  # found before sending

    # Third run, nothing changed: nothing is sent (the invalid row is remembered, not re-sent unchanged).
    permutive.clear_requests()
    third = dag_runner.run(dag)
    assert third.state == "success"
    assert patches(permutive) == []
    assert third.result("sync")["rejected"] == 1


def test_upsert_turns_a_conflicting_create_into_an_update_and_add_names_the_conflict(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Mixed")
    permutive.create_segment(import_id, code="seg-00001", name="Made by hand")
    warehouse.replace("segments", [segment(1), segment(2)], COLUMNS)

    add = dag_runner.run(mirror_dag(dag_runner, "permutive_add_it", import_id, mode="add"))
    assert add.state == "success"
    result = add.result("sync")
    assert (result["succeeded"], result["rejected"]) == (1, 1)
    reason = json.loads(open(result["rejected_rows_uri"].removeprefix("file://")).readline())["reason"]
    assert "already exists" in reason and "upsert" in reason
    assert permutive.segments(import_id)["seg-00001"]["name"] == "Made by hand"

    upsert = dag_runner.run(mirror_dag(dag_runner, "permutive_upsert_it", import_id, mode="upsert"))
    assert upsert.state == "success"
    assert upsert.result("sync")["succeeded"] == 2
    assert permutive.segments(import_id)["seg-00001"]["name"] == "Segment 1"


def test_a_read_only_key_and_an_unknown_import_fail_before_any_write(dag_runner, warehouse, permutive, monkeypatch):
    import_id = permutive.create_import("Target")
    warehouse.replace("segments", [segment(1)], COLUMNS)
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT", connection_env("permutive", permutive.url, permutive.read_only_key)
    )
    run = dag_runner.run(mirror_dag(dag_runner, "permutive_readonly_it", import_id))
    assert run.state == "failed"
    assert permutive.segments(import_id) == {}
    with pytest.raises(Exception, match="read-only.*ask Permutive Technical Services for write access"):
        PermutiveHook().require_write_access(import_id)

    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT", connection_env("permutive", permutive.url, permutive.write_key)
    )
    missing = "32f8e031-c532-41bb-b25e-65bdb677a96f"
    run = dag_runner.run(mirror_dag(dag_runner, "permutive_missing_import_it", missing))
    assert run.state == "failed"
    assert not [r for r in permutive.requests if r.method == "PATCH" and r.json.get("operations")]
    with pytest.raises(Exception, match="import 32f8e031-c532-41bb-b25e-65bdb677a96f does not exist"):
        PermutiveHook().require_write_access(missing)


def test_an_import_id_that_is_not_a_uuid_fails_when_the_dag_is_parsed(dag_runner):
    from airflow_provider_zeotap.http.errors import ConfigurationError
    from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

    with pytest.raises(ConfigurationError, match="must be the UUID of a Permutive import"):
        PermutiveSyncOperator(task_id="x", plan={}, sync_id="s", import_id="my-import", audience_mode="mirror")
    with pytest.raises(ConfigurationError, match="does not support audience_mode='insert'"):
        PermutiveSyncOperator(task_id="y", plan={}, sync_id="s", import_id=str(__import__("uuid").uuid4()),
                              audience_mode="insert")


def test_mirror_never_takes_over_or_deletes_a_segment_it_did_not_create(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Shared")
    permutive.create_segment(import_id, code="seg-00001", name="Made by hand")
    dag = mirror_dag(dag_runner, "permutive_shared_it", import_id)
    warehouse.replace("segments", [segment(1), segment(2)], COLUMNS)
    first = dag_runner.run(dag)
    assert first.state == "success" and first.result("sync")["rejected"] == 1
    warehouse.replace("segments", [segment(2)], COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success"
    assert permutive.segments(import_id)["seg-00001"]["name"] == "Made by hand"  # neither renamed nor deleted


def test_take_over_existing_makes_the_import_equal_the_source(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Taken over")
    permutive.create_segment(import_id, code="seg-00001", name="Made by hand")
    permutive.create_segment(import_id, code="hand-made", name="Not in the warehouse")
    dag = mirror_dag(dag_runner, "permutive_take_over_it", import_id, extra=" take_over_existing=True,")
    warehouse.replace("segments", [segment(1), segment(2)], COLUMNS)
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    segments = permutive.segments(import_id)
    assert set(segments) == {"seg-00001", "seg-00002"}  # the stranger deleted, the look-alike claimed
    assert segments["seg-00001"]["name"] == "Segment 1"
    assert first.result("sync")["taken_over_removals"] == 1
    permutive.clear_requests()
    assert dag_runner.run(dag).state == "success"
    assert patches(permutive) == []  # equal now: nothing to send


def test_a_create_whose_answer_was_lost_counts_as_done(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Flaky network")
    # The batch of 30 Creates lands, its answer is cut off, and the HTTP core's retry meets 409.
    permutive.set_faults(drop_first=1, method="PATCH", body_contains='"Create"')
    warehouse.replace("segments", [segment(i) for i in range(30)], COLUMNS)
    run = dag_runner.run(mirror_dag(dag_runner, "permutive_lost_answer_it", import_id, mode="add"))
    assert run.state == "success", run.task_states
    creates = [r for r in permutive.requests if r.method == "PATCH" and r.json.get("operations")]
    assert [(len(r.json["operations"]), r.fault, r.status) for r in creates] == [(30, "dropped", 200), (30, None, 409)]
    assert (run.result("sync")["succeeded"], run.result("sync")["rejected"]) == (30, 0)
    assert len(permutive.segments(import_id)) == 30
    # Nothing was there before the first send, so the segments are the sync's own: a mirror may remove them.
    assert set(pq_keys(run.result("sync"))) == {f"seg-{i:05d}" for i in range(30)}


def test_an_outage_at_the_write_access_check_is_the_api_error_not_a_configuration_error(permutive):
    """A 503 (or no connection) before any write is an outage, retried by Airflow and recorded as such; only a
    refusal (404 import, 403 key) is a configuration problem (found by the fault matrix)."""
    from airflow_provider_zeotap.errors import ConfigurationError
    from airflow_provider_zeotap.http import ServerError

    import_id = permutive.create_import("Down")
    permutive.set_faults(error_rate=1.0, error_status=503)
    with pytest.raises(ServerError, match="HTTP 503") as caught:
        PermutiveHook().require_write_access(import_id)
    assert not isinstance(caught.value, ConfigurationError)
    permutive.set_faults()
    with pytest.raises(ConfigurationError, match="does not exist"):
        PermutiveHook().require_write_access("32f8e031-c532-41bb-b25e-65bdb677a96f")
