"""SQL extraction from a real PostgreSQL server: streamed through server-side cursors, typed from the cursor.

The server is the ``pgserver`` package's own PostgreSQL, started once per session in a temporary
directory and stopped at the end. Extraction memory is measured in child processes (their ``VmHWM``),
so nothing else this test session loaded is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import psycopg2
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.sources import sql_to_parts
from tests.integration.conftest import Postgres

pytestmark = pytest.mark.integration

CONN_ID = "zeotap_pg"

#: Rows generated on the server. ``amount`` is NUMERIC(12,3), yet every value of the first chunks is
#: below 125 with at most three decimals: inferred from the values it would be DECIMAL(6,3) at most.
ROWS_SQL = """
    SELECT g AS id,
           'user' || g || '@example.com' AS email,
           ((g % 1000) / 8.0)::NUMERIC(12, 3) AS amount,
           TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second' AS created_at
    FROM generate_series(1::BIGINT, {rows}) AS g
"""


@pytest.fixture
def pg_connection(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", postgres.airflow_connection())
    return CONN_ID


class DriverHook:
    """A DbApiHook's ``get_conn`` over a real driver, for what an Airflow connection cannot choose."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect
        self.opened: list[Any] = []

    def get_conn(self) -> Any:
        self.opened.append(self.connect())
        return self.opened[-1]


DRIVERS = {
    "psycopg2": lambda uri: psycopg2.connect(uri),
    "psycopg2 autocommit": lambda uri: _autocommit(psycopg2.connect(uri)),
    "psycopg": lambda uri: psycopg.connect(uri),
    "psycopg autocommit": lambda uri: psycopg.connect(uri, autocommit=True),
}


def _autocommit(conn: Any) -> Any:
    conn.autocommit = True
    return conn


def part_types(parts: list[str]) -> list[dict[str, str]]:
    return [{field.name: str(field.type) for field in pq.read_schema(part)} for part in parts]


def read_all(parts: list[str]) -> list[tuple]:
    files = ", ".join(f"'{part}'" for part in parts)
    return duckdb.sql(f"SELECT * FROM read_parquet([{files}], union_by_name = true) ORDER BY 1").fetchall()


# ------------------------------------------------------------------------------------ memory


_EXTRACT_IN_CHILD = textwrap.dedent(
    """
    import json, sys
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk.bases.hook import BaseHook
    import pyarrow.parquet as pq
    from airflow_provider_zeotap.sync.sources import sql_to_parts

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

    conn_id, sql, out = sys.argv[1:4]
    hook = BaseHook.get_hook(conn_id)  # what SyncDiffOperator does with conn_id
    assert isinstance(hook, DbApiHook), type(hook)
    idle = status("VmRSS")
    parts = sql_to_parts(hook, sql, out, chunk_size=50_000)
    print(json.dumps({
        "hook": type(hook).__name__,
        "rows": sum(pq.read_metadata(p).num_rows for p in parts),
        "types": sorted({str(pq.read_schema(p).field("amount").type) for p in parts}),
        "idle_mb": idle,
        "peak_mb": status("VmHWM"),
    }))
    """
)


def extract_in_child(conn_id: str, rows: int, out: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", _EXTRACT_IN_CHILD, conn_id, ROWS_SQL.format(rows=rows), str(out)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_million_rows_stream_through_an_airflow_connection_in_flat_memory(
    pg_connection: str, tmp_path: Path
) -> None:
    small = extract_in_child(pg_connection, 200_000, tmp_path / "small")
    large = extract_in_child(pg_connection, 2_000_000, tmp_path / "large")

    assert (small["hook"], small["rows"], large["rows"]) == ("PostgresHook", 200_000, 2_000_000)
    # Buffered by the driver's default cursor, 2M of these rows cost about 350 MB more than 200k (see
    # benchmarks/pg_extract_benchmark.py). Streamed, ten times the rows may cost only a little more.
    growth = {name: run["peak_mb"] - run["idle_mb"] for name, run in (("small", small), ("large", large))}
    assert large["peak_mb"] - small["peak_mb"] < 60, (small, large)
    assert growth["large"] < 250, growth
    # The declared NUMERIC(12,3), in every part, though the values alone would infer narrower.
    assert large["types"] == ["decimal128(12, 3)"]


