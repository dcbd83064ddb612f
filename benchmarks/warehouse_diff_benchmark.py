"""Benchmark the diff in the warehouse against the diff on the worker, on PostgreSQL with 1% changed.

    python benchmarks/warehouse_diff_benchmark.py [--rows 10000000] [--small-rows 1000000] [--changed 0.01]

Starts a private PostgreSQL server (the ``pgserver`` package) under ``benchmarks/.work/`` and fills a
table with ``--rows`` rows on the server (``generate_series``: an id, an email, a NUMERIC(12,3)
amount, a name, a TIMESTAMPTZ and a boolean). Each path then has a committed state of every row (set
up, not measured: the worker path's snapshot from a first diff, the warehouse path's state table
filled by one INSERT ... SELECT with the dialect's own row hash), ``--changed`` of the rows are
updated, and the second diff is measured, each in a fresh subprocess:

- ``worker``: what ``diff_in="worker"`` does, the whole source extracted through a server-side cursor
  into Parquet parts, then diffed with DuckDB against the committed snapshot (the baseline);
- ``warehouse``: what ``diff_in="warehouse"`` does, the diff as SQL in PostgreSQL, only the changed
  rows streamed out into the changes file.

Bytes moved out of the database are counted at the socket: the subprocesses reach PostgreSQL through a
relay in this process that counts every byte the server sends. The peak RSS is the subprocess's
``VmHWM`` (``benchmarks/measure.py``). The warehouse path is also measured at ``--small-rows``, to show
that its worker memory does not grow with the source. The server and the work directory are removed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

WORK_ROOT = Path(__file__).resolve().parent / ".work"
TABLE = "bench_people"
COLUMNS = ["id", "email", "amount", "name", "created_at", "active"]
QUERY = f"SELECT * FROM {TABLE}"
FILL = f"""
    CREATE TABLE {TABLE} AS
    SELECT g AS id,
           'user' || g || '@example.com' AS email,
           ((g % 1000003) / 7.0)::NUMERIC(12, 3) AS amount,
           'name ' || (g * 7919 % 100003) AS name,
           TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * INTERVAL '1 second' AS created_at,
           g % 3 = 0 AS active
    FROM generate_series(1::BIGINT, {{rows}}) AS g
"""
SYNC_ID = "bench"
SCHEMA = "zeotap_bench"


@dataclass(frozen=True)
class Measurement:
    path: str
    rows: int
    changes: int
    wall_s: float
    peak_mb: float
    bytes_out: int


# --------------------------------------------------------------------------------------------------
# A relay that counts what the server sends.
# --------------------------------------------------------------------------------------------------


class CountingRelay:
    """A Unix socket in front of PostgreSQL's; counts the bytes that flow from the server to clients."""

    def __init__(self, server_socket: str, folder: Path) -> None:
        self.server_socket = server_socket
        self.path = str(folder / Path(server_socket).name)  # libpq looks for .s.PGSQL.<port> in the host folder
        self.bytes_out = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.server_socket)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                if counted:
                    with self._lock:
                        self.bytes_out += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> int:
        with self._lock:
            value, self.bytes_out = self.bytes_out, 0
        return value

    def close(self) -> None:
        self._listener.close()


# --------------------------------------------------------------------------------------------------
# Inside a subprocess.
# --------------------------------------------------------------------------------------------------


class _Hook:
    def __init__(self, uri: str) -> None:
        self.uri = uri

    def get_conn(self):  # noqa: ANN201 - a psycopg2 connection
        import psycopg2

        return psycopg2.connect(self.uri)


def run_worker_diff(uri: str, out: str, base: str | None) -> dict:
    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.sources import sql_to_parts

    parts = sql_to_parts(_Hook(uri), QUERY, os.path.join(out, "source"))
    output = diff_snapshots(source_parts=parts, base_snapshot=base, primary_key=["id"], columns=None,
                            full_refresh=False, out_dir=out)
    shutil.rmtree(os.path.join(out, "source"), ignore_errors=True)
    return {"changes": output.counts.added + output.counts.changed + output.counts.removed,
            "snapshot": output.snapshot_path}


def run_warehouse_diff(uri: str, out: str, chunk_size: int) -> dict:
    from airflow_provider_zeotap.sync.warehouse.store import WarehouseState

    state = WarehouseState(_Hook(uri), "postgres", sync_id=SYNC_ID, state_schema=SCHEMA)
    output = state.diff(sql=QUERY, parameters=None, primary_key=["id"], columns=None, first_run=False,
                        full_refresh=False, out_dir=out, chunk_size=chunk_size)
    return {"changes": output.counts.added + output.counts.changed + output.counts.removed}


def child(args: argparse.Namespace) -> None:
    from measure import peak_rss_mb  # run as a script, so its own folder is on sys.path

    started = time.perf_counter()
    if args.child == "worker":
        figures = run_worker_diff(args.uri, args.out, args.base)
    else:
        figures = run_warehouse_diff(args.uri, args.out, args.chunk_size)
    figures.update(wall_s=time.perf_counter() - started, peak_mb=peak_rss_mb())
    print(json.dumps(figures))


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


