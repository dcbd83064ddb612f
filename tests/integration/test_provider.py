"""The installed package as Airflow sees it: provider metadata, connection types, no secret in a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_provider_zeotap.testing import PersonyzeEmulator
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

HOOKS = {
    "personyze": "airflow_provider_zeotap.hooks.personyze.PersonyzeHook",
    "optimizely": "airflow_provider_zeotap.hooks.optimizely.OptimizelyHook",
    "permutive": "airflow_provider_zeotap.hooks.permutive.PermutiveHook",
    "zeotap": "airflow_provider_zeotap.hooks.zeotap.ZeotapProfileHook",
}


def airflow_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "airflow", *args, "--output", "json"], capture_output=True,
                            text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_airflow_lists_the_provider_and_its_four_connection_types(airflow_db):
    providers = json.loads(airflow_cli("providers", "list"))
    assert any(p["package_name"] == "airflow-provider-zeotap" for p in providers)
    hooks = {h["connection_type"]: h["class"] for h in json.loads(airflow_cli("providers", "hooks"))}
    assert {conn_type: hooks.get(conn_type) for conn_type in HOOKS} == HOOKS


def test_connection_forms_declare_their_fields():
    from airflow_provider_zeotap.get_provider_info import get_provider_info

    info = get_provider_info()
    forms = {c["connection-type"]: c for c in info["connection-types"]}
    assert forms["zeotap"]["conn-fields"]["client_private_key"]["schema"]["format"] == "password"
    assert "project_id" in forms["optimizely"]["conn-fields"]
    assert all(f["ui-field-behaviour"]["relabeling"]["host"] == "Base URL" for f in forms.values())


def test_the_api_key_appears_in_no_log_line_and_no_xcom_of_a_real_run(dag_runner, warehouse, monkeypatch, capfd):
    secret = "pz-7f3e9c1d-unique-secret-value"
    with PersonyzeEmulator(api_key=secret) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env("personyze", emulator.url, secret))
        warehouse.replace("customers", [{"id": 1, "email": "a@example.com"}, {"id": 2, "email": None}], ["id", "email"])
        dag = dag_runner.write('''
            from datetime import datetime
            from airflow.sdk import DAG
            from airflow_provider_zeotap.operators.diff import SyncDiffOperator
            from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

            with DAG(dag_id="secret_check", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
                diff = SyncDiffOperator(task_id="diff", sync_id="secret_check", conn_id="warehouse",
                                        sql="SELECT * FROM customers", primary_key="id")
                PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert")
        ''')
        run = dag_runner.run(dag)
    output = capfd.readouterr()
    assert run.state == "success" and run.result("sync")["succeeded"] == 1
    assert secret not in json.dumps(run.xcom)
    assert secret not in output.out and secret not in output.err
    assert "a@example.com" in json.dumps(emulator.users)
