"""Benchmark Personyze user upserts: batched ``POST /rest/do`` beside one ``POST /rest/users`` per row.

    python benchmarks/personyze_do_benchmark.py [--latency-ms 50] [--per-row-rows 300] [--do-rows 20000]
                                                [--batch-size 100]

``POST /rest/users`` takes one user per request and one request in flight per account, so its rate is about
one user per round trip. ``POST /rest/do`` takes a batch of ``"User profile"`` commands per request, a few
requests in flight. The goal: users upserted through ``do`` at least 50 times faster than per row (the
baseline), both measured in this one invocation against the same emulator at the same latency.

The Personyze emulator runs in this process, with ``latency_ms`` added to every request. Each path runs in a
fresh subprocess: it diffs N users against an empty base (every row is a change), then delivers the plan with
``DeliveryRunner`` in upsert mode through the real hook, HTTP core and adapter; the wall time is the
delivery's alone. The per-row path gets fewer rows, since at one round trip per row it is slow by design; the
rate is what is compared. Both runs must land every user.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import cpu_seconds, peak_rss_mb  # run as a script, so its own folder is on sys.path

GOAL = 50.0


def child(path: str, rows: int, batch_size: int) -> None:
    """Diff ``rows`` users against nothing, deliver them through ``path``, print the figures as JSON."""
    print(json.dumps(deliver(path, rows, batch_size)))


def deliver(path: str, rows: int, batch_size: int) -> dict:
    """Diff ``rows`` users against nothing and deliver them through ``path``: the delivery's wall and CPU time."""
    from datetime import datetime, timezone

    from airflow_provider_zeotap.destinations.personyze import PersonyzeUsers
    from airflow_provider_zeotap.destinations.personyze_do import PersonyzeUsersDo
    from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.runner import DeliveryRunner
    from airflow_provider_zeotap.sync.sources import rows_to_parts
    from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id

    with tempfile.TemporaryDirectory(prefix="personyze-bench-") as root:
        storage = SyncStorage(f"file://{root}", f"bench_{path}")
        plan_id = new_plan_id()
        out_dir = storage.local_dir(storage.plan_uri(plan_id))
        source = [{"id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "plan": "basic"}
                  for i in range(rows)]
        output = diff_snapshots(source_parts=rows_to_parts(source, f"{out_dir}/source"), base_snapshot=None,
                                primary_key=["id"], columns=None, full_refresh=False, out_dir=out_dir)
        plan = Plan(
            sync_id=storage.sync_id, plan_id=plan_id, primary_key=["id"], columns=output.columns,
            source_columns=output.source_columns, counts=output.counts, state_uri=storage.state_uri,
            snapshot_uri="file://" + output.snapshot_path, changes_uri="file://" + output.changes_path,
            invalid_uri="file://" + output.invalid_path, base=None, created_at=datetime.now(timezone.utc),
        )
        hook = PersonyzeHook()
        destination = PersonyzeUsersDo(hook) if path == "do" else PersonyzeUsers(hook)
        runner = DeliveryRunner(plan=plan, destination=destination, mode="upsert", storage=storage, pointer=None,
                                batch_size=batch_size if path == "do" else None,
                                field_mapping={"email": "email", "first_name": "first_name", "plan": "plan"},
                                progress_interval=3600)
        cpu, started = cpu_seconds(), time.monotonic()
        result = runner.run()
        wall, cpu = time.monotonic() - started, cpu_seconds() - cpu
        destination.close()
    return {"path": path, "rows": rows, "wall_s": wall, "cpu_s": cpu, "succeeded": result.succeeded,
            "failed": result.failed + result.rejected, "rss_mb": peak_rss_mb()}


def run_child(emulator, path: str, rows: int, batch_size: int, call=None) -> dict:
    """One path in a fresh subprocess (or through ``call``, a ``measure.call_*``), with what the emulator saw."""
    env = {**os.environ, **emulator.airflow_env(), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    before = len(emulator.users)
    if call is not None:
        figures = call(Path(__file__), "deliver", env=env, path=path, rows=rows, batch_size=batch_size)
    else:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", path, "--rows", str(rows), "--batch-size", str(batch_size)],
            env=env, capture_output=True, text=True, check=False,
        )
        if completed.returncode != 0:
            raise SystemExit(f"the {path} run failed:\n{completed.stderr[-3000:]}")
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
    figures["landed"] = len(emulator.users) - before
    figures["requests"] = len([r for r in emulator.requests if r.method == "POST"])
    figures["max_in_flight"] = emulator.max_in_flight_seen("POST")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--per-row-rows", type=int, default=300)
    parser.add_argument("--do-rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--child", choices=["do", "per_row"])
    parser.add_argument("--rows", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.batch_size)
        return 0

    from airflow_provider_zeotap.testing import PersonyzeEmulator

    results = {}
    with PersonyzeEmulator() as emulator:
        for path, rows in (("per_row", args.per_row_rows), ("do", args.do_rows)):
            emulator.reset()
            emulator.set_faults(latency_ms=args.latency_ms)
            results[path] = run_child(emulator, path, rows, args.batch_size)
    print(f"Personyze users upsert at {args.latency_ms:g} ms emulator latency (do batch size {args.batch_size}):")
    print(f"{'path':<28} {'users':>7} {'landed':>7} {'POSTs':>6} {'in flight':>9} {'wall':>8} {'users/s':>9} "
          f"{'peak RSS':>9}")
    names = {"per_row": "POST /rest/users (baseline)", "do": "POST /rest/do"}
    for path, figures in results.items():
        rate = figures["rows"] / figures["wall_s"]
        figures["rate"] = rate
        print(f"{names[path]:<28} {figures['rows']:>7,} {figures['landed']:>7,} {figures['requests']:>6,} "
              f"{figures['max_in_flight']:>9} {figures['wall_s']:>7.1f}s {rate:>9,.1f} {figures['rss_mb']:>7.0f}MB")
    speedup = results["do"]["rate"] / results["per_row"]["rate"]
    complete = all(f["landed"] == f["rows"] and f["succeeded"] == f["rows"] for f in results.values())
    print(f"speed-up: {speedup:.1f}x (goal: at least {GOAL:g}x): {'held' if speedup >= GOAL else 'MISSED'}; "
          f"every user landed: {'yes' if complete else 'NO'}")
    return 0 if speedup >= GOAL and complete else 1


if __name__ == "__main__":
    sys.exit(main())
