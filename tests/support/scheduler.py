"""A scheduler for one test, made of the real scheduler's own steps, with task processes outside it.

A kill test needs what a deployment has: a DAG run in the metadata DB, a sync task run by a worker process
that can die, and the scheduler noticing the death and scheduling the retry. ``dag.test()`` runs every task
inside its own process, and a whole scheduler with an executor needs an API server; so this class drives
the parts of Airflow 3's scheduler that decide those things, on the real metadata DB:

* the DAG file is parsed and written to the DB as the DAG processor does (``sync_bag_to_db``), and a run is
  created as ``airflow dags trigger`` does (``trigger_dag``), then started by ``_start_queued_dagruns``;
* each tick runs ``DagRun.update_state`` and ``DagRun.schedule_tis`` (which raise ``try_number``), then the
  scheduler's critical section ``_executable_task_instances_to_queued`` (pools, and ``queued_by_job_id``);
* tasks named in ``in_process`` run here, as ``dag.test()`` runs them; the others are left QUEUED for a
  :class:`Worker`, a warm process (``tests/support/run_task_instance.py --serve``) that forks a task process
  for each the moment it is queued, as Airflow's supervisor forks its task process;
* a worker that vanished is found by the scheduler's heartbeat-timeout check
  (``_find_and_purge_task_instances_without_heartbeats``; set ``task_instance_heartbeat_timeout`` short in the
  environment before building the scheduler), which tells the executor the task failed; the executor event is
  handled by ``process_executor_events``, which calls ``TaskInstance.handle_failure``: UP_FOR_RETRY while
  retries are left, else FAILED. No state is set by hand.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any


class TestScheduler:
    """One scheduler job over the DAG files given to :meth:`add`."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        from airflow.callbacks.database_callback_sink import DatabaseCallbackSink
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.utils.session import create_session

        DagBundlesManager().sync_bundles_to_db()
        self.dags: dict[str, Any] = {}
        self.job = Job()
        with create_session() as session:
            self.job.prepare_for_execution(session=session)
        self.runner = SchedulerJobRunner(job=self.job)
        for executor in self.runner.executors:  # as the scheduler does when it starts
            executor.callback_sink = DatabaseCallbackSink()

    def add(self, path: str) -> None:
        """Parse a DAG file (its DAGs in a list ``dags``) into the metadata DB, as the DAG processor does, unpaused."""
        from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session

        spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        self.dags.update({dag.dag_id: dag for dag in module.dags})
        folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
        bag = BundleDagBag(dag_folder=path, bundle_path=pathlib.Path(folder), bundle_name="dags-folder")
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, "dags-folder", None)
        with create_session() as session:  # `airflow dags unpause`
            for dag in module.dags:
                session.query(DagModel).filter(DagModel.dag_id == dag.dag_id).update({"is_paused": False})

    def trigger(self, dag_id: str, logical_date: datetime) -> str:
        """Create a run the way ``airflow dags trigger`` does, and let the scheduler start it."""
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.session import create_session
        from airflow.utils.types import DagRunTriggeredByType

        with create_session() as session:
            run = trigger_dag(dag_id, logical_date=logical_date, triggered_by=DagRunTriggeredByType.TEST,
                              session=session)
            run_id = run.run_id
        with create_session() as session:
            self.runner._start_queued_dagruns(session)
        return run_id

    def tick(self, dag_id: str, run_id: str, in_process: tuple[str, ...] = ()) -> str:
        """One scheduling step of the run; runs the queued tasks named in ``in_process``. Returns the run's state."""
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.sdk.definitions.dag import _run_task
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        with create_session() as session:
            run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
            run.dag = self.runner.scheduler_dag_bag.get_dag_for_run(dag_run=run, session=session)
            schedulable, _ = run.update_state(session=session, execute_callbacks=False)
            run.schedule_tis(schedulable, session=session)
            state = str(run.state)
        with create_session() as session:
            queued = self.runner._executable_task_instances_to_queued(max_tis=32, session=session)
            keys = [(ti.dag_id, ti.run_id, ti.task_id) for ti in queued]
        mine = [key for key in keys if key[0] == dag_id and key[2] in in_process]
        for key in mine:
            with create_session() as session:
                ti = session.query(TaskInstance).filter_by(dag_id=key[0], run_id=key[1], task_id=key[2],
                                                           state=TaskInstanceState.QUEUED).one()
                _run_task(ti=ti, task=self.dags[dag_id].task_dict[ti.task_id])
        return "running" if keys else state

    def fail_vanished_tasks(self, timeout: float = 30.0) -> None:
        """The scheduler's heartbeat-timeout check, then its handling of the executor's FAILED event.

        Repeated (as the scheduler's loop repeats it) until no task instance of this job is left running
        without a heartbeat; the first pass that finds one is ``task_instance_heartbeat_timeout`` after the
        task's last heartbeat.
        """
        from airflow.utils.session import create_session

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with create_session() as session:
                vanished = self.runner._find_task_instances_without_heartbeats(session=session)
                ids = [ti.id for ti in vanished]
            if ids:
                self.runner._find_and_purge_task_instances_without_heartbeats()
                with create_session() as session:
                    self.runner._process_executor_events(self.runner.executor, session)
                return
            time.sleep(0.1)
        raise TimeoutError("no task instance without a heartbeat was found")

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> Any:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
            session.expunge(ti)
            return ti

    def run_until(self, dag_id: str, run_id: str, done: Any, *, in_process: tuple[str, ...] = (),
                  timeout: float = 120.0) -> str:
        """Tick until ``done()`` is true or the run ends; returns the run's state."""
        deadline = time.monotonic() + timeout
        state = "running"
        while time.monotonic() < deadline:
            state = self.tick(dag_id, run_id, in_process)
            if done() or state in ("success", "failed"):
                return state
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish in {timeout} s")

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        import json

        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key="return_value")
                .one_or_none()
            )
            if row is None:
                return None
            value = row.value
        return json.loads(value) if isinstance(value, str) else value

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """What the task wrote to its task state store (the checkpoints), read from the metadata DB."""
        import json

        from airflow.models.task_state_store import TaskStateStoreModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(TaskStateStoreModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).all()
            return {row.key: json.loads(row.value) for row in rows}


class Worker:
    """A warm worker process (``run_task_instance.py --serve``) that forks a task process per command."""

    def __init__(self, ready_file: pathlib.Path) -> None:
        self.ready_file = ready_file
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_task_instance", "--serve", str(ready_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
        )
        self.output: deque[str] = deque(maxlen=300)
        self.events: queue.Queue[tuple[str, int, int]] = queue.Queue()
        self.pid: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            words = line.split()
            if words[:1] == ["STARTED"]:
                self.pid = int(words[1])
            if words[:1] == ["EXITED"]:
                self.events.put(("EXITED", int(words[1]), int(words[2])))

    def tail(self) -> str:
        return "".join(self.output)[-4000:]

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.process.poll() is None, self.tail()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)

    def run(self, path: str, dag_id: str, task_id: str, try_number: int) -> None:
        """Ask for that try to be run once the scheduler queues it."""
        assert self.process.stdin is not None
        self.pid = None
        self.process.stdin.write(f"{path} {dag_id} {task_id} {try_number}\n")
        self.process.stdin.flush()

    def exited(self, timeout: float = 120.0) -> int:
        """The wait status of the task process that ran last."""
        try:
            return self.events.get(timeout=timeout)[2]
        except queue.Empty:
            raise AssertionError(f"the task process did not end:\n{self.tail()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
