"""The demo: run the fan-out DAG three times over a changing SQLite warehouse, against the local emulators.

``vip_audience_fanout`` sends one audience (the warehouse's VIP customers) to several destinations, one diff
and ``sync_id`` each. Between runs the warehouse changes: customers join, change and leave the audience, and
one row is bad until the third run fixes it. After each run the demo prints one line per destination: what
its API received, what was rejected and why, and what the destination holds now. Then Zeotap's two other
examples run once: ``zeotap_profiles_delete`` honours a table of deletion requests and
``zeotap_profiles_fetch`` pulls every customer's profile into a Parquet file. The same command prints the
same report every time: nothing in it depends on ports, generated ids or timings.

Everything lives in ``.demo/`` (or ``--workdir``), removed on start: a fresh Airflow home with a SQLite
metadata database, the warehouse, the sync state, a log per run, and after each run a dump of what every
emulator holds and received (``emulators/run-<n>.json``), which the test suite compares with the report.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent
DAG_ID = "vip_audience_fanout"
#: The longest reason printed; the rejected-rows file named in the task log has the whole text.
REASON_WIDTH = 90


# -- the warehouse, run by run ---------------------------------------------------------------------------


def customer(i: int, **overrides: Any) -> dict[str, Any]:
    return {"customer_id": i, "email": f"Customer{i}@Example.com", "first_name": f"First{i}",
            "plan": "vip" if i % 2 else "basic", **overrides}


def warehouse_runs() -> list[tuple[str, list[dict[str, Any]]]]:
    """Three states of the ``customers`` table and what changed in each, as the report's headings say."""
    first = [customer(i) for i in range(1, 13)]  # VIPs: the odd ids, 1 to 11
    first[6] = customer(7, email="customer7.example.com")  # a VIP whose email has no @
    second = [c for c in first if c["customer_id"] != 3]  # 3 leaves
    second[0] = customer(1, first_name="Renamed1")  # 1 changes a name
    second[3] = customer(5, email="customer5@new.example.com")  # 5 changes an email
    second.append(customer(13))  # 13 joins
    third = [customer(7, email="Customer7@Example.com") if c["customer_id"] == 7 else c for c in second]
    return [
        ("Run 1: 6 VIP customers, one of them with a bad email", first),
        ("Run 2: 1 VIP joins, 1 leaves, 1 renamed, 1 changes email; the bad email is still there", second),
        ("Run 3: the bad email is fixed; nothing else changed", third),
    ]


