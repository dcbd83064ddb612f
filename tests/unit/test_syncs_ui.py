"""The Syncs page's rules and API, over stored records standing in for the metadata DB.

The SQL side (``ui/reader.py``) is tested over real Airflow runs in ``integration/test_syncs_page.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from airflow_provider_zeotap.errors import GuardError, StaleBaseError
from airflow_provider_zeotap.operators.base import TooManyRejectedRows, _record_failure
from airflow_provider_zeotap.sync.models import Binding, CommittedState, OperationCounts, Plan, PlanCounts, SyncResult
from airflow_provider_zeotap.sync.records import FAILURE_KEY, SETTINGS_KEY, RunFailure, RunSettings
from airflow_provider_zeotap.ui import app as ui_app
from airflow_provider_zeotap.ui.reader import SyncAssetRow, TaskRunRow
from airflow_provider_zeotap.ui.service import SyncsService

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def plan_id(n: int) -> str:
    return f"20260301T{n:06d}000000-0000000{n % 10}"


class State:
    """A sync's state folder under ``state_uri``, with the files the engine writes for a run."""

    def __init__(self, tmp_path):
        self.uri = f"file://{tmp_path}/state"

    def rejected_file(self, sync_id: str, pid: str, rows: list[dict]) -> str:
        uri = f"{self.uri}/{sync_id}/plans/{pid}/rejected_rows.jsonl"
        path = uri.removeprefix("file://")
        import os

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        return uri


def committed(sync_id: str, state_uri: str, dag_id: str, task_id: str, rows: int, pid: str) -> dict:
    snapshot = f"{pid}-20260301T000000000000"
    return CommittedState(
        snapshot_id=snapshot,
        snapshot_uri=f"{state_uri}/{sync_id}/committed/{snapshot}.parquet",
        plan_id=pid,
        rows=rows,
        committed_at=T0,
        primary_key=["customer_id"],
        binding=Binding(dag_id=dag_id, task_id=task_id, operator="PersonyzeSyncOperator", conn_id="personyze_default",
                        destination="Personyze users", target={"object": "users"}, mode_family="delivers"),
        mode="upsert",
    ).model_dump(mode="json")


def plan(sync_id: str, state_uri: str, pid: str, added: int, changed: int, removed: int) -> dict:
    folder = f"{state_uri}/{sync_id}/plans/{pid}"
    return Plan(
        sync_id=sync_id, plan_id=pid, primary_key=["customer_id"], columns=["email"], source_columns=["customer_id", "email"],
        counts=PlanCounts(added=added, changed=changed, removed=removed, total=added + changed),
        state_uri=state_uri, snapshot_uri=f"{folder}/snapshot.parquet", changes_uri=f"{folder}/changes.parquet",
        invalid_uri=f"{folder}/invalid.parquet", created_at=T0,
    ).model_dump(mode="json")


def result(sync_id: str, pid: str, succeeded: int, rejected: int = 0, failed: int = 0, rejected_uri: str | None = None) -> dict:
    return SyncResult(
        sync_id=sync_id, plan_id=pid, destination="Personyze users", mode="upsert",
        operations={"upsert": OperationCounts(selected=succeeded + rejected + failed, succeeded=succeeded,
                                              rejected=rejected, failed=failed)},
        succeeded=succeeded, rejected=rejected, failed=failed, rejected_rows_uri=rejected_uri,
    ).model_dump(mode="json")


def settings(sync_id: str, state_uri: str, **extra) -> dict:
    return RunSettings(sync_id=sync_id, destination="Personyze users", mode="upsert", state_uri=state_uri,
                       max_removal_ratio=0.5, **extra).model_dump(mode="json")


class FakeReader:
    def __init__(self, syncs: list[SyncAssetRow], runs: list[TaskRunRow]):
        self._syncs = syncs
        self._runs = runs

    def syncs(self, sync_id=None):
        return [s for s in self._syncs if sync_id is None or s.sync_id == sync_id]

    def runs(self, tasks, diff_tasks, *, limit, run_id=None):
        found = [r for r in self._runs if (r.dag_id, r.task_id) in set(tasks) and (run_id is None or r.run_id == run_id)]
        return sorted(found, key=lambda r: r.run_after, reverse=True)[:limit]


def run(dag_id: str, task_id: str, n: int, state: str = "success", **xcom) -> TaskRunRow:
    plans = xcom.pop("plans", [])
    return TaskRunRow(dag_id, task_id, f"scheduled__2026-03-0{n}T00:00:00+00:00", state, 1, T0 + timedelta(days=n),
                      T0 + timedelta(days=n, minutes=1), T0 + timedelta(days=n), xcom=xcom, plans=plans)


