"""The kill matrix: every destination's sync task process is SIGKILLed mid-delivery, at a seeded random point.

Each test writes one DAG file with two DAGs, over the real metadata DB, task state store and asset state store:

* ``kill_<name>_retry`` (the sync task has ``retries=1``): the sync task's process is killed with SIGKILL when
  the ``k``-th write request reaches the emulator (``k`` drawn from a seeded ``random.Random``; the seed and
  ``k`` are printed). The scheduler's heartbeat-timeout check finds the vanished task and ``handle_failure``
  puts it UP_FOR_RETRY; try 2 runs in a task process of the same kind, resumes from the checkpoint the killed
  try left in the task state store (and, for a destination answering row by row, from the answers it kept
  mid-batch), sends again at most the batches that were in flight (for Zeotap, only the rows that were), and
  ends with the
  exact end state at the emulator and the exact committed snapshot.
* ``kill_<name>_rerun`` (``retries=0``): the killed try is failed by the same check, the run fails, and a new
  DAG run converges; the write requests it sent beyond what the rows that had not landed need are the kill's
  cost, printed and bounded.

The scheduler is built from Airflow's own scheduler steps and the task processes are forked by a warm worker
(both in ``tests/support/scheduler.py``), so a kill costs no Airflow start-up. Set ``KILL_MATRIX_SEED`` to
replay a failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg2
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.models import ROW_ID_COLUMN
from airflow_provider_zeotap.sync.warehouse.store import state_table_name
from tests.integration.conftest import DagRunner, Postgres, Warehouse, connection_env
from tests.support.reliability import reliability_case
from tests.support.scheduler import TestScheduler, Worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("KILL_MATRIX_SEED", "20261202"))
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}
LATENCY_MS = 100  # on the writes while a try is to be killed, so the kill lands with requests in flight


@dataclass
class World:
    """What every test of the module shares: the emulators, the warehouse, one scheduler and one warm worker."""

    personyze: Any
    permutive: Any
    optimizely: Any
    zeotap: Any
    warehouse: Warehouse
    postgres: Postgres  # a real server, for the diff in the warehouse
    scheduler: TestScheduler
    worker: Worker
    dags: DagRunner
    dates: Iterator[datetime]


@pytest.fixture(scope="module")
def world(airflow_db, tmp_path_factory, postgres) -> Iterator[World]:
    from airflow_provider_zeotap.testing.optimizely import OptimizelyEmulator
    from airflow_provider_zeotap.testing.permutive import PermutiveEmulator
    from airflow_provider_zeotap.testing.personyze import PersonyzeEmulator
    from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator

    folder = tmp_path_factory.mktemp("kill_matrix")
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        personyze = stack.enter_context(PersonyzeEmulator())
        permutive = stack.enter_context(PermutiveEmulator())
        optimizely = stack.enter_context(OptimizelyEmulator())
        zeotap = stack.enter_context(ZeotapEmulator())
        env.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT",
                   connection_env("personyze", personyze.url, personyze.api_key, **FAST))
        env.setenv("AIRFLOW_CONN_PERMUTIVE_DEFAULT",
                   connection_env("permutive", permutive.url, permutive.write_key, **FAST))
        env.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
                   connection_env("optimizely", optimizely.url, optimizely.token, **FAST))
        env.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT",
                   connection_env("zeotap", zeotap.url, zeotap.api_key, org_id=str(zeotap.org_id),
                                  region=zeotap.region, max_in_flight=5, **FAST))
        warehouse = Warehouse(str(folder / "warehouse.db"))
        env.setenv("AIRFLOW_CONN_WAREHOUSE", warehouse.conn_uri)
        env.setenv("AIRFLOW_CONN_WAREHOUSE_PG", postgres.airflow_connection())
        env.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "1")
        worker = Worker(folder / "worker-ready")  # warms up (seconds) while the scheduler is built
        stack.callback(worker.stop)
        scheduler = TestScheduler()
        worker.wait_ready()
        start = datetime(2026, 5, 1, tzinfo=timezone.utc)
        yield World(personyze, permutive, optimizely, zeotap, warehouse, postgres, scheduler, worker, DagRunner(),
                    (start + timedelta(hours=h) for h in range(1000)))


@dataclass
class Spec:
    """What differs between destinations: the sync task, its target, and how to read the emulator."""

    name: str
    rows: Callable[[str], list[dict[str, Any]]]  # key prefix -> source rows
    primary_key: str
    batch_size: int
    batches_in_flight: int
    rows_per_request: int
    operator: str  # the sync task's arguments after plan=diff.output; ``target`` names the DAG's target
    imports: str
    targets: Callable[[], tuple[Any, Any]]  # makes the retry DAG's and the rerun DAG's targets
    writes: Callable[[], list[tuple[Any, list[str]]]]  # every write request whose body arrived, with its keys
    held: Callable[[Any], set[str]]  # target -> the keys the emulator holds there
    latency: Callable[[float], None]  # slows the writes down (0: back to normal)
    requests: Callable[[], list[Any]]  # the emulator's request log
    resent_rows_max: int | None = None  # rows try 2 may send again; default: the batches that can be in flight
    rerun_cost_max: int | None = None  # the new run's extra write requests; default: what had landed + one batch
    diff: str = 'conn_id="warehouse"'  # the diff task's arguments besides its sql and primary key
    # The source table and the committed rows by key, when the diff runs in the warehouse (default: SQLite and
    # the committed snapshot file).
    load: Callable[[World, str, list[dict[str, Any]], list[str]], None] | None = None
    committed: Callable[[World, str, dict[str, Any]], dict[str, dict[str, Any]]] | None = None


def dag_file(world: World, spec: Spec, retry_target: Any, rerun_target: Any) -> tuple[str, str, str]:
    retry_id, rerun_id = f"kill_{spec.name}_retry", f"kill_{spec.name}_rerun"
    path = world.dags.write(f'''
        from datetime import datetime, timedelta
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        {spec.imports}

        dags = []
        for dag_id, retries, target in (("{retry_id}", 1, {retry_target!r}), ("{rerun_id}", 0, {rerun_target!r})):
            with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
                     max_active_runs=1) as dag:
                diff = SyncDiffOperator(task_id="diff", sync_id=dag_id, {spec.diff},
                                        sql=f"SELECT * FROM {{dag_id}}", primary_key="{spec.primary_key}")
                {spec.imports.split()[-1]}(task_id="sync", plan=diff.output, retries=retries,
                    retry_delay=timedelta(seconds=0), {spec.operator})
            dags.append(dag)
    ''')
    world.scheduler.add(path)
    return path, retry_id, rerun_id


def keys_of(writes: list[tuple[Any, list[str]]]) -> list[str]:
    return [key for _, keys in writes for key in keys]


def committed_rows(result: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """The committed snapshot's rows by key, without the engine's own columns."""
    table = pq.read_table(result["committed"]["snapshot_uri"].removeprefix("file://"))
    rows = [{k: v for k, v in row.items() if not k.startswith("__")} for row in table.to_pylist()]
    return {str(row[key]): row for row in rows}


def batches_of(plan: dict[str, Any], spec: Spec) -> dict[str, int]:
    """key -> the batch the runner cuts it into: the plan's changes in row-id order, ``batch_size`` at a time."""
    changes = pq.read_table(plan["changes_uri"].removeprefix("file://"), columns=[ROW_ID_COLUMN, spec.primary_key])
    ordered = sorted(zip(changes.column(ROW_ID_COLUMN).to_pylist(), changes.column(spec.primary_key).to_pylist()))
    return {str(key): position // spec.batch_size for position, (_, key) in enumerate(ordered)}


def start_and_kill(world: World, spec: Spec, path: str, dag_id: str, k: int) -> tuple[str, int, int]:
    """Trigger a run; SIGKILL its sync task's process when the k-th write request of the run arrives.

    Returns the run id and where the killed try's writes start and end in ``spec.writes()`` (those in flight
    at the kill included: the emulator finishes them, as a server does when its client vanishes)."""
    before = len(spec.writes())
    spec.latency(1)
    world.worker.run(path, dag_id, "sync", 1)
    run_id = world.scheduler.trigger(dag_id, next(world.dates))
    world.scheduler.run_until(dag_id, run_id, lambda: world.worker.pid is not None, in_process=("diff",))
    deadline = time.monotonic() + 60
    while len(spec.writes()) - before < k:
        assert world.worker.events.empty(), f"the sync ended before the kill:\n{world.worker.tail()}"
        assert time.monotonic() < deadline, f"the sync never reached the kill point:\n{world.worker.tail()}"
        time.sleep(0.001)
    os.kill(world.worker.pid, signal.SIGKILL)
    status = world.worker.exited()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    settle = time.monotonic() + 3
    while any(r.status is None for r in spec.requests()) and time.monotonic() < settle:
        time.sleep(0.02)  # what was in flight lands: the emulator finishes it
    spec.latency(0)
    return run_id, before, len(spec.writes())


def run_matrix(world: World, spec: Spec) -> dict[str, int]:
    scheduler, worker = world.scheduler, world.worker
    rng = random.Random(f"{SEED}:{spec.name}")
    rows = spec.rows("r"), spec.rows("n")
    batches = math.ceil(len(rows[0]) / spec.batch_size)
    per_batch = math.ceil(spec.batch_size / spec.rows_per_request)
    requests = batches * per_batch
    # The k-th write request is in flight when the task process dies: after the batches that can be in flight at
    # once (so a batch may be acknowledged before it), and with at least one batch left after those in flight (so
    # the retry has something to resume).
    k_max = max(1, requests - (spec.batches_in_flight + 1) * per_batch)
    k_min = min(k_max, spec.batches_in_flight * per_batch + 1)
    k_retry, k_rerun = rng.randint(k_min, k_max), rng.randint(k_min, k_max)
    print(f"\nkill matrix {spec.name}: seed={SEED} k_retry={k_retry} k_rerun={k_rerun} "
          f"(of {requests} write requests in {batches} batches)")
    keys = [{str(row[spec.primary_key]) for row in table} for table in rows]
    columns = list(rows[0][0])
    retry_target, rerun_target = spec.targets()
    path, retry_id, rerun_id = dag_file(world, spec, retry_target, rerun_target)
    load = spec.load or (lambda world, table, rows, columns: world.warehouse.replace(table, rows, columns))
    load(world, retry_id, rows[0], columns)
    load(world, rerun_id, rows[1], columns)
    committed = spec.committed or (lambda world, dag_id, result: committed_rows(result, spec.primary_key))

    # -- on a task retry ----------------------------------------------------------------------------------
    run_id, start, end = start_and_kill(world, spec, path, retry_id, k_retry)
    ti = scheduler.task_instance(retry_id, run_id, "sync")
    assert (str(ti.state), ti.try_number) == ("running", 1)
    [checkpoint] = [v for key, v in scheduler.task_state(retry_id, run_id, "sync").items()
                    if key.startswith("delivery:")] or [{"next_batch": 0, "done": []}]
    acknowledged = set(range(checkpoint["next_batch"])) | set(checkpoint["done"])

    worker.run(path, retry_id, "sync", 2)
    scheduler.fail_vanished_tasks()
    ti = scheduler.task_instance(retry_id, run_id, "sync")
    assert (str(ti.state), ti.try_number) == ("up_for_retry", 1)
    assert scheduler.run_until(retry_id, run_id, lambda: False) == "success", worker.tail()
    assert worker.exited() == 0
    ti = scheduler.task_instance(retry_id, run_id, "sync")
    assert (str(ti.state), ti.try_number) == ("success", 2)
    result = scheduler.xcom(retry_id, run_id, "sync")
    assert result["resumed_from_batch"] == checkpoint["next_batch"]
    assert (result["succeeded"], result["failed"], result["rejected"]) == (len(rows[0]), 0, 0)

    writes = spec.writes()
    first, retried = writes[start:end], writes[end:]
    sent_first, sent_again = keys_of(first), keys_of(retried)
    resent = set(sent_first) & set(sent_again)
    print(f"kill matrix {spec.name} retry: {len(first)} write requests before the kill, batches "
          f"{sorted(acknowledged)} acknowledged; try 2 sent {len(retried)}, {len(resent)} rows a second time")
    resent_max = spec.batches_in_flight * spec.batch_size if spec.resent_rows_max is None else spec.resent_rows_max
    assert len(resent) <= resent_max, sorted(resent)
    batch_of = batches_of(scheduler.xcom(retry_id, run_id, "diff"), spec)
    assert not {batch_of[key] for key in sent_again} & acknowledged, "an acknowledged batch was sent again"
    assert len(sent_again) <= len(rows[0]) - len(acknowledged) * spec.batch_size
    assert set(sent_first) | set(sent_again) == keys[0]
    assert {key for key in spec.held(retry_target) if key in keys[0] or key.startswith("r")} == keys[0]
    assert committed(world, retry_id, result) == {str(row[spec.primary_key]): row for row in rows[0]}

    # -- on a new DAG run instead of a retry -------------------------------------------------------------
    killed_run, start, end = start_and_kill(world, spec, path, rerun_id, k_rerun)
    landed = set(keys_of(spec.writes()[start:end]))
    scheduler.fail_vanished_tasks()
    assert str(scheduler.task_instance(rerun_id, killed_run, "sync").state) == "failed"
    assert scheduler.run_until(rerun_id, killed_run, lambda: False) == "failed"

    before = len(spec.writes())
    worker.run(path, rerun_id, "sync", 1)
    new_run = scheduler.trigger(rerun_id, next(world.dates))
    assert scheduler.run_until(rerun_id, new_run, lambda: False, in_process=("diff",)) == "success", worker.tail()
    assert worker.exited() == 0
    result = scheduler.xcom(rerun_id, new_run, "sync")
    assert (result["succeeded"], result["failed"], result["rejected"]) == (len(rows[1]), 0, 0)
    sent = len(spec.writes()) - before
    needed = math.ceil(len(keys[1] - landed) / spec.rows_per_request)
    cost = sent - needed
    print(f"kill matrix {spec.name} new run: {len(landed)} rows sent before the kill; the new run sent {sent} "
          f"write requests where {needed} carry the rest: the kill cost {cost}")
    assert {key for key in spec.held(rerun_target) if key in keys[1] or key.startswith("n")} == keys[1]
    assert committed(world, rerun_id, result) == {str(row[spec.primary_key]): row for row in rows[1]}
    cost_max = math.ceil(len(landed) / spec.rows_per_request) + per_batch if spec.rerun_cost_max is None \
        else spec.rerun_cost_max
    assert cost <= cost_max
    return {"cost": cost, "resent": len(resent)}


# -- the destinations --------------------------------------------------------------------------------------

RETRIED = "sync task SIGKILLed mid-delivery, retried"
RERUN = "sync task SIGKILLed mid-delivery, new DAG run"


def _writes(emulator, method: str, path: Callable[[str], bool], keys: Callable[[Any], list[str]]):
    def writes() -> list[tuple[Any, list[str]]]:
        return [(r, keys(r.json)) for r in emulator.requests
                if r.method == method and path(r.path) and r.json is not None and keys(r.json)]
    return writes


@reliability_case("kill", "Personyze users (/rest/do)", RETRIED,
                  "try 2 resumes from the checkpoint; at most the 4 batches in flight sent again; "
                  "exact users and commit")
@reliability_case("kill", "Personyze users (/rest/do)", RERUN,
                  "converges to the exact users and commit; cost at most what had landed plus one batch")
def test_personyze_users_do(world):
    emulator = world.personyze
    emulator.reset()
    run_matrix(world, Spec(
        name="personyze_users",
        rows=lambda p: [{"id": i, "email": f"{p}user{i}@example.com", "first_name": f"U{i}"} for i in range(120)],
        primary_key="email", batch_size=10, batches_in_flight=4, rows_per_request=10,
        imports="from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator",
        operator='object_type="users", sync_mode="upsert", users_write="do", batch_size=10',
        targets=lambda: (None, None),
        writes=_writes(emulator, "POST", lambda p: p.endswith("/rest/do"),
                       lambda body: [str(c[1]) for c in body if isinstance(c, list)] if isinstance(body, list) else []),
        held=lambda _: {u["email"] for u in emulator.users.values() if u.get("email")},
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, path_prefix="/rest/do"),
    ))


