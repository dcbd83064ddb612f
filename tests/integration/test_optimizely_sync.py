"""Optimizely over real Airflow runs (dag.test on a SQLite metadata DB) against the local emulator.

The emulator enforces the documented 2 requests/s and 120/min (429 + Retry-After beyond), so every run here
also shows that the hook paces under them.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import FAST_RETRIES, connection_env

pytestmark = pytest.mark.integration


@pytest.fixture
def optimizely(optimizely_emulator, monkeypatch):
    """The Optimizely emulator (limits on), as the ``optimizely_default`` connection of the DAGs under test."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
        connection_env("optimizely", optimizely_emulator.url, optimizely_emulator.token, **FAST_RETRIES),
    )
    return optimizely_emulator


def list_dag(dag_runner, sync_id: str, project_id: int, list_attribute_id: int, mode: str = "mirror", **options) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT user_id FROM audience", primary_key="user_id")
            OptimizelySyncOperator(task_id="sync", plan=diff.output, object_type="list_attributes",
                                   project_id="{project_id}", list_attribute_id="{list_attribute_id}",
                                   audience_mode="{mode}"{extra})
    ''')


def objects_dag(dag_runner, sync_id: str, project_id: int, object_type: str, mode: str, key: str, columns: str) -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator

        with DAG(dag_id="{sync_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse",
                                    sql="SELECT {columns} FROM objects", primary_key="{key}")
            OptimizelySyncOperator(task_id="sync", plan=diff.output, object_type="{object_type}",
                                   project_id={project_id}, sync_mode="{mode}")
    ''')


def users(ids) -> list[dict]:
    return [{"user_id": f"u{i:05d}"} for i in ids]


def list_requests(emulator, list_attribute_id: int, method: str) -> list:
    return [r for r in emulator.requests if r.method == method and r.path == f"/v2/list_attributes/{list_attribute_id}"]


def rejected_rows(result: dict) -> list[dict]:
    with open(result["rejected_rows_uri"].removeprefix("file://")) as handle:
        return [json.loads(line) for line in handle]


def most_in_one_second(emulator) -> int:
    starts = sorted(r.started_at for r in emulator.requests)
    return max((sum(1 for t in starts[i:] if t - s < 1.0) for i, s in enumerate(starts)), default=0)


def test_add_then_mirror_under_one_sync_id_leaves_exactly_the_source_and_the_foreign_ids(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "vips", ["f1", "f2"])
    # f1 is in the source too, but someone else put it in the list: add leaves it alone (never the sync's own).
    warehouse.replace("audience", users(range(1, 6)) + [{"user_id": "f1"}], ["user_id"])

    added = dag_runner.run(list_dag(dag_runner, "optimizely_add_mirror_it", project, list_id, mode="add"))
    assert added.state == "success", added.task_states
    assert (added.result("sync")["succeeded"], added.result("sync")["skipped"]) == (5, 1)
    assert optimizely.list_members(list_id) == ["f1", "f2", *[f"u{i:05d}" for i in range(1, 6)]]
    assert len(list_requests(optimizely, list_id, "PATCH")) == 1

    # The same sync, now a mirror: u00001 and f1 left the source, u00006 joined; the foreign ids stay.
    optimizely.clear_requests()
    warehouse.replace("audience", users(range(2, 7)), ["user_id"])
    mirrored = dag_runner.run(list_dag(dag_runner, "optimizely_add_mirror_it", project, list_id, mode="mirror"))
    assert mirrored.state == "success", mirrored.task_states
    result = mirrored.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (2, 0, 0)
    assert sorted(optimizely.list_members(list_id)) == ["f1", "f2", *[f"u{i:05d}" for i in range(2, 7)]]
    patches = list_requests(optimizely, list_id, "PATCH")
    assert len(patches) == 1  # the removal and the addition in one write
    assert not [r for r in optimizely.requests if r.status == 429]


