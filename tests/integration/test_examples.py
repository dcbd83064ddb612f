"""The example DAGs in dags_examples/, as they ship: parsed by Airflow's own CLI, and run end to end.

Each example is copied as it is into the DAGs folder and run with ``dag.test()`` against the emulators and a
SQLite warehouse reached through the ``warehouse`` connection, so an example that stops working fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_zeotap.sync.state import sync_asset
from tests.integration.conftest import FAST_RETRIES, connection_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "dags_examples"
#: Files in dags_examples/ that are not DAGs.
NOT_DAGS = {"run_demo.py"}


def example(dag_runner, name: str) -> str:
    """The example file, as it is, in the DAGs folder (dag.test runs DAGs that Airflow has parsed from there)."""
    return dag_runner.write((EXAMPLES / f"{name}.py").read_text())


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if p.name not in NOT_DAGS)


def customers(ids, overrides: dict[int, dict] | None = None) -> list[dict]:
    rows = [{"customer_id": i, "email": f"Customer{i}@Example.com", "first_name": f"First{i}", "last_name": f"Last{i}",
             "company": "Acme", "plan": "vip" if i % 2 else "basic"} for i in ids]
    for row in rows:
        row.update((overrides or {}).get(row["customer_id"], {}))
    return rows


CUSTOMER_COLUMNS = ["customer_id", "email", "first_name", "last_name", "company", "plan"]


def test_every_example_dag_is_listed_by_airflow_with_no_import_error_and_no_warning(tmp_path):
    """``airflow dags list`` over dags_examples/ (in a fresh Airflow home) shows each example, and nothing else."""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONWARNINGS": "always"}

    def airflow(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    airflow("db", "migrate")
    parsed = airflow("dags", "reserialize")
    listed = json.loads(airflow("dags", "list", "--output", "json").stdout.strip().splitlines()[-1])
    errors = airflow("dags", "list-import-errors", "--output", "json").stdout.strip().splitlines()[-1]

    assert json.loads(errors) == [], errors
    files = {Path(d["fileloc"]).name for d in listed}
    assert files == {p.name for p in example_files()}, "each example file defines a DAG that Airflow lists"
    # Airflow's own warnings (graphviz, pathspec) are not ours; any warning raised from our files is.
    ours = [line for line in (parsed.stdout + parsed.stderr).splitlines()
            if "warning" in line.lower() and ("dags_examples" in line or "airflow_provider_zeotap" in line)]
    assert ours == []


def test_every_example_dag_is_run_end_to_end_by_a_test():
    """Each example file is named by an integration test that runs it, so none can rot unnoticed."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests" / "integration").glob("test_*.py"))
    missing = [p.stem for p in example_files() if not re.search(rf"[\"']{p.stem}[\"']", tests)]
    assert missing == []


def test_the_personyze_users_and_list_examples_run_end_to_end(dag_runner, warehouse, personyze, monkeypatch):
    list_id = personyze.create_list("VIP customers")
    monkeypatch.setenv("AIRFLOW_VAR_PERSONYZE_LIST_ID", str(list_id))
    warehouse.replace("customers", customers(range(1, 7)), CUSTOMER_COLUMNS)
    users, vips = example(dag_runner, "personyze_users_sync"), example(dag_runner, "personyze_list_mirror")
    for dag in (users, vips):
        run = dag_runner.run(dag)
        assert run.state == "success", run.task_states
    # normalize_email: Personyze matches emails case-sensitively, so the example lowercases them.
    assert {u["email"] for u in personyze.users.values()} == {f"customer{i}@example.com" for i in range(1, 7)}
    assert personyze.list_member_emails(list_id) == {"customer1@example.com", "customer3@example.com",
                                                      "customer5@example.com"}

    warehouse.replace("customers", customers(range(1, 7), {2: {"plan": "vip"}, 3: {"plan": "basic"},
                                                           4: {"first_name": "Renamed"}}), CUSTOMER_COLUMNS)
    for dag in (users, vips):
        assert dag_runner.run(dag).state == "success"
    by_email = {u["email"]: u for u in personyze.users.values()}
    assert by_email["customer4@example.com"]["first_name"] == "Renamed"
    assert by_email["customer2@example.com"]["plan"] == "vip"
    assert personyze.list_member_emails(list_id) == {"customer1@example.com", "customer2@example.com",
                                                      "customer5@example.com"}


def test_the_permutive_segments_example_mirrors_the_catalogue(dag_runner, warehouse, permutive, monkeypatch):
    import_id = permutive.create_import("Warehouse segments")
    monkeypatch.setenv("AIRFLOW_VAR_PERMUTIVE_IMPORT_ID", import_id)
    columns = ["code", "name", "description"]
    rows = [{"code": f"interest-{i}", "name": f"Interest {i}", "description": f"About {i}"} for i in range(1, 5)]
    warehouse.replace("segments", rows, columns)
    dag = example(dag_runner, "permutive_segments_mirror")
    assert dag_runner.run(dag).state == "success"
    assert {code: s["name"] for code, s in permutive.segments(import_id).items()} == {
        f"interest-{i}": f"Interest {i}" for i in range(1, 5)}

    warehouse.replace("segments", [{**rows[1], "name": "Interest 2, renamed"}] + rows[2:], columns)
    assert dag_runner.run(dag).state == "success"
    assert {code: s["name"] for code, s in permutive.segments(import_id).items()} == {
        "interest-2": "Interest 2, renamed", "interest-3": "Interest 3", "interest-4": "Interest 4"}


