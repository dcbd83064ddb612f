"""The engine's data-loss guarantees over real Airflow runs (dag.test on a SQLite metadata DB) against the emulators.

Each test checks three things exactly: what the emulated API holds at the end, what the sync committed (the
pointer in Airflow's asset state store and the rows of the snapshot it names), and which requests were sent.

1. Two DAGs sharing one ``sync_id``: the second is refused before any request, naming both bindings.
2. One plan consumed by two sync tasks: refused when the DAG is parsed, and at run time when the second
   task gets the plan by a route the parse-time check cannot see.
3. The target of a sync changed (another Personyze list): refused without ``rebind``; with it, every row is
   sent to the new list and nothing is removed anywhere.
4. A stale plan (an old sync task run again after a newer run committed) sends nothing.
5. ``full_refresh`` re-sends every row in insert and add modes, and never removes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.parquet as pq
import pytest


pytestmark = pytest.mark.integration

SEGMENT_COLUMNS = ["code", "name", "description"]
CUSTOMER_COLUMNS = ["customer_id", "email", "first_name", "plan"]
WRITES = ("POST", "PUT", "PATCH", "DELETE")


# -- DAG files --------------------------------------------------------------------------------------------------

_HEADER = """
    from datetime import datetime
    from airflow.sdk import DAG
    from airflow_provider_zeotap.operators.diff import SyncDiffOperator
    from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator
    from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
"""


def sync_dag(
    dag_runner,
    *,
    dag_id: str,
    sync_id: str,
    sql: str,
    primary_key: str,
    sync: str,
    diff_args: str = "",
    dag_args: str = "",
) -> str:
    """A DAG file with a diff task ``diff`` and the sync task(s) given as ``sync`` (Python, indented 4)."""
    return dag_runner.write(
        _HEADER
        + f"""
    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False{dag_args}) as dag:
        diff = SyncDiffOperator(task_id="diff", sync_id="{sync_id}", conn_id="warehouse", sql="{sql}",
                                primary_key="{primary_key}"{diff_args})
"""
        + sync
    )


def segments_dag(dag_runner, *, dag_id: str, sync_id: str, table: str, import_id: str) -> str:
    return sync_dag(
        dag_runner,
        dag_id=dag_id,
        sync_id=sync_id,
        sql=f"SELECT * FROM {table}",
        primary_key="code",
        sync=f"""
        PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}", audience_mode="mirror",
                              field_mapping={{"segment_code": "code", "segment_name": "name",
                                              "description": "description"}})
""",
    )


def members_dag(
    dag_runner, *, dag_id: str, list_id: int, mode: str = "mirror", extra: str = "", diff_args: str = ""
) -> str:
    return sync_dag(
        dag_runner,
        dag_id=dag_id,
        sync_id=dag_id,
        sql="SELECT email FROM audience",
        primary_key="email",
        diff_args=diff_args,
        sync=f"""
        PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="user_list_members",
                              audience_mode="{mode}", list_id="{list_id}"{extra})
""",
    )


# -- what was sent, what was committed --------------------------------------------------------------------------


def writes(emulator) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.json) for r in emulator.requests if r.method in WRITES]


def segment_writes(emulator) -> list[list[dict]]:
    """PATCHes that carry operations (``prepare()`` sends one with none, as a write-access check)."""
    return [r.json["operations"] for r in emulator.requests if r.method == "PATCH" and r.json.get("operations")]


def list_posts(emulator) -> list[tuple[int, str]]:
    return sorted(
        (r.json["user_list_id"], r.json["user_email"])
        for r in emulator.requests
        if r.method == "POST" and r.path == "/rest/user_list_users"
    )


def pointer(sync_id: str) -> dict[str, Any] | None:
    """The committed pointer as Airflow's asset state store holds it (read from the metadata DB)."""
    from airflow.models.asset import AssetModel
    from airflow.models.asset_state_store import AssetStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(AssetStateStoreModel)
            .join(AssetModel, AssetModel.id == AssetStateStoreModel.asset_id)
            .filter(AssetModel.name == f"zeotap-sync://{sync_id}", AssetStateStoreModel.key == "committed")
            .one_or_none()
        )
        value = row.value if row is not None else None
    while isinstance(value, str):
        value = json.loads(value)
    return value


