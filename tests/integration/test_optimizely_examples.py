"""The Optimizely example DAGs in dags_examples/, run end to end (real Airflow runs, the emulator, a SQLite warehouse)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import FAST_RETRIES, connection_env

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"


@pytest.fixture
def optimizely(optimizely_emulator, monkeypatch):
    project = optimizely_emulator.create_project("Web")
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
        connection_env("optimizely", optimizely_emulator.url, optimizely_emulator.token, **FAST_RETRIES),
    )
    monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_PROJECT_ID", str(project))
    optimizely_emulator.project = project
    return optimizely_emulator


def example(dag_runner, name: str) -> str:
    """A copy of the example in the DAGs folder (the runner loads DAGs from there)."""
    target = Path(dag_runner.folder) / f"{name}.py"
    shutil.copy(EXAMPLES / f"{name}.py", target)
    return str(target)


def test_the_list_mirror_example_keeps_the_vips_and_the_id_added_by_hand(dag_runner, warehouse, optimizely, monkeypatch):
    list_id = optimizely.create_list_attribute(optimizely.project, "vip_customers", ["added-by-hand"])
    monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_LIST_ATTRIBUTE_ID", str(list_id))
    columns = ["customer_id", "plan"]
    warehouse.replace("customers", [{"customer_id": i, "plan": "vip" if i % 2 else "basic"} for i in range(1, 7)], columns)
    dag = example(dag_runner, "optimizely_list_mirror")
    assert dag_runner.run(dag).state == "success"
    assert sorted(optimizely.list_members(list_id)) == ["added-by-hand", "customer-1", "customer-3", "customer-5"]

    warehouse.replace("customers", [{"customer_id": i, "plan": "vip" if i in (3, 4) else "basic"} for i in range(1, 7)], columns)
    assert dag_runner.run(dag).state == "success"
    assert sorted(optimizely.list_members(list_id)) == ["added-by-hand", "customer-3", "customer-4"]


def test_the_custom_events_example_creates_new_keys_and_reports_existing_ones(dag_runner, warehouse, optimizely):
    optimizely.create_object("custom_events", optimizely.project, key="event_2", name="Made by hand")
    columns = ["event_key", "event_name", "description"]
    warehouse.replace("tracked_events", [{"event_key": f"event_{i}", "event_name": f"Event {i}", "description": "d"}
                                         for i in range(1, 4)], columns)
    run = dag_runner.run(example(dag_runner, "optimizely_custom_events"))
    assert run.state == "success"
    result = run.result("create_events")
    assert (result["succeeded"], result["rejected"]) == (2, 1)
    events = {e["key"]: e["name"] for e in optimizely.objects("custom_events", optimizely.project)}
    assert events == {"event_1": "Event 1", "event_2": "Made by hand", "event_3": "Event 3"}
