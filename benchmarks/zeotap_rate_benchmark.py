"""Benchmark the Zeotap profile sync at the published limit: 10,000 requests a minute, at most 200 at once.

    python benchmarks/zeotap_rate_benchmark.py [--rows 20000] [--latency-ms 50] [--baseline-requests 300]

The emulator runs in its own process (``python -m airflow_provider_zeotap.testing``), with the documented
limits enforced (429 above 200 in flight or 10,000 in a rolling minute) and ``--latency-ms`` added to every
answer. Two clients are measured in the same invocation:

1. the sync: a plan of ``--rows`` added profiles (three sections each) delivered by ``DeliveryRunner`` to
   ``ZeotapProfiles`` in upsert mode, commit included, in a fresh child process: one ``POST /users`` per row,
   batches of 500 with two in flight, paced by the hook;
2. the baseline: a plain loop that sends the same requests one at a time with ``httpx.Client`` (the first
   ``--baseline-requests`` of them; its time for all rows is projected from its rate).

Printed for each: requests, wall time, the sustained rate (requests between the first and the last start,
per minute) as a share of 10,000/min, 429 answers, the peak number of requests in flight (from the
emulator's log), and the CPU time of the client process per 1,000 requests and as a share of one core.
Targets (issue 11): the sync sustains at least 95% of 10,000/min with no 429, at most 200 in flight, and the
process uses under half a core. The state folder is a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from measure import peak_rss_mb  # run as a script, so its own folder is on sys.path

LIMIT_PER_MINUTE = 10_000
MAX_IN_FLIGHT = 200
SYNC_ID = "zeotap_rate_benchmark"
MAPPING = {"profile.first_name": "first_name", "consent.gdpr_advertising": "gdpr_ok",
           "mkt_preferences.sms_optin": "sms"}


def rows(count: int) -> list[dict[str, Any]]:
    return [{"user_id": f"u-{i:07d}", "first_name": f"First{i}", "gdpr_ok": i % 2 == 0, "sms": i % 3 == 0}
            for i in range(count)]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------------
# What the children run.
# --------------------------------------------------------------------------------------------------


class _MemoryStore:
    """Stands in for Airflow's asset and task state stores."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def run_sync(count: int, state: str) -> dict[str, Any]:
    """Diff ``count`` rows against nothing, then deliver and commit them; time and CPU of the delivery."""
    from airflow_provider_zeotap.destinations.zeotap import ZeotapProfiles
    from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.runner import DeliveryRunner
    from airflow_provider_zeotap.sync.sources import rows_to_parts
    from airflow_provider_zeotap.sync.state import CommittedPointer
    from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id

    storage = SyncStorage(f"file://{state}", SYNC_ID)
    plan_id = new_plan_id()
    out_dir = storage.local_dir(storage.plan_uri(plan_id))
    output = diff_snapshots(source_parts=rows_to_parts(rows(count), f"{out_dir}/source"), base_snapshot=None,
                            primary_key=["user_id"], columns=None, full_refresh=False, out_dir=out_dir)
    plan = Plan(
        sync_id=SYNC_ID, plan_id=plan_id, primary_key=["user_id"], columns=output.columns,
        source_columns=output.source_columns, counts=output.counts, full_refresh=False,
        state_uri=storage.state_uri, snapshot_uri="file://" + output.snapshot_path,
        changes_uri="file://" + output.changes_path, invalid_uri="file://" + output.invalid_path, base=None,
        created_at=datetime.now(timezone.utc),
    )
    runner = DeliveryRunner(
        plan=plan, destination=ZeotapProfiles(ZeotapProfileHook(), id_type="user_id"), mode="upsert",
        storage=storage, pointer=CommittedPointer(_MemoryStore()), checkpoints=_MemoryStore(),
        field_mapping=MAPPING, progress_interval=3600.0,
    )
    cpu, started = _cpu_seconds(), time.perf_counter()
    result = runner.run()
    return {"wall_s": time.perf_counter() - started, "cpu_s": _cpu_seconds() - cpu,
            "succeeded": result.succeeded, "failed": result.failed, "rss_mb": peak_rss_mb()}


