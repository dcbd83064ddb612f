"""Benchmark extracting a PostgreSQL result into Parquet parts, streamed against buffered.

    python benchmarks/pg_extract_benchmark.py [--rows 2000000] [--chunk-size 50000] [--repeat 1]

Starts a private PostgreSQL server (the ``pgserver`` package) in a temporary directory under
``benchmarks/.work/``, then runs ``sql_to_parts`` over a query that generates the rows on the server
(``generate_series``: an id, an email, a NUMERIC(12,3) amount, a name, a TIMESTAMPTZ and a boolean).
Each way of reading runs in a fresh subprocess, so the peak RSS reported (the child's ``VmHWM``) is
that extraction's alone:

- ``server-side``: what the provider does, a psycopg2 named cursor fetching ``--chunk-size`` rows per
  round trip;
- ``client-side``: the baseline, psycopg2's default cursor, which holds the whole result in the
  client from ``execute()`` on, so ``fetchmany`` bounds nothing.

``idle RSS`` is the child's RSS after its imports and before the extraction; ``growth`` is the peak
above it. The server and the work directory are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORK_ROOT = Path(__file__).resolve().parent / ".work"
MODES = ("server-side", "client-side")

QUERY = """
    SELECT g AS id,
           'user' || g || '@example.com' AS email,
           ((g % 1000003) / 7.0)::NUMERIC(12, 3) AS amount,
           'name ' || (g * 7919 % 100003) AS name,
           TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * INTERVAL '1 second' AS created_at,
           g % 3 = 0 AS active
    FROM generate_series(1::BIGINT, {rows}) AS g
"""


@dataclass(frozen=True)
class Measurement:
    mode: str
    rows: int
    parts: int
    wall_s: float
    idle_mb: float
    peak_mb: float

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.idle_mb


# --------------------------------------------------------------------------------------------------
# The extraction (run inside the worker subprocess).
# --------------------------------------------------------------------------------------------------


class _Hook:
    """What ``sql_to_parts`` needs of a DbApiHook: a fresh psycopg2 connection."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def get_conn(self):  # noqa: ANN201 - a psycopg2 connection
        import psycopg2

        return psycopg2.connect(self.uri)


def worker(args: argparse.Namespace) -> None:
    """Extract once and print the figures as JSON."""
    import pyarrow.parquet as pq

    from airflow_provider_zeotap.sync.sources import sql_to_parts

    idle = _status_mb("VmRSS")
    started = time.perf_counter()
    parts = sql_to_parts(
        _Hook(args.uri),
        QUERY.format(rows=args.rows),
        args.out,
        chunk_size=args.chunk_size,
        server_side_cursor=args.worker == "server-side",
    )
    wall = time.perf_counter() - started
    rows = sum(pq.read_metadata(part).num_rows for part in parts)
    print(json.dumps({"rows": rows, "parts": len(parts), "wall_s": wall, "idle_mb": idle, "peak_mb": _status_mb("VmHWM")}))


def _status_mb(field: str) -> float:
    """A figure of this process from ``/proc/self/status`` (Linux), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


def measure(mode: str, uri: str, work: Path, args: argparse.Namespace) -> Measurement:
    out_dir = tempfile.mkdtemp(prefix=f"{mode}-", dir=work)
    command = [sys.executable, __file__, "--worker", mode, "--uri", uri, "--out", out_dir]
    command += ["--rows", str(args.rows), "--chunk-size", str(args.chunk_size)]
    completed = subprocess.run(command, capture_output=True, text=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {mode} extraction failed:\n{completed.stderr[-3000:]}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return Measurement(mode, figures["rows"], figures["parts"], figures["wall_s"], figures["idle_mb"], figures["peak_mb"])


def report(results: list[Measurement]) -> None:
    print(f"\n{'mode':<12} {'rows':>11} {'parts':>6} {'wall s':>7} {'idle RSS MB':>12} {'peak RSS MB':>12} {'growth MB':>10}")
    for m in results:
        print(
            f"{m.mode:<12} {m.rows:>11,} {m.parts:>6} {m.wall_s:>7.2f} {m.idle_mb:>12.0f} {m.peak_mb:>12.0f} "
            f"{m.growth_mb:>10.0f}"
        )
    streamed, buffered = results[0], results[1]
    print(
        f"\nserver-side cursor: {streamed.growth_mb:.0f} MB above idle against {buffered.growth_mb:.0f} MB "
        f"for the buffering default ({buffered.growth_mb / max(streamed.growth_mb, 1):.1f}x less)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the median wall time is reported")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import pgserver

    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pg-", dir=WORK_ROOT))
    server = pgserver.get_server(str(work / "pgdata"), cleanup_mode="stop")
    results: list[Measurement] = []
    try:
        print(f"extracting {args.rows:,} rows in chunks of {args.chunk_size:,} ...", flush=True)
        for mode in MODES:
            runs = [measure(mode, server.get_uri(), work, args) for _ in range(args.repeat)]
            print(f"  {mode}: " + ", ".join(f"{m.wall_s:.2f} s / {m.peak_mb:.0f} MB" for m in runs), flush=True)
            results.append(sorted(runs, key=lambda m: m.wall_s)[len(runs) // 2])
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
