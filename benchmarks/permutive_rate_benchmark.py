"""Benchmark Permutive segment syncs: batches of up to 5,000 operations beside one request per segment.

    python benchmarks/permutive_rate_benchmark.py [--latency-ms 50] [--rows 20000] [--naive-rows 300]

Permutive publishes no rate limit, so the figure is segments per second. The sync (diff against an empty
base, ``DeliveryRunner`` in ``add`` mode, ``PermutiveSegments`` through the real hook and HTTP core, commit
included) is measured beside the naive loop: one ``PATCH`` of one ``Create`` per segment, one at a time, with
the same hook. Each runs in a fresh subprocess against the Permutive emulator, which runs in this process
with ``--latency-ms`` added to every request; CPU is the client process's own, for the delivery alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import MemoryStore, call_isolated, cpu_seconds, plan_of  # run as a script: its folder is on sys.path

SYNC_ID = "permutive_rate_benchmark"
MAPPING = {"segment_code": "code", "segment_name": "name"}


def segments(count: int) -> list[dict[str, Any]]:
    return [{"code": f"seg_{i:07d}", "name": f"Segment {i}"} for i in range(count)]


def run_sync(rows: int, import_id: str) -> dict[str, Any]:
    """Deliver ``rows`` new segments with the engine (``audience_mode="add"``); time and CPU of the delivery."""
    from airflow_provider_zeotap.destinations.permutive import PermutiveSegments
    from airflow_provider_zeotap.hooks.permutive import PermutiveHook
    from airflow_provider_zeotap.sync.runner import DeliveryRunner
    from airflow_provider_zeotap.sync.state import CommittedPointer
    from airflow_provider_zeotap.sync.storage import SyncStorage

    with tempfile.TemporaryDirectory(prefix="permutive-bench-") as state:
        plan = plan_of(segments(rows), state, SYNC_ID, ["code"])
        destination = PermutiveSegments(PermutiveHook(), import_id=import_id)
        runner = DeliveryRunner(
            plan=plan, destination=destination, mode="add", storage=SyncStorage(f"file://{state}", SYNC_ID),
            pointer=CommittedPointer(MemoryStore()), checkpoints=MemoryStore(), field_mapping=MAPPING,
            progress_interval=3600.0,
        )
        cpu, started = cpu_seconds(), time.perf_counter()
        result = runner.run()
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        destination.close()
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "succeeded": result.succeeded}


def run_naive(rows: int, import_id: str) -> dict[str, Any]:
    """The same segments one request each, one at a time, with the same hook."""
    from airflow_provider_zeotap.hooks.permutive import PermutiveHook

    hook = PermutiveHook()
    cpu, started = cpu_seconds(), time.perf_counter()
    for segment in segments(rows):
        hook.create_segment(import_id, code=segment["code"], name=segment["name"])
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    hook.close()
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "succeeded": rows}


def measure(emulator: Any, function: str, rows: int, latency_ms: float, call: Any = call_isolated) -> dict[str, Any]:
    """One way, on a fresh import: the child's figures plus the requests and segments the emulator saw."""
    emulator.reset()
    emulator.set_faults(latency_ms=latency_ms)
    import_id = emulator.create_import(f"Benchmark {function}")
    env = {**os.environ, **emulator.airflow_env()}
    figures = call(Path(__file__), function, env=env, rows=rows, import_id=import_id)
    figures["requests"] = sum(1 for r in emulator.requests if r.method == "PATCH")
    figures["landed"] = len(emulator.segments(import_id))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--naive-rows", type=int, default=300)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from airflow_provider_zeotap.testing import PermutiveEmulator

    with PermutiveEmulator() as emulator:
        results = [("sync (batches of 5,000)", measure(emulator, "run_sync", args.rows, args.latency_ms)),
                   ("one request per segment", measure(emulator, "run_naive", args.naive_rows, args.latency_ms))]
    print(f"\nPermutive segments, {args.latency_ms:g} ms latency")
    print(f"{'client':<26} {'segments':>8} {'landed':>7} {'requests':>8} {'wall s':>7} {'segments/s':>10} "
          f"{'CPU s/1k':>8} {'RSS MB':>7}")
    for name, r in results:
        print(f"{name:<26} {r['rows']:>8,} {r['landed']:>7,} {r['requests']:>8,} {r['wall_s']:>7.1f} "
              f"{r['rows'] / r['wall_s']:>10,.1f} {r['cpu_s'] / r['rows'] * 1000:>8.2f} {r['rss_mb']:>7.0f}")
    (_, sync), (_, naive) = results
    print(f"speed-up: {sync['rows'] / sync['wall_s'] / (naive['rows'] / naive['wall_s']):.0f}x")
    return 0 if all(r["landed"] == r["rows"] for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
