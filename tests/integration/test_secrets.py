"""No secret in anything a run leaves behind, even when the API quotes the key back.

The emulators' ``echo_request`` fault makes every error answer quote the request it received, headers and
all, as some gateways do: the key (or Personyze's Basic-auth base64 of it) is then in the error body that the
client turns into messages, log lines, rejection reasons and files. Only redaction keeps it out, so these
tests fail when redaction is off, where tests against answers that never hold a key cannot.

Each emulator gets a key of its own for the test, so a finding in the session's shared metadata database
is this test's and no other's.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.testing import OptimizelyEmulator, PermutiveEmulator, PersonyzeEmulator, ZeotapEmulator
from tests.integration.conftest import FAST_RETRIES
from tests.support.reliability import reliability_case
from tests.support.secrets_scan import Finding, assert_no_secrets, scan_for_secrets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "dags_examples"
ECHOED = "-- the request, as received --"


def key(vendor: str) -> str:
    return f"{vendor}-key-{uuid.uuid4().hex}"


def start(vendor: str):
    """A running emulator of ``vendor`` with a fresh key; returns it and its key."""
    secret = key(vendor)
    emulator = {
        "personyze": lambda: PersonyzeEmulator(api_key=secret),
        "permutive": lambda: PermutiveEmulator(write_key=secret),
        "optimizely": lambda: OptimizelyEmulator(token=secret),
        "zeotap": lambda: ZeotapEmulator(api_key=secret),
    }[vendor]()
    return emulator.start(), secret


#: Optimizely's 2 requests/s, lifted on both sides: pacing is not what this test is about, and it would take
#: most of its time.
UNPACED = {"optimizely": {"rate_per_second": 100, "rate_per_minute": 6000}}
#: The same lift, as the emulator's faults.
UNLIMITED = {"optimizely": {"rate_per_second": None, "rate_per_minute": None}}


def use_connection(monkeypatch, emulator) -> None:
    """The emulator as its vendor's default Airflow connection, with fast retries."""
    connection = emulator.airflow_connection()
    connection["extra"] = {**connection.get("extra", {}), **FAST_RETRIES, **UNPACED.get(emulator.name, {})}
    monkeypatch.setenv(f"AIRFLOW_CONN_{emulator.default_conn_id.upper()}", json.dumps(connection))


# -- the scan itself ---------------------------------------------------------------------------------------


def test_the_scan_finds_a_planted_secret_in_each_place_it_looks_and_nothing_in_clean_ones(tmp_path):
    secret = key("planted")
    basic = base64.b64encode(f"api:{secret}".encode()).decode()
    home, state = tmp_path / "home", tmp_path / "state"
    (home / "logs" / "dag_id=d" / "run_id=r").mkdir(parents=True)
    (home / "logs" / "dag_id=d" / "run_id=r" / "attempt=1.log").write_text(f"ok\nok\nAuthorization: Basic {basic}\n")
    with sqlite3.connect(home / "airflow.db") as db:
        db.execute("CREATE TABLE xcom (key TEXT, value BLOB)")
        db.execute("INSERT INTO xcom VALUES ('return_value', ?)", (json.dumps({"error": secret}).encode(),))
        db.execute("CREATE TABLE rendered_task_instance_fields (rendered_fields TEXT)")
        db.execute("INSERT INTO rendered_task_instance_fields VALUES ('{\"sql\": \"SELECT 1\"}')")
    (state / "plans" / "p1" / "delivery").mkdir(parents=True)
    (state / "plans" / "p1" / "rejected_rows.jsonl").write_text(json.dumps({"reason": f"echo {secret}:"}) + "\n")
    # Parquet is read value by value (its encodings may split a string); only one value holds the secret.
    outcomes = pa.table({"reason": ["fine", f"HTTP 401: apikey: {secret}"]})
    pq.write_table(outcomes, state / "plans" / "p1" / "delivery" / "outcomes-000000.parquet", compression="zstd")

    findings = scan_for_secrets(secrets=[secret], airflow_home=home, state_dirs=[state],
                                texts={"exception": f"failed: {base64.b64encode(f'{secret}:'.encode()).decode()}"})

    places = {(finding.where.split(" row ")[0].split(" line ")[0], finding.form) for finding in findings}
    assert places == {
        (f"log {home}/logs/dag_id=d/run_id=r/attempt=1.log", "base64('api:' + secret #1)"),
        ("metadata table xcom", "secret #1"),
        (f"state file {state}/plans/p1/rejected_rows.jsonl", "secret #1"),
        (f"state file {state}/plans/p1/delivery/outcomes-000000.parquet column reason", "secret #1"),
        ("exception", "base64(secret #1 + ':')"),
    }
    assert all(secret not in str(finding) and basic not in str(finding) for finding in findings)
    assert next(f for f in findings if f.where.startswith("log")).where.endswith("line 3")
    assert scan_for_secrets(secrets=[key("other")], airflow_home=home, state_dirs=[state]) == []
    with pytest.raises(ValueError, match="no secret"):
        scan_for_secrets(secrets=[""], airflow_home=home)


