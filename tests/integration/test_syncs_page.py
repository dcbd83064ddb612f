"""The Syncs page end to end: two example syncs run for real, then a real ``airflow api-server`` with the
plugin serves their page, read through its JSON API and in a real headless Chromium.

Everything runs in a private AIRFLOW_HOME (SQLite), as ``dags_examples/run_demo.py`` does: ``airflow db
migrate``, then ``airflow dags test`` of ``personyze_users_sync`` and ``permutive_segments_mirror`` twice
against the emulators, with one row in each source that the destination's rules refuse. The browser test
needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``) and
the ``selenium`` package; without them it is skipped, saying so, and the API tests still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.api_server import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Where the browser test saves its screenshots: a temporary folder, so a test run leaves the checkout as it
#: was. ``SYNCS_PAGE_SCREENSHOTS=docs/images`` refreshes the ones the docs show.
SCREENSHOTS = Path(os.environ.get("SYNCS_PAGE_SCREENSHOTS") or tempfile.mkdtemp(prefix="syncs-page-"))
SYNCS = {"personyze_users": ("personyze_users_sync", "sync_users"), "permutive_segments": ("permutive_segments_mirror", "mirror_segments")}
#: One of the other example DAGs in the folder, parsed and never run here.
NOT_RUN = {"personyze_vip_list": ("personyze_list_mirror", "mirror_vip_list")}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def customers(ids, renamed=()):
    rows = [{"customer_id": i, "email": f"Customer{i}@Example.com", "first_name": f"Renamed{i}" if i in renamed else f"First{i}",
             "last_name": f"Last{i}", "company": "Acme", "plan": "basic"} for i in ids]
    rows.append({"customer_id": 99, "email": "not-an-email", "first_name": "Bad", "last_name": "Row", "company": "Acme",
                 "plan": "basic"})
    return rows


def segments(ids, renamed=()):
    rows = [{"code": f"interest-{i:03d}", "name": f"Interest {i}{' (renamed)' if i in renamed else ''}",
             "description": f"Visitors with interest {i}"} for i in ids]
    rows.append({"code": "bad code 99", "name": "Bad segment", "description": "a code with a space"})
    return rows


def load(warehouse: Path, customer_rows, segment_rows) -> None:
    with sqlite3.connect(warehouse) as db:
        for table, rows in (("customers", customer_rows), ("segments", segment_rows)):
            columns = list(rows[0]) if rows else ["code", "name", "description"]
            db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})",
                           [tuple(r[c] for c in columns) for r in rows])


def airflow(env, *args, fails: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert ("state=failed" in output) is fails and (fails or result.returncode == 0), output[-4000:]
    return output


def stored_runs(home: Path, dag_id: str, task_id: str) -> list[dict]:
    """Each run's plan counts and result, straight from the metadata DB: what the page must show."""
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT x.run_id, x.task_id, x.value FROM xcom x JOIN dag_run r ON r.dag_id = x.dag_id AND r.run_id = x.run_id "
            "WHERE x.dag_id = ? AND x.key = 'return_value' ORDER BY r.run_after", (dag_id,)).fetchall()
    runs: dict[str, dict] = {}
    for run_id, task, value in rows:
        value = json.loads(value)
        value = json.loads(value) if isinstance(value, str) else value
        runs.setdefault(run_id, {"run_id": run_id})["result" if task == task_id else "plan"] = value
    return list(runs.values())


