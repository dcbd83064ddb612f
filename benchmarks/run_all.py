"""Every benchmark in one table, with the machine it ran on.

    python benchmarks/run_all.py [--quick] [--large]

It runs the other scripts' own measurements (imported from them, not copied) and prints one Markdown table:

- the diff engine at 1M and 10M rows (50M with ``--large``; pandas is left out above 10M, where its merge needs
  more memory than the machine has): wall time, peak RSS, the ratio to a pandas merge doing the same diff, and
  the ratio to a raw DuckDB scan of the same two files (the floor no diff goes under);
- the delivery rate per destination against its emulator at 50 ms latency: Zeotap and Optimizely as a share of
  their published limits (10,000 requests/min, 2 requests/s), Personyze and Permutive (no published limit) in
  rows per second beside the naive loop of one request at a time;
- CPU seconds of the client per 1,000 delivered rows, per destination;
- the peak RSS of a 100k-row and a 1M-row delivery, side by side.

Every measurement runs in a fresh interpreter, so a peak RSS is that measurement's alone, and CPU is the
delivering process's own. ``--quick`` is a smoke test: a few rows of each, all in this one process (a peak RSS
is then the whole process's, and no figure of a quick run means anything); the table has the same rows and
columns. The machine line gives the load average before and after: the machine may be shared, and the rates
move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import delivery_benchmark  # noqa: E402
import diff_benchmark  # noqa: E402
import optimizely_rate_benchmark  # noqa: E402
import permutive_rate_benchmark  # noqa: E402
import personyze_do_benchmark  # noqa: E402
import zeotap_rate_benchmark  # noqa: E402
from measure import call_here, call_isolated  # noqa: E402

COLUMNS = ("benchmark", "rows", "measured", "baseline", "ratio", "CPU s / 1k rows", "peak RSS")
LATENCY_MS = 50.0
ZEOTAP_LIMIT_PER_MINUTE = zeotap_rate_benchmark.LIMIT_PER_MINUTE
OPTIMIZELY_LIMIT_PER_SECOND = optimizely_rate_benchmark.LIMIT_PER_SECOND


@dataclass(frozen=True)
class Sizes:
    diff: tuple[int, ...]
    zeotap: int
    zeotap_baseline: int
    optimizely: int
    personyze: int
    personyze_baseline: int
    permutive: int
    permutive_baseline: int
    delivery: tuple[int, int]


FULL = Sizes(diff=(1_000_000, 10_000_000), zeotap=20_000, zeotap_baseline=300, optimizely=200, personyze=20_000,
             personyze_baseline=300, permutive=20_000, permutive_baseline=300, delivery=(100_000, 1_000_000))
QUICK = Sizes(diff=(20_000,), zeotap=100, zeotap_baseline=5, optimizely=2, personyze=200, personyze_baseline=3,
              permutive=200, permutive_baseline=3, delivery=(1_000, 5_000))
#: Above this many rows the pandas baseline is not run: its merge of 50M rows needs more memory than 24 GB.
PANDAS_MAX_ROWS = 10_000_000

Row = tuple[str, str, str, str, str, str, str]
Call = Callable[..., dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# The machine.
# --------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU model, cores, RAM and Python, from ``/proc`` where there is one."""
    model = platform.processor() or platform.machine()
    ram = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
        with open("/proc/meminfo") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
            ram = f"{kib / 1024 ** 2:.0f} GB"
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpu": model, "cores": str(os.cpu_count()), "ram": ram or "?",
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"}


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --------------------------------------------------------------------------------------------------
# Formatting.
# --------------------------------------------------------------------------------------------------


def _rows(count: int) -> str:
    for unit, name in ((1_000_000, "M"), (1_000, "k")):
        if count >= unit and count % unit == 0:
            return f"{count // unit}{name}"
    return f"{count:,}"


def _mb(value: float) -> str:
    return f"{value:,.0f} MB"


def _cpu(figures: dict[str, Any], rows: int) -> str:
    return f"{figures['cpu_s'] / rows * 1000:.2f}" if rows else "-"


# --------------------------------------------------------------------------------------------------
# The sections.
# --------------------------------------------------------------------------------------------------