# -- redaction, exercised by an API that echoes the key ------------------------------------------------------


def test_echo_request_quotes_the_request_in_error_answers_only(personyze_emulator):
    import httpx

    personyze_emulator.set_faults(echo_request=True)
    with httpx.Client(base_url=personyze_emulator.api_url, auth=("api", personyze_emulator.api_key)) as client:
        fine = client.get("/account")
        missing = client.get("/user_lists/999")
        refused = client.post("/users", json={"email": "not an email"}, auth=("api", "wrong-key"))
    assert fine.status_code == 200 and fine.json()["id"] == 1  # a success is answered as it is
    basic = base64.b64encode(f"api:{personyze_emulator.api_key}".encode()).decode()
    assert missing.status_code == 400 and missing.headers["content-type"].startswith("text/plain")
    lines = missing.text.splitlines()
    assert lines[:3] == ["Row not found", ECHOED, "GET /rest/user_lists/999"]  # the API's own error, then the echo
    assert f"authorization: Basic {basic}" in lines
    assert refused.status_code == 401 and refused.text.endswith('{"email":"not an email"}')  # the body too

HOOKS = {"personyze": PersonyzeHook, "permutive": PermutiveHook, "optimizely": OptimizelyHook,
         "zeotap": ZeotapProfileHook}


@reliability_case("fault", "each hook", "401 or 403 whose body echoes the request, key included",
                  "the connection test fails saying what to fix, with the key and Personyze's Basic base64 masked")
@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("vendor", sorted(HOOKS))
def test_an_error_answer_that_echoes_the_key_is_redacted_in_what_the_user_sees(vendor, status, monkeypatch):
    emulator, secret = start(vendor)
    try:
        use_connection(monkeypatch, emulator)
        emulator.set_faults(error_rate=1.0, error_status=status, echo_request=True)
        ok, message = HOOKS[vendor]().test_connection()
        echoed = [r for r in emulator.requests if r.status == status]
    finally:
        emulator.stop()
    assert not ok and echoed, message
    assert ECHOED in message  # the echo reached the message: only redaction stands between the key and the user
    assert "***" in message
    assert_no_secrets(secrets=[secret], texts={"test_connection message": message})


# -- every example DAG, under faults, then refused ------------------------------------------------------------


def customers(ids, bad: int | None = None) -> list[dict]:
    return [{"customer_id": i, "email": "customer7.example.com" if i == bad else f"Customer{i}@Example.com",
             "first_name": f"First{i}", "last_name": f"Last{i}", "company": "Acme",
             "plan": "vip" if i % 2 else "basic", "gdpr_ok": i % 2 == 0, "sms_optin": i % 3 == 0} for i in ids]


def fill_warehouse(warehouse) -> None:
    rows = customers(range(1, 9), bad=7)
    warehouse.replace("customers", rows, list(rows[0]))
    warehouse.replace("deletion_requests", [{"customer_id": 3}, {"customer_id": 99}], ["customer_id"])
    warehouse.replace("segments", [{"code": f"interest-{i}", "name": f"Interest {i}", "description": "d"}
                                   for i in range(1, 5)], ["code", "name", "description"])
    warehouse.replace("tracked_events", [{"event_key": f"event_{i}", "event_name": f"Event {i}", "description": "d"}
                                         for i in range(1, 4)], ["event_key", "event_name", "description"])
    products = [{"sku": f"SKU-{i}", "title": f"Product {i}", "price": 9.5 + i, "brand": "Acme", "category": "tools",
                 "in_stock": i % 2, "image_url": f"https://cdn.example.com/{i}.jpg"} for i in range(1, 5)]
    warehouse.replace("products", products, list(products[0]))
    orders = [{"order_line_id": i, "customer_email": f"customer{i % 3 + 1}@example.com", "sku": f"SKU-{i % 4 + 1}",
               "quantity": 1, "line_total": 9.5 + i, "ordered_at": f"2026-01-0{i + 1} 10:00:00"} for i in range(6)]
    warehouse.replace("order_lines", orders, list(orders[0]))


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if p.name != "run_demo.py")


def without_retries(dag_runner, path: Path) -> str:
    """The example as it ships, but failing at once: Airflow's retry delays (minutes) only slow the test."""
    text = path.read_text().replace('"retries": 2', '"retries": 0')
    assert '"retries": 0' in text, path.name
    return dag_runner.write(text)


