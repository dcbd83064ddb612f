"""Personyze interactions over real Airflow runs: purchases are appended once, even across a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

BATCHES, BATCH_SIZE = 12, 50
START = 1767225600  # 2026-01-01T00:00:00Z
COLUMNS = ["line_id", "customer", "sku", "status", "quantity", "amount", "ordered_at"]


def purchase(i: int, **overrides) -> dict:
    when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(START + 60 * i))
    return {"line_id": i, "customer": f"cust-{i % 40}", "sku": f"SKU-{i % 25}", "status": "goal",
            "quantity": 1 + i % 3, "amount": 10.5 + i, "ordered_at": when, **overrides}


def purchases_dag(dag_runner, dag_id: str) -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="{dag_id}", conn_id="warehouse",
                                    sql="SELECT * FROM order_lines", primary_key="line_id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="product_interactions",
                                  sync_mode="insert", batch_size={BATCH_SIZE},
                                  field_mapping={{"user_internal_id": "customer", "product_internal_id": "sku",
                                                  "status": "status", "quantity": "quantity", "amount": "amount",
                                                  "transaction_time": "ordered_at"}})
    ''')


def do_requests(emulator) -> list:
    return [r for r in emulator.requests if r.method == "POST" and r.path == "/rest/do"]


def triples(emulator) -> Counter:
    users = {user_id: row.get("internal_id") for user_id, row in emulator.users.items()}
    return Counter((r["product_internal_id"], users[r["user_id"]], r["transaction_time"]) for r in emulator.interactions)


def expected(rows) -> Counter:
    return Counter((r["sku"], r["customer"], START + 60 * r["line_id"]) for r in rows)


@pytest.mark.slow
def test_a_purchases_insert_killed_mid_delivery_then_run_again_leaves_each_interaction_exactly_once(
    dag_runner, warehouse, personyze_emulator, monkeypatch
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERSONYZE_DEFAULT",
        connection_env("personyze", personyze_emulator.url, personyze_emulator.api_key,
                       backoff_initial=0.01, backoff_max=0.05),
    )
    rows = [purchase(i) for i in range(BATCHES * BATCH_SIZE)]
    warehouse.replace("order_lines", rows, COLUMNS)
    dag_id = "personyze_purchases_killed"
    dag = purchases_dag(dag_runner, dag_id)

    # Run 1, in its own process, is killed while its seventh request is in flight: that request still lands
    # (the server finishes it), but no answer, checkpoint or commit of the run survives.
    personyze_emulator.set_faults(latency_ms=250, path_prefix="/rest/do")
    child = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, "2026-02-01"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(do_requests(personyze_emulator)) < 7 and time.monotonic() < deadline:
        assert child.poll() is None, "the first run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.6)  # the request in flight when the worker died lands
    landed = len(personyze_emulator.interactions)
    assert BATCH_SIZE * 6 <= landed < BATCH_SIZE * BATCHES, "the first run was not killed mid-delivery"
    assert not personyze_emulator.interactions or max(triples(personyze_emulator).values()) == 1

    # Run 2 plans all 600 rows again (nothing was committed). The batches run 1 recorded as attempted are looked
    # up first, and only what is missing is sent.
    personyze_emulator.set_faults()
    personyze_emulator.clear_requests()
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (len(rows), 0, 0)
    assert triples(personyze_emulator) == expected(rows)  # each purchase exactly once
    resent = [command for r in do_requests(personyze_emulator) for command in r.json]
    assert len(resent) == len(rows) - landed
    lookups = [r for r in personyze_emulator.requests if r.method == "GET" and r.path.startswith("/rest/products_interactions")]
    assert len(lookups) >= landed  # every row that may have landed was looked up, by the index
    by_line = {(r["sku"], START + 60 * r["line_id"]): r for r in rows}
    for interaction in personyze_emulator.interactions:
        source = by_line[(interaction["product_internal_id"], interaction["transaction_time"])]
        assert (interaction["status"], interaction["quantity"], interaction["amount"]) == (
            "goal", source["quantity"], source["amount"])

    # Changed and removed rows are events that happened: nothing is sent for them, and they are committed as seen.
    personyze_emulator.clear_requests()
    warehouse.replace("order_lines", [purchase(0, quantity=9)] + rows[2:] + [purchase(9999)], COLUMNS)
    third = dag_runner.run(dag)
    assert third.state == "success"
    assert [c[3] for r in do_requests(personyze_emulator) for c in r.json] == [purchase(9999)["sku"]]
    assert third.result("sync")["not_acted_on"] == 2


def test_a_command_the_api_refuses_rejects_only_its_row_and_duplicates_nothing(dag_runner, warehouse, personyze):
    """Personyze applies the commands before a bad one: the halves of the refused batch are looked up first."""
    known = personyze.create_user(email="known@example.com")
    rows = [{"line_id": i, "user_id": known, "sku": f"SKU-{i}", "status": "viewed", "at": START + i} for i in range(10)]
    rows[6]["user_id"] = 424242  # no such Personyze user: only the API can tell
    rows[8]["status"] = "delivered"  # no do command logs it: it goes through POST /rest/products_interactions
    warehouse.replace("views", rows, ["line_id", "user_id", "sku", "status", "at"])
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="personyze_views_refused", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="personyze_views_refused", conn_id="warehouse",
                                    sql="SELECT * FROM views", primary_key="line_id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="product_interactions",
                                  sync_mode="insert", field_mapping={{"user_id": "user_id", "product_internal_id": "sku",
                                  "status": "status", "transaction_time": "at"}})
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"]) == (9, 1)
    with open(result["rejected_rows_uri"].removeprefix("file://")) as handle:
        (rejected,) = [json.loads(line) for line in handle]
    assert rejected["line_id"] == 6 and "Row not found" in rejected["reason"]
    logged = Counter((r["product_internal_id"], r["status"]) for r in personyze.interactions)
    assert logged == Counter({(f"SKU-{i}", "delivered" if i == 8 else "viewed"): 1 for i in range(10) if i != 6})


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "dags_examples")


def example_dag(dag_runner, name: str) -> str:
    """The example DAG file, as it ships, placed in the DAGs folder under its own name."""
    with open(os.path.join(EXAMPLES, f"{name}.py"), encoding="utf-8") as handle:
        return dag_runner.write(handle.read())


def test_the_example_dags_mirror_a_catalog_and_insert_purchases_end_to_end(dag_runner, warehouse, personyze):
    personyze.create_product(internal_id="HOUSE-1", title="Added by hand in Personyze")
    products = [{"sku": f"SKU-{i}", "title": f"Product {i}", "price": 9.5 + i, "brand": "Acme", "category": "tools",
                 "in_stock": i % 2, "image_url": f"https://cdn.example.com/{i}.jpg"} for i in range(1, 6)]
    warehouse.replace("products", products, list(products[0]))
    orders = [{"order_line_id": i, "customer_email": f"buyer{i % 3}@example.com", "sku": f"SKU-{i % 5 + 1}",
               "quantity": 1, "line_total": 9.5 + i, "ordered_at": f"2026-01-0{i % 9 + 1} 10:00:0{i % 10}"}
              for i in range(12)]
    warehouse.replace("order_lines", orders, list(orders[0]))
    mirror, purchases = example_dag(dag_runner, "personyze_products_mirror"), example_dag(dag_runner, "personyze_purchases_insert")
    for dag in (mirror, purchases):
        run = dag_runner.run(dag)
        assert run.state == "success", run.task_states
    assert set(personyze.products) == {"HOUSE-1", *(p["sku"] for p in products)}
    assert personyze.products["SKU-1"]["is_in_stock"] == "yes" and personyze.products["SKU-2"]["is_in_stock"] == "no"
    assert personyze.products["SKU-1"]["image_big_url"] == "https://cdn.example.com/1.jpg"
    assert len(personyze.interactions) == 12 and {i["status"] for i in personyze.interactions} == {"goal"}
    first = next(i for i in personyze.interactions if i["amount"] == 9.5)
    assert first["transaction_time"] == 1767261600  # 2026-01-01 10:00:00 read as UTC

    warehouse.replace("products", products[1:], list(products[0]))
    warehouse.replace("order_lines", orders + [{**orders[0], "order_line_id": 12, "ordered_at": "2026-01-09 11:00:00"}],
                      list(orders[0]))
    for dag in (mirror, purchases):
        assert dag_runner.run(dag).state == "success"
    assert set(personyze.products) == {"HOUSE-1", *(p["sku"] for p in products[1:])}
    assert len(personyze.interactions) == 13


def test_a_purchases_batch_whose_answer_was_lost_is_looked_up_not_sent_again(dag_runner, warehouse, personyze):
    rows = [purchase(i) for i in range(30)]
    warehouse.replace("order_lines", rows, COLUMNS)
    personyze.set_faults(drop_first=1, path_prefix="/rest/do")  # the batch lands, its answer is cut off
    run = dag_runner.run(purchases_dag(dag_runner, "personyze_purchases_lost_answer"))
    assert run.state == "success", run.task_states
    assert run.result("sync")["succeeded"] == 30
    assert triples(personyze) == expected(rows)  # each purchase exactly once
    assert [r.fault for r in do_requests(personyze)] == ["dropped"]  # never replayed
    lookups = [r for r in personyze.requests if r.path.startswith("/rest/products_interactions/where/")]
    assert len(lookups) == 30


def test_article_interactions_are_appended_through_do_and_a_bad_status_is_refused_before_sending(
    dag_runner, warehouse, personyze
):
    reads = [{"id": i, "reader": f"reader{i % 2}@example.com", "slug": f"post-{i}", "action": "viewed"} for i in range(4)]
    reads[1]["action"] = "liked"
    reads[3]["action"] = "shared"  # not an article interaction Personyze knows
    warehouse.replace("reads", reads, ["id", "reader", "slug", "action"])
    dag = dag_runner.write('''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="personyze_article_reads", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="personyze_article_reads", conn_id="warehouse",
                                    sql="SELECT * FROM reads", primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="article_interactions",
                                  sync_mode="insert", field_mapping={"user_email": "reader",
                                  "article_internal_id": "slug", "status": "action"})
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert (run.result("sync")["succeeded"], run.result("sync")["rejected"]) == (3, 1)
    emails = {user_id: row["email"] for user_id, row in personyze.users.items()}
    logged = sorted((emails[a["user_id"]], a["article_internal_id"], a["action"]) for a in personyze.article_interactions)
    assert logged == [("reader0@example.com", "post-0", "viewed"), ("reader0@example.com", "post-2", "viewed"),
                      ("reader1@example.com", "post-1", "liked")]
    assert [c[2] for r in do_requests(personyze) for c in r.json] == ["Article viewed", "Article liked",
                                                                      "Article viewed"]
    personyze.clear_requests()
    assert dag_runner.run(dag).state == "success" and do_requests(personyze) == []  # nothing new, nothing sent
