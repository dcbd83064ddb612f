"""``benchmarks/run_all.py --quick`` prints the one table: the machine line, then every row and column.

The figures of a quick run mean nothing (a few rows, one process); what is checked is that the command runs
from a fresh clone's layout and that the table keeps its shape, so the README's copy of it can be refreshed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["benchmark", "rows", "measured", "baseline", "ratio", "CPU s / 1k rows", "peak RSS"]
ROWS = [
    ("diff (DuckDB)", "20k"),
    ("Zeotap profile upserts, 50 ms latency", "100"),
    ("Optimizely custom events, 50 ms latency", "2"),
    ("Personyze users (`POST /rest/do`), 50 ms latency", "200"),
    ("Permutive segments, 50 ms latency", "200"),
    ("delivery peak memory", "5k vs 1k"),
]


def test_run_all_quick_prints_the_machine_and_every_row_and_column(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    machine = next(line for line in lines if line.startswith("Machine: "))
    for part in ("cores", "RAM", "Python", "load average"):
        assert part in machine, machine
    table = [line for line in lines if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert cells[0] == COLUMNS
    assert set(table[1]) <= set("|-")
    body = cells[2:]
    assert [(row[0], row[1]) for row in body] == ROWS
    assert all(len(row) == len(COLUMNS) and all(row) for row in body), body
    zeotap = dict(zip(COLUMNS, body[1]))
    assert "of 10,000/min" in zeotap["measured"] and "429s" in zeotap["measured"]
    personyze = dict(zip(COLUMNS, body[3]))
    assert "200 landed" in personyze["measured"], personyze
    permutive = dict(zip(COLUMNS, body[4]))
    assert "200 landed" in permutive["measured"], permutive