def spawn(path: str, uri: str, out: str, base: str | None = None, chunk_size: int = 50_000) -> dict:
    command = [sys.executable, __file__, "--child", path, "--uri", uri, "--out", out, "--chunk-size", str(chunk_size)]
    if base:
        command += ["--base", base]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {path} diff failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def prepare(server_uri: str, rows: int, changed: float, work: Path, worker: bool = True) -> str | None:
    """Fill the table, commit every row on both paths, then change ``changed`` of them. Returns the base snapshot."""
    import psycopg2

    from airflow_provider_zeotap.sync.warehouse.dialects import HASH_COLUMN, PostgresDialect
    from airflow_provider_zeotap.sync.warehouse.store import state_table_name

    dialect = PostgresDialect()
    table = dialect.table(SCHEMA, state_table_name(SYNC_ID))
    with psycopg2.connect(server_uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(FILL.format(rows=rows))
        cursor.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    # The warehouse path's first run: the state table (created by the diff), then every row committed.
    state_out = tempfile.mkdtemp(prefix="setup-", dir=work)
    with psycopg2.connect(server_uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"CREATE TABLE setup_empty AS SELECT * FROM {TABLE} WHERE false")
    from airflow_provider_zeotap.sync.warehouse.store import WarehouseState

    WarehouseState(_Hook(server_uri), dialect, sync_id=SYNC_ID, state_schema=SCHEMA).diff(
        sql="SELECT * FROM setup_empty", parameters=None, primary_key=["id"], columns=None, first_run=True,
        full_refresh=False, out_dir=state_out)
    with psycopg2.connect(server_uri) as pg, pg.cursor() as cursor:
        for statement in dialect.session_setup:
            cursor.execute(statement)
        cursor.execute(
            f"INSERT INTO {table} SELECT s.*, {dialect.row_hash('s', COLUMNS)} AS {dialect.quote(HASH_COLUMN)}, "
            f"NULL, NULL, NULL FROM {TABLE} AS s"
        )
        cursor.execute("DROP TABLE setup_empty")
    # The worker path's first run: its committed snapshot (every row, no delivery columns yet).
    first = spawn("worker", server_uri, tempfile.mkdtemp(prefix="setup-", dir=work)) if worker else {"snapshot": None}
    with psycopg2.connect(server_uri) as pg, pg.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET name = name || ' (changed)' WHERE id %% %s = 0", (round(1 / changed),))
    return first["snapshot"]


def measure(path: str, relay: CountingRelay, relay_uri: str, rows: int, work: Path, base: str | None,
            chunk_size: int) -> Measurement:
    relay.take()
    figures = spawn(path, relay_uri, tempfile.mkdtemp(prefix=f"{path}-", dir=work), base, chunk_size)
    return Measurement(path, rows, figures["changes"], figures["wall_s"], figures["peak_mb"], relay.take())


def report(results: list[Measurement]) -> None:
    print(f"\n{'path':<10} {'source rows':>12} {'changes':>9} {'wall s':>7} {'peak RSS MB':>12} {'bytes out of PG':>16}")
    for m in results:
        print(f"{m.path:<10} {m.rows:>12,} {m.changes:>9,} {m.wall_s:>7.1f} {m.peak_mb:>12.0f} {m.bytes_out:>16,}")
    if results[0].path != "worker":
        small = results[1]
        print(f"\nwarehouse path worker RSS: {results[0].peak_mb:.0f} MB at {results[0].rows:,} rows against "
              f"{small.peak_mb:.0f} MB at {small.rows:,} rows: {results[0].peak_mb / small.peak_mb:.2f}x (flat: ~1)")
        return
    worker, warehouse = results[0], results[1]
    print(f"\nbytes out of the database: warehouse diff {warehouse.bytes_out / 2**20:.1f} MiB against the worker diff's "
          f"{worker.bytes_out / 2**20:.1f} MiB: {worker.bytes_out / max(warehouse.bytes_out, 1):.0f}x fewer (target >= 50x)")
    print(f"wall time: {warehouse.wall_s:.1f} s against {worker.wall_s:.1f} s; worker peak RSS {warehouse.peak_mb:.0f} MB "
          f"against {worker.peak_mb:.0f} MB")
    if len(results) > 2:
        small = results[2]
        print(f"warehouse path worker RSS: {warehouse.peak_mb:.0f} MB at {warehouse.rows:,} rows against "
              f"{small.peak_mb:.0f} MB at {small.rows:,} rows: {warehouse.peak_mb / small.peak_mb:.2f}x (flat: ~1)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000, help="0: skip the flat-memory check")
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--small-changed", type=float, default=None,
                        help="share changed at --small-rows (default: --changed); equal change counts isolate the source size")
    parser.add_argument("--chunk-size", type=int, default=50_000, help="rows per fetch of the changes")
    parser.add_argument("--warehouse-only", action="store_true", help="skip the worker path (its set-up is long)")
    parser.add_argument("--child", choices=("worker", "warehouse"), help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    import pgserver

    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wh-", dir=WORK_ROOT))
    server = pgserver.get_server(str(work / "pgdata"), cleanup_mode="stop")
    relay_dir = work / "relay"
    relay_dir.mkdir()
    os.chmod(work, 0o755)
    results: list[Measurement] = []
    try:
        uri = server.get_uri()
        socket_dir = uri.split("host=")[1].split("&")[0]
        port = next(name for name in os.listdir(socket_dir) if name.startswith(".s.PGSQL.") and "lock" not in name)
        relay = CountingRelay(os.path.join(socket_dir, port), relay_dir)
        relay_uri = uri.replace(socket_dir, str(relay_dir))
        for rows in [args.rows] + ([args.small_rows] if args.small_rows else []):
            changed = args.changed if rows == args.rows else (args.small_changed or args.changed)
            print(f"preparing {rows:,} rows ({changed:.1%} changed) ...", flush=True)
            with_worker = rows == args.rows and not args.warehouse_only
            base = prepare(uri, rows, changed, work, worker=with_worker)
            for path in ("worker", "warehouse") if with_worker else ("warehouse",):
                print(f"  {path} diff ...", flush=True)
                results.append(measure(path, relay, relay_uri, rows, work, base, args.chunk_size))
        relay.close()
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
