"""Benchmark the delivery: is its peak RSS bounded whatever the number of changed rows?

    python benchmarks/delivery_benchmark.py [--rows 100000 1000000] [--repeat 3] [--batch-size 1000]
                                            [--memory-limit 64MB]

The delivery reads the changes file in batches, so delivering 1M changed rows should take about the
memory of delivering 100k; the target is a peak RSS within 10% of the smallest size measured in the
same invocation (the baseline).

For each size it writes a synthetic source (an integer key plus seven columns of mixed types: names,
emails, numbers, a flag, timestamps, a country) under ``benchmarks/.work/``. Each repeat then runs two
fresh subprocesses on a fresh state folder:

1. the diff against an empty base, so every row is an 'added' change; it writes the plan as JSON;
2. the delivery of that plan with ``DeliveryRunner`` in upsert mode, commit included, to an in-process
   destination that acknowledges every row at once and sends nothing over a network: the figures are
   the engine's, not a vendor's. Its ``identity()`` is the row's email, so the identity pass runs.

``--memory-limit`` defaults to the engine's own default for delivery (64MB), the limit a sync task runs under when
its author sets none. A delivery that stops (say, DuckDB out of memory) is reported with its peak RSS
up to the stop and counts as a missed target.

Each process reports its own peak RSS (``VmHWM``), so the delivery's figure does not carry the diff's
memory. Wall time is timed inside the child, after the interpreter and libraries are loaded. Figures
are the run with the median delivery wall time. The work directory is removed at the end (``--keep``
keeps it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from measure import peak_rss_mb  # run as a script, so its own folder is on sys.path

WORK_ROOT = Path(__file__).resolve().parent / ".work"
KEY = "id"
SYNC_ID = "delivery_benchmark"
MODE = "upsert"
#: The issue's bound: delivering the largest size may take at most this much more peak RSS than the smallest.
TARGET_RSS_RATIO = 1.10


@dataclass(frozen=True)
class Measurement:
    rows: int
    diff_wall_s: float
    diff_rss_mb: float
    wall_s: float
    rss_mb: float
    succeeded: int
    batches: int
    #: Why the delivery stopped, when it did (say, DuckDB out of memory in the commit); None when it finished.
    error: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


# --------------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------------

_ROW_SQL = f"""{KEY},
    'name ' || ({KEY} * 7919 % 100003)::VARCHAR AS name,
    'user' || {KEY}::VARCHAR || '@example.com' AS email,
    ({KEY} % 90)::INTEGER AS age,
    ({KEY} % 1000) / 10.0::DOUBLE AS score,
    {KEY} % 3 = 0 AS active,
    TIMESTAMP '2020-01-01' + to_seconds({KEY}) AS created_at,
    ['FR', 'DE', 'US', 'IN', 'BR'][{KEY} % 5 + 1] AS country"""


def generate(rows: int, data_dir: Path) -> Path:
    """A source of ``rows`` distinct keys (and so distinct emails), shuffled like a warehouse extract."""
    import duckdb

    source = data_dir / "source.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT {_ROW_SQL} FROM range({rows}) AS t({KEY}) ORDER BY hash({KEY})) "
        f"TO '{source}' (FORMAT parquet)"
    )
    con.close()
    return source


# --------------------------------------------------------------------------------------------------
# What the children run.
# --------------------------------------------------------------------------------------------------


class _MemoryStore:
    """Stands in for Airflow's asset and task state stores: the committed pointer and the checkpoints."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _acknowledging_destination() -> Any:
    """A destination that answers every row 'succeeded' at once: it measures the engine, not a vendor.

    Defined inside a function so that the parent process never imports the engine.
    """
    from airflow_provider_zeotap.sync.destination import Capabilities, Destination, OutboundRow, RowOutcome
    from airflow_provider_zeotap.sync.modes import RECORD_MODES, Operation

    class AcknowledgingDestination(Destination):
        capabilities = Capabilities(
            name="Benchmark destination",
            mode_argument="sync_mode",
            modes=MappingProxyType(dict(RECORD_MODES)),
            batch_size=1000,
            max_batch_size=100_000,
            required_fields=("email",),
            # Every source column but the key, so the mapping and payload hashing see whole rows.
            default_fields=("email", "name", "age", "score", "active", "created_at", "country"),
        )

        def identity(self, row: OutboundRow) -> str | None:
            """The email, as an email destination would key its records: exercises the identity pass."""
            email = row.payload.get("email")
            return email.lower() if isinstance(email, str) else None

        def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
            return [RowOutcome.ok(row) for row in rows]

    return AcknowledgingDestination()