def load_warehouse(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS customers")
        db.execute(f"CREATE TABLE customers ({', '.join(columns)})")
        db.executemany(f"INSERT INTO customers VALUES ({', '.join('?' * len(columns))})",
                       [tuple(r[c] for c in columns) for r in rows])


# -- the destinations of the fan-out, as the report sees them --------------------------------------------


@dataclass
class Destination:
    """One branch of the fan-out: its sync task, its emulator, and how to read what it received and holds."""

    name: str
    task_id: str
    emulator: Any
    received: Callable[[list[Any]], str]
    holds: Callable[[], str]


def personyze_destination(emulator: Any, list_id: int) -> Destination:
    def received(requests: list[Any]) -> str:
        adds = [r for r in requests if r.method == "POST" and r.path == "/rest/user_list_users"]
        removes = [r for r in requests if r.method == "DELETE" and r.path.startswith("/rest/user_list_users/")]
        return f"{count(adds, 'member add')}, {count(removes, 'member removal')}"

    def holds() -> str:
        return f"list holds {len(emulator.list_member_ids(list_id))} members"

    return Destination("personyze", "sync_personyze", emulator, received, holds)


def zeotap_destination(emulator: Any) -> Destination:
    def received(requests: list[Any]) -> str:
        return count([r for r in requests if r.method == "POST" and r.path == "/cdp/v1/users"], "profile write")

    def holds() -> str:
        return f"holds {count(len(emulator.profiles), 'profile')}"

    return Destination("zeotap", "sync_zeotap", emulator, received, holds)


def optimizely_destination(emulator: Any, list_attribute_id: int) -> Destination:
    def received(requests: list[Any]) -> str:
        writes = [r for r in requests if r.method == "PATCH" and "/list_attributes/" in r.path]
        sizes = ", ".join(str(len(ids_of(r.json.get("list_content", "")))) for r in writes)
        return f"{count(writes, 'whole-list write')} ({sizes} ids)"

    def holds() -> str:
        return f"list attribute holds {len(emulator.list_members(list_attribute_id))} ids"

    return Destination("optimizely", "sync_optimizely", emulator, received, holds)


def ids_of(list_content: str) -> list[str]:
    return [i for i in list_content.split(",") if i.strip()]


# -- running it -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo", help="removed and recreated (default .demo)")
    workdir = parser.parse_args(argv).workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "logs").mkdir(parents=True)
    (workdir / "emulators").mkdir()
    warehouse = workdir / "warehouse.db"
    # Set before Airflow is imported: this process runs the DAG, on its own metadata database.
    os.environ.update({
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__ZEOTAP_SYNC__STATE_URI": f"file://{workdir / 'sync_state'}",
        "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
        "AIRFLOW_VAR_ZEOTAP_PROFILES_FOLDER": f"file://{workdir / 'profiles'}",
    })
    print("== Setting up: an Airflow metadata database (SQLite), a SQLite warehouse, the API emulators", flush=True)
    migrate_log = workdir / "logs" / "db-migrate.log"
    with open(migrate_log, "w") as handle:  # runs while this process starts the emulators
        migrate = subprocess.Popen([sys.executable, "-m", "airflow", "db", "migrate"], stdout=handle,
                                   stderr=subprocess.STDOUT)

    from airflow_provider_zeotap.testing import OptimizelyEmulator, PersonyzeEmulator, ZeotapEmulator

    with contextlib.ExitStack() as stack:
        personyze = stack.enter_context(PersonyzeEmulator())
        list_id = personyze.create_list("VIP customers")
        os.environ.update(personyze.airflow_env())
        os.environ["AIRFLOW_VAR_PERSONYZE_LIST_ID"] = str(list_id)
        zeotap = stack.enter_context(ZeotapEmulator())
        os.environ.update(zeotap.airflow_env())
        optimizely = stack.enter_context(OptimizelyEmulator())
        project_id = optimizely.create_project("Web")
        list_attribute_id = optimizely.create_list_attribute(project_id, "vip_customers")
        os.environ.update(optimizely.airflow_env())
        os.environ["AIRFLOW_VAR_OPTIMIZELY_PROJECT_ID"] = str(project_id)
        os.environ["AIRFLOW_VAR_OPTIMIZELY_LIST_ATTRIBUTE_ID"] = str(list_attribute_id)
        destinations = [personyze_destination(personyze, list_id),
                        optimizely_destination(optimizely, list_attribute_id), zeotap_destination(zeotap)]

        if migrate.wait():
            raise SystemExit(f"`airflow db migrate` failed; its output is in {migrate_log}")
        dag = load_dag(EXAMPLES / f"{DAG_ID}.py")
        for number, (title, rows) in enumerate(warehouse_runs(), start=1):
            load_warehouse(warehouse, rows)
            seen = {d.name: len(d.emulator.requests) for d in destinations}
            print(f"\n== {title}", flush=True)
            state, results = run_dag(dag, number, workdir / "logs" / f"run-{number}.log")
            for destination in destinations:
                writes = writes_of(destination.emulator.requests[seen[destination.name]:])
                print("  " + report_line(destination, results.get(destination.task_id), writes), flush=True)
            dump(workdir / "emulators" / f"run-{number}.json", destinations, seen)
            if state != "success":
                raise SystemExit(f"Run {number} ended {state}; its log is {workdir / 'logs' / f'run-{number}.log'}")
        zeotap_deletion_and_fetch(workdir, warehouse, zeotap, len(warehouse_runs()) + 1)
    print("\n== Done. The demo's folder (.demo/ unless --workdir) holds each run's log, the sync state and what the "
          "emulators held and received after each run.")
    return 0


#: Customer 3 left in run 2 and asks to be forgotten; 99 was never sent to Zeotap.
DELETION_REQUESTS = ("3", "99")