def run_examples(home: Path) -> dict[str, str]:
    """A fresh metadata DB in ``home``, and two runs of two example syncs; returns the environment they ran in."""
    from airflow_provider_zeotap.testing import PermutiveEmulator, PersonyzeEmulator

    warehouse = home / "warehouse.db"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
    }
    env.pop("AIRFLOW__ZEOTAP_SYNC__STATE_URI", None)  # the default, under this home, for tasks and server alike
    airflow(env, "db", "migrate")
    with PersonyzeEmulator() as personyze, PermutiveEmulator() as permutive:
        env.update(personyze.airflow_env())
        env.update(permutive.airflow_env())
        env["AIRFLOW_VAR_PERSONYZE_LIST_ID"] = str(personyze.create_list("VIP customers"))
        env["AIRFLOW_VAR_PERMUTIVE_IMPORT_ID"] = permutive.create_import("Warehouse segments")
        load(warehouse, customers(range(1, 21)), segments(range(1, 13)))
        for dag_id, _ in SYNCS.values():
            airflow(env, "dags", "test", dag_id, "2026-01-01T00:00:00+00:00")
        load(warehouse, customers(range(2, 23), renamed={3, 4}), segments(range(2, 14), renamed={5}))
        for dag_id, _ in SYNCS.values():
            airflow(env, "dags", "test", dag_id, "2026-01-02T00:00:00+00:00")
        # An emptied segments table: the allow_empty_source guard stops the mirror before any write.
        load(warehouse, customers(range(2, 23), renamed={3, 4}), [])
        airflow(env, "dags", "test", SYNCS["permutive_segments"][0], "2026-01-03T00:00:00+00:00", fails=True)
    return env


def start_server(home: Path, env: dict[str, str]) -> ApiServer:
    users = {"admin": ("admin", "admin-password"), "outsider": ("", "outsider-password")}
    return ApiServer(str(home), users, env=env).start()


@pytest.fixture(scope="module")
def site():
    """Two example syncs, run twice each, and an API server over their metadata DB.

    The home is made with ``mkdtemp``, not pytest's ``tmp_path_factory``, whose folders another pytest
    session on the same machine may prune while this module still uses it.
    """
    home = Path(tempfile.mkdtemp(prefix="zeotap-syncs-page-"))
    try:
        server = start_server(home, run_examples(home))
        try:
            yield server, home
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_api_lists_both_syncs_with_their_runs_and_rejected_rows(site):
    server, home = site
    admin = {"Authorization": f"Bearer {server.token('admin')}"}
    syncs = httpx.get(f"{server.url}/zeotap-sync/syncs", headers=admin, timeout=30).json()
    listed = {s["sync_id"]: (s["dag_id"], s["task_id"]) for s in syncs}
    assert listed.items() >= {**SYNCS, **NOT_RUN}.items()
    by_id = {s["sync_id"]: s for s in syncs}
    # The other example DAGs were parsed, never run: their syncs are listed, with nothing committed.
    for sync_id in set(listed) - set(SYNCS):
        assert (by_id[sync_id]["last_run"], by_id[sync_id]["committed_rows"]) == (None, None), sync_id
    assert by_id["personyze_users"]["destination"] == "Personyze users"
    assert by_id["permutive_segments"]["target"]["import_id"]
    for sync_id, (dag_id, task_id) in SYNCS.items():
        stored = stored_runs(home, dag_id, task_id)
        runs = httpx.get(f"{server.url}/zeotap-sync/syncs/{sync_id}/runs", headers=admin, timeout=30).json()
        if sync_id == "permutive_segments":  # its third run hit the guard: no result, a failure record
            guarded, runs, stored = runs[0], runs[1:], stored[:-1]
            assert (guarded["state"], guarded["outcome"], guarded["warning"], guarded["rejected"]) == (
                "failed", "guard", "guard", None)
            assert "allow_empty_source=True" in guarded["failure"]["message"]
            assert guarded["settings"]["allow_empty_source"] is False
            assert (by_id[sync_id]["warning"], by_id[sync_id]["rejected_last_run"]) == ("guard", 0)
        assert [r["run_id"] for r in runs] == [s["run_id"] for s in reversed(stored)]
        for run, truth in zip(runs, reversed(stored)):
            assert run["plan"]["added"] == truth["plan"]["counts"]["added"]
            assert run["plan"]["removed"] == truth["plan"]["counts"]["removed"]
            assert (run["rejected"], run["succeeded"]) == (truth["result"]["rejected"], truth["result"]["succeeded"])
            assert run["rejected"] >= 1 and run["warning"] is None
        assert by_id[sync_id]["committed_rows"] == stored[-1]["result"]["committed"]["rows"]
    assert (by_id["personyze_users"]["warning"], by_id["personyze_users"]["rejected_last_run"]) == (None, 1)
    run_id = runs[0]["run_id"]  # permutive_segments' newest run that delivered
    page = httpx.get(f"{server.url}/zeotap-sync/syncs/permutive_segments/runs/{run_id}/rejected",
                     params={"search": "BAD CODE"}, headers=admin, timeout=30).json()
    assert page["total"] == 1 and page["rows"][0]["key"] == {"code": "bad code 99"}
    assert "space" in page["rows"][0]["reason"]


