"""Real Airflow runs: a migrated SQLite metadata DB, DAG files written into the DAGs folder, dag.test()."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """``airflow db migrate`` once per session, in the private AIRFLOW_HOME set by tests/conftest.py."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return os.environ["AIRFLOW_HOME"]


@dataclass
class DagRunResult:
    state: str
    xcom: dict[str, Any]
    task_states: dict[str, str]
    tries: dict[str, int]
    run_id: str = ""

    def result(self, task_id: str) -> Any:
        return self.xcom.get(task_id)


class DagRunner:
    """Writes a DAG file into the DAGs folder and runs it with ``dag.test()``, one logical date per run."""

    def __init__(self) -> None:
        self.folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
        self._next_date = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def write(self, body: str) -> str:
        name = f"dag_{uuid.uuid4().hex[:10]}"
        path = os.path.join(self.folder, f"{name}.py")
        with open(path, "w") as handle:
            handle.write(textwrap.dedent(body))
        return path

    def run(self, path: str, *, conf: Mapping[str, Any] | None = None) -> DagRunResult:
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        dag = module.dag
        self._next_date += timedelta(hours=1)
        run = dag.test(logical_date=self._next_date, run_conf=dict(conf or {}))
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = (
                session.query(XComModel)
                .filter(XComModel.dag_id == dag.dag_id, XComModel.run_id == run.run_id, XComModel.key == "return_value")
                .all()
            )
            xcom = {row.task_id: _value(row.value) for row in rows}
        instances = run.get_task_instances()
        return DagRunResult(
            state=str(run.state),
            xcom=xcom,
            task_states={ti.task_id: str(ti.state) for ti in instances},
            tries={ti.task_id: ti.try_number for ti in instances},
            run_id=run.run_id,
        )


def _value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


@pytest.fixture
def dag_runner(airflow_db: str) -> DagRunner:
    return DagRunner()


class Warehouse:
    """A SQLite database standing in for the warehouse, reached through an Airflow SQL connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn_uri = json.dumps({"conn_type": "sqlite", "host": path})

    def replace(self, table: str, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')
            db.execute(f'CREATE TABLE "{table}" ({", ".join(f"{c!r}" for c in columns)})')
            db.executemany(
                f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(columns))})',
                [tuple(row.get(c) for c in columns) for row in rows],
            )


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> Warehouse:
    store = Warehouse(str(tmp_path / "warehouse.db"))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", store.conn_uri)
    return store


def connection_env(conn_type: str, host: str, password: str, **extra: Any) -> str:
    """An AIRFLOW_CONN_* value in Airflow's JSON form."""
    return json.dumps({"conn_type": conn_type, "host": host, "password": password, "extra": extra})


#: Retries fast enough for tests, patient enough for injected faults.
FAST_RETRIES = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 8}


@pytest.fixture
def personyze(personyze_emulator, monkeypatch):
    """The Personyze emulator, as the ``personyze_default`` connection of the DAGs under test."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERSONYZE_DEFAULT",
        connection_env("personyze", personyze_emulator.url, personyze_emulator.api_key, **FAST_RETRIES),
    )
    return personyze_emulator


@pytest.fixture
def permutive(permutive_emulator, monkeypatch):
    """The Permutive emulator, as the ``permutive_default`` connection of the DAGs under test."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT",
        connection_env("permutive", permutive_emulator.url, permutive_emulator.write_key, **FAST_RETRIES),
    )
    return permutive_emulator


@pytest.fixture
def zeotap(zeotap_emulator, monkeypatch):
    """The Zeotap emulator, as the ``zeotap_default`` connection (its organisation and region) of the DAGs under test."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_ZEOTAP_DEFAULT",
        connection_env("zeotap", zeotap_emulator.url, zeotap_emulator.api_key, org_id=str(zeotap_emulator.org_id),
                       region=zeotap_emulator.region, **FAST_RETRIES),
    )
    return zeotap_emulator


@dataclass(frozen=True)
class Postgres:
    uri: str
    socket_dir: str
    port: int

    def airflow_connection(self) -> str:
        """An AIRFLOW_CONN_* value: the socket directory is the host, as libpq takes it."""
        return json.dumps(
            {"conn_type": "postgres", "host": self.socket_dir, "port": self.port, "login": "postgres", "schema": "postgres"}
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One server for the session, in a directory of its own.

    Not under pytest's temporary root: run as root, pgserver runs PostgreSQL as a system user of its
    own, which needs to reach the data directory also when it is stopped.
    """
    import pgserver

    work = tempfile.mkdtemp(prefix="zeotap-pg-")
    server = pgserver.get_server(os.path.join(work, "pgdata"), cleanup_mode="stop")
    try:
        uri = server.get_uri()
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        yield Postgres(uri=uri, socket_dir=query["host"][0], port=int(query.get("port", [parsed.port or 5432])[0]))
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        # pgserver logs again from its exit hook, after pytest has closed the captured streams.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