@pytest.fixture
def echoing_emulators(monkeypatch, tmp_path) -> Iterator[dict]:
    """All four emulators, fresh keys, as the examples' connections and variables; yields {vendor: (emulator, key)}."""
    started = {vendor: start(vendor) for vendor in HOOKS}
    try:
        for emulator, _ in started.values():
            use_connection(monkeypatch, emulator)
        personyze, optimizely = started["personyze"][0], started["optimizely"][0]
        project = optimizely.create_project("Web")
        monkeypatch.setenv("AIRFLOW_VAR_PERSONYZE_LIST_ID", str(personyze.create_list("VIP customers")))
        monkeypatch.setenv("AIRFLOW_VAR_PERMUTIVE_IMPORT_ID", started["permutive"][0].create_import("Segments"))
        monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_PROJECT_ID", str(project))
        monkeypatch.setenv("AIRFLOW_VAR_OPTIMIZELY_LIST_ATTRIBUTE_ID",
                           str(optimizely.create_list_attribute(project, "vip_customers", ["by-hand"])))
        monkeypatch.setenv("AIRFLOW_VAR_ZEOTAP_PROFILES_FOLDER", f"file://{tmp_path / 'profiles'}")
        monkeypatch.setenv("AIRFLOW__ZEOTAP_SYNC__STATE_URI", f"file://{tmp_path / 'state'}")
        yield started
    finally:
        for emulator, _ in started.values():
            emulator.stop()


@reliability_case("fault", "every example DAG", "error answers that echo the request (key included) amid 400s, 503s "
                  "and dropped connections, then 401 and 403", "no key in log output, XCom, rendered fields, state "
                  "stores, state or rejected-rows files, or exception texts")
@pytest.mark.slow
def test_every_example_dag_under_faults_and_refusals_leaves_no_secret_anywhere(
    dag_runner, warehouse, echoing_emulators, tmp_path, caplog, capfd
):
    """Every example runs with echoed errors, 5xx and dropped connections; then each vendor refuses the key
    (401, 403). The scan then reads the task logs (``dag.test()`` runs tasks in this process, so their log
    output is the captured records and output, exception tracebacks included; any log files under the Airflow
    home too), the metadata database (XCom, rendered fields, asset and task state stores), the sync state and
    delivery folders with the rejected-rows files, and the XCom results as the runner read them."""
    caplog.set_level("INFO")
    fill_warehouse(warehouse)
    emulators = {vendor: emulator for vendor, (emulator, _) in echoing_emulators.items()}
    secrets = [secret for _, secret in echoing_emulators.values()]
    # Personyze writes one row per request: a 400 there is a rejected row whose reason quotes the answer.
    emulators["personyze"].set_faults(error_rate=0.2, error_status=400, drop_rate=0.03, method="POST", seed=7,
                                      echo_request=True)
    for vendor in ("permutive", "optimizely", "zeotap"):
        emulators[vendor].set_faults(error_rate=0.15, error_status=503, drop_rate=0.03, seed=7, echo_request=True,
                                     **UNLIMITED.get(vendor, {}))
    dags = {path.stem: without_retries(dag_runner, path) for path in example_files()}
    runs = {name: dag_runner.run(dag) for name, dag in dags.items()}
    assert all(run.task_states for run in runs.values()), runs

    # Something to send for every destination, then each vendor refuses the key.
    rows = customers(range(1, 10))
    warehouse.replace("customers", rows, list(rows[0]))
    warehouse.replace("segments", [{"code": "interest-9", "name": "Interest 9", "description": "d"}],
                      ["code", "name", "description"])
    refused = {"personyze": 401, "optimizely": 401, "zeotap": 401, "permutive": 403}
    for vendor, status in refused.items():
        emulators[vendor].set_faults(error_rate=1.0, error_status=status, echo_request=True, **UNLIMITED.get(vendor, {}))
    fanout = dag_runner.run(dags["vip_audience_fanout"])
    permutive = dag_runner.run(dags["permutive_segments_mirror"])

    for vendor, status in refused.items():  # every vendor answered errors that quoted its key
        statuses = {r.status for r in emulators[vendor].requests}
        assert status in statuses and any(s not in (None, status) and s >= 400 for s in statuses), (vendor, statuses)
    assert "failed" in fanout.task_states.values() and "failed" in permutive.task_states.values()
    rejected = [r for run in runs.values() for r in run.xcom.values()
                if isinstance(r, dict) and r.get("rejected_rows_uri") and r.get("rejected")]
    assert rejected, "some rows were rejected with the echoed answer as their reason"

    captured = capfd.readouterr()
    texts = {"captured log records": caplog.text, "captured stdout": captured.out, "captured stderr": captured.err}
    texts.update({f"xcom of {name}": json.dumps(run.xcom) for name, run in runs.items()})
    assert ECHOED in caplog.text  # the echoes reached the logs: redaction is what kept the keys out
    # The scan reaches the tables that matter: a value every run stores (a sync id) is found in each of them.
    reached = {finding.where.split(" row ")[0] for finding in scan_for_secrets(
        secrets=["vip_audience_personyze"], airflow_home=os.environ["AIRFLOW_HOME"])}
    assert {"metadata table xcom", "metadata table rendered_task_instance_fields",
            "metadata table asset_state_store"} <= reached, reached
    assert_no_secrets(secrets=secrets, airflow_home=os.environ["AIRFLOW_HOME"],
                      state_dirs=[tmp_path / "state", tmp_path / "profiles"], texts=texts)


def test_findings_name_the_place_and_the_form_never_the_secret():
    assert str(Finding("log x line 2", "secret #1")) == "secret #1 in log x line 2"