def zeotap_deletion_and_fetch(workdir: Path, warehouse: Path, zeotap: Any, number: int) -> None:
    """Zeotap's two other examples, once each: the deletion requests, then every customer's profile fetched."""
    with sqlite3.connect(warehouse) as db:
        db.execute("CREATE TABLE deletion_requests (customer_id TEXT)")
        db.executemany("INSERT INTO deletion_requests VALUES (?)", [(i,) for i in DELETION_REQUESTS])
    print(f"\n== Then: customer {DELETION_REQUESTS[0]}, gone from the warehouse, asks to be forgotten (with an id "
          "Zeotap never had), and every customer's profile is fetched", flush=True)
    for dag_id, line in (("zeotap_profiles_delete", deletion_line), ("zeotap_profiles_fetch", fetch_line)):
        log = workdir / "logs" / f"{dag_id}.log"
        state, results = run_dag(load_dag(EXAMPLES / f"{dag_id}.py"), number, log)
        if state != "success":
            raise SystemExit(f"{dag_id} ended {state}; its log is {log}")
        (result,) = (r for r in results.values() if "deleted" in r or "found" in r)
        print(f"  {dag_id:<22} {line(result)}; holds {count(len(zeotap.profiles), 'profile')}", flush=True)
    (workdir / "emulators" / "zeotap-after.json").write_text(json.dumps(zeotap.state(), indent=1, default=str))


def deletion_line(result: dict[str, Any]) -> str:
    return f"deleted {count(result['deleted'], 'profile')}, {count(result['not_found'], 'id')} not found"


def fetch_line(result: dict[str, Any]) -> str:
    name = result["output_uri"].rsplit("/", 1)[-1]
    return (f"fetched {count(result['found'], 'profile')} for {count(result['ids'], 'customer')} "
            f"({result['not_found']} not found) into {name}")


def load_dag(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.dag


def run_dag(dag: Any, number: int, log: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """``dag.test()`` (what ``airflow dags test`` runs), its output to ``log``; the run's state and results."""
    with redirected(log):
        run = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=number))
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dag.dag_id, XComModel.run_id == run.run_id, XComModel.key == "return_value"
        )
        results = {row.task_id: row.value if isinstance(row.value, dict) else json.loads(row.value) for row in rows}
    return str(run.state), results


@contextlib.contextmanager
def redirected(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Airflow's task logs included) to ``log`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def count(items: Sequence[Any] | int, noun: str) -> str:
    n = items if isinstance(items, int) else len(items)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def writes_of(requests: list[Any]) -> list[Any]:
    """The writes the API accepted (a request refused and retried, say on a 503, counts once, when it lands)."""
    return [r for r in requests if r.method in ("POST", "PUT", "PATCH", "DELETE") and 200 <= (r.status or 0) < 300]


def report_line(destination: Destination, result: dict[str, Any] | None, writes: list[Any]) -> str:
    """One line: what the API received, what was rejected and why, what the destination holds now."""
    received = f"received {destination.received(writes)}" if writes else "received nothing"
    if result is None:
        rejected = "no result (the task failed)"
    elif result["rejected"] + result["failed"] == 0:
        rejected = "rejected none"
    else:
        reasons = [f"{key_of(row)}: {clip(row['reason'])}" for row in rejected_rows(result)]
        rejected = f"rejected {result['rejected'] + result['failed']} ({'; '.join(reasons)})"
    return f"{destination.name:<11}{received}; {rejected}; {destination.holds()}"


def rejected_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    path = result["rejected_rows_uri"].removeprefix("file://")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def key_of(row: dict[str, Any]) -> str:
    skip = {"change", "operation", "outcome", "reason"}
    return ", ".join(f"{k}={v!r}" for k, v in row.items() if k not in skip)


def clip(text: str) -> str:
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 1] + "…"


def dump(path: Path, destinations: list[Destination], seen: dict[str, int]) -> None:
    """What each emulator holds, and the requests it received during this run, as the emulator records them."""
    path.write_text(json.dumps({
        d.name: {"state": d.emulator.state(), "requests": [asdict(r) for r in d.emulator.requests[seen[d.name]:]]}
        for d in destinations
    }, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