def run_baseline(count: int) -> dict[str, Any]:
    """The same requests one at a time, no pacing needed: each waits for the answer before the next."""
    import httpx

    connection = json.loads(os.environ["AIRFLOW_CONN_ZEOTAP_DEFAULT"])
    extra = connection["extra"]
    headers = {"apikey": connection["password"], "scopes": "profile.write"}
    cpu, started = _cpu_seconds(), time.perf_counter()
    with httpx.Client(base_url=connection["host"] + "/cdp/v1", headers=headers, timeout=30) as client:
        for row in rows(count):
            body = {"orgId": int(extra["org_id"]), "region": extra["region"], "ids": {"user_id": row["user_id"]},
                    "upsert": {"profile": {"first_name": row["first_name"]},
                               "consent": {"gdpr_advertising": row["gdpr_ok"]},
                               "mkt_preferences": {"sms_optin": row["sms"]}}}
            client.post("/users", json=body).raise_for_status()
    return {"wall_s": time.perf_counter() - started, "cpu_s": _cpu_seconds() - cpu, "succeeded": count,
            "failed": 0, "rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if completed.returncode:
        sys.stderr.write("\n".join(completed.stderr.strip().splitlines()[-20:]) + "\n")
        raise RuntimeError(f"the child {args[:2]} failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _figures(name: str, child: dict[str, Any], emulator: Any) -> dict[str, Any]:
    requests = [r for r in emulator.requests if r.path == "/cdp/v1/users"]
    starts = sorted(r.started_at for r in requests)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    rate = (len(starts) - 1) / span * 60 if span else 0.0
    return {
        "name": name,
        "requests": len(requests),
        "wall_s": child["wall_s"],
        "per_minute": rate,
        "share": rate / LIMIT_PER_MINUTE,
        "rate_limited": sum(1 for r in requests if r.status == 429),
        "peak": emulator.max_in_flight_seen("POST", "/cdp/v1/users"),
        "cpu_per_1000": child["cpu_s"] / max(1, len(requests)) * 1000,
        "core_share": child["cpu_s"] / child["wall_s"] if child["wall_s"] else 0.0,
        "rss_mb": child["rss_mb"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--baseline-requests", type=int, default=300)
    parser.add_argument("--worker", choices=("sync", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "sync":
        print(json.dumps(run_sync(args.rows, args.state)))
        return 0
    if args.worker == "baseline":
        print(json.dumps(run_baseline(args.baseline_requests)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from airflow_provider_zeotap.testing.process import EmulatorProcess

    with EmulatorProcess("zeotap") as emulator, tempfile.TemporaryDirectory(prefix="zeotap-rate-") as state:
        env = {**os.environ, **emulator.airflow_env, "AIRFLOW_HOME": state}
        results = []
        for name, worker in (("sync (DeliveryRunner, async)", "sync"), ("one request at a time", "baseline")):
            emulator.reset()
            emulator.set_faults(latency_ms=args.latency_ms)
            print(f"running: {name} ...", flush=True)
            child = _child(["--worker", worker, "--rows", str(args.rows), "--state", state,
                            "--baseline-requests", str(args.baseline_requests)], env)
            results.append(_figures(name, child, emulator))
    report(results, args)
    sync = results[0]
    held = sync["share"] >= 0.95 and sync["rate_limited"] == 0 and sync["peak"] <= MAX_IN_FLIGHT
    return 0 if held and sync["core_share"] < 0.5 else 1


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nZeotap upsert of {args.rows:,} profiles, {args.latency_ms:.0f} ms latency, limit "
          f"{LIMIT_PER_MINUTE:,}/min and {MAX_IN_FLIGHT} in flight")
    print(f"{'client':<30} {'requests':>8} {'wall s':>8} {'req/min':>8} {'of limit':>8} {'429s':>5} "
          f"{'peak in flight':>14} {'CPU s/1k req':>12} {'of a core':>9} {'RSS MB':>7}")
    for r in results:
        print(f"{r['name']:<30} {r['requests']:>8,} {r['wall_s']:>8.1f} {r['per_minute']:>8,.0f} {r['share']:>8.1%} "
              f"{r['rate_limited']:>5} {r['peak']:>14} {r['cpu_per_1000']:>12.2f} {r['core_share']:>9.1%} "
              f"{r['rss_mb']:>7.0f}")
    sync, baseline = results
    if baseline["requests"]:
        projected = baseline["wall_s"] / baseline["requests"] * args.rows
        print(f"one request at a time would take {projected / 60:.1f} min for {args.rows:,} profiles "
              f"(projected from its first {baseline['requests']}); the sync took {sync['wall_s'] / 60:.1f} min "
              f"({projected / sync['wall_s']:.1f}x faster)")
    checks = [
        (f"sustained rate {sync['share']:.1%} of {LIMIT_PER_MINUTE:,}/min >= 95%", sync["share"] >= 0.95),
        (f"429 answers: {sync['rate_limited']} == 0", sync["rate_limited"] == 0),
        (f"peak in flight {sync['peak']} <= {MAX_IN_FLIGHT}", sync["peak"] <= MAX_IN_FLIGHT),
        (f"client process CPU {sync['core_share']:.1%} of a core < 50%", sync["core_share"] < 0.5),
    ]
    for text, held in checks:
        print(f"  target {'held  ' if held else 'MISSED'}: {text}")


if __name__ == "__main__":
    sys.exit(main())