@pytest.fixture
def optimizely(optimizely_emulator, monkeypatch):
    """The Optimizely emulator as ``optimizely_default``, with a project and a list attribute for the examples."""
    project = optimizely_emulator.create_project("Web")
    optimizely_emulator.vip_list = optimizely_emulator.create_list_attribute(project, "vip_customers", ["by-hand"])
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", connection_env(
        "optimizely", optimizely_emulator.url, optimizely_emulator.token, **FAST_RETRIES))
    monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_PROJECT_ID", str(project))
    monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_LIST_ATTRIBUTE_ID", str(optimizely_emulator.vip_list))
    return optimizely_emulator


def test_the_fanout_sends_one_audience_to_each_destination_and_the_report_reads_what_landed(
    dag_runner, warehouse, personyze, optimizely, zeotap, monkeypatch
):
    list_id = personyze.create_list("VIP customers")
    monkeypatch.setenv("AIRFLOW_VAR_PERSONYZE_LIST_ID", str(list_id))
    warehouse.replace("customers", customers(range(1, 9), {7: {"email": "customer7.example.com"}}),
                      CUSTOMER_COLUMNS)
    fanout = dag_runner.run(example(dag_runner, "vip_audience_fanout"))
    assert fanout.state == "success", fanout.task_states
    assert personyze.list_member_emails(list_id) == {"customer1@example.com", "customer3@example.com",
                                                      "customer5@example.com"}
    assert fanout.result("sync_personyze")["rejected"] == 1  # customer 7's email has no @
    # Each destination has its own diff: customer 7 is not a bad row for Zeotap or Optimizely (customer ids).
    profiles = {p["ids"]["user_id"]: p["profile"] for p in zeotap.profiles.values()}
    assert profiles == {str(i): {"first_name": f"First{i}", "audience": "vip"} for i in (1, 3, 5, 7)}
    assert sorted(optimizely.list_members(optimizely.vip_list)) == [
        "by-hand", "customer-1", "customer-3", "customer-5", "customer-7"]

    report_path = example(dag_runner, "vip_audience_report")
    report = dag_runner.run(report_path)
    assert report.state == "success", report.task_states
    landings = {landing["sync_id"]: landing for landing in report.result("landed")}
    assert set(landings) == {"vip_audience_personyze", "vip_audience_optimizely", "vip_audience_zeotap"}
    for sync_id in ("vip_audience_optimizely", "vip_audience_zeotap"):
        assert (landings[sync_id]["succeeded"], landings[sync_id]["rejected"]) == (4, 0)
    personyze_landing = landings["vip_audience_personyze"]
    assert (personyze_landing["succeeded"], personyze_landing["rejected"]) == (3, 1)
    assert personyze_landing["source_run_id"] == fanout.run_id
    assert personyze_landing["rejected_rows_uri"] == fanout.result("sync_personyze")["rejected_rows_uri"]


def test_the_report_is_scheduled_on_the_assets_of_every_fanout_sync(dag_runner):
    """The report runs once every branch of the fan-out landed: its schedule is each sync's Asset."""
    import importlib.util

    modules = {}
    for name in ("vip_audience_fanout", "vip_audience_report"):
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    fanout, report = modules["vip_audience_fanout"].dag, modules["vip_audience_report"].dag
    fanout_syncs = {task.sync_id for task in fanout.tasks if hasattr(task, "plan")}
    assert len(fanout_syncs) == len([t for t in fanout.tasks if hasattr(t, "plan")]) >= 1
    condition = report.timetable.asset_condition
    assert type(condition).__name__ == "AssetAll"
    assert {asset.name for asset in condition.objects} == {sync_asset(s).name for s in fanout_syncs}


def test_a_guard_refusal_fails_at_once_despite_the_examples_retries(dag_runner, warehouse, permutive, monkeypatch):
    """The examples retry failed tasks; a refusal that a retry would repeat word for word is not retried."""
    import_id = permutive.create_import("Warehouse segments")
    monkeypatch.setenv("AIRFLOW_VAR_PERMUTIVE_IMPORT_ID", import_id)
    columns = ["code", "name", "description"]
    warehouse.replace("segments", [{"code": "interest-1", "name": "Interest 1", "description": "d"}], columns)
    dag = example(dag_runner, "permutive_segments_mirror")
    assert dag_runner.run(dag).state == "success"

    warehouse.replace("segments", [], columns)  # emptied: the allow_empty_source guard stops the mirror
    permutive.clear_requests()
    run = dag_runner.run(dag)
    assert run.task_states["mirror_segments"] == "failed" and run.tries["mirror_segments"] == 1
    assert [r for r in permutive.requests if r.method == "PATCH"] == []
    assert set(permutive.segments(import_id)) == {"interest-1"}