# ------------------------------------------------------------------------------------ drivers


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_each_postgres_driver_streams_with_a_named_cursor_and_ends_its_transaction(
    postgres: Postgres, driver: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = DriverHook(lambda: DRIVERS[driver](postgres.uri))

    with caplog.at_level("INFO", logger="airflow_provider_zeotap.sync.sources"):
        parts = sql_to_parts(hook, ROWS_SQL.format(rows=120_000), str(tmp_path), chunk_size=50_000)

    assert [pq.read_metadata(part).num_rows for part in parts] == [50_000, 50_000, 20_000]
    assert {types["amount"] for types in part_types(parts)} == {"decimal128(12, 3)"}
    assert any("server-side cursor, 50000 rows per fetch" in r.getMessage() for r in caplog.records)
    assert hook.opened[0].closed
    assert open_sessions(postgres) == []


def open_sessions(postgres: Postgres, *, settle_s: float = 5.0) -> list[tuple]:
    """Other client sessions still connected to the server (an extract must leave none).

    A backend leaves ``pg_stat_activity`` shortly after its client disconnects, so a session still
    listed is asked about again until ``settle_s`` has passed.
    """
    deadline = time.monotonic() + settle_s
    conn = psycopg2.connect(postgres.uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            while True:
                cursor.execute(
                    "SELECT pid, state, query FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
                rows = cursor.fetchall()
                if not rows or time.monotonic() > deadline:
                    return rows
                time.sleep(0.05)
    finally:
        conn.close()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg autocommit"])
def test_an_error_mid_stream_closes_cursor_transaction_and_connection(
    postgres: Postgres, driver: str, tmp_path: Path
) -> None:
    hook = DriverHook(lambda: DRIVERS[driver](postgres.uri))
    failing = "SELECT g, 1 / (g - 70000) AS x FROM generate_series(1, 100000) AS g"

    with pytest.raises((psycopg2.DataError, psycopg.errors.DivisionByZero)):
        sql_to_parts(hook, failing, str(tmp_path), chunk_size=50_000)

    assert len(list(tmp_path.glob("*.parquet"))) == 1  # the first chunk arrived before the error
    assert hook.opened[0].closed
    assert open_sessions(postgres) == []


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_postgres_types_come_from_the_cursor_description(postgres: Postgres, driver: str, tmp_path: Path) -> None:
    hook = DriverHook(lambda: DRIVERS[driver](postgres.uri))
    sql = """
        SELECT 1::INT2 AS i2, 2::INT4 AS i4, 3::INT8 AS i8, 0.1::FLOAT4 AS f4, 0.1::FLOAT8 AS f8,
               1.5::NUMERIC(12, 3) AS n, 1.25::NUMERIC AS free_n, 'a'::TEXT AS t, 'b'::VARCHAR(5) AS v,
               'c'::CHAR(2) AS c, true AS b, DATE '2026-02-03' AS d,
               TIMESTAMP '2026-02-03 04:05:06.789' AS ts,
               TIMESTAMPTZ '2026-02-03 04:05:06+02' AS tstz,
               '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID AS u,
               '{"k": [1, "é"]}'::JSON AS j, '"s"'::JSONB AS jb, '\\x00ff'::BYTEA AS raw,
               NULL::INT4 AS nothing
    """

    parts = sql_to_parts(hook, sql, str(tmp_path))

    assert part_types(parts) == [
        {
            "i2": "int16", "i4": "int32", "i8": "int64", "f4": "double", "f8": "double",
            "n": "decimal128(12, 3)", "free_n": "decimal128(3, 2)", "t": "string", "v": "string",
            "c": "string", "b": "bool", "d": "date32[day]", "ts": "timestamp[us]",
            "tstz": "timestamp[us, tz=UTC]", "u": "string", "j": "string", "jb": "string",
            "raw": "binary", "nothing": "int32",
        }
    ]
    (row,) = pq.read_table(parts[0]).to_pylist()
    assert row["f4"] == 0.1  # the driver's value, not a float32 rounding of it
    assert row["n"] == Decimal("1.500") and row["free_n"] == Decimal("1.25")
    assert row["ts"] == datetime(2026, 2, 3, 4, 5, 6, 789000)
    assert row["tstz"] == datetime(2026, 2, 3, 2, 5, 6, tzinfo=timezone.utc)
    assert row["d"] == date(2026, 2, 3)
    assert row["u"] == str(uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))
    assert json.loads(row["j"]) == {"k": [1, "é"]} and row["jb"] == '"s"'
    assert row["raw"] == b"\x00\xff" and row["c"] == "c " and row["nothing"] is None


def test_an_empty_result_keeps_declared_types_though_psycopg2_describes_only_after_a_fetch(
    postgres: Postgres, tmp_path: Path
) -> None:
    hook = DriverHook(lambda: psycopg2.connect(postgres.uri))

    parts = sql_to_parts(hook, ROWS_SQL.format(rows=0), str(tmp_path))

    assert [pq.read_metadata(part).num_rows for part in parts] == [0]
    assert part_types(parts) == [
        {"id": "int64", "email": "string", "amount": "decimal128(12, 3)", "created_at": "timestamp[us, tz=UTC]"}
    ]


def test_a_value_the_declared_type_cannot_hold_is_an_error_naming_the_column(
    postgres: Postgres, tmp_path: Path
) -> None:
    hook = DriverHook(lambda: psycopg2.connect(postgres.uri))

    with pytest.raises(ValueError, match=r"Source column 'n' is declared decimal128\(5, 1\).*Cast the column"):
        sql_to_parts(hook, "SELECT 'NaN'::NUMERIC(5, 1) AS n", str(tmp_path))


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_statement_a_server_side_cursor_cannot_run_is_explained(
    postgres: Postgres, driver: str, tmp_path: Path
) -> None:
    hook = DriverHook(lambda: DRIVERS[driver](postgres.uri))

    with pytest.raises(ValueError, match=r"server-side cursor \(syntax error at or near \"SET\"\).*single SELECT"):
        sql_to_parts(hook, "SET search_path TO public; SELECT 1 AS a", str(tmp_path))
    assert hook.opened[0].closed and open_sessions(postgres) == []


def test_the_buffering_default_cursor_stays_available_for_comparison(postgres: Postgres, tmp_path: Path) -> None:
    hook = DriverHook(lambda: psycopg2.connect(postgres.uri))

    parts = sql_to_parts(hook, ROWS_SQL.format(rows=10), str(tmp_path), server_side_cursor=False)

    assert [row[0] for row in read_all(parts)] == list(range(1, 11))
    assert part_types(parts)[0]["amount"] == "decimal128(12, 3)"


# ------------------------------------------------------------------------------------ operator


def test_sync_diff_operator_reads_postgres_through_its_connection(
    dag_runner, pg_connection: str, tmp_path: Path
) -> None:
    sql = " ".join(ROWS_SQL.format(rows=120_000).split())
    dag = dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator

        with DAG(dag_id="postgres_source", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            SyncDiffOperator(task_id="diff", sync_id="postgres_source", conn_id={pg_connection!r},
                             sql={sql!r}, primary_key="id", chunk_size=50_000,
                             state_uri="file://{tmp_path}/state")
    ''')

    run = dag_runner.run(dag)

    assert run.state == "success", run.task_states
    plan = run.result("diff")
    assert plan["counts"]["added"] == 120_000 and plan["source_columns"] == ["id", "email", "amount", "created_at"]
    snapshot = plan["snapshot_uri"].removeprefix("file://")
    types = dict(duckdb.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{snapshot}')").fetchall())
    assert types == {
        "id": "BIGINT",
        "email": "VARCHAR",
        "amount": "DECIMAL(12,3)",
        "created_at": "TIMESTAMP WITH TIME ZONE",
    }