@reliability_case("kill", "Personyze user list", RETRIED,
                  "try 2 resumes from the checkpoint; at most 1 batch sent again; exact members and commit")
@reliability_case("kill", "Personyze user list", RERUN,
                  "converges to the exact members and commit; cost at most what had landed plus one batch")
def test_personyze_list_members(world):
    emulator = world.personyze
    emulator.reset()
    run_matrix(world, Spec(
        name="personyze_list",
        rows=lambda p: [{"email": f"{p}member{i}@example.com"} for i in range(40)],
        primary_key="email", batch_size=5, batches_in_flight=1, rows_per_request=1,
        imports="from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator",
        operator='object_type="user_list_members", audience_mode="mirror", list_id=str(target), batch_size=5',
        targets=lambda: (emulator.create_list("Retry"), emulator.create_list("Rerun")),
        writes=_writes(emulator, "POST", lambda p: p.endswith("/rest/user_list_users"),
                       lambda body: [body["user_email"]] if isinstance(body, dict) and "user_email" in body else []),
        held=lambda target: emulator.list_member_emails(target),
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, path_prefix="/rest/user_list_users",
                                               method="POST"),
    ))


@reliability_case("kill", "Permutive segments", RETRIED,
                  "try 2 resumes from the checkpoint; at most 1 batch sent again; exact segments and commit")