def diff_section(sizes: tuple[int, ...], call: Call, work: Path) -> list[Row]:
    """``diff_benchmark``'s three engines on its generated data: the diff, pandas, the raw scan."""
    script = Path(diff_benchmark.__file__)
    rows_out: list[Row] = []
    for rows in sizes:
        data = work / f"diff-{rows}"
        data.mkdir()
        base, current = diff_benchmark.generate(rows, data)
        figures: dict[str, dict[str, Any]] = {}
        for engine in ("duckdb", "scan", "pandas"):
            if engine == "pandas" and rows > PANDAS_MAX_ROWS:
                continue
            out = tempfile.mkdtemp(prefix=f"{engine}-", dir=work)
            figures[engine] = call(script, f"run_{engine}", base=str(base), current=str(current), out_dir=out,
                                   memory_limit=None, threads=None)
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        diff, scan, pandas = figures["duckdb"], figures["scan"], figures.get("pandas")
        baseline = f"raw DuckDB scan {scan['wall_s']:.2f} s"
        ratio = f"{diff['wall_s'] / scan['wall_s']:.1f}x the scan"
        if pandas is not None:
            baseline = f"pandas merge {pandas['wall_s']:.2f} s, {_mb(pandas['rss_mb'])}; " + baseline
            ratio = f"{pandas['wall_s'] / diff['wall_s']:.1f}x faster than pandas; " + ratio
        else:
            baseline += "; pandas not run (over 10M rows)"
        rows_out.append(("diff (DuckDB)", _rows(rows), f"{diff['wall_s']:.2f} s", baseline,
                         ratio, "-", _mb(diff["rss_mb"])))
    return rows_out


def zeotap_section(sizes: Sizes, call: Call, quick: bool) -> list[Row]:
    """``zeotap_rate_benchmark``: the sync and the one-at-a-time loop, the emulator in its own process (in this
    one for a quick run, which saves a process start)."""
    from airflow_provider_zeotap.testing import ZeotapEmulator
    from airflow_provider_zeotap.testing.process import EmulatorProcess

    script = Path(zeotap_rate_benchmark.__file__)
    serve = ZeotapEmulator() if quick else EmulatorProcess("zeotap")
    with serve as emulator, tempfile.TemporaryDirectory(prefix="zeotap-") as state:
        connection = emulator.airflow_env() if quick else emulator.airflow_env
        env = {**os.environ, **connection, "AIRFLOW_HOME": state}
        measured = []
        for name, function, kwargs in (("sync", "run_sync", {"count": sizes.zeotap, "state": state}),
                                       ("baseline", "run_baseline", {"count": sizes.zeotap_baseline})):
            emulator.reset()
            emulator.set_faults(latency_ms=LATENCY_MS)
            child = call(script, function, env=env, **kwargs)
            measured.append(zeotap_rate_benchmark._figures(name, child, emulator))
    sync, baseline = measured
    return [(
        "Zeotap profile upserts, 50 ms latency", _rows(sizes.zeotap),
        f"{sync['per_minute']:,.0f}/min = {sync['share']:.1%} of {ZEOTAP_LIMIT_PER_MINUTE:,}/min; "
        f"{sync['rate_limited']} 429s; peak {sync['peak']} in flight",
        f"one at a time: {baseline['per_minute']:,.0f}/min",
        f"{sync['per_minute'] / baseline['per_minute']:.1f}x",
        f"{sync['cpu_per_1000']:.2f}",
        _mb(sync["rss_mb"]),
    )]


def optimizely_section(sizes: Sizes) -> list[Row]:
    """``optimizely_rate_benchmark``: a custom-events insert paced by sliding windows (in this process)."""
    m = optimizely_rate_benchmark.measure(sizes.optimizely, sliding_windows=True, latency_ms=LATENCY_MS)
    return [(
        "Optimizely custom events, 50 ms latency", _rows(sizes.optimizely),
        f"{m.sustained_rate:.3f}/s = {m.sustained_rate / OPTIMIZELY_LIMIT_PER_SECOND:.1%} of "
        f"{OPTIMIZELY_LIMIT_PER_SECOND:g}/s; {m.too_many} 429s; at most {m.most_in_one_second} in 1 s",
        "the published limit", f"{m.sustained_rate / OPTIMIZELY_LIMIT_PER_SECOND:.2f}",
        f"{m.cpu_s / max(1, m.created) * 1000:.2f}", "-",
    )]


def personyze_section(sizes: Sizes, call: Call) -> list[Row]:
    """``personyze_do_benchmark``: ``POST /rest/do`` batches beside one ``POST /rest/users`` per row."""
    from airflow_provider_zeotap.testing import PersonyzeEmulator

    figures = {}
    with PersonyzeEmulator() as emulator:
        for path, rows in (("per_row", sizes.personyze_baseline), ("do", sizes.personyze)):
            emulator.reset()
            emulator.set_faults(latency_ms=LATENCY_MS)
            figures[path] = personyze_do_benchmark.run_child(emulator, path, rows, 100, call=call)
    do, naive = figures["do"], figures["per_row"]
    do_rate, naive_rate = do["rows"] / do["wall_s"], naive["rows"] / naive["wall_s"]
    return [(
        "Personyze users (`POST /rest/do`), 50 ms latency", _rows(sizes.personyze),
        f"{do_rate:,.0f} rows/s ({do['landed']:,} landed)", f"one `POST /rest/users` at a time: {naive_rate:,.1f} rows/s",
        f"{do_rate / naive_rate:.0f}x", _cpu(do, do["rows"]), _mb(do["rss_mb"]),
    )]