def run_diff(source: str, state: str, plan_path: str, memory_limit: str | None) -> dict:
    """Diff the source against no base (every row is added) and write the plan as JSON."""
    from datetime import datetime, timezone

    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id

    storage = SyncStorage(f"file://{state}", SYNC_ID)
    plan_id = new_plan_id()
    out_dir = storage.local_dir(storage.plan_uri(plan_id))
    started = time.perf_counter()
    output = diff_snapshots(
        source_parts=[source],
        base_snapshot=None,
        primary_key=[KEY],
        columns=None,
        full_refresh=False,
        out_dir=out_dir,
        memory_limit=memory_limit,
    )
    wall = time.perf_counter() - started
    plan = Plan(
        sync_id=SYNC_ID,
        plan_id=plan_id,
        primary_key=[KEY],
        columns=output.columns,
        source_columns=output.source_columns,
        counts=output.counts,
        full_refresh=False,
        state_uri=storage.state_uri,
        snapshot_uri="file://" + output.snapshot_path,
        changes_uri="file://" + output.changes_path,
        invalid_uri="file://" + output.invalid_path,
        base=None,
        created_at=datetime.now(timezone.utc),
    )
    Path(plan_path).write_text(plan.model_dump_json(), encoding="utf-8")
    return {"wall_s": wall, "added": output.counts.added}


def run_delivery(state: str, plan_path: str, memory_limit: str | None, batch_size: int) -> dict:
    """Deliver the whole plan and commit it, as the sync task would (without Airflow around it)."""
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.runner import DeliveryRunner
    from airflow_provider_zeotap.sync.state import CommittedPointer
    from airflow_provider_zeotap.sync.storage import SyncStorage

    plan = Plan.model_validate_json(Path(plan_path).read_text(encoding="utf-8"))
    runner = DeliveryRunner(
        plan=plan,
        destination=_acknowledging_destination(),
        mode=MODE,
        storage=SyncStorage(f"file://{state}", SYNC_ID),
        pointer=CommittedPointer(_MemoryStore()),
        checkpoints=_MemoryStore(),
        batch_size=batch_size,
        memory_limit=memory_limit,
        progress_interval=3600.0,  # no progress lines in the benchmark's output
    )
    started = time.perf_counter()
    try:
        result = runner.run()
    except Exception as error:  # reported beside the figures: a size that cannot be delivered is a result
        return {"wall_s": time.perf_counter() - started, "succeeded": 0, "batches": 0, "error": _where(error)}
    wall = time.perf_counter() - started
    if result.committed is None or result.committed.rows != result.succeeded:
        raise RuntimeError(f"the commit does not hold the delivered rows: {result.committed!r}")
    return {"wall_s": wall, "succeeded": result.succeeded, "batches": result.batches}


def _where(error: Exception) -> str:
    """The error's first line and the engine function it came from, short enough for the table."""
    import traceback

    frames = [
        frame.name
        for frame in traceback.extract_tb(error.__traceback__)
        if "airflow_provider_zeotap" in frame.filename and not frame.filename.endswith("diff.py")
    ]
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__} in {frames[-1] if frames else '?'}: {message}"


def worker(args: argparse.Namespace) -> None:
    """Run one phase and print its figures as JSON; peak RSS is this process's high-water mark."""
    if args.worker == "diff":
        result = run_diff(args.source, args.state, args.plan, None)  # the diff keeps the engine's default
    else:
        result = run_delivery(args.state, args.plan, args.memory_limit, args.batch_size)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


