"""Run the example DAGs for real, offline: a SQLite warehouse, the local API emulators, `airflow dags test`.

Each DAG runs three times: the first run sends everything, the second only what changed in the
warehouse in between, the third nothing. What the emulated APIs received is printed after each run.
Everything lives in ``.demo/`` (a fresh Airflow home, the warehouse, the sync state), removed on start.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
WAREHOUSE = DEMO / "warehouse.db"


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "logs").mkdir(parents=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(DEMO / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__ZEOTAP_SYNC__STATE_URI": f"file://{DEMO / 'sync_state'}",
        }
    )
    from airflow_provider_zeotap.testing import (
        OptimizelyEmulator,
        PermutiveEmulator,
        PersonyzeEmulator,
        ZeotapEmulator,
    )

    step("Creating the Airflow metadata database (SQLite)")
    airflow("db", "migrate", log="db-migrate")
    with (
        PersonyzeEmulator() as personyze,
        PermutiveEmulator() as permutive,
        ZeotapEmulator() as zeotap,
        OptimizelyEmulator() as optimizely,
    ):
        list_id = personyze.create_list("VIP customers")
        import_id = permutive.create_import("Warehouse segments")
        os.environ.update(personyze.airflow_env())
        os.environ.update(permutive.airflow_env())
        os.environ.update(zeotap.airflow_env())
        os.environ["AIRFLOW_VAR_ZEOTAP_PROFILES_FOLDER"] = f"file://{DEMO / 'zeotap_profiles'}"
        project_id = optimizely.create_project("Web")
        # One id was put in the list by hand: the mirror leaves it there.
        list_attribute_id = optimizely.create_list_attribute(project_id, "vip_customers", ["added-by-hand"])
        os.environ.update(optimizely.airflow_env())
        os.environ["AIRFLOW_VAR_OPTIMIZELY_PROJECT_ID"] = str(project_id)
        os.environ["AIRFLOW_VAR_OPTIMIZELY_LIST_ATTRIBUTE_ID"] = str(list_attribute_id)
        os.environ["AIRFLOW_CONN_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)})
        os.environ["AIRFLOW_VAR_PERSONYZE_LIST_ID"] = str(list_id)
        os.environ["AIRFLOW_VAR_PERMUTIVE_IMPORT_ID"] = import_id
        print(f"  Personyze emulator {personyze.url} (list {list_id}), Permutive emulator {permutive.url} "
              f"(import {import_id}), warehouse {WAREHOUSE}")

        load_warehouse(customers(range(1, 21)), segments(range(1, 13)), products(range(1, 9)), order_lines(range(30)),
                       tracked_events(range(1, 6)))
        writes = lambda: _writes(personyze, permutive, zeotap, optimizely)  # noqa: E731
        run_all(writes, "first run: everything is new")
        print(f"  Personyze now holds {len(personyze.users)} users; list {list_id} has "
              f"{len(personyze.list_member_ids(list_id))} members; Permutive import has "
              f"{len(permutive.segments(import_id))} segments")

        changed = customers(range(1, 21), renamed={3, 4}) + customers([21])
        changed = [c for c in changed if c["customer_id"] != 20]
        load_warehouse(changed, segments(range(2, 14), renamed={5}), products(range(2, 10), repriced={3}),
                       order_lines(range(35)), tracked_events(range(1, 7)), deletion_requests=[20])
        run_all(writes, "second run: 2 customers renamed, 1 added, 1 removed; 1 segment renamed, 1 added, 1 removed; "
                "1 product repriced, 1 added, 1 removed; 5 new order lines; 1 event added; 1 deletion request")
        run_all(writes, "third run: nothing changed")
        print(f"  Personyze now holds {len(personyze.users)} users; list {list_id} has "
              f"{len(personyze.list_member_ids(list_id))} members; Permutive import has "
              f"{len(permutive.segments(import_id))} segments")
        print(f"  Personyze catalog: {len(personyze.products)} products; {len(personyze.interactions)} purchases")
        print(f"  Optimizely list attribute has {len(optimizely.list_members(list_attribute_id))} ids; the project "
              f"{len(optimizely.objects('custom_events', project_id))} custom events")
    step(f"Done. Logs of every run are in {DEMO / 'logs'}; the sync state in {DEMO / 'sync_state'}.")
    return 0


def run_all(writes: Callable[[], dict[str, int]], title: str) -> None:
    step(title.capitalize())
    for dag_id in ("personyze_users_sync", "personyze_list_mirror", "personyze_products_mirror",
                   "personyze_purchases_insert", "permutive_segments_mirror",
                   "zeotap_profiles_sync", "zeotap_profiles_delete", "zeotap_profiles_fetch",
                   "optimizely_list_mirror", "optimizely_custom_events"):
        before = writes()
        started = time.monotonic()
        airflow("dags", "test", dag_id, log=f"{dag_id}-{int(time.time() * 1000)}")
        after = writes()
        sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        print(f"  {dag_id}: succeeded in {time.monotonic() - started:.1f} s; write requests: "
              + (", ".join(f"{n} {k}" for k, n in sent.items()) or "none"))


def _writes(personyze, permutive, zeotap, optimizely) -> dict[str, int]:
    counts: dict[str, int] = {}
    for emulator in (personyze, permutive, zeotap, optimizely):
        for request in emulator.requests:
            if request.method in ("POST", "PUT", "PATCH", "DELETE") and not request.path.endswith("/_search"):
                ops = len((request.json or {}).get("operations", [])) if request.method == "PATCH" else 0
                key = f"{request.method} {request.path.split('/where/')[0]}"
                if request.path == "/rest/do":
                    key = f"POST /rest/do ({len(request.json or [])} commands)"
                if request.method == "PATCH" and emulator is permutive:
                    key = f"PATCH segments ({ops} operations)" if ops else "PATCH segments (write-access check)"
                counts[key] = counts.get(key, 0) + 1
    return counts


def customers(ids, renamed: set[int] = frozenset()) -> list[dict]:
    return [
        {
            "customer_id": i,
            "email": f"Customer{i}@Example.com",
            "first_name": f"Renamed{i}" if i in renamed else f"First{i}",
            "last_name": f"Last{i}",
            "company": "Acme" if i % 2 else "Globex",
            "plan": "vip" if i % 4 == 0 else "basic",
            "gdpr_ok": i % 2 == 0,
            "sms_optin": i % 3 == 0,
        }
        for i in ids
    ]


def segments(ids, renamed: set[int] = frozenset()) -> list[dict]:
    return [
        {"code": f"interest-{i:03d}", "name": f"Interest {i}{' (renamed)' if i in renamed else ''}",
         "description": f"Visitors with interest {i}"}
        for i in ids
    ]


def products(ids, repriced: set[int] = frozenset()) -> list[dict]:
    return [
        {"sku": f"SKU-{i:03d}", "title": f"Product {i}", "price": 19.99 + i + (5 if i in repriced else 0),
         "brand": "Acme", "category": "tools", "in_stock": i % 3 != 0, "image_url": f"https://cdn.example.com/{i}.jpg"}
        for i in ids
    ]


def order_lines(ids) -> list[dict]:
    return [
        {"order_line_id": i, "customer_email": f"Customer{i % 20 + 1}@Example.com", "sku": f"SKU-{i % 8 + 2:03d}",
         "quantity": 1 + i % 2, "line_total": 19.99 + i, "ordered_at": f"2026-01-{i % 28 + 1:02d} 12:{i % 60:02d}:00"}
        for i in ids
    ]


def tracked_events(ids) -> list[dict]:
    return [{"event_key": f"event_{i}", "event_name": f"Event {i}", "description": f"Tracked event {i}"} for i in ids]


def load_warehouse(customer_rows: list[dict], segment_rows: list[dict], product_rows: list[dict],
                   order_rows: list[dict], event_rows: list[dict], deletion_requests: list[int] = ()) -> None:
    with sqlite3.connect(WAREHOUSE) as db:
        db.execute("DROP TABLE IF EXISTS deletion_requests")
        db.execute("CREATE TABLE deletion_requests (customer_id)")
        db.executemany("INSERT INTO deletion_requests VALUES (?)", [(i,) for i in deletion_requests])
        for table, rows in (("customers", customer_rows), ("segments", segment_rows), ("products", product_rows),
                            ("order_lines", order_rows), ("tracked_events", event_rows)):
            columns = list(rows[0])
            db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})",
                           [tuple(r[c] for c in columns) for r in rows])


def airflow(*args: str, log: str) -> None:
    path = DEMO / "logs" / f"{log}.log"
    with open(path, "w") as handle:
        result = subprocess.run([sys.executable, "-m", "airflow", *args], stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0 or _failed(path):
        print(path.read_text()[-4000:])
        raise SystemExit(f"`airflow {' '.join(args)}` failed; full output in {path}")


def _failed(path: Path) -> bool:
    return "state=failed" in path.read_text()


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