def permutive_section(sizes: Sizes, call: Call) -> list[Row]:
    """``permutive_rate_benchmark``: batches of 5,000 beside one request per segment."""
    from airflow_provider_zeotap.testing import PermutiveEmulator

    with PermutiveEmulator() as emulator:
        sync = permutive_rate_benchmark.measure(emulator, "run_sync", sizes.permutive, LATENCY_MS, call)
        naive = permutive_rate_benchmark.measure(emulator, "run_naive", sizes.permutive_baseline, LATENCY_MS, call)
    sync_rate, naive_rate = sync["rows"] / sync["wall_s"], naive["rows"] / naive["wall_s"]
    return [(
        "Permutive segments, 50 ms latency", _rows(sizes.permutive),
        f"{sync_rate:,.0f} rows/s ({sync['landed']:,} landed)", f"one request per segment: {naive_rate:,.1f} rows/s",
        f"{sync_rate / naive_rate:.0f}x", _cpu(sync, sync["rows"]), _mb(sync["rss_mb"]),
    )]


def delivery_memory_section(sizes: tuple[int, int], call: Call, work: Path) -> list[Row]:
    """``delivery_benchmark``: the peak RSS of delivering N added rows, the small size beside the large."""
    script = Path(delivery_benchmark.__file__)
    peaks = {}
    for rows in sizes:
        data, state = work / f"delivery-{rows}", work / f"state-{rows}"
        data.mkdir()
        state.mkdir()
        source = delivery_benchmark.generate(rows, data)
        plan = state / "plan.json"
        call(script, "run_diff", source=str(source), state=str(state), plan_path=str(plan), memory_limit=None)
        figures = call(script, "run_delivery", state=str(state), plan_path=str(plan), memory_limit=None,
                       batch_size=1000)
        if figures.get("error") or figures["succeeded"] != rows:
            raise RuntimeError(f"the delivery of {rows:,} rows did not finish: {figures.get('error')}")
        peaks[rows] = figures
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    small, large = sizes
    return [(
        "delivery peak memory", f"{_rows(large)} vs {_rows(small)}",
        f"{_mb(peaks[large]['rss_mb'])} peak ({peaks[large]['wall_s']:.1f} s)",
        f"{_rows(small)} rows: {_mb(peaks[small]['rss_mb'])} peak ({peaks[small]['wall_s']:.1f} s)",
        f"{peaks[large]['rss_mb'] / peaks[small]['rss_mb']:.2f}", "-",
        f"{_mb(peaks[large]['rss_mb'])} / {_mb(peaks[small]['rss_mb'])}",
    )]


# --------------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: a few rows of each, in one process")
    parser.add_argument("--large", action="store_true", help="also diff 50M rows (several minutes, ~3 GB)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.large and not args.quick:
        sizes = Sizes(**{**sizes.__dict__, "diff": (*sizes.diff, 50_000_000)})
    call: Call = call_here if args.quick else call_isolated
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

    host, load_before, started = machine(), load(), time.monotonic()
    (diff_benchmark.WORK_ROOT).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-all-", dir=diff_benchmark.WORK_ROOT))
    rows: list[Row] = []
    sections: list[tuple[str, Callable[[], list[Row]]]] = [
        ("diff", lambda: diff_section(sizes.diff, call, work)),
        ("Zeotap", lambda: zeotap_section(sizes, call, args.quick)),
        ("Optimizely", lambda: optimizely_section(sizes)),
        ("Personyze", lambda: personyze_section(sizes, call)),
        ("Permutive", lambda: permutive_section(sizes, call)),
        ("delivery memory", lambda: delivery_memory_section(sizes.delivery, call, work)),
    ]
    try:
        for name, section in sections:
            print(f"running: {name} ...", file=sys.stderr, end=" ", flush=True)
            section_started = time.monotonic()
            rows += section()
            print(f"{time.monotonic() - section_started:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nMachine: {host['cpu']}, {host['cores']} cores, {host['ram']} RAM, Python {host['python']}, "
          f"{host['system']}; load average (1, 5, 15 min) {load_before} before, {load()} after; "
          f"{(time.monotonic() - started) / 60:.1f} min{' (--quick: a smoke test, figures mean nothing)' if args.quick else ''}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
