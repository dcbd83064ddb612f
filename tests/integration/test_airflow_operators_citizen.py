"""The operators in real Airflow runs (dag.test on a SQLite metadata DB) as a deployment meets them:
author lineage, state that a worker cannot see, a hand-made plan from dag_run.conf, and connection pools.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest


pytestmark = pytest.mark.integration

STATE_ROOT = os.path.join(os.environ["AIRFLOW_HOME"], "zeotap_sync_state")


def rows(*ids: int) -> list[dict]:
    return [{"id": i, "email": f"user{i}@example.com"} for i in ids]


def files_under(folder: str) -> set[str]:
    found = set()
    for parent, _, names in os.walk(folder):
        found.update(os.path.relpath(os.path.join(parent, name), folder) for name in names)
    return found


def test_author_inlets_and_outlets_keep_the_sync_asset_in_a_real_run(dag_runner, personyze):
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG, Asset
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="citizen_lineage", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="citizen_lineage", rows={rows(1, 2)!r},
                                    primary_key="id", inlets=[Asset("warehouse://crm/customers")])
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert",
                                  outlets=[Asset("s3://exports/customers_delivered")])
    ''')
    run = dag_runner.run(dag)
    assert run.state == "success", run.task_states
    assert run.result("sync")["succeeded"] == 2

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        serialized = SerializedDagModel.get_dag("citizen_lineage", session=session)
        inlets = [a.name for a in serialized.task_dict["diff"].inlets]
        outlets = [a.name for a in serialized.task_dict["sync"].outlets]
        events = session.execute(
            select(AssetModel.name).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == "citizen_lineage", AssetEvent.source_task_id == "sync")
        ).scalars().all()
    assert inlets == ["warehouse://crm/customers", "zeotap-sync://citizen_lineage"]
    assert outlets == ["s3://exports/customers_delivered", "zeotap-sync://citizen_lineage"]
    # Both outlets got their asset event from the finished sync: other DAGs can be scheduled on either.
    assert set(events) == {"s3://exports/customers_delivered", "zeotap-sync://citizen_lineage"}


def test_a_committed_snapshot_this_worker_cannot_see_fails_the_diff_naming_the_fix(dag_runner, personyze, capfd):
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="citizen_missing", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            diff = SyncDiffOperator(task_id="diff", sync_id="citizen_missing", rows={rows(1, 2, 3)!r},
                                    primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert")
    ''')
    first = dag_runner.run(dag)
    assert first.state == "success", first.task_states
    snapshot = first.result("sync")["committed"]["snapshot_uri"].removeprefix("file://")
    # What another worker sees of a local state folder: the pointer (metadata DB) but not the file.
    os.remove(snapshot)
    personyze.clear_requests()
    capfd.readouterr()

    second = dag_runner.run(dag)
    output = capfd.readouterr()
    text = output.out + output.err
    assert second.state == "failed"
    assert second.task_states == {"diff": "failed", "sync": "upstream_failed"}
    assert "ConfigurationError" in text and f"committed snapshot {first.result('sync')['committed']['snapshot_uri']}" \
        in text
    assert "[zeotap_sync] state_uri" in text and "s3://bucket/zeotap_sync_state" in text
    assert "No files found" not in text  # not DuckDB's raw IOException
    assert personyze.requests == []


def test_a_hand_made_plan_from_dag_run_conf_writes_nothing_outside_the_state_folder(
    dag_runner, personyze, tmp_path, capfd
):
    # A real plan, made by a diff task of another sync, gives real files to point at.
    source = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator

        with DAG(dag_id="citizen_conf_source", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            SyncDiffOperator(task_id="diff", sync_id="citizen_conf_source", rows={rows(1, 2)!r}, primary_key="id")
    ''')
    made = dag_runner.run(source)
    assert made.state == "success"
    real_plan = made.result("diff")
    target = dag_runner.write('''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="citizen_conf_target", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
                 render_template_as_native_obj=True) as dag:
            PersonyzeSyncOperator(task_id="sync", sync_id="citizen_conf_target", plan="{{ dag_run.conf['plan'] }}",
                                  object_type="users", sync_mode="upsert")
    ''')

    def plan_at(state_uri: str) -> dict:
        """The real plan, moved (files and fields) to ``state_uri/citizen_conf_target``."""
        old_root = f"{real_plan['state_uri']}/citizen_conf_source"
        new_root = f"{state_uri}/citizen_conf_target"
        folder = f"plans/{real_plan['plan_id']}"
        shutil.copytree(f"{old_root}/{folder}".removeprefix("file://"), f"{new_root}/{folder}".removeprefix("file://"))
        return json.loads(json.dumps(real_plan).replace(old_root, new_root).replace(
            '"citizen_conf_source"', '"citizen_conf_target"').replace(real_plan["state_uri"], state_uri))

    # A plan whose every path is consistent, but under a folder that is not the sync's state.
    outside = tmp_path / "outside"
    evil = plan_at(f"file://{outside}")
    before = files_under(str(outside))
    capfd.readouterr()
    refused = dag_runner.run(target, conf={"plan": evil})
    text = "".join(capfd.readouterr())
    assert refused.task_states == {"sync": "failed"}
    assert "state_uri" in text and "before any read or write" in text
    assert files_under(str(outside)) == before  # no outcomes, no commit, no ownership records written there
    assert personyze.requests == []

    # The same plan, placed in the sync's own state folder, is delivered: the refusal was about the place.
    good = plan_at(real_plan["state_uri"])
    delivered = dag_runner.run(target, conf={"plan": good})
    assert delivered.state == "success", delivered.task_states
    assert delivered.result("sync")["succeeded"] == 2
    assert delivered.result("sync")["committed"]["snapshot_uri"].startswith(
        f"{real_plan['state_uri']}/citizen_conf_target/committed/"
    )


@pytest.mark.slow
def test_connection_pools_let_the_scheduler_run_one_sync_task_per_connection_at_a_time(
    dag_runner, personyze, monkeypatch, tmp_path
):
    """Two sync tasks on one Personyze connection, ``connection_pools`` on, their pool with 1 slot: their
    requests never overlap.

    dag.test() runs tasks one by one whatever the pools say, and a real scheduler with a parallel executor
    needs an API server. So the scheduler's own critical section (``_executable_task_instances_to_queued``,
    which applies pool slots on the real metadata DB) decides which sync task may start, and two warmed-up
    worker processes (``tests/support/run_task_instance.py``) each run their task the moment it is queued,
    as an executor would. Had the scheduler queued both, they would have run side by side.
    """
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.pool import Pool
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    monkeypatch.setenv("AIRFLOW__ZEOTAP_SYNC__CONNECTION_POOLS", "True")
    pool = "zeotap_sync__personyze_default"
    path = dag_runner.write('''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

        with DAG(dag_id="citizen_pools", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            for name, first in (("a", 100), ("b", 200)):
                diff = SyncDiffOperator(task_id=f"diff_{name}", sync_id=f"citizen_pools_{name}", primary_key="id",
                                        rows=[{"id": i, "email": f"{name}{i}@example.com"} for i in range(first, first + 6)])
                PersonyzeSyncOperator(task_id=f"sync_{name}", plan=diff.output, object_type="users",
                                      sync_mode="upsert", users_write="per_row")
    ''')
    # One worker per sync task, started first: they warm up while the diffs run.
    workers = {
        task_id: subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_task_instance", path, task_id, str(tmp_path / task_id)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
        )
        for task_id in ("sync_a", "sync_b")
    }
    try:
        with create_session() as session:  # what `airflow pools set zeotap_sync__personyze_default 1 "..."` does
            Pool.create_or_update_pool(pool, slots=1, description="Personyze API", include_deferred=False,
                                       session=session)
        spec = importlib.util.spec_from_file_location("citizen_pools_dag", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        # The diffs run for real; the sync tasks are left for the scheduler below.
        run = module.dag.test(logical_date=datetime(2026, 3, 1, tzinfo=timezone.utc), mark_success_pattern=r"sync_.*")
        assert personyze.requests == []

        def task_instances() -> dict[str, TaskInstance]:
            with create_session() as session:
                return {ti.task_id: ti for ti in session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id)}

        assert {t: ti.pool for t, ti in task_instances().items()} == {
            "diff_a": "default_pool", "diff_b": "default_pool", "sync_a": pool, "sync_b": pool
        }

        def schedule_both_syncs() -> None:
            """Both sync tasks ready at once, as they are when their diffs finish together."""
            with create_session() as session:
                session.query(DagModel).filter(DagModel.dag_id == "citizen_pools").update({"is_paused": False})
                session.query(DagRun).filter(DagRun.run_id == run.run_id).update({"state": DagRunState.RUNNING})
                session.query(TaskInstance).filter(
                    TaskInstance.run_id == run.run_id, TaskInstance.task_id.in_(["sync_a", "sync_b"])
                ).update({"state": TaskInstanceState.SCHEDULED}, synchronize_session=False)

        scheduler = SchedulerJobRunner(job=Job())

        def queue_what_the_scheduler_allows() -> list[str]:
            with create_session() as session:
                queued = scheduler._executable_task_instances_to_queued(max_tis=32, session=session)
                return sorted(ti.task_id for ti in queued)

        deadline = time.monotonic() + 150
        while not all((tmp_path / t).exists() for t in workers) and time.monotonic() < deadline:
            assert all(w.poll() is None for w in workers.values()), {t: w.stdout.read() for t, w in workers.items()}
            time.sleep(0.1)
        # Each request takes 150 ms: six of them make a span that two tasks started together would share.
        personyze.set_faults(latency_ms=150)
        schedule_both_syncs()
        queued: list[str] = []
        while any(w.poll() is None for w in workers.values()) and time.monotonic() < deadline:
            queued += queue_what_the_scheduler_allows()
            time.sleep(0.1)
        outputs = {t: w.communicate(timeout=30)[0][-3000:] for t, w in workers.items()}
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
    assert {t: w.returncode for t, w in workers.items()} == {"sync_a": 0, "sync_b": 0}, outputs
    assert sorted(queued) == ["sync_a", "sync_b"]  # each queued once, by the scheduler
    finished = sorted((ti for t, ti in task_instances().items() if t.startswith("sync_")), key=lambda ti: ti.start_date)
    assert [ti.state for ti in finished] == ["success", "success"]
    assert finished[1].start_date >= finished[0].end_date  # the second ran only once the first had ended

    spans = []
    for name in ("a", "b"):
        mine = [r for r in personyze.requests
                if r.method == "POST" and str((r.json or {}).get("email", "")).startswith(name)]
        assert len(mine) == 6
        spans.append((min(r.started_at for r in mine), max(r.finished_at for r in mine)))
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, spans  # never both at once: together they stayed within one task's pace

    # Control: with two slots the same scheduler queues both at once, so the cap above is the pool's.
    with create_session() as session:
        Pool.create_or_update_pool(pool, slots=2, description="Personyze API", include_deferred=False, session=session)
    schedule_both_syncs()
    assert queue_what_the_scheduler_allows() == ["sync_a", "sync_b"]
    with create_session() as session:
        session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).update(
            {"state": TaskInstanceState.SUCCESS}, synchronize_session=False
        )
        session.query(DagRun).filter(DagRun.run_id == run.run_id).update({"state": DagRunState.SUCCESS})