@pytest.fixture
def world(tmp_path):
    """Two syncs in two DAGs; the users sync has three runs: clean, one with rejected rows, one stopped by a guard."""
    state = State(tmp_path)
    users_file = state.rejected_file("users", plan_id(2), [
        {"customer_id": i, "change": "added", "operation": "upsert", "outcome": "rejected",
         "reason": f"email 'bad{i}' is not an email" if i % 2 else "Personyze refused the row <script>alert(1)</script>"}
        for i in range(1, 121)
    ])
    syncs = [
        SyncAssetRow(1, "users", producers=[("crm", "sync_users")], consumers=[("crm", "diff_users")],
                     pointer=committed("users", state.uri, "crm", "sync_users", 2000, plan_id(2))),
        SyncAssetRow(2, "segments", producers=[("ads", "mirror_segments")], consumers=[("ads", "diff_segments")]),
    ]
    runs = [
        run("crm", "sync_users", 1, plans=[plan("users", state.uri, plan_id(1), 2000, 0, 0)],
            return_value=result("users", plan_id(1), 2000), sync_settings=settings("users", state.uri)),
        run("crm", "sync_users", 2, plans=[plan("users", state.uri, plan_id(2), 130, 7, 3)],
            return_value=result("users", plan_id(2), 17, rejected=118, failed=2, rejected_uri=users_file),
            sync_settings=settings("users", state.uri, max_removals=10)),
        run("crm", "sync_users", 3, state="failed", plans=[plan("users", state.uri, plan_id(3), 0, 0, 900)],
            sync_settings=settings("users", state.uri, max_removals=10),
            sync_failure=RunFailure(kind="guard", message="Sync 'users' would remove 900 rows, more than max_removals=10.").model_dump(mode="json")),
        run("ads", "mirror_segments", 1, state="failed",
            sync_failure=RunFailure(kind="stale", message="plan is stale").model_dump(mode="json")),
    ]
    return state, FakeReader(syncs, runs)


def client(world, readable: set[str]) -> TestClient:
    state, reader = world
    app = ui_app.create_app()
    app.dependency_overrides[ui_app.service] = lambda: SyncsService(reader, readable, state.uri)
    return TestClient(app)


def test_a_user_sees_only_the_syncs_of_dags_they_may_read(world):
    both = client(world, {"crm", "ads"}).get("/syncs").json()
    assert [s["sync_id"] for s in both] == ["users", "segments"]
    only_crm = client(world, {"crm"})
    assert [s["sync_id"] for s in only_crm.get("/syncs").json()] == ["users"]
    for path in ("/syncs/segments", "/syncs/segments/runs",
                 "/syncs/segments/runs/scheduled__2026-03-01T00:00:00+00:00/rejected", "/page/segments"):
        assert only_crm.get(path).status_code == 404, path
    assert "segments" not in only_crm.get("/").text
    assert client(world, set()).get("/syncs").json() == []


def test_the_index_shows_binding_committed_rows_last_run_and_a_warning_badge(world):
    users, segments = client(world, {"crm", "ads"}).get("/syncs").json()
    assert (users["dag_id"], users["task_id"], users["destination"], users["target"], users["committed_rows"]) == (
        "crm", "sync_users", "Personyze users", {"object": "users"}, 2000)
    assert users["state_location"] == f"{world[0].uri}/users"
    assert users["last_run"]["outcome"] == "guard" and users["warning"] == "guard"
    assert segments["last_run"]["outcome"] == "stale" and segments["warning"] == "stale plan"
    assert segments["committed_rows"] is None and segments["dag_id"] == "ads"  # no commit yet: the outlet's DAG
    html = client(world, {"crm", "ads"}).get("/").text
    assert html.count("badge warn") == 2


def test_runs_carry_the_plan_counts_and_the_outcomes_newest_first(world):
    runs = client(world, {"crm"}).get("/syncs/users/runs").json()
    assert [r["outcome"] for r in runs] == ["guard", "succeeded", "succeeded"]
    assert [r["warning"] for r in runs] == ["guard", None, None]
    assert runs[1]["plan"] == {"added": 130, "changed": 7, "removed": 3, "refresh": 0, "invalid": 0}
    assert (runs[1]["rejected"], runs[1]["failed"], runs[1]["has_rejected_rows"]) == (118, 2, True)
    assert runs[1]["task_instance_url"] == "/dags/crm/runs/scheduled__2026-03-02T00%3A00%3A00%2B00%3A00/tasks/sync_users"
    detail = client(world, {"crm"}).get("/syncs/users").json()
    assert detail["settings"]["max_removals"] == 10  # the newest run that recorded its settings