@reliability_case("kill", "Permutive segments", RERUN,
                  "converges to the exact segments and commit; cost at most what had landed plus one batch")
def test_permutive_segments(world):
    emulator = world.permutive
    emulator.reset()
    run_matrix(world, Spec(
        name="permutive",
        rows=lambda p: [{"code": f"{p}seg-{i:04d}", "name": f"Segment {i}"} for i in range(80)],
        primary_key="code", batch_size=10, batches_in_flight=1, rows_per_request=10,
        imports="from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator",
        operator=('import_id=target, audience_mode="mirror", batch_size=10, '
                  'field_mapping={"segment_code": "code", "segment_name": "name"}'),
        targets=lambda: (emulator.create_import("Retry"), emulator.create_import("Rerun")),
        writes=_writes(emulator, "PATCH", lambda p: "/imports/" in p,
                       lambda body: [op.get("code") or op["data"]["code"] for op in body.get("operations", [])]),
        held=lambda target: set(emulator.segments(target)),
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, method="PATCH"),
    ))


@reliability_case("kill", "Optimizely list attribute", RETRIED,
                  "the whole-list write in flight lands; try 2 reads the list and writes nothing again; "
                  "exact list and commit")
@reliability_case("kill", "Optimizely list attribute", RERUN,
                  "converges to the exact list and commit; the new run writes nothing (the killed write landed)")
