"""A stand-in for an executor's worker: run one task of a DAG file once the scheduler has queued it.

``python -m tests.support.run_task_instance <dag file> <task_id> <ready file>``. The worker starts, loads
Airflow and the in-process execution API (the slow part), touches ``<ready file>``, then waits until the
task's instance is QUEUED in the metadata DB and runs it at once, the way ``dag.test()`` runs a task. The
pool test starts one worker per sync task, so tasks the scheduler queues together really run together
(``dag.test()`` alone runs one task at a time, whatever the pools say).
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


if __name__ == "__main__":
    state = run(*sys.argv[1:4])
    print(f"task {sys.argv[2]}: {state}")
    sys.exit(0 if state == "success" else 1)