def test_rejected_rows_are_paged_and_searched_through_the_whole_file(world):
    c = client(world, {"crm"})
    url = "/syncs/users/runs/scheduled__2026-03-02T00:00:00+00:00/rejected"
    second = c.get(url, params={"page": 2, "page_size": 50}).json()
    assert second["total"] == 120
    assert [r["key"]["customer_id"] for r in second["rows"]] == list(range(51, 101))
    found = c.get(url, params={"search": "BAD7"}).json()  # case-insensitive, any field
    assert [r["key"]["customer_id"] for r in found["rows"]] == [7, 71, 73, 75, 77, 79]
    assert found["rows"][0] == {"key": {"customer_id": 7}, "change": "added", "operation": "upsert",
                                "outcome": "rejected", "reason": "email 'bad7' is not an email"}


def test_a_pruned_file_and_a_file_outside_the_state_location_are_explained_not_read(world, tmp_path):
    state, reader = world
    url = "/syncs/users/runs/scheduled__2026-03-02T00:00:00+00:00/rejected"
    import os

    os.remove(f"{tmp_path}/state/users/plans/{plan_id(2)}/rejected_rows.jsonl")
    gone = client(world, {"crm"}).get(url).json()
    assert gone["rows"] == [] and "no longer there" in gone["note"]

    secret = tmp_path / "airflow.cfg"
    secret.write_text('{"customer_id": "secret_key = hunter2"}\n')
    reader._runs[1].xcom["return_value"]["rejected_rows_uri"] = f"file://{secret}"
    outside = client(world, {"crm"}).get(url).json()
    assert outside["rows"] == [] and "hunter2" not in json.dumps(outside)
    assert "not under the API server's state location" in outside["note"]


def test_the_page_draws_the_chart_with_the_runs_numbers_and_escapes_what_it_shows(world):
    html = client(world, {"crm"}).get("/page/users").text
    bars = {(m[0], m[1]): int(m[2]) for m in re.findall(r'data-run="([^"]+)" data-series="(\w+)" data-value="(\d+)"', html)}
    run2 = "scheduled__2026-03-02T00:00:00+00:00"
    assert [bars[(run2, s)] for s in ("added", "changed", "removed", "rejected", "failed")] == [130, 7, 3, 118, 2]
    assert bars[("scheduled__2026-03-03T00:00:00+00:00", "removed")] == 900
    # Without ?run=, the newest run with rejected rows is shown, one click saved.
    assert 'id=rejected-rows' in html and "email &#x27;bad1&#x27; is not an email" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "max_removals" in html and "would remove 900 rows" in html


class FakeTI:
    def __init__(self):
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (GuardError("would remove 900 rows"), "guard"),
        (StaleBaseError("plan is stale"), "stale"),
        (TooManyRejectedRows("3 of 10 rejected", None), "rejected_rows"),
        (RuntimeError("boom"), "error"),
    ],
)
def test_a_failed_sync_task_records_what_kind_of_stop_it_was(error, kind):
    ti = FakeTI()
    _record_failure({"ti": ti}, error)
    record = RunFailure.model_validate(ti.pushed[FAILURE_KEY])
    assert record.kind.value == kind
    assert str(error) in record.message


def test_a_failure_record_hides_registered_secrets():
    from airflow.sdk.log import mask_secret

    mask_secret("s3cr3t-api-key-value")
    ti = FakeTI()
    _record_failure({"ti": ti}, RuntimeError("the key s3cr3t-api-key-value was refused"))
    assert "s3cr3t-api-key-value" not in json.dumps(ti.pushed) and SETTINGS_KEY not in ti.pushed


def test_the_plugin_is_registered_by_its_entry_point_and_adds_the_nav_entry():
    from importlib.metadata import entry_points

    from airflow.plugins_manager import is_valid_plugin

    from airflow_provider_zeotap.ui.plugin import URL_PREFIX, SyncsApp, ZeotapSyncsPlugin

    (entry,) = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "zeotap_syncs"]
    assert entry.load() is ZeotapSyncsPlugin and is_valid_plugin(ZeotapSyncsPlugin)
    (app,) = ZeotapSyncsPlugin.fastapi_apps
    assert app["url_prefix"] == URL_PREFIX and isinstance(app["app"], SyncsApp)
    (view,) = ZeotapSyncsPlugin.external_views
    assert (view["name"], view["href"], view["destination"]) == ("Syncs", f"{URL_PREFIX}/", "nav")