def test_optimizely_list_attribute(world):
    emulator = world.optimizely
    emulator.reset()
    project = emulator.create_project("Kill matrix lists")
    run_matrix(world, Spec(
        name="optimizely_list",
        rows=lambda p: [{"user_id": f"{p}user{i:03d}"} for i in range(30)],
        primary_key="user_id", batch_size=30, batches_in_flight=1, rows_per_request=30,
        imports="from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator",
        operator=f'object_type="list_attributes", project_id="{project}", list_attribute_id=str(target), '
                 'audience_mode="mirror"',
        targets=lambda: (emulator.create_list_attribute(project, "retry", []),
                         emulator.create_list_attribute(project, "rerun", [])),
        writes=_writes(emulator, "PATCH", lambda p: "/list_attributes/" in p,
                       lambda body: [i for i in body.get("list_content", "").split(",") if i]),
        held=lambda target: set(emulator.list_members(target)),
        resent_rows_max=0, rerun_cost_max=0,
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, method="PATCH"),
    ))


@reliability_case("kill", "Optimizely custom events", RETRIED,
                  "try 2 resumes from the checkpoint; no event created twice; exact events and commit")
@reliability_case("kill", "Optimizely custom events", RERUN,
                  "converges to the exact events, none created twice; cost at most what had landed plus one batch")
