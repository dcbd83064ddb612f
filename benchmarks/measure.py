"""What the benchmarks here share: a process's own peak memory and CPU, a plan of N added rows, stand-in state
stores, and running one benchmark function in a fresh interpreter (``call_isolated``) or in this one
(``call_here``, for a quick run)."""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM`` first: on Linux ``ru_maxrss`` also carries the RSS the
    parent had when it forked this process, which would charge the parent's work to the child."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB elsewhere


def cpu_seconds() -> float:
    """This process's CPU time, user and system, children excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class MemoryStore:
    """Stands in for Airflow's asset and task state stores (the committed pointer, the checkpoints)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def plan_of(rows: list[dict[str, Any]], state: str, sync_id: str, primary_key: list[str]) -> Any:
    """Diff ``rows`` against nothing (every row is added) into a plan under the state folder ``state``."""
    from datetime import datetime, timezone

    from airflow_provider_zeotap.sync.diff import diff_snapshots
    from airflow_provider_zeotap.sync.models import Plan
    from airflow_provider_zeotap.sync.sources import rows_to_parts
    from airflow_provider_zeotap.sync.storage import SyncStorage, new_plan_id

    storage = SyncStorage(f"file://{state}", sync_id)
    plan_id = new_plan_id()
    out_dir = storage.local_dir(storage.plan_uri(plan_id))
    output = diff_snapshots(source_parts=rows_to_parts(rows, f"{out_dir}/source"), base_snapshot=None,
                            primary_key=primary_key, columns=None, full_refresh=False, out_dir=out_dir)
    return Plan(
        sync_id=sync_id, plan_id=plan_id, primary_key=primary_key, columns=output.columns,
        source_columns=output.source_columns, counts=output.counts, full_refresh=False,
        state_uri=storage.state_uri, snapshot_uri="file://" + output.snapshot_path,
        changes_uri="file://" + output.changes_path, invalid_uri="file://" + output.invalid_path, base=None,
        created_at=datetime.now(timezone.utc),
    )


def call_isolated(script: Path, function: str, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``function(**kwargs)`` of the benchmark script ``script``, in a fresh interpreter.

    The function returns a dict of JSON values; the child adds its own peak RSS (``rss_mb``), so a figure
    never carries the memory of the parent or of an earlier measurement.
    """
    completed = subprocess.run(
        [sys.executable, __file__, str(script), function, json.dumps(kwargs)],
        capture_output=True, text=True, env=env,
    )
    if completed.returncode:
        sys.stderr.write("\n".join(completed.stderr.strip().splitlines()[-20:]) + "\n")
        raise RuntimeError(f"{Path(script).name}:{function} failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def call_here(script: Path, function: str, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``function(**kwargs)`` in this process (a quick run): ``rss_mb`` is then this whole process's peak."""
    if env:
        os.environ.update(env)
    result = dict(getattr(_module(Path(script)), function)(**kwargs))
    result["rss_mb"] = peak_rss_mb()
    return result


def _module(script: Path) -> Any:
    sys.path.insert(0, str(script.resolve().parent))
    return importlib.import_module(script.stem)


if __name__ == "__main__":  # the child of ``call_isolated``
    _script, _function, _kwargs = sys.argv[1:4]
    _result = dict(getattr(_module(Path(_script)), _function)(**json.loads(_kwargs)))
    _result["rss_mb"] = peak_rss_mb()
    print(json.dumps(_result))
