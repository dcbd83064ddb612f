"""Personyze at full reach over real Airflow runs: users through ``/rest/do``, catalogs, and parse-time refusals."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from airflow_provider_zeotap.errors import ConfigurationError

pytestmark = pytest.mark.integration

HEADER = '''
    from datetime import datetime
    from airflow.sdk import DAG
    from airflow_provider_zeotap.operators.diff import SyncDiffOperator
    from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
'''


def sync_dag(dag_runner, dag_id: str, *, sql: str, primary_key: str, sync_args: str) -> str:
    return dag_runner.write(HEADER + f'''
    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        diff = SyncDiffOperator(task_id="diff", sync_id="{dag_id}", conn_id="warehouse", sql="{sql}",
                                primary_key="{primary_key}")
        PersonyzeSyncOperator(task_id="sync", plan=diff.output, {sync_args})
''')


def do_requests(emulator) -> list[list]:
    return [r.json for r in emulator.requests if r.method == "POST" and r.path == "/rest/do"]


def rejected_rows(result: dict) -> list[dict]:
    with open(result["rejected_rows_uri"].removeprefix("file://")) as handle:
        return [json.loads(line) for line in handle]


def test_a_5000_user_upsert_through_do_lands_exactly_and_a_bad_command_rejects_only_its_row(
    dag_runner, warehouse, personyze
):
    rows = [{"customer_id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "bio": "short"}
            for i in range(5000)]
    rows[1234]["bio"] = "x" * 70_000  # longer than a Personyze text column holds: the API refuses that command
    warehouse.replace("customers", rows, ["customer_id", "email", "first_name", "bio"])
    personyze.set_faults(latency_ms=30, path_prefix="/rest/do")  # long enough to see the batches overlap
    dag = sync_dag(dag_runner, "personyze_do_5000", sql="SELECT * FROM customers", primary_key="customer_id",
                   sync_args='object_type="users", sync_mode="upsert", '
                             'field_mapping={"email": "email", "first_name": "first_name", "bio": "bio"}')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    result = run.result("sync")
    assert (result["succeeded"], result["rejected"], result["failed"]) == (4999, 1, 0)
    (bad,) = rejected_rows(result)
    assert bad["customer_id"] == 1234 and "Data too long for column 'bio'" in bad["reason"]

    users = {u["email"]: u for u in personyze.users.values()}
    good = [row for row in rows if row["customer_id"] != 1234]
    assert len(personyze.users) == 4999  # the refused command created nobody; nobody was created twice
    assert set(users) == {row["email"] for row in good}
    assert all((users[r["email"]]["first_name"], users[r["email"]]["bio"]) == (r["first_name"], "short") for r in good)
    assert not [r for r in personyze.requests if r.path == "/rest/users" and r.method == "POST"]
    commands = do_requests(personyze)
    # 50 batches of 100, plus the halving of the one refused batch down to its bad command (2 per level).
    assert 50 < len(commands) <= 50 + 2 * 7
    assert all(c[:3] == ["email", c[1], "User profile"] for batch in commands for c in batch)
    assert 2 <= personyze.max_in_flight_seen("POST", "/rest/do") <= 4  # a few batches in flight, never more

    # A cleared field is sent as the empty value do accepts; only the changed rows go out.
    personyze.clear_requests()
    rows[7]["first_name"] = None
    rows[8]["first_name"] = "Renamed"
    warehouse.replace("customers", rows, ["customer_id", "email", "first_name", "bio"])
    second = dag_runner.run(dag)
    assert second.state == "success"
    sent = [c for batch in do_requests(personyze) for c in batch]
    assert sorted(sent) == sorted([
        ["email", "user7@example.com", "User profile", "email", "user7@example.com", "first_name", "", "bio", "short"],
        ["email", "user8@example.com", "User profile", "email", "user8@example.com", "first_name", "Renamed",
         "bio", "short"],
    ])
    assert users["user7@example.com"]["user_id"] in personyze.users
    assert personyze.users[users["user7@example.com"]["user_id"]]["first_name"] == ""


def test_users_keyed_by_internal_id_when_the_diff_key_maps_to_it(dag_runner, warehouse, personyze):
    personyze.create_user(internal_id="c-1", email="old@example.com", first_name="Old")
    warehouse.replace("customers", [{"internal_id": "c-1", "first_name": "New"}, {"internal_id": "c-2", "first_name": "Two"}],
                      ["internal_id", "first_name"])
    dag = sync_dag(dag_runner, "personyze_do_internal", sql="SELECT * FROM customers", primary_key="internal_id",
                   sync_args='object_type="users", sync_mode="upsert"')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert run.result("sync")["succeeded"] == 2
    assert [c[:2] for batch in do_requests(personyze) for c in batch] == [["internal_id", "c-1"], ["internal_id", "c-2"]]
    by_id = {u["internal_id"]: u for u in personyze.users.values()}
    assert (by_id["c-1"]["first_name"], by_id["c-1"]["email"], by_id["c-2"]["first_name"]) == ("New", "old@example.com", "Two")


PRODUCT_COLUMNS = ["sku", "title", "price", "in_stock", "image"]


def product(i: int, **overrides) -> dict:
    return {"sku": f"SKU-{i}", "title": f"Product {i}", "price": 10.0 + i, "in_stock": i % 2, "image": f"https://cdn/{i}.jpg",
            **overrides}


def test_a_product_catalog_mirror_adds_changes_and_deletes_exactly_its_own_products(dag_runner, warehouse, personyze):
    personyze.create_product(internal_id="FOREIGN-1", title="Made by the merchandising team")
    personyze.create_product(internal_id="SKU-3", title="Already there, someone else's")
    personyze.set_faults(error_rate=0.2, error_status=503, seed=5, path_prefix="/rest/products")
    dag = sync_dag(
        dag_runner, "personyze_catalog_mirror", sql="SELECT * FROM products", primary_key="sku",
        sync_args='object_type="products", sync_mode="mirror", field_mapping={"internal_id": "sku", "title": "title", '
                  '"price": "price", "is_in_stock": "in_stock", "image_1": "image"}',
    )
    warehouse.replace("products", [product(i) for i in (1, 2, 3)], PRODUCT_COLUMNS)
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    assert (first.result("sync")["succeeded"], first.result("sync")["skipped"], first.result("sync")["failed"]) == (2, 1, 0)
    catalog = personyze.products
    assert set(catalog) == {"FOREIGN-1", "SKU-1", "SKU-2", "SKU-3"}
    assert (catalog["SKU-1"]["is_in_stock"], catalog["SKU-2"]["is_in_stock"]) == ("yes", "no")
    assert catalog["SKU-1"]["image_big_url"] == "https://cdn/1.jpg" and catalog["SKU-1"]["price"] == 11.0
    assert catalog["SKU-3"]["title"] == "Already there, someone else's"  # left alone

    # Run 2: SKU-1 changes, SKU-2 leaves the source, SKU-4 arrives; SKU-3 leaves too, but it was never ours.
    warehouse.replace("products", [product(1, price=99.5, in_stock=0), product(4)], PRODUCT_COLUMNS)
    second = dag_runner.run(dag)
    assert second.state == "success", second.task_states
    assert second.result("sync")["failed"] == 0
    catalog = personyze.products
    assert set(catalog) == {"FOREIGN-1", "SKU-1", "SKU-3", "SKU-4"}
    assert (catalog["SKU-1"]["price"], catalog["SKU-1"]["is_in_stock"]) == (99.5, "no")
    assert any(r.status == 503 for r in personyze.requests), "the fault knob injected no 503"
    deletes = [r.path for r in personyze.requests if r.method == "DELETE" and r.status == 200]
    assert deletes == ["/rest/products/where/internal_id=SKU-2"]


def test_catalog_update_mode_rejects_an_unknown_item_and_a_bad_enum_per_row(dag_runner, warehouse, personyze):
    personyze.create_product(internal_id="SKU-1", title="Old")
    warehouse.replace("products", [product(1), product(2), product(3, in_stock="maybe")], PRODUCT_COLUMNS)
    dag = sync_dag(dag_runner, "personyze_catalog_update", sql="SELECT * FROM products", primary_key="sku",
                   sync_args='object_type="products", sync_mode="update", field_mapping={"internal_id": "sku", '
                             '"title": "title", "is_in_stock": "in_stock"}')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    reasons = {row["sku"]: row["reason"] for row in rejected_rows(run.result("sync"))}
    assert "no such product: 'SKU-2'" in reasons["SKU-2"] and "use sync_mode='upsert'" in reasons["SKU-2"]
    assert "is_in_stock must be a boolean" in reasons["SKU-3"] and "'maybe'" in reasons["SKU-3"]
    assert set(personyze.products) == {"SKU-1"} and personyze.products["SKU-1"]["title"] == "Product 1"
    assert not [r for r in personyze.requests if r.method == "PUT" and "SKU-3" in r.path]


@pytest.mark.parametrize(
    ("sync_args", "expected"),
    [
        ('object_type="products", sync_mode="insert"',
         "products cannot take sync_mode='insert': Personyze's POST patches an item whose internal_id already "
         "exists, so it cannot be create-only. Use sync_mode='upsert' (or 'mirror')."),
        ('object_type="users", sync_mode="update", users_write="do"', "Use users_write='per_row' for sync_mode='update'"),
        ('object_type="product_interactions", sync_mode="upsert", field_mapping={"user_email": "email"}',
         "use sync_mode='insert'"),
    ],
)
def test_settings_no_personyze_path_can_serve_are_refused_when_the_dag_is_parsed(
    dag_runner, personyze, request, sync_args, expected
):
    from airflow.dag_processing.dagbag import DagBag

    path = sync_dag(dag_runner, "personyze_refused_at_parse", sql="SELECT * FROM t", primary_key="id",
                    sync_args=sync_args)
    request.addfinalizer(lambda: os.remove(path))  # a file that cannot be imported leaves the shared DAGs folder
    spec = importlib.util.spec_from_file_location("personyze_refused_at_parse", path)
    with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    bag = DagBag(dag_folder=path)
    assert bag.dags == {} and expected in bag.import_errors[path]
    assert personyze.requests == []


def test_take_over_existing_makes_a_catalog_mirror_equal_to_the_source(dag_runner, warehouse, personyze):
    personyze.create_product(internal_id="FOREIGN-1", title="Made by hand")
    personyze.create_product(internal_id="SKU-1", title="Made by hand too")
    warehouse.replace("products", [product(1), product(2)], PRODUCT_COLUMNS)
    dag = sync_dag(
        dag_runner, "personyze_catalog_take_over", sql="SELECT * FROM products", primary_key="sku",
        sync_args='object_type="products", sync_mode="mirror", take_over_existing=True, '
                  'field_mapping={"internal_id": "sku", "title": "title"}',
    )
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert (run.result("sync")["succeeded"], run.result("sync")["skipped"]) == (3, 0)  # 2 upserts, 1 removal
    assert {sku: p["title"] for sku, p in personyze.products.items()} == {"SKU-1": "Product 1", "SKU-2": "Product 2"}