def test_optimizely_custom_events(world):
    emulator = world.optimizely
    emulator.reset()
    run_matrix(world, Spec(
        name="optimizely_events",
        rows=lambda p: [{"key": f"{p}event_{i}", "name": f"Event {i}"} for i in range(8)],
        primary_key="key", batch_size=2, batches_in_flight=1, rows_per_request=1,
        imports="from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator",
        operator='object_type="custom_events", project_id=target, sync_mode="insert", batch_size=2',
        targets=lambda: (emulator.create_project("Retry"), emulator.create_project("Rerun")),
        writes=_writes(emulator, "POST", lambda p: p.endswith("/custom_events"),
                       lambda body: [body["key"]] if isinstance(body, dict) and "key" in body else []),
        held=lambda target: _unique([e["key"] for e in emulator.objects("custom_events", target)]),
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, method="POST"),
    ))


@reliability_case("kill", "Zeotap profiles", RETRIED,
                  "try 2 resumes from the checkpoint and the answers kept mid-batch; at most 1 batch sent again "
                  "(only the rows in flight at the kill, with 2 batches in flight); exact profiles and commit")
@reliability_case("kill", "Zeotap profiles", RERUN,
                  "converges to the exact profiles and commit; cost at most what had landed plus one batch")
def test_zeotap_profiles(world):
    world.zeotap.reset()
    run_matrix(world, zeotap_spec(world, "zeotap"))


