"""Rows refused for their own data, remembered so they are not re-sent unchanged on every run.

A row is remembered by a fingerprint of what was sent (operation, key, payload). When the row changes,
its fingerprint changes and it is sent again; until then it is reported with the original reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.diff import quote_literal, scratch_duckdb
from airflow_provider_zeotap.sync.modes import Operation


def fingerprint(operation: Operation, row: OutboundRow) -> str:
    """Identifies what was sent for a row: the same operation, key and payload give the same fingerprint."""
    content = json.dumps([operation.value, row.key, row.payload], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]



def load_remembered(path: str) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        records = (json.loads(line) for line in handle if line.strip())
        return {record["fingerprint"]: record for record in records}


def write_remembered(outcome_paths: Sequence[str], path: str, memory_limit: str | None = None) -> None:
    """Collect the fingerprinted rejections of a run's outcomes files into one JSON-lines file.

    It scans every outcome of the run, so it runs under the task's ``memory_limit`` (a bare connection
    would take DuckDB's default of most of the machine), spilling beside ``path``. Insertion order is
    kept: of two records with one fingerprint, ``load_remembered`` keeps the later line.
    """
    files = "[" + ", ".join(quote_literal(p) for p in outcome_paths) + "]"
    folder = os.path.dirname(os.path.abspath(path))
    with scratch_duckdb(folder, memory_limit=memory_limit) as con:
        con.execute(
            f"COPY (SELECT fingerprint, reason, since FROM read_parquet({files}) WHERE fingerprint IS NOT NULL) "
            f"TO {quote_literal(path)} (FORMAT json)"
        )
