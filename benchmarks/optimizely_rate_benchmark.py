"""Benchmark Optimizely's pacing: how close to the 2 requests/s limit does a sync run, and does it ever exceed it?

    python benchmarks/optimizely_rate_benchmark.py [--objects 300] [--no-baseline]

A custom-events sync (insert) of ``--objects`` new events is delivered by the engine (diff, ``DeliveryRunner``,
commit) through ``OptimizelyHook`` to the local Optimizely emulator, which enforces the documented limits (2/s
and 120/min, 429 beyond). The figures come from the emulator's request log, i.e. from the server's side:

- the sustained rate: requests after the first, divided by the time from the first request to the last;
- the most requests that arrived within any 1 s window (the limit is 2);
- 429 answers (the target is none).

Targets: a sustained rate of at least 1.9 requests/s, never more than 2 in any 1 s window, no 429.

The baseline, measured in the same invocation, is the HTTP core's default pacing (even spacing 10% under the
tighter rate) on the same sync; the hook uses sliding windows measured from answers instead
(``Limits.sliding_windows``). ``--no-baseline`` skips it (it takes as long as the main run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LIMIT_PER_SECOND = 2.0
TARGET_RATE = 1.9
SYNC_ID = "optimizely_rate_benchmark"


@dataclass(frozen=True)
class Measurement:
    pacing: str
    requests: int
    sustained_rate: float
    most_in_one_second: int
    too_many: int
    wall_s: float
    created: int
    #: CPU time of the thread that ran the delivery (the emulator serves from its own threads).
    cpu_s: float = 0.0


class _MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _plan(rows: list[dict[str, Any]], state: str) -> Any:
    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.sources import rows_to_parts
    from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id

    storage = SyncStorage(f"file://{state}", SYNC_ID)
    plan_id = new_plan_id()
    out_dir = storage.local_dir(storage.plan_uri(plan_id))
    output = diff_snapshots(
        source_parts=rows_to_parts(rows, f"{out_dir}/source"),
        base_snapshot=None,
        primary_key=["key"],
        columns=None,
        full_refresh=False,
        out_dir=out_dir,
    )
    return Plan(
        sync_id=SYNC_ID,
        plan_id=plan_id,
        primary_key=["key"],
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
    ), storage


def most_in_one_second(starts: list[float]) -> int:
    """The most request arrivals within any window of 1 s (half-open, as the emulator counts)."""
    starts = sorted(starts)
    best, first = 0, 0
    for last, at in enumerate(starts):
        while at - starts[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


def measure(objects: int, *, sliding_windows: bool, latency_ms: float | None = None) -> Measurement:
    from airflow_provider_zeotap.destinations.optimizely_objects import OptimizelyObjects
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.sync.runner import DeliveryRunner
    from airflow_provider_zeotap.sync.state import CommittedPointer
    from airflow_provider_zeotap.testing import OptimizelyEmulator

    limits = OptimizelyHook.default_limits.model_copy(update={"sliding_windows": sliding_windows})
    with OptimizelyEmulator() as emulator, tempfile.TemporaryDirectory() as state:
        project = emulator.create_project("Benchmark")
        if latency_ms:
            emulator.set_faults(latency_ms=latency_ms)
        os.environ["AIRFLOW_CONN_OPTIMIZELY_DEFAULT"] = json.dumps(
            {"conn_type": "optimizely", "host": emulator.url, "password": emulator.token}
        )
        rows = [{"key": f"event_{i:04d}", "name": f"Event {i}"} for i in range(objects)]
        plan, storage = _plan(rows, state)
        class PacedHook(OptimizelyHook):
            """The hook with the pacing under test."""

            @property
            def limits(self):  # type: ignore[override]
                return limits

        hook = PacedHook()
        destination = OptimizelyObjects(hook, object_type="custom_events", project_id=project)
        runner = DeliveryRunner(
            plan=plan,
            destination=destination,
            mode="insert",
            storage=storage,
            pointer=CommittedPointer(_MemoryStore()),
            checkpoints=_MemoryStore(),
            progress_interval=3600.0,
        )
        started, cpu = time.monotonic(), time.thread_time()
        try:
            result = runner.run()
        finally:
            destination.close()
        wall, cpu = time.monotonic() - started, time.thread_time() - cpu
        log = emulator.requests
        starts = sorted(r.started_at for r in log)
        rate = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
        return Measurement(
            pacing="sliding windows from answers (the hook)" if sliding_windows else "even spacing, 10% margin (baseline)",
            requests=len(log),
            sustained_rate=rate,
            most_in_one_second=most_in_one_second(starts),
            too_many=sum(1 for r in log if r.status == 429),
            wall_s=wall,
            created=result.succeeded,
            cpu_s=cpu,
        )


def report(results: list[Measurement], objects: int) -> bool:
    print(f"\n{objects}-object custom-events sync (insert) against the Optimizely emulator; limit "
          f"{LIMIT_PER_SECOND:g} requests/s and 120/min, 429 beyond")
    print(f"{'pacing':<42} {'requests':>8} {'sustained req/s':>15} {'max in 1 s':>10} {'429s':>5} {'wall':>7}")
    for m in results:
        print(f"{m.pacing:<42} {m.requests:>8} {m.sustained_rate:>15.3f} {m.most_in_one_second:>10} "
              f"{m.too_many:>5} {m.wall_s:>6.1f}s")
    main = results[0]
    held = (main.sustained_rate >= TARGET_RATE and main.most_in_one_second <= LIMIT_PER_SECOND
            and main.too_many == 0 and main.created == objects)
    print(f"\nTarget: at least {TARGET_RATE} requests/s sustained, at most {LIMIT_PER_SECOND:g} in any 1 s window, "
          f"no 429, all {objects} created: {'held' if held else 'MISSED'} "
          f"({main.sustained_rate:.3f} req/s, {main.most_in_one_second} in 1 s, {main.too_many} 429s, "
          f"{main.created} created)")
    return held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--no-baseline", action="store_true", help="skip the even-spacing baseline run")
    args = parser.parse_args(argv)
    results = [measure(args.objects, sliding_windows=True)]
    if not args.no_baseline:
        results.append(measure(args.objects, sliding_windows=False))
    return 0 if report(results, args.objects) else 1


if __name__ == "__main__":
    sys.exit(main())
