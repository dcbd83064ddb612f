"""A mutation run over the engine's and the HTTP core's riskiest modules, outside CI.

mutmut (3.x) changes the code one small break at a time (``>=`` to ``>``, a call removed, a constant moved)
and runs the tests that reach the changed function; a break no test notices "survives". What is mutated and
which tests run is set in ``[tool.mutmut]`` of pyproject.toml: the modules holding the commit rule
(``sync/commit.py``), the guards (``sync/guards.py``), retries (``http/client.py``), redaction
(``http/errors.py``) and the URL policy (``http/urls.py``), against the unit tests.

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python tools/mutation.py            # run (niced, one worker), then report
    .venv/bin/python tools/mutation.py --report   # report the last run again, without running

The run is niced to 19 with one worker so that it does not starve a shared machine; it takes tens of
minutes. It writes its work to ``mutants/`` (ignored by git). The report prints the count per module and
status and every survivor with its diff; docs/testing.md keeps the judgement of each survivor.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RESULT = re.compile(r"^\s*(?P<name>\S+?): (?P<status>[a-z ]+)$")


def mutmut(*args: str, niced: bool = False) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    command = [executable, *args]
    if niced:
        command = ["nice", "-n", "19", *command]
    return subprocess.run(command, cwd=ROOT, capture_output=not niced, text=True, check=False)


def module_of(mutant: str) -> str:
    """``airflow_provider_zeotap.http.errors.x_redact__mutmut_3`` -> ``http/errors.py``."""
    dotted = mutant.split(".x")[0].split(".x_")[0]
    parts = dotted.split(".")
    return "/".join(parts[1:]) + ".py" if len(parts) > 1 else dotted


def results() -> dict[str, str]:
    done = mutmut("results", "--all", "true")
    statuses = {}
    for line in done.stdout.splitlines():
        if match := _RESULT.match(line):
            statuses[match["name"]] = match["status"].strip()
    return statuses


def report() -> int:
    statuses = results()
    if not statuses:
        print("No mutation results: run without --report first.")
        return 1
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for name, status in statuses.items():
        counts[module_of(name)][status] += 1
    total = collections.Counter(statuses.values())
    print(f"{len(statuses)} mutants: " + ", ".join(f"{n} {s}" for s, n in total.most_common()))
    for module, counter in sorted(counts.items()):
        print(f"  {module}: " + ", ".join(f"{n} {s}" for s, n in counter.most_common()))
    survivors = [name for name, status in statuses.items() if status == "survived"]
    if survivors:
        print(f"\n{len(survivors)} survived:")
        for name in survivors:
            print(mutmut("show", name).stdout.rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="report the last run, do not run")
    args = parser.parse_args(argv)
    if not args.report:
        started = time.monotonic()
        env_note = f"cpu count {os.cpu_count()}"
        print(f"mutmut run, niced, one worker ({env_note}); this takes a while", flush=True)
        done = mutmut("run", "--max-children", "1", niced=True)
        print(f"\nmutmut run ended ({done.returncode}) after {time.monotonic() - started:.0f} s", flush=True)
    return report()


if __name__ == "__main__":
    raise SystemExit(main())
