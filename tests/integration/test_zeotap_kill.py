"""A Zeotap delivery killed with SIGKILL while batches are in flight: the retry re-sends at most those batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.destinations.zeotap import ZeotapProfiles
from airflow_provider_zeotap.sync.models import ROW_ID_COLUMN
from tests.support.deliver_zeotap import BATCH_SIZE, deliver
from tests.support.json_store import JsonFileStore
from tests.support.sync_harness import SyncHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1000


def test_a_killed_delivery_resends_at_most_the_batches_that_were_in_flight(tmp_path, zeotap):
    zeotap.set_faults(latency_ms=50)
    harness = SyncHarness(str(tmp_path / "state"), sync_id="zeotap_killed", primary_key=("user_id",))
    plan = harness.plan([{"user_id": f"u-{i:05d}", "first_name": f"F{i}"} for i in range(ROWS)])
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    changes = pq.read_table(plan.changes_uri.removeprefix("file://"), columns=[ROW_ID_COLUMN, "user_id"])
    ordered = sorted(zip(changes.column(ROW_ID_COLUMN).to_pylist(), changes.column("user_id").to_pylist()))
    batch_of = {user_id: position // BATCH_SIZE for position, (_, user_id) in enumerate(ordered)}

    child = subprocess.Popen([sys.executable, "-m", "tests.support.deliver_zeotap", str(tmp_path)],
                             cwd=os.getcwd(), env=os.environ.copy(), stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "child.err", "w"))
    # A request the kill cut off before its body arrived has no JSON and wrote nothing.
    posts = lambda: [r.json["ids"]["user_id"] for r in zeotap.requests  # noqa: E731
                     if r.path == "/cdp/v1/users" and r.json]
    deadline = time.monotonic() + 120
    while len(posts()) < 450 and time.monotonic() < deadline:
        assert child.poll() is None, (tmp_path / "child.err").read_text()[-2000:]
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    first = posts()
    assert 450 <= len(first) < ROWS, "the child was not killed mid-delivery"

    checkpoint = JsonFileStore(str(tmp_path / "task_state.json")).get(f"delivery:{plan.plan_id}")
    acknowledged = set(range(checkpoint["next_batch"])) | set(checkpoint["done"])
    assert acknowledged, "no batch was acknowledged before the kill"

    result = deliver(str(tmp_path))  # the retry, in a fresh process state, from the files the dead one left
    assert result.succeeded == ROWS and result.committed.rows == ROWS
    second = posts()[len(first):]
    assert not {batch_of[i] for i in second} & acknowledged, "a batch acknowledged before the kill was sent again"
    resent = set(first) & set(second)
    in_flight = {batch_of[i] for i in resent}
    assert len(in_flight) <= ZeotapProfiles.capabilities.batches_in_flight, sorted(in_flight)
    assert len(resent) <= ZeotapProfiles.capabilities.batches_in_flight * BATCH_SIZE
    assert set(first) | set(second) == set(batch_of)
    assert len(zeotap.profiles) == ROWS