def _child(phase: str, extra: list[str], args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", phase, *extra]
    if args.memory_limit:
        command += ["--memory-limit", args.memory_limit]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        # The child's last lines say why (say, DuckDB out of memory under a small memory_limit).
        sys.stderr.write("\n".join(completed.stderr.strip().splitlines()[-15:]) + "\n")
        raise RuntimeError(f"the {phase} process failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(rows: int, source: Path, work: Path, args: argparse.Namespace) -> Measurement:
    """One repeat: a fresh state folder, the diff in one child, the delivery in another."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    plan = state / "plan.json"
    try:
        diff = _child("diff", ["--source", str(source), "--state", str(state), "--plan", str(plan)], args)
        if diff["added"] != rows:
            raise RuntimeError(f"the diff found {diff['added']} added rows, not {rows}")
        extra = ["--state", str(state), "--plan", str(plan), "--batch-size", str(args.batch_size)]
        delivery = _child("delivery", extra, args)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return Measurement(
        rows=rows,
        diff_wall_s=diff["wall_s"],
        diff_rss_mb=diff["rss_mb"],
        wall_s=delivery["wall_s"],
        rss_mb=delivery["rss_mb"],
        succeeded=delivery["succeeded"],
        batches=delivery["batches"],
        error=delivery.get("error"),
    )


def _median(runs: list[Measurement]) -> Measurement:
    """The run with the median delivery wall time: a shared 2-core machine makes single runs noisy."""
    return sorted(runs, key=lambda m: m.wall_s)[len(runs) // 2]


def report(results: list[Measurement], args: argparse.Namespace) -> bool:
    baseline = min(results, key=lambda m: m.rows)
    print(
        f"\ndelivery of N added rows, upsert, batch size {args.batch_size}, "
        f"memory_limit {args.memory_limit or 'default'}; peak RSS relative to {baseline.rows:,} rows"
    )
    print(
        f"{'rows':>12}  {'wall s':>8} {'rows/s':>9} {'peak RSS MB':>12} {'ratio':>6}"
        f"   {'diff s':>7} {'diff MB':>8}  batches"
    )
    ok = True
    for m in sorted(results, key=lambda m: m.rows):
        ratio = m.rss_mb / baseline.rss_mb
        # A stopped delivery committed nothing: its rate and batch count would mean nothing.
        rate, batches = ("-", "-") if m.error else (f"{m.rows_per_s:,.0f}", str(m.batches))
        print(
            f"{m.rows:>12,}  {m.wall_s:>8.2f} {rate:>9} {m.rss_mb:>12.0f} {ratio:>6.2f}"
            f"   {m.diff_wall_s:>7.2f} {m.diff_rss_mb:>8.0f}  {batches}"
        )
        ok &= m.succeeded == m.rows
        if m.error:
            print(f"  !! the delivery of {m.rows:,} rows stopped after {m.wall_s:.0f} s (peak RSS up to then): {m.error}")
        elif m.succeeded != m.rows:
            print(f"  !! {m.succeeded:,} of {m.rows:,} rows succeeded")
    largest = max(results, key=lambda m: m.rows)
    if largest is not baseline:
        ratio = largest.rss_mb / baseline.rss_mb
        held = ratio <= TARGET_RSS_RATIO
        print(
            f"  target {'held ' if held else 'MISSED'}: peak RSS at {largest.rows:,} rows / at {baseline.rows:,} rows "
            f"= {largest.rss_mb:.0f} / {baseline.rss_mb:.0f} MB = {ratio:.2f} <= {TARGET_RSS_RATIO:.2f}"
        )
        ok &= held
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median is reported")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batch sent to the destination")
    parser.add_argument(
        "--memory-limit", default=None, help="DuckDB memory_limit of the delivery (default: the engine's, 64MB)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--worker", choices=("diff", "delivery"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="delivery-", dir=WORK_ROOT))
    results: list[Measurement] = []
    try:
        for rows in args.rows:
            data_dir = work / f"rows-{rows}"
            data_dir.mkdir()
            print(f"generating {rows:,} rows ...", flush=True)
            source = generate(rows, data_dir)
            runs = [measure(rows, source, work, args) for _ in range(args.repeat)]
            print(
                "  delivery: "
                + ", ".join(f"{m.wall_s:.2f} s / {m.rss_mb:.0f} MB{' (stopped)' if m.error else ''}" for m in runs),
                flush=True,
            )
            results.append(_median(runs))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
