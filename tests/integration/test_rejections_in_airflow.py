"""Rejections you cannot miss, over real Airflow runs against the Permutive emulator.

A run with too many rejected rows fails its task after the commit; the task log ends with a summary
table; invalid segments are rejected locally, each with its own reason, and cost no request.
"""

from __future__ import annotations

import glob
import json
import os
import re

import pytest

from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

COLUMNS = ["code", "name"]


@pytest.fixture
def permutive(permutive_emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT",
        connection_env("permutive", permutive_emulator.url, permutive_emulator.write_key,
                       backoff_initial=0.01, backoff_max=0.05, max_attempts=3),
    )
    return permutive_emulator


def segments_dag(dag_runner, sync_id: str, import_id: str, **settings) -> str:
    """A diff of the ``segments`` table and a Permutive mirror task with ``settings`` (Python literals)."""
    extra = "".join(f", {name}={value!r}" for name, value in settings.items())
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
            PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}", audience_mode="mirror",
                                  field_mapping={{"segment_code": "code", "segment_name": "name"}}{extra})
    ''')


def good(i: int) -> dict:
    return {"code": f"seg-{i:03d}", "name": f"Segment {i}"}


def bad(i: int) -> dict:
    return {"code": f"bad code {i:02d}", "name": f"Broken {i}"}


def sent_codes(emulator) -> list[str]:
    """Every code in every PATCH the emulator received."""
    return [op["data"]["code"] if op["operation"] == "Create" else op["code"]
            for r in emulator.requests if r.method == "PATCH" for op in r.json.get("operations") or []]


#: A console log line of ``dag.test()``: time, level, the message (padded), then the logger's name.
_LOG_LINE = re.compile(r"^\S+ \[\w+\s*\] (?P<message>.*?) +\[(?P<logger>[\w.]+)\](?: |$)")


def provider_messages(out: str) -> list[str]:
    """The messages this provider logged (its modules' loggers and its operators' task loggers), in order."""
    found = (_LOG_LINE.match(line) for line in out.splitlines())
    return [m["message"] for m in found if m and "airflow_provider_zeotap" in m["logger"]]


def rejected_file(sync_id: str) -> str:
    """The one rejected-rows file of the sync's latest plan, found on disk (not taken from the task)."""
    root = os.path.join(os.environ["AIRFLOW_HOME"], "zeotap_sync_state", sync_id, "plans")
    files = sorted(glob.glob(os.path.join(root, "*", "rejected_rows.jsonl")))
    assert files, f"no rejected-rows file under {root}"
    return files[-1]


def test_fail_on_rejected_fails_the_task_after_committing_what_was_acknowledged(dag_runner, warehouse, permutive, capfd):
    import_id = permutive.create_import("All or nothing")
    # Retries allowed, yet not used: a retry would resume after the last batch and report the same rows.
    dag = segments_dag(dag_runner, "rejections_fail_on_any", import_id, fail_on_rejected=True, retries=2,
                       retry_delay=0.0)

    # Every row invalid: the task fails, nothing is sent, and the message names the counts, setting and file.
    warehouse.replace("segments", [bad(i) for i in range(4)], COLUMNS)
    first = dag_runner.run(dag)
    out = capfd.readouterr().out
    assert first.task_states == {"diff": "success", "sync": "failed"} and first.tries["sync"] == 1
    assert first.result("sync") is None  # a failed task has no return value: the log carries the result
    uri = "file://" + rejected_file("rejections_fail_on_any")
    failure = next(line for line in out.splitlines() if "rows selected to send were rejected or failed" in line)
    assert "4 of 4 rows selected to send were rejected or failed (4 rejected, 0 failed" in failure
    assert "fail_on_rejected=True" in failure and uri in failure
    logged = json.loads(next(line for line in out.splitlines() if "its result: {" in line).split("its result: ", 1)[1]
                        .rsplit("}", 1)[0] + "}")
    assert (logged["rejected"], logged["succeeded"], logged["rejected_rows_uri"]) == (4, 0, uri)
    assert logged["committed"]["rows"] == 0
    assert sent_codes(permutive) == []

    # Three valid rows join: they are created and committed although the task fails again on the four.
    warehouse.replace("segments", [bad(i) for i in range(4)] + [good(i) for i in range(3)], COLUMNS)
    second = dag_runner.run(dag)
    assert second.task_states["sync"] == "failed"
    assert sorted(permutive.segments(import_id)) == ["seg-000", "seg-001", "seg-002"]
    assert "3 acknowledged rows are committed" in capfd.readouterr().out

    # The next diff starts from that commit: only the four invalid rows are still to be sent.
    permutive.clear_requests()
    third = dag_runner.run(dag)
    plan = third.result("diff")
    assert plan["base"]["rows"] == 3 and plan["counts"]["added"] == 4
    assert third.task_states["sync"] == "failed" and sent_codes(permutive) == []


@pytest.mark.parametrize(("invalid", "state"), [(1, "success"), (3, "failed")])
def test_max_rejected_ratio_lets_one_in_ten_pass_and_fails_three_in_ten(dag_runner, warehouse, permutive, invalid, state):
    import_id = permutive.create_import(f"Ratio {invalid}")
    warehouse.replace("segments", [bad(i) for i in range(invalid)] + [good(i) for i in range(10 - invalid)], COLUMNS)
    run = dag_runner.run(segments_dag(dag_runner, f"rejections_ratio_{invalid}", import_id, max_rejected_ratio=0.2))
    assert run.task_states["sync"] == state
    assert len(permutive.segments(import_id)) == 10 - invalid  # acknowledged rows land either way
    if state == "success":
        assert (run.result("sync")["succeeded"], run.result("sync")["rejected"]) == (9, 1)


def test_the_log_ends_with_a_summary_table_listing_the_first_ten_rejected_rows(dag_runner, warehouse, permutive, capfd):
    import_id = permutive.create_import("Summary")
    warehouse.replace("segments", [bad(i) for i in range(12)] + [good(i) for i in range(3)], COLUMNS)
    run = dag_runner.run(segments_dag(dag_runner, "rejections_summary", import_id))
    out = capfd.readouterr().out
    assert run.state == "success"
    uri = run.result("sync")["rejected_rows_uri"]
    messages = provider_messages(out)
    start = next(i for i, m in enumerate(messages) if m.startswith("Summary of sync 'rejections_summary'"))
    summary = messages[start:]
    assert summary[0].endswith("(mirror): 15 rows selected, 12 rejected or failed")
    assert summary[1].split() == ["operation", "selected", "succeeded", "unchanged_payload", "identity_kept",
                                  "skipped", "rejected", "failed"]
    assert summary[3].split() == ["create", "15", "3", "0", "0", "0", "12", "0"]
    assert summary[4].split() == ["total", "15", "3", "0", "0", "0", "12", "0"]
    assert len({len(line) for line in summary[1:5]}) == 1  # the columns line up
    assert summary[5] == f"Rejected and failed rows, first 10 of 12 (all, with reasons: {uri}):"
    assert summary[6].split() == ["key", "change", "operation", "outcome", "reason"]
    listed = summary[8:-1]
    assert [line.split('"')[1] for line in listed] == [f"bad code {i:02d}" for i in range(10)]
    assert all(line.split()[3:6] == ["added", "create", "rejected"] for line in listed)
    assert all("has a space: codes are letters, digits" in line for line in listed)
    # The table is the last thing the sync logs.
    assert summary[-1] == f"... and 2 more rejected or failed rows in {uri}"


def test_invalid_segments_get_their_own_reason_and_cost_no_request(dag_runner, warehouse, permutive):
    import_id = permutive.create_import("Local validation")
    rows = [
        {"code": "bad code", "name": "Spaced"},
        {"code": "café", "name": "Accented"},
        {"code": "x" * 500, "name": "Long"},
        {"code": "no-name", "name": ""},
        {"code": "blank-name", "name": "   "},
        {"code": "long-name", "name": "n" * 256},
        good(1),
    ]
    warehouse.replace("segments", rows, COLUMNS)
    run = dag_runner.run(segments_dag(dag_runner, "rejections_reasons", import_id))
    assert run.state == "success"
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (1, 6)
    reasons = {r["code"]: r["reason"] for r in map(json.loads, open(result["rejected_rows_uri"].removeprefix("file://")))}
    assert reasons["bad code"] == "segment_code 'bad code' has a space: codes are letters, digits, '_', '.', ':' and '-'"
    assert reasons["café"].startswith("segment_code 'café' has a non-ASCII letter 'é'")
    assert reasons["x" * 500] == f"segment_code '{'x' * 40}…' is 500 characters long; at most 100"
    assert reasons["no-name"].startswith("segment_name is empty and the task has no segment_name default")
    assert reasons["blank-name"].startswith("segment_name '   ' is only whitespace")
    assert reasons["long-name"].endswith("is 256 characters long; at most 255")
    assert not any("Permutive refused" in reason for reason in reasons.values())
    # One PATCH with the valid row alone (after the empty write-access check): the invalid ones cost nothing.
    assert sent_codes(permutive) == ["seg-001"]
    assert [len(r.json.get("operations") or []) for r in permutive.requests if r.method == "PATCH"] == [0, 1]