def test_a_user_who_may_read_no_dag_sees_no_sync_and_no_one_unauthenticated_sees_anything(site):
    server, _ = site
    outsider = {"Authorization": f"Bearer {server.token('outsider')}"}
    assert httpx.get(f"{server.url}/zeotap-sync/syncs", headers=outsider, timeout=30).json() == []
    assert httpx.get(f"{server.url}/zeotap-sync/syncs/personyze_users/runs", headers=outsider, timeout=30).status_code == 404
    assert httpx.get(f"{server.url}/zeotap-sync/syncs", timeout=30).status_code == 401
    login = httpx.get(f"{server.url}/zeotap-sync/", headers={"accept": "text/html"}, timeout=30)
    assert login.status_code == 303 and "/auth/login" in login.headers["location"]


@pytest.mark.browser
def test_a_person_sees_the_syncs_the_chart_and_the_rejected_row_in_chromium(site):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("No Chromium here: install Debian's chromium and chromium-driver (apt-get install -y chromium "
                    "chromium-driver) to run the browser test; the API tests ran without it.")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    server, home = site
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(f"{server.url}/api/v2/monitor/health")
        driver.add_cookie({"name": "_token", "value": server.token("admin"), "path": "/"})
        # The nav entry's page: the Airflow UI with the plugin's view in its frame.
        driver.get(f"{server.url}/plugin/syncs")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        driver.switch_to.frame(frame)
        table = wait.until(EC.presence_of_element_located((By.ID, "syncs")))
        listed = {row.get_attribute("data-sync-id"): row for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")}
        assert set(listed) >= set(SYNCS) | set(NOT_RUN)
        for sync_id in set(listed) - set(SYNCS):
            assert "no run yet" in listed[sync_id].text, sync_id
        users, segments_row = listed["personyze_users"], listed["permutive_segments"]
        assert users.find_element(By.CSS_SELECTOR, "[data-field=rejected]").text == "1"
        assert not users.find_elements(By.CSS_SELECTOR, ".badge.warn")
        assert "guard" in segments_row.find_element(By.CSS_SELECTOR, ".badge.warn").text
        driver.switch_to.default_content()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "syncs-page.png"))

        # One sync's page: the chart's bars carry each run's numbers, the rejected row its reason.
        dag_id, task_id = SYNCS["personyze_users"]
        stored = stored_runs(home, dag_id, task_id)
        driver.set_window_size(1440, 1250)
        driver.get(f"{server.url}/zeotap-sync/page/personyze_users")
        wait.until(EC.presence_of_element_located((By.ID, "chart")))
        bars = {(b.get_attribute("data-run"), b.get_attribute("data-series")): int(b.get_attribute("data-value"))
                for b in driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar")}
        assert len(bars) == 5 * len(stored)
        for truth in stored:
            counts, result = truth["plan"]["counts"], truth["result"]
            assert [bars[(truth["run_id"], s)] for s in ("added", "changed", "removed", "rejected", "failed")] == [
                counts["added"], counts["changed"], counts["removed"], result["rejected"], result["failed"]]
        labels = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#chart text.value")]
        assert str(stored[0]["plan"]["counts"]["added"]) in labels  # the first run's 21 added rows, written out
        rejected = driver.find_element(By.ID, "rejected-rows")
        assert "customer_id=99" in rejected.text and "not an email address: 'not-an-email'" in rejected.text
        driver.save_screenshot(str(SCREENSHOTS / "sync-page.png"))

        search = driver.find_element(By.CSS_SELECTOR, "input[type=search]")
        search.send_keys("no such reason")
        search.submit()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "No rejected rows match"))
        link = driver.find_element(By.CSS_SELECTOR, "#runs tbody tr a[target=_top]")
        assert re.search(r"/dags/personyze_users_sync/runs/.+/tasks/sync_users$", link.get_attribute("href"))
    finally:
        driver.quit()
