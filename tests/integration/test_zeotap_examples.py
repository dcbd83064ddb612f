"""The Zeotap example DAGs in dags_examples/, run end to end against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
CUSTOMER_COLUMNS = ["customer_id", "first_name", "plan", "gdpr_ok", "sms_optin"]


def example(dag_runner, name: str) -> str:
    """The example file, as it is, in the DAGs folder (dag.test runs DAGs that Airflow has parsed from there)."""
    return dag_runner.write((EXAMPLES / f"{name}.py").read_text())


def customers(ids) -> list[dict]:
    return [{"customer_id": f"c{i}", "first_name": f"First{i}", "plan": "vip" if i % 4 == 0 else "basic",
             "gdpr_ok": i % 2 == 0, "sms_optin": i % 3 == 0} for i in ids]


def test_the_zeotap_examples_sync_delete_and_fetch(dag_runner, warehouse, zeotap, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_ZEOTAP_PROFILES_FOLDER", f"file://{tmp_path}")
    warehouse.replace("customers", customers(range(1, 21)), CUSTOMER_COLUMNS)
    warehouse.replace("deletion_requests", [], ["customer_id"])

    sync = dag_runner.run(example(dag_runner, "zeotap_profiles_sync"))
    assert sync.state == "success", sync.task_states
    assert sync.result("sync_profiles")["succeeded"] == 20
    profile = next(p for p in zeotap.profiles.values() if p["ids"] == {"user_id": "c4"})
    assert (profile["profile"], profile["consent"], profile["mkt_preferences"]) == (
        {"first_name": "First4", "plan": "vip"}, {"gdpr_advertising": 1}, {"sms_optin": 0})

    warehouse.replace("deletion_requests", [{"customer_id": "c3"}, {"customer_id": "c99"}], ["customer_id"])
    delete = dag_runner.run(example(dag_runner, "zeotap_profiles_delete"))
    assert delete.state == "success", delete.task_states
    result = delete.result("delete_profiles")
    assert (result["deleted"], result["not_found"]) == (1, 1)
    assert len(zeotap.profiles) == 19

    fetch = dag_runner.run(example(dag_runner, "zeotap_profiles_fetch"))
    assert fetch.state == "success", fetch.task_states
    result = fetch.result("fetch_profiles")
    assert (result["ids"], result["found"], result["not_found"]) == (20, 19, 1)
    written = pq.read_table(result["output_uri"].removeprefix("file://")).to_pylist()
    assert sorted(json.loads(row["ids"])["user_id"] for row in written) == sorted(
        f"c{i}" for i in range(1, 21) if i != 3)
    assert result["output_uri"].startswith(f"file://{tmp_path}/profiles-")