def snapshot(state: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    """The committed snapshot's rows by key, without the engine's own columns."""
    table = pq.read_table(state["snapshot_uri"].removeprefix("file://"))
    rows = [{k: v for k, v in row.items() if not k.startswith("__")} for row in table.to_pylist()]
    return {row[key]: row for row in rows}


def error_line(capsys, error: str) -> str:
    """The message of the exception a task raised, as the task log (on stdout under dag.test) shows it."""
    out = capsys.readouterr().out
    prefix = f"airflow_provider_zeotap.errors.{error}: "
    lines = [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]
    assert lines, f"no {error} in the task log:\n{out[-4000:]}"
    return lines[-1]


def segment(i: int, name: str | None = None) -> dict[str, str]:
    return {"code": f"seg-{i:03d}", "name": name or f"Segment {i}", "description": f"rows of segment {i}"}


def emails(*names: str) -> set[str]:
    return {f"{name}@example.com" for name in names}


def audience(warehouse, *names: str) -> None:
    warehouse.replace("audience", [{"email": e} for e in sorted(emails(*names))], ["email"])


def customer(i: int) -> dict[str, Any]:
    return {"customer_id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "plan": "basic"}


# -- 1. two DAGs, one sync_id -----------------------------------------------------------------------------------


def test_a_second_dag_on_the_same_sync_id_is_refused_before_any_request_and_the_first_keeps_its_segments(
    dag_runner, warehouse, permutive, capsys
):
    import_id = permutive.create_import("Shared import")
    a_rows = [segment(1), segment(2), segment(3)]
    warehouse.replace("segments_a", a_rows, SEGMENT_COLUMNS)
    warehouse.replace("segments_b", [segment(7), segment(8)], SEGMENT_COLUMNS)
    dag_a = segments_dag(dag_runner, dag_id="shared_sync_a", sync_id="shared_segments", table="segments_a",
                         import_id=import_id)
    dag_b = segments_dag(dag_runner, dag_id="shared_sync_b", sync_id="shared_segments", table="segments_b",
                         import_id=import_id)
    expected = {r["code"]: (r["name"], r["description"]) for r in a_rows}

    first = dag_runner.run(dag_a)
    assert first.state == "success", first.task_states
    assert {code: (s["name"], s.get("description")) for code, s in permutive.segments(import_id).items()} == expected
    committed = first.result("sync")["committed"]
    assert committed["rows"] == 3
    assert {k: v for k, v in committed["binding"].items() if k != "target"} == {
        "dag_id": "shared_sync_a",
        "task_id": "sync",
        "operator": "PermutiveSyncOperator",
        "conn_id": "permutive_default",
        "destination": "Permutive segments",
        "mode_family": "delivers",
    }
    assert pointer("shared_segments") == committed
    assert {k: (v["name"], v["description"]) for k, v in snapshot(committed, "code").items()} == expected

    # DAG B: other dag_id, same sync_id, other rows, same import. Before the fix its mirror deleted A's segments.
    permutive.clear_requests()
    capsys.readouterr()
    second = dag_runner.run(dag_b)
    assert second.state == "failed"
    assert second.task_states == {"diff": "success", "sync": "failed"}
    assert permutive.requests == []  # not even the write-access check: nothing reached the API
    message = error_line(capsys, "BindingError")
    assert message.startswith("Sync 'shared_segments' has a baseline that was delivered to DAG 'shared_sync_a' task "
                              "'sync' (PermutiveSyncOperator) -> Permutive segments")
    assert "but this task delivers to DAG 'shared_sync_b' task 'sync' (PermutiveSyncOperator)" in message
    assert "(different: dag_id)" in message
    assert "nothing was sent" in message
    assert "give its diff task its own sync_id" in message and "pass rebind=True" in message
    assert {code: (s["name"], s.get("description")) for code, s in permutive.segments(import_id).items()} == expected
    assert pointer("shared_segments") == committed

    # A's next run: nothing changed for A, so nothing is sent, nothing deleted, the baseline stays.
    permutive.clear_requests()
    third = dag_runner.run(dag_a)
    assert third.state == "success", third.task_states
    assert permutive.requests == []
    result = third.result("sync")
    assert (result["succeeded"], result["failed"], result["rejected"], result["refreshed"]) == (0, 0, 0, 0)
    assert result["committed"] == committed
    assert pointer("shared_segments") == committed
    assert {code: (s["name"], s.get("description")) for code, s in permutive.segments(import_id).items()} == expected


def test_a_permutive_sync_re_pointed_at_another_import_is_refused_before_any_write(
    dag_runner, warehouse, permutive, capsys
):
    first_import = permutive.create_import("First")
    second_import = permutive.create_import("Second")
    warehouse.replace("segments", [segment(1), segment(2), segment(3)], SEGMENT_COLUMNS)
    first = dag_runner.run(segments_dag(dag_runner, dag_id="permutive_retarget", sync_id="permutive_retarget",
                                        table="segments", import_id=first_import))
    assert first.state == "success", first.task_states
    committed = first.result("sync")["committed"]
    assert committed["binding"]["target"] == {"import_id": first_import}

    warehouse.replace("segments", [segment(2), segment(3), segment(4)], SEGMENT_COLUMNS)
    permutive.clear_requests()
    capsys.readouterr()
    moved = dag_runner.run(segments_dag(dag_runner, dag_id="permutive_retarget", sync_id="permutive_retarget",
                                        table="segments", import_id=second_import))
    assert moved.state == "failed"
    assert segment_writes(permutive) == []
    assert permutive.segments(second_import) == {}
    assert set(permutive.segments(first_import)) == {"seg-001", "seg-002", "seg-003"}
    assert pointer("permutive_retarget") == committed
    assert f"import_id={second_import}" in error_line(capsys, "BindingError")


# -- 2. one plan, two sync tasks --------------------------------------------------------------------------------


def test_two_sync_tasks_taking_one_diff_output_fail_when_the_dag_is_parsed(dag_runner, personyze, request):
    import importlib.util

    from airflow.dag_processing.dagbag import DagBag

    from airflow_provider_zeotap.errors import ConfigurationError

    path = sync_dag(
        dag_runner,
        dag_id="one_plan_two_tasks_parse",
        sync_id="one_plan_two_tasks_parse",
        sql="SELECT email FROM audience",
        primary_key="email",
        sync="""
        PersonyzeSyncOperator(task_id="sync_list_one", plan=diff.output, object_type="user_list_members",
                              audience_mode="mirror", list_id="1")
        PersonyzeSyncOperator(task_id="sync_list_two", plan=diff.output, object_type="user_list_members",
                              audience_mode="mirror", list_id="2")
""",
    )
    expected = (
        "Task 'sync_list_two' and task 'sync_list_one' both take the plan of diff task 'diff'; one plan feeds exactly "
        "one sync task. To send one source to several destinations, give each destination its own diff task with "
        "its own sync_id (see docs/how-a-sync-works.md, 'One source, several destinations')."
    )
    request.addfinalizer(lambda: os.remove(path))  # a file that cannot be imported leaves the shared DAGs folder
    spec = importlib.util.spec_from_file_location("one_plan_two_tasks_parse", path)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ConfigurationError) as raised:
        spec.loader.exec_module(module)
    assert str(raised.value) == expected

    # Airflow's own parser reports the same error for the file, and loads no DAG from it.
    bag = DagBag(dag_folder=path)
    assert bag.dags == {}
    assert list(bag.import_errors) == [path]
    assert expected in bag.import_errors[path]
    assert personyze.requests == []


def test_a_second_task_given_the_same_plan_through_xcom_sends_nothing_and_the_first_delivery_stands(
    dag_runner, warehouse, personyze, capsys
):
    list_one = personyze.create_list("One")
    list_two = personyze.create_list("Two")
    audience(warehouse, "a", "b", "c")
    # The second task pulls the plan by template: the parse-time check cannot see it, the run-time claim does.
    path = sync_dag(
        dag_runner,
        dag_id="one_plan_claimed",
        sync_id="one_plan_claimed",
        sql="SELECT email FROM audience",
        primary_key="email",
        dag_args=", render_template_as_native_obj=True",
        sync=f"""
        first = PersonyzeSyncOperator(task_id="sync_list_one", plan=diff.output, object_type="user_list_members",
                                      audience_mode="mirror", list_id="{list_one}")
        second = PersonyzeSyncOperator(task_id="sync_list_two", plan="{{{{ ti.xcom_pull(task_ids='diff') }}}}",
                                       sync_id="one_plan_claimed", object_type="user_list_members",
                                       audience_mode="mirror", list_id="{list_two}")
        first >> second
""",
    )
    capsys.readouterr()
    run = dag_runner.run(path)
    assert run.state == "failed"
    assert run.task_states == {"diff": "success", "sync_list_one": "success", "sync_list_two": "failed"}
    plan_id = run.result("diff")["plan_id"]
    message = error_line(capsys, "ConfigurationError")
    assert message == (
        f"Sync 'one_plan_claimed': plan {plan_id} is already delivered by task one_plan_claimed.sync_list_one; one "
        "plan feeds exactly one sync task, so one_plan_claimed.sync_list_two sends nothing. To send one source to "
        "several destinations, give each destination its own diff task with its own sync_id (see "
        "docs/how-a-sync-works.md, 'One source, several destinations')."
    )

    # The first task's delivery and commit stand; the second sent nothing, not even its read of list two.
    assert personyze.list_member_emails(list_one) == emails("a", "b", "c")
    assert personyze.list_member_emails(list_two) == set()
    assert list_posts(personyze) == sorted((list_one, e) for e in emails("a", "b", "c"))
    assert [m for m, _, _ in writes(personyze)] == ["POST"] * 3
    touching_list_two = [
        r for r in personyze.requests
        if (r.json or {}).get("user_list_id") == list_two
        or f"user_lists/{list_two}" in r.path
        or f"user_list_id={list_two}" in r.path.replace(" ", "")
    ]
    assert touching_list_two == []
    assert ("GET", f"/rest/user_lists/{list_one}") in {(r.method, r.path) for r in personyze.requests}  # same shape
    committed = run.result("sync_list_one")["committed"]
    assert (committed["rows"], committed["plan_id"]) == (3, plan_id)
    assert committed["binding"]["task_id"] == "sync_list_one"
    assert committed["binding"]["target"] == {"object": "user_list_members", "list_id": str(list_one)}
    assert pointer("one_plan_claimed") == committed
    assert set(snapshot(committed, "email")) == emails("a", "b", "c")
    assert run.result("sync_list_two") is None


# -- 3. the target changed under one sync_id --------------------------------------------------------------------


def test_a_list_changed_under_one_sync_id_is_refused_and_rebind_sends_every_row_to_the_new_list_removing_nothing(
    dag_runner, warehouse, personyze, capsys
):
    list_one = personyze.create_list("Before")
    list_two = personyze.create_list("After")
    audience(warehouse, "a", "b", "c")
    first = dag_runner.run(members_dag(dag_runner, dag_id="list_moved", list_id=list_one))
    assert first.state == "success", first.task_states
    assert personyze.list_member_emails(list_one) == emails("a", "b", "c")
    committed = first.result("sync")["committed"]
    assert committed["binding"]["target"] == {"object": "user_list_members", "list_id": str(list_one)}

    # The DAG is edited to list two, and the source changed too (a left, d joined).
    audience(warehouse, "b", "c", "d")
    personyze.clear_requests()
    capsys.readouterr()
    refused = dag_runner.run(members_dag(dag_runner, dag_id="list_moved", list_id=list_two))
    assert refused.state == "failed"
    assert refused.task_states == {"diff": "success", "sync": "failed"}
    assert personyze.requests == []
    message = error_line(capsys, "BindingError")
    assert (
        f"delivered to DAG 'list_moved' task 'sync' (PersonyzeSyncOperator) -> Personyze user list list_id={list_one}, "
        f"object=user_list_members via connection 'personyze_default', delivers rows, but this task delivers to DAG "
        f"'list_moved' task 'sync' (PersonyzeSyncOperator) -> Personyze user list list_id={list_two}, "
        "object=user_list_members via connection 'personyze_default', delivers rows (different: target)"
    ) in message
    assert "nothing was sent" in message and "pass rebind=True to this task once" in message
    assert personyze.list_member_emails(list_one) == emails("a", "b", "c")
    assert personyze.list_member_emails(list_two) == set()
    assert pointer("list_moved") == committed

    # rebind=True: list two gets every current row; nothing is removed from either list.
    personyze.clear_requests()
    rebind = members_dag(dag_runner, dag_id="list_moved", list_id=list_two, extra=", rebind=True")
    rebound = dag_runner.run(rebind)
    assert rebound.state == "success", rebound.task_states
    result = rebound.result("sync")
    assert (result["rebound"], result["refreshed"], result["succeeded"], result["failed"]) == (True, 3, 3, 0)
    assert list_posts(personyze) == sorted((list_two, e) for e in emails("b", "c", "d"))
    assert [m for m, _, _ in writes(personyze)] == ["POST"] * 3  # no DELETE, to any list
    assert personyze.list_member_emails(list_two) == emails("b", "c", "d")
    assert personyze.list_member_emails(list_one) == emails("a", "b", "c")
    new = result["committed"]
    assert new["binding"]["target"] == {"object": "user_list_members", "list_id": str(list_two)}
    assert new["rows"] == 3 and new["snapshot_id"] != committed["snapshot_id"]
    assert pointer("list_moved") == new
    assert set(snapshot(new, "email")) == emails("b", "c", "d")

    # The next run (rebind still set) finds the baseline bound to list two: nothing to send.
    personyze.clear_requests()
    again = dag_runner.run(rebind)
    assert again.state == "success", again.task_states
    assert personyze.requests == []
    result = again.result("sync")
    assert (result["rebound"], result["refreshed"], result["succeeded"]) == (False, 0, 0)
    assert result["committed"] == new and pointer("list_moved") == new


# -- 4. a stale plan --------------------------------------------------------------------------------------------


def test_an_old_plan_run_again_after_a_newer_commit_is_stale_and_sends_nothing(
    dag_runner, warehouse, personyze, capsys
):
    list_id = personyze.create_list("Stale")
    # The sync task delivers the plan given in the run's conf, else this run's diff: clearing and re-running an
    # old sync task is the same task getting an old plan.
    path = sync_dag(
        dag_runner,
        dag_id="stale_plan",
        sync_id="stale_plan",
        sql="SELECT email FROM audience",
        primary_key="email",
        dag_args=", render_template_as_native_obj=True",
        sync=f"""
        sync = PersonyzeSyncOperator(task_id="sync", sync_id="stale_plan",
                                     plan="{{{{ dag_run.conf.get('plan') or ti.xcom_pull(task_ids='diff') }}}}",
                                     object_type="user_list_members", audience_mode="mirror", list_id="{list_id}")
        diff >> sync
""",
    )
    audience(warehouse, "a", "b", "c")
    run1 = dag_runner.run(path)
    assert run1.state == "success", run1.task_states
    audience(warehouse, "b", "c", "d")
    run2 = dag_runner.run(path)
    assert run2.state == "success", run2.task_states
    assert personyze.list_member_emails(list_id) == emails("b", "c", "d")
    committed = run2.result("sync")["committed"]
    assert committed["rows"] == 3 and committed["run_id"]
    assert set(snapshot(committed, "email")) == emails("b", "c", "d")

    # Run 1's plan (a, b, c all added; nothing removed) delivered now would put a back and leave d for ever.
    old_plan = run1.result("diff")
    personyze.clear_requests()
    capsys.readouterr()
    replay = dag_runner.run(path, conf={"plan": old_plan})
    assert replay.state == "failed"
    assert replay.task_states == {"diff": "success", "sync": "failed"}
    assert personyze.requests == []
    message = error_line(capsys, "StaleBaseError")
    assert message.startswith(
        f"Sync 'stale_plan': plan {old_plan['plan_id']} is stale. It was computed against no committed state (a first "
        f"run), but since then snapshot {committed['snapshot_id']} (plan {committed['plan_id']}, committed by DAG "
        f"'stale_plan' task 'sync' in run {committed['run_id']!r} at "
    )
    assert "Nothing was sent or overwritten." in message
    assert personyze.list_member_emails(list_id) == emails("b", "c", "d")
    assert pointer("stale_plan") == committed


# -- 5. full refresh --------------------------------------------------------------------------------------------


def users_dag(dag_runner, *, dag_id: str, full_refresh: bool) -> str:
    return sync_dag(
        dag_runner,
        dag_id=dag_id,
        sync_id=dag_id,
        sql="SELECT * FROM customers",
        primary_key="customer_id",
        diff_args=", full_refresh=True" if full_refresh else "",
        sync="""
        PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="insert",
                              field_mapping={"email": "email", "first_name": "first_name",
                                             "internal_id": "customer_id", "plan": "plan"})
""",
    )


def test_full_refresh_in_insert_mode_sends_every_user_again(dag_runner, warehouse, personyze):
    rows = [customer(i) for i in range(1, 6)]
    warehouse.replace("customers", rows, CUSTOMER_COLUMNS)
    first = dag_runner.run(users_dag(dag_runner, dag_id="refresh_users", full_refresh=False))
    assert first.state == "success", first.task_states
    assert first.result("sync")["succeeded"] == 5

    personyze.reset()  # the destination lost everything
    assert personyze.users == {}
    refresh = dag_runner.run(users_dag(dag_runner, dag_id="refresh_users", full_refresh=True))
    assert refresh.state == "success", refresh.task_states
    assert [(m, p) for m, p, _ in writes(personyze)] == [("POST", "/rest/users")] * 5
    result = refresh.result("sync")
    assert (result["refreshed"], result["not_acted_on"], result["succeeded"], result["failed"]) == (5, 0, 5, 0)
    held = sorted(
        (u["email"], u["first_name"], str(u["internal_id"]), u["plan"]) for u in personyze.users.values()
    )
    assert held == [(r["email"], r["first_name"], str(r["customer_id"]), r["plan"]) for r in rows]
    committed = result["committed"]
    assert committed["rows"] == 5 and pointer("refresh_users") == committed
    assert snapshot(committed, "customer_id") == {r["customer_id"]: r for r in rows}


def test_full_refresh_of_a_list_in_add_mode_adds_every_member_again(dag_runner, warehouse, personyze):
    list_id = personyze.create_list("Refreshed")
    audience(warehouse, "a", "b", "c", "d")
    first = dag_runner.run(members_dag(dag_runner, dag_id="refresh_add", list_id=list_id, mode="add"))
    assert first.state == "success", first.task_states

    personyze.reset()
    assert personyze.create_list("Refreshed") == list_id  # the same list, now empty
    refresh = dag_runner.run(members_dag(dag_runner, dag_id="refresh_add", list_id=list_id, mode="add",
                                         diff_args=", full_refresh=True"))
    assert refresh.state == "success", refresh.task_states
    assert list_posts(personyze) == sorted((list_id, e) for e in emails("a", "b", "c", "d"))
    assert [m for m, _, _ in writes(personyze)] == ["POST"] * 4
    assert personyze.list_member_emails(list_id) == emails("a", "b", "c", "d")
    result = refresh.result("sync")
    assert (result["refreshed"], result["not_acted_on"], result["succeeded"]) == (4, 0, 4)
    committed = result["committed"]
    assert committed["rows"] == 4 and pointer("refresh_add") == committed
    assert set(snapshot(committed, "email")) == emails("a", "b", "c", "d")


def test_full_refresh_of_a_mirror_removes_nothing_and_the_next_run_removes_what_left(
    dag_runner, warehouse, personyze
):
    list_id = personyze.create_list("Mirrored")
    audience(warehouse, "a", "b", "c", "d")
    plain = members_dag(dag_runner, dag_id="refresh_mirror", list_id=list_id)
    first = dag_runner.run(plain)
    assert first.state == "success", first.task_states

    audience(warehouse, "a", "b", "c", "e")  # d left the source, e joined
    personyze.clear_requests()
    refresh = dag_runner.run(members_dag(dag_runner, dag_id="refresh_mirror", list_id=list_id,
                                         diff_args=", full_refresh=True"))
    assert refresh.state == "success", refresh.task_states
    assert [m for m, _, _ in writes(personyze)] == ["POST"] * 4  # a, b, c again and e; no DELETE
    assert list_posts(personyze) == sorted((list_id, e) for e in emails("a", "b", "c", "e"))
    assert personyze.list_member_emails(list_id) == emails("a", "b", "c", "d", "e")
    result = refresh.result("sync")
    assert (result["refreshed"], result["succeeded"], result["not_acted_on"]) == (3, 4, 0)
    committed = result["committed"]
    # d stays in the baseline: the refresh did not remove it, so a later plain run still can.
    assert committed["rows"] == 5 and pointer("refresh_mirror") == committed
    assert set(snapshot(committed, "email")) == emails("a", "b", "c", "d", "e")

    personyze.clear_requests()
    after = dag_runner.run(plain)
    assert after.state == "success", after.task_states
    assert [m for m, _, _ in writes(personyze)] == ["DELETE"]
    assert personyze.list_member_emails(list_id) == emails("a", "b", "c", "e")
    assert set(snapshot(after.result("sync")["committed"], "email")) == emails("a", "b", "c", "e")


def test_full_refresh_in_insert_mode_also_sends_a_row_that_changed(dag_runner, warehouse, personyze):
    rows = [customer(i) for i in range(1, 6)]
    warehouse.replace("customers", rows, CUSTOMER_COLUMNS)
    first = dag_runner.run(users_dag(dag_runner, dag_id="refresh_users_changed", full_refresh=False))
    assert first.state == "success", first.task_states

    personyze.reset()
    rows[2] = {**rows[2], "first_name": "Renamed"}  # customer 3 changed since the last delivery
    warehouse.replace("customers", rows, CUSTOMER_COLUMNS)
    refresh = dag_runner.run(users_dag(dag_runner, dag_id="refresh_users_changed", full_refresh=True))
    assert refresh.state == "success", refresh.task_states
    result = refresh.result("sync")
    assert [(m, p) for m, p, _ in writes(personyze)] == [("POST", "/rest/users")] * 5
    assert sorted(u["email"] for u in personyze.users.values()) == sorted(r["email"] for r in rows)
    # The changed row is a real change, counted apart from the 4 rows only sent again; all 5 are sent.
    assert (result["refreshed"], result["not_acted_on"], result["succeeded"]) == (4, 0, 5)
    committed = result["committed"]
    assert committed["rows"] == 5 and pointer("refresh_users_changed") == committed
    assert snapshot(committed, "customer_id") == {r["customer_id"]: r for r in rows}
