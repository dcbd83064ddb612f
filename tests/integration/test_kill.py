"""A delivery process killed with SIGKILL mid-batch: the next try resumes, nothing is lost, little is repeated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import connection_env
from tests.support.deliver_plan import deliver
from tests.support.json_store import JsonFileStore
from tests.support.sync_harness import SyncHarness

pytestmark = pytest.mark.integration


def test_sigkill_mid_delivery_then_resume(tmp_path, personyze_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT",
                       connection_env("personyze", personyze_emulator.url, personyze_emulator.api_key))
    personyze_emulator.users_post_latency_ms = 40
    harness = SyncHarness(str(tmp_path / "state"))
    rows = [{"id": i, "email": f"user{i}@example.com", "first_name": f"U{i}"} for i in range(40)]
    plan = harness.plan(rows)
    (tmp_path / "plan.json").write_text(plan.model_dump_json())

    child = subprocess.Popen([sys.executable, "-m", "tests.support.deliver_plan", str(tmp_path)],
                             cwd=os.getcwd(), env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    posts = lambda: [r for r in personyze_emulator.requests if r.method == "POST"]  # noqa: E731
    while len(posts()) < 17 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    sent_before = len(posts())
    assert 17 <= sent_before < 40, "the child was not killed mid-delivery"

    checkpoint = JsonFileStore(str(tmp_path / "task_state.json")).get(f"delivery:{plan.plan_id}")
    assert checkpoint["next_batch"] == (sent_before // 5) or checkpoint["next_batch"] == (sent_before - 1) // 5

    result = deliver(str(tmp_path))  # the retry, in a fresh process state, from the files the dead one left
    assert result.resumed_from_batch == checkpoint["next_batch"]
    assert result.succeeded == 40 and result.committed.rows == 40
    emails = [r.json["email"] for r in posts()]
    assert set(emails) == {row["email"] for row in rows}
    assert len(emails) - 40 <= 5  # at most one batch (5 rows) went twice
    assert {u["email"] for u in personyze_emulator.users.values()} == {row["email"] for row in rows}