def zeotap_spec(world: World, name: str, **diff_in_warehouse: Any) -> Spec:
    """Zeotap profiles, upserted 10 a batch with 2 batches in flight (its rows: ``<prefix><name>-<n>``)."""
    emulator = world.zeotap
    return Spec(
        name=name,
        rows=lambda p: [{"user_id": f"{p}{name}-{i:04d}", "first_name": f"F{i}"} for i in range(120)],
        primary_key="user_id", batch_size=10, batches_in_flight=2, rows_per_request=1,
        # At most 5 requests in flight (the connection's max_in_flight), as a real run has 200 for batches of 500:
        # the rows of both batches in flight that had an answer are not sent again, so under one batch is.
        resent_rows_max=10,
        imports="from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator",
        operator='id_type="user_id", sync_mode="upsert", batch_size=10, '
                 'field_mapping={"profile.first_name": "first_name"}',
        targets=lambda: (None, None),
        writes=_writes(emulator, "POST", lambda p: p.endswith("/cdp/v1/users"),
                       lambda body: [body["ids"]["user_id"]] if isinstance(body, dict) and "ids" in body else []),
        held=lambda _: {p["ids"]["user_id"] for p in emulator.profiles.values()},
        requests=lambda: emulator.requests,
        latency=lambda on: emulator.set_faults(latency_ms=LATENCY_MS * on, method="POST"),
        **diff_in_warehouse,
    )


def _unique(keys: list[str]) -> set[str]:
    assert len(keys) == len(set(keys)), f"an object was created twice: {sorted(keys)}"
    return set(keys)


# -- the diff in the warehouse (PostgreSQL), delivered to Zeotap -------------------------------------------

WAREHOUSE_SCHEMA = "zeotap_kill_matrix"


def _load_postgres(world: World, table: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with psycopg2.connect(world.postgres.uri) as pg, pg.cursor() as cursor:
        cursor.execute(f'DROP TABLE IF EXISTS "{table}"')
        cursor.execute(f'CREATE TABLE "{table}" (' + ", ".join(f'"{c}" TEXT' for c in columns) + ")")
        cursor.executemany(f'INSERT INTO "{table}" VALUES ({", ".join(["%s"] * len(columns))})',
                           [tuple(row[c] for c in columns) for row in rows])


def _committed_in_postgres(world: World, sync_id: str, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The state table's rows by key, without the engine's own columns; its version row names the run's plan."""
    table = f'{WAREHOUSE_SCHEMA}."{state_table_name(sync_id)}"'
    with psycopg2.connect(world.postgres.uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")
        names = [column[0] for column in cursor.description]
        rows = [{k: v for k, v in zip(names, row) if not k.startswith("__")} for row in cursor.fetchall()]
        cursor.execute(f"SELECT plan_id FROM {WAREHOUSE_SCHEMA}.sync_versions WHERE sync_id = %s", (sync_id,))
        assert cursor.fetchone() == (result["plan_id"],)
    return {str(row["user_id"]): row for row in rows}


@reliability_case("kill", "warehouse diff (PostgreSQL) to Zeotap profiles", RETRIED,
                  "try 2 resumes from the checkpoint and the answers kept mid-batch; at most 1 batch sent again; "
                  "the state table in PostgreSQL holds exactly the source, committed in the warehouse")
@reliability_case("kill", "warehouse diff (PostgreSQL) to Zeotap profiles", RERUN,
                  "converges to the exact profiles and the same state table in PostgreSQL; cost at most what had "
                  "landed plus one batch")
def test_warehouse_diff_to_zeotap_profiles(world):
    """As ``test_zeotap_profiles`` (the diff on the worker), with the diff and the commit in PostgreSQL."""
    world.zeotap.reset()
    run_matrix(world, zeotap_spec(
        world, "zeotap_wh",
        diff=f'conn_id="warehouse_pg", diff_in="warehouse", state_schema="{WAREHOUSE_SCHEMA}"',
        load=_load_postgres,
        committed=_committed_in_postgres,
    ))