def test_mirror_with_take_over_existing_makes_the_list_equal_to_the_source(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "vips", ["f1", "u00001", "f2"])
    warehouse.replace("audience", users([1, 2, 3]), ["user_id"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_take_over_it", project, list_id, take_over_existing=True))
    assert run.state == "success", run.task_states
    assert sorted(optimizely.list_members(list_id)) == ["u00001", "u00002", "u00003"]

    # Without it, a second list keeps what was there before the sync, and the row already in it is left alone.
    other = optimizely.create_list_attribute(project, "vips2", ["f1", "u00001", "f2"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_no_take_over_it", project, other))
    assert run.state == "success", run.task_states
    assert sorted(optimizely.list_members(other)) == ["f1", "f2", "u00001", "u00002", "u00003"]
    result = run.result("sync")
    assert (result["succeeded"], result["skipped"]) == (2, 1)
    # Later runs never claim it: when the row leaves the source, the id added by someone else stays.
    dag = list_dag(dag_runner, "optimizely_no_take_over_it", project, other)
    assert dag_runner.run(dag).state == "success"
    warehouse.replace("audience", users([2, 3]), ["user_id"])
    assert dag_runner.run(dag).state == "success"
    assert sorted(optimizely.list_members(other)) == ["f1", "f2", "u00001", "u00002", "u00003"]


def test_a_10000_member_mirror_with_300_changes_makes_one_patch_and_at_most_two_gets(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "big", [])
    dag = list_dag(dag_runner, "optimizely_big_mirror_it", project, list_id)
    warehouse.replace("audience", users(range(10_000)), ["user_id"])
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    assert len(optimizely.list_members(list_id)) == 10_000

    optimizely.clear_requests()
    source = users(range(150, 10_000)) + users(range(20_000, 20_150))  # 150 removed, 150 added
    warehouse.replace("audience", source, ["user_id"])
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    assert second.result("sync")["succeeded"] == 300
    assert len(list_requests(optimizely, list_id, "PATCH")) == 1
    assert len(list_requests(optimizely, list_id, "GET")) <= 2
    assert sorted(optimizely.list_members(list_id)) == sorted(r["user_id"] for r in source)


def test_a_change_to_the_list_between_read_and_write_is_not_lost(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "vips", ["f1"])
    # Another writer adds an id right after the task's first read of the list.
    optimizely.change_list_after_get(list_id, after_gets=1, add=["other-writer"])
    warehouse.replace("audience", users([1, 2]), ["user_id"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_concurrent_it", project, list_id, mode="add"))
    assert run.state == "success", run.task_states
    assert sorted(optimizely.list_members(list_id)) == ["f1", "other-writer", "u00001", "u00002"]
    assert len(list_requests(optimizely, list_id, "PATCH")) == 1
    assert len(list_requests(optimizely, list_id, "GET")) == 3  # read, check (changed), check again


def test_a_list_that_changes_at_every_read_fails_the_task_without_writing(dag_runner, warehouse, optimizely, capfd):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "busy", ["f1"])
    optimizely.change_list_after_get(list_id, after_gets=1, add=["other-{n}"], times=100)
    warehouse.replace("audience", users([1]), ["user_id"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_busy_it", project, list_id, mode="add"))
    assert run.state == "failed"
    assert list_requests(optimizely, list_id, "PATCH") == []
    assert "changed between every read and write (4 tries)" in capfd.readouterr().out


def test_custom_events_insert_rejects_two_existing_keys_and_creates_the_rest(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    for key in ("signup", "purchase"):
        optimizely.create_object("custom_events", project, key=key, name=f"Made by hand: {key}")
    rows = [{"key": k, "name": k.title(), "description": f"{k} event"}
            for k in ("signup", "add_to_cart", "purchase", "checkout", "search", "share")]
    warehouse.replace("objects", rows, ["key", "name", "description"])
    run = dag_runner.run(objects_dag(dag_runner, "optimizely_events_insert_it", project, "custom_events", "insert",
                                     "key", "key, name, description"))
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (4, 2)
    reasons = {r["key"]: r["reason"] for r in rejected_rows(result)}
    assert set(reasons) == {"signup", "purchase"}
    assert "already in use in this project" in reasons["signup"]  # Optimizely's own message
    events = {e["key"]: e for e in optimizely.objects("custom_events", project)}
    assert len(events) == 6 and events["signup"]["name"] == "Made by hand: signup"
    assert events["checkout"]["description"] == "checkout event"


@pytest.mark.parametrize(
    ("object_type", "key", "existing", "row"),
    [
        ("attributes", "key", {"key": "plan", "name": "Old name"}, {"key": "plan", "name": "Plan", "description": "d"}),
        ("audiences", "name", {"name": "VIPs", "description": "old", "conditions": '["everyone"]'},
         {"name": "VIPs", "description": "Top customers", "conditions": '["and", {"type": "language", "value": "es"}]'}),
    ],
)
def test_upsert_updates_existing_objects_instead_of_duplicating_them(
    dag_runner, warehouse, optimizely, object_type, key, existing, row
):
    project = optimizely.create_project("Web")
    optimizely.create_object(object_type, project, **existing)
    second = {**row, key: f"{row[key]}-2"}
    columns = list(row)
    warehouse.replace("objects", [row, second], columns)
    run = dag_runner.run(objects_dag(dag_runner, f"optimizely_{object_type}_upsert_it", project, object_type,
                                     "upsert", key, ", ".join(columns)))
    assert run.state == "success", run.task_states
    stored = {o[key]: o for o in optimizely.objects(object_type, project)}
    assert sorted(stored) == sorted([row[key], second[key]])  # updated in place, the new one created once
    assert {f: stored[row[key]][f] for f in columns} == row
    posts = [r for r in optimizely.requests if r.method == "POST"]
    assert len(posts) == 1 and len([r for r in optimizely.requests if r.method == "PATCH"]) == 1


def test_a_whole_run_makes_at_most_two_requests_in_any_second_and_meets_no_429(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    rows = [{"key": f"event_{i}", "name": f"Event {i}"} for i in range(12)]
    warehouse.replace("objects", rows, ["key", "name"])
    run = dag_runner.run(objects_dag(dag_runner, "optimizely_paced_it", project, "custom_events", "insert", "key",
                                     "key, name"))
    assert run.state == "success", run.task_states
    assert len(optimizely.objects("custom_events", project)) == 12
    assert not [r for r in optimizely.requests if r.status == 429]
    assert len(optimizely.requests) >= 13
    assert most_in_one_second(optimizely) <= 2


def test_invalid_conditions_and_attribute_keys_are_rejected_per_row_before_sending(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    rows = [{"key": "ok_key", "name": "Fine"}, {"key": "x" * 65, "name": "Too long"}, {"key": "bad/key", "name": "Slash"}]
    warehouse.replace("objects", rows, ["key", "name"])
    run = dag_runner.run(objects_dag(dag_runner, "optimizely_attribute_keys_it", project, "attributes", "insert",
                                     "key", "key, name"))
    assert run.state == "success", run.task_states
    reasons = {r["key"]: r["reason"] for r in rejected_rows(run.result("sync"))}
    assert "is 65 characters long; Optimizely takes at most 64" in reasons["x" * 65]
    assert "has '/'" in reasons["bad/key"]
    assert [a["key"] for a in optimizely.objects("attributes", project)] == ["ok_key"]
    assert len([r for r in optimizely.requests if r.method == "POST"]) == 1  # the bad rows cost no request

    rows = [{"name": "Spanish", "conditions": '["and", {"type": "language", "value": "es"}]'},
            {"name": "Broken", "conditions": '["and", {"value": "es"}]'},
            {"name": "Everyone", "conditions": None}]
    warehouse.replace("objects", rows, ["name", "conditions"])
    run = dag_runner.run(objects_dag(dag_runner, "optimizely_conditions_it", project, "audiences", "upsert", "name",
                                     "name, conditions"))
    assert run.state == "success", run.task_states
    reasons = {r["name"]: r["reason"] for r in rejected_rows(run.result("sync"))}
    assert list(reasons) == ["Broken"] and 'has no "type"' in reasons["Broken"]
    stored = {a["name"]: a for a in optimizely.objects("audiences", project)}
    assert sorted(stored) == ["Everyone", "Spanish"] and stored["Everyone"]["conditions"] == '["everyone"]'


def test_ids_with_a_comma_or_empty_are_rejected_per_row(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "vips", [])
    warehouse.replace("audience", [{"user_id": "a,b"}, {"user_id": " "}, {"user_id": "ok"}], ["user_id"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_bad_ids_it", project, list_id, mode="add"))
    assert run.state == "success", run.task_states
    reasons = {r["user_id"]: r["reason"] for r in rejected_rows(run.result("sync"))}
    assert "contains a comma" in reasons["a,b"] and "empty" in reasons[" "]
    assert optimizely.list_members(list_id) == ["ok"]


def test_a_missing_project_or_list_attribute_fails_before_any_write(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    warehouse.replace("audience", users([1]), ["user_id"])
    missing_list = dag_runner.run(list_dag(dag_runner, "optimizely_missing_list_it", project, 999))
    missing_project = dag_runner.run(list_dag(dag_runner, "optimizely_missing_project_it", 12345, 999))
    assert (missing_list.state, missing_project.state) == ("failed", "failed")
    assert not [r for r in optimizely.requests if r.method in ("PATCH", "POST")]


def test_a_list_that_would_reach_5_mb_is_refused_before_writing_with_the_sizes(optimizely_emulator, monkeypatch):
    from airflow_provider_zeotap.destinations.optimizely_lists import OptimizelyListAttribute
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.sync.destination import BatchRefused, OutboundRow
    from airflow_provider_zeotap.sync.models import Change
    from airflow_provider_zeotap.sync.modes import Operation

    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
                       connection_env("optimizely", optimizely_emulator.url, optimizely_emulator.token))
    project = optimizely_emulator.create_project("Web")
    held = [f"{i:09d}" + "x" * 50_000 for i in range(80)]  # about 4 MB already in the list
    list_id = optimizely_emulator.create_list_attribute(project, "big", held)
    destination = OptimizelyListAttribute(OptimizelyHook(), project_id=project, list_attribute_id=list_id)
    destination.prepare(dry_run=False)
    rows = [OutboundRow(i, Change.ADDED, {"id": i}, {"user_id": f"new{i:05d}" + "y" * 50_000}) for i in range(30)]
    with pytest.raises(BatchRefused, match=r"would be 5,\d{3},\d{3} bytes \(110 ids; the list holds 80 now\)"):
        destination.send(Operation.ADD, rows)
    assert not [r for r in optimizely_emulator.requests if r.method == "PATCH"]
    assert optimizely_emulator.list_members(list_id) == held
    # Under the limit, the same destination writes (once).
    assert all(o.reason is None for o in destination.send(Operation.ADD, rows[:10]))
    assert len(optimizely_emulator.list_members(list_id)) == 90
    destination.close()


@pytest.mark.slow
def test_a_batch_over_5_mb_is_rejected_whole_and_never_split(dag_runner, warehouse, optimizely):
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "big", [])
    rows = [{"user_id": f"{i:06d}" + "x" * 50} for i in range(100_000)]  # about 5.7 MB together
    warehouse.replace("audience", rows, ["user_id"])
    run = dag_runner.run(list_dag(dag_runner, "optimizely_too_big_it", project, list_id, mode="add"))
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (0, 100_000)
    reasons = {r["reason"] for r in rejected_rows(result)}
    assert len(reasons) == 1 and "(100,000 ids; the list holds 0 now)" in reasons.pop()
    assert list_requests(optimizely, list_id, "PATCH") == [] and optimizely.list_members(list_id) == []


def test_the_hook_reads_every_page_and_its_errors_carry_optimizelys_code_and_message(optimizely_emulator, monkeypatch):
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.http import NotFoundError

    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
                       connection_env("optimizely", optimizely_emulator.url, optimizely_emulator.token))
    project = optimizely_emulator.create_project("Web")
    for i in range(150):
        optimizely_emulator.create_object("custom_events", project, key=f"event_{i}")
    with OptimizelyHook() as hook:
        keys = [event["key"] for event in hook.iter_objects("custom_events", project)]
        assert keys == [f"event_{i}" for i in range(150)]
        pages = [r.query for r in optimizely_emulator.requests if r.path.endswith("/custom_events")]
        assert pages == [{"page": "1", "per_page": "100"}, {"page": "2", "per_page": "100"}]
        with pytest.raises(NotFoundError) as caught:
            hook.get_list_attribute(4242)
    assert (caught.value.error_type, caught.value.message) == ("NOT_FOUND", "list attribute 4242 not found")
    assert "list attributes must be created in Optimizely before syncing" in str(caught.value)
