"""A stand-in for an executor's worker: run one task of a DAG file once the scheduler has queued it.

``python -m tests.support.run_task_instance <dag file> <task_id> <ready file>``. The worker starts, loads
Airflow and the in-process execution API (the slow part), touches ``<ready file>``, then waits until the
task's instance is QUEUED in the metadata DB and runs it at once, the way ``dag.test()`` runs a task. The
pool test starts one worker per sync task, so tasks the scheduler queues together really run together
(``dag.test()`` alone runs one task at a time, whatever the pools say).

``--serve <ready file>`` keeps one warm worker that forks a task process per command (see :func:`serve`): the
kill tests SIGKILL that process and the next try starts without loading Airflow again.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import time


def run(path: str, task_id: str, ready_file: str, timeout: float = 180.0) -> str:
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.definitions.dag import _run_task
    from airflow.sdk.execution_time.supervisor import in_process_api_server
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    spec = importlib.util.spec_from_file_location("dag_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    dag = module.dag
    # Build the execution API and let it take its first request now (it sets its routes up lazily, for
    # seconds), so the task starts the moment it is queued.
    import httpx

    with httpx.Client(transport=in_process_api_server().transport, base_url="http://in-process") as client:
        client.get("/execution/health")
    pathlib.Path(ready_file).touch()
    print("READY", time.time(), flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=dag.dag_id, task_id=task_id, state=TaskInstanceState.QUEUED)
                .one_or_none()
            )
            if ti is not None:
                _run_task(ti=ti, task=dag.task_dict[task_id])
                return "success" if ti.state == TaskInstanceState.SUCCESS else str(ti.state)
        time.sleep(0.05)
    return "never queued"


if __name__ == "__main__" and sys.argv[1:2] != ["--serve"]:
    state = run(*sys.argv[1:4])
    print(f"task {sys.argv[2]}: {state}")
    sys.exit(0 if state == "success" else 1)


def serve(ready_file: str) -> None:
    """A warm worker that runs task instances in forked task processes, one command line at a time.

    ``python -m tests.support.run_task_instance --serve <ready file>``, then one line per task on stdin:
    ``<dag file> <dag_id> <task_id> <try_number>``. For each, the worker waits until that try is QUEUED,
    forks the task process (Airflow's supervisor forks its task process the same way), prints
    ``STARTED <pid>`` and, once the process has ended (or was killed), ``EXITED <pid> <wait status>``.
    The kill tests SIGKILL the task process mid-delivery: its worker lives on, warm, for the next try.
    """
    import asyncio
    import os

    import httpx
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.definitions.dag import _run_task
    from airflow.sdk.execution_time.supervisor import in_process_api_server
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    async def warm_up() -> None:  # routes set up here; the sync transport's loop thread is the child's own
        transport = in_process_api_server().atransport
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
            await client.get("/execution/health")

    asyncio.run(warm_up())
    import airflow_provider_zeotap.sync.runner  # noqa: F401 - the engine's imports, before any fork

    pathlib.Path(ready_file).touch()
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        path, dag_id, task_id, try_number = line.split()
        spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        task = {dag.dag_id: dag for dag in module.dags}[dag_id].task_dict[task_id]
        query = dict(dag_id=dag_id, task_id=task_id, try_number=int(try_number), state=TaskInstanceState.QUEUED)
        while True:
            with create_session() as session:
                if session.query(TaskInstance).filter_by(**query).one_or_none() is not None:
                    break
            time.sleep(0.02)
        settings.engine.dispose()  # the task process opens its own connections
        pid = os.fork()
        if pid == 0:  # the task process
            code = 1
            try:
                with create_session() as session:
                    ti = session.query(TaskInstance).filter_by(**query).one()
                    _run_task(ti=ti, task=task)
                    code = 0 if ti.state == TaskInstanceState.SUCCESS else 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        print("STARTED", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("EXITED", pid, status, flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(sys.argv[2])
    sys.exit(0)
