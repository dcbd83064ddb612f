"""Move the committed snapshot forward by acknowledged rows only.

The committed snapshot is the engine's belief about what the destination holds. It may only move
where the destination said so: a change the sync mode sends counts once its outcome is 'succeeded';
a change the mode never sends (say, removals in an upsert-only mode) counts as seen, otherwise it
would come back in every later diff.

Outcome files are Parquet files written by the delivery (``write_outcome_file``), one row per attempted
change row::

    row_id=17, outcome="succeeded", operation="upsert", reason=None, identity="jo@example.com",
    payload_hash="…", payload_fields=["email", "plan"], fingerprint=None, since=None

Parquet rather than JSON lines: DuckDB reads it in small column chunks, where its JSON reader takes
buffers of 32 MB, which alone would set a floor under the delivery's memory limit.

An applied row keeps ``identity``, ``payload_hash`` and ``payload_fields`` in the snapshot's delivery
columns: what the destination was given, which the next run compares its payload against.

The runner writes one file per batch and rewrites it when a batch is re-sent after a crash, so each
row id occurs once across the files; a commit that finds a row reported twice refuses to guess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_zeotap.sync.diff import (
    DELIVERY_TYPES,
    conform_columns,
    fetch_row,
    parquet_relation,
    quote_identifier,
    quote_literal,
    relation_schema,
    scratch_duckdb,
    settle_null_types,
)
from airflow_provider_zeotap.sync.models import (
    APPLIED_OUTCOMES,
    CHANGE_COLUMN,
    IDENTITY_COLUMN,
    INTERNAL_PREFIX,
    PAYLOAD_FIELDS_COLUMN,
    PAYLOAD_HASH_COLUMN,
    ROW_ID_COLUMN,
    Change,
    Outcome,
)
from airflow_provider_zeotap.sync.storage import written_whole

#: Fields of the rejected-rows report next to the primary-key columns.
REPORT_FIELDS = ("change", "operation", "outcome", "reason")
OUTCOME_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("outcome", pa.string()),
        ("operation", pa.string()),
        ("reason", pa.string()),
        ("identity", pa.string()),
        ("payload_hash", pa.string()),
        ("payload_fields", pa.list_(pa.string())),
        #: Set for rows refused for their own data (see ``remembered``).
        ("fingerprint", pa.string()),
        ("since", pa.string()),
    ]
)
#: Outcome-file fields kept per row id, and the delivery column each one fills.
_DELIVERY_FIELDS = {"identity": IDENTITY_COLUMN, "payload_hash": PAYLOAD_HASH_COLUMN, "payload_fields": PAYLOAD_FIELDS_COLUMN}
_CHANGE_KINDS = frozenset(change.value for change in Change)


def commit_snapshot(
    *,
    base_snapshot: str | None,
    changes_path: str,
    outcome_paths: list[str],
    acted_on: set[str],
    primary_key: list[str],
    out_path: str,
    memory_limit: str | None = None,
) -> int:
    """Write the next committed snapshot to ``out_path`` and return its row count.

    Per key in the changes file: a change of a kind in ``acted_on`` is applied only when its final
    outcome is applied (succeeded, unchanged payload, identity kept; no outcome means it was never
    attempted); a change of any other kind is
    applied as seen. Applying 'added' or 'changed' takes the new row, applying 'removed' drops the key;
    a change not applied leaves the base row as it was (or absent). Keys without a change keep their
    base row.

    The snapshot has the changes file's columns and types (the current source's). Base rows are read
    in those: a column the source dropped goes, a new one is null, and a value whose type changed is
    converted (null where impossible). So after a type change, an un-acknowledged row whose old value
    converts to the new value exactly is thereafter taken as delivered.
    """
    unknown = set(acted_on) - _CHANGE_KINDS
    if unknown:
        raise ValueError(
            f"acted_on holds unknown change kinds {sorted(unknown)}; use {sorted(_CHANGE_KINDS)}."
        )
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with scratch_duckdb(out_dir, memory_limit=memory_limit) as con:
        _check_one_outcome_per_row(con, outcome_paths)
        sql = _commit_sql(con, base_snapshot, changes_path, outcome_paths, acted_on, primary_key, out_path)
        (rows,) = fetch_row(con, sql)
    return int(rows)


def write_rejected_rows(
    *,
    changes_path: str,
    outcome_paths: list[str],
    primary_key: list[str],
    out_path: str,
    memory_limit: str | None = None,
    removed_beyond_plan: Mapping[int, Mapping[str, Any]] | None = None,
) -> int:
    """Write a JSON-lines report of rows whose final outcome is rejected or failed; return how many.

    Each line holds the primary-key columns by name, then ``change``, ``operation``, ``outcome`` and
    ``reason``; a key column whose name is one of those four is written as ``key_<name>``. No file is
    written when there is nothing to report, so its absence means a clean run. It joins every
    outcome of the run, so it runs under the task's ``memory_limit`` like the commit.

    ``removed_beyond_plan`` gives the key of each removal the plan's changes do not hold (a take-over, a
    create never confirmed), by its row id below zero: those rows count among the run's failures, so the
    report that names the failures lists them too, after the plan's own rows.
    """
    keys = ", ".join(
        f'"c".{quote_identifier(column)} AS {quote_identifier(_report_key_name(column))}'
        for column in primary_key
    )
    failed = ", ".join(quote_literal(outcome.value) for outcome in (Outcome.REJECTED, Outcome.FAILED))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with scratch_duckdb(out_dir, memory_limit=memory_limit) as con:
        (rows,) = fetch_row(
            con,
            f"""
            COPY (
                SELECT {keys}, "c"."{CHANGE_COLUMN}" AS "change",
                       "o"."operation", "o"."outcome", "o"."reason"
                FROM {parquet_relation([changes_path])} AS "c"
                JOIN ({final_outcomes_sql(outcome_paths)}) AS "o" ON "c"."{ROW_ID_COLUMN}" = "o"."row_id"
                WHERE "o"."outcome" IN ({failed})
                ORDER BY "c"."{ROW_ID_COLUMN}"
            ) TO {quote_literal(out_path)} (FORMAT json)
            """,
        )
        beyond = (
            con.execute(
                f"""
                SELECT "row_id", "operation", "outcome", "reason" FROM ({final_outcomes_sql(outcome_paths)})
                WHERE "row_id" < 0 AND "outcome" IN ({failed})
                ORDER BY "row_id" DESC
                """
            ).fetchall()
            if removed_beyond_plan
            else []
        )
    if beyond:
        with open(out_path, "a", encoding="utf-8") as report:
            for row_id, operation, outcome, reason in beyond:
                key = removed_beyond_plan[row_id] if removed_beyond_plan else {}
                line = {_report_key_name(column): key.get(column) for column in primary_key}
                line |= {"change": Change.REMOVED.value, "operation": operation, "outcome": outcome, "reason": reason}
                report.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    rows = int(rows) + len(beyond)
    if not rows:
        os.remove(out_path)
    return rows


def count_outcomes(outcome_paths: list[str], memory_limit: str | None = None) -> dict[str, dict[str, int]]:
    """Rows per operation and final outcome, e.g. ``{"upsert": {"succeeded": 98, "rejected": 2}}``.

    It scans every outcome of the run, so it runs under the task's ``memory_limit`` like the commit.
    """
    with scratch_duckdb(None, memory_limit=memory_limit) as con:
        rows = con.execute(
            f"""
            SELECT "operation", "outcome", count(*)
            FROM ({final_outcomes_sql(outcome_paths)})
            GROUP BY ALL
            ORDER BY ALL
            """
        ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for operation, outcome, n in rows:
        counts.setdefault(operation, {})[outcome] = n
    return counts


def write_outcome_file(path: str, records: Sequence[dict[str, Any]]) -> None:
    """One batch's outcomes, in the schema every reader of outcome files expects; whole or not at all."""
    with written_whole(path) as partial:
        pq.write_table(pa.Table.from_pylist(list(records), schema=OUTCOME_SCHEMA), partial)


def final_outcomes_sql(outcome_paths: Sequence[str]) -> str:
    """``(row_id, outcome, operation, reason, identity, payload_hash, payload_fields)``, one row per row id.

    The runner writes each row's outcome exactly once: a batch's rows go to that batch's file, and a
    batch sent again after a crash rewrites its own file. So the files are read as one relation and
    streamed, with no per-row aggregate, and memory stays flat however many rows were delivered.
    ``commit_snapshot`` checks the one-outcome-per-row rule before it trusts it.
    """
    if not outcome_paths:
        return (
            'SELECT NULL::BIGINT AS "row_id", NULL::VARCHAR AS "outcome", '
            'NULL::VARCHAR AS "operation", NULL::VARCHAR AS "reason", NULL::VARCHAR AS "identity", '
            'NULL::VARCHAR AS "payload_hash", NULL::VARCHAR[] AS "payload_fields" WHERE false'
        )
    files = "[" + ", ".join(quote_literal(path) for path in outcome_paths) + "]"
    return f"""
        SELECT "row_id", "outcome", "operation", "reason", "identity", "payload_hash", "payload_fields"
        FROM read_parquet({files})
    """


def _check_one_outcome_per_row(con: duckdb.DuckDBPyConnection, outcome_paths: Sequence[str]) -> None:
    """Refuse to commit outcomes that report a row twice: which one the destination holds is unknown."""
    repeated = con.execute(
        f"""SELECT "row_id" FROM ({final_outcomes_sql(outcome_paths)})
            GROUP BY "row_id" HAVING count(*) > 1 LIMIT 1"""
    ).fetchone()
    if repeated:
        raise RuntimeError(
            f"The outcome files report row {repeated[0]} more than once; nothing was committed. This is a bug in "
            "the delivery runner: please report it with the plan's delivery folder."
        )


def _commit_sql(
    con: duckdb.DuckDBPyConnection,
    base_snapshot: str | None,
    changes_path: str,
    outcome_paths: Sequence[str],
    acted_on: Iterable[str],
    primary_key: Sequence[str],
    out_path: str,
) -> str:
    changes = parquet_relation([changes_path])
    changes_schema = {
        name: type_
        for name, type_ in relation_schema(con, changes).items()
        if not name.startswith(INTERNAL_PREFIX)
    }
    base = parquet_relation([base_snapshot]) if base_snapshot is not None else None
    base_schema = relation_schema(con, base) if base is not None else {}
    target = settle_null_types(changes_schema, base_schema)
    # What this run delivered wins; a change not sent keeps what the base said was delivered.
    carried = set(relation_schema(con, changes)) & set(DELIVERY_TYPES)
    delivered = ", ".join(
        f'coalesce("a"."o_{field}", "a".{quote_identifier(column)}) AS {quote_identifier(column)}'
        if column in carried
        else f'"a"."o_{field}" AS {quote_identifier(column)}'
        for field, column in _DELIVERY_FIELDS.items()
    )
    # Nothing is materialised: the applied changes are read twice, as keys for the anti-join and as rows,
    # so no step holds whole rows of every change at once.
    new_rows = f"""
            SELECT {conform_columns('"a"', target, changes_schema)}, {delivered}
            FROM ({_applied_sql(changes, outcome_paths, acted_on)}) AS "a"
            WHERE "a"."{CHANGE_COLUMN}" <> '{Change.REMOVED.value}'"""
    kept_rows = ""
    if base is not None:
        keys = ", ".join(f'"c".{quote_identifier(column)}' for column in primary_key)
        kept_rows = f"""
            SELECT {conform_columns('"b"', {**target, **DELIVERY_TYPES}, base_schema)}
            FROM {base} AS "b" ANTI JOIN ({_applied_sql(changes, outcome_paths, acted_on, columns=keys)}) AS "a"
                ON {key_match(primary_key, base_schema, target)}
            UNION ALL"""
    return f"""
        COPY (
            {kept_rows}{new_rows}
        ) TO {quote_literal(out_path)} (FORMAT parquet)
    """


def _applied_sql(
    changes: str, outcome_paths: Sequence[str], acted_on: Iterable[str], *, columns: str | None = None
) -> str:
    """Change rows that take effect: acknowledged ones, and all of a kind the mode does not send.

    ``columns`` narrows what is read (the keys alone, for the anti-join); by default whole rows with the
    delivery fields of their outcome.
    """
    sent = ", ".join(quote_literal(kind) for kind in sorted(acted_on))
    not_sent = f'"c"."{CHANGE_COLUMN}" NOT IN ({sent})' if sent else "true"
    applied = ", ".join(quote_literal(outcome.value) for outcome in APPLIED_OUTCOMES)
    delivered = ", ".join(f'"o"."{field}" AS "o_{field}"' for field in _DELIVERY_FIELDS)
    return f"""SELECT {columns or f'"c".*, {delivered}'}
                FROM {changes} AS "c"
                LEFT JOIN ({final_outcomes_sql(outcome_paths)}) AS "o" ON "c"."{ROW_ID_COLUMN}" = "o"."row_id"
                WHERE {not_sent} OR "o"."outcome" IN ({applied})"""


def key_match(primary_key: Sequence[str], base_schema: dict[str, str], target: dict[str, str]) -> str:
    """Base key = change key; on their text form where the key's type changed between runs."""
    missing = [column for column in primary_key if column not in base_schema or column not in target]
    if missing:
        raise ValueError(
            f"The primary-key column {missing[0]!r} is missing from the committed snapshot or the changes "
            "file; did the primary key change? Reset the sync state."
        )
    pairs = []
    for column in primary_key:
        base_key, change_key = f'"b".{quote_identifier(column)}', f'"a".{quote_identifier(column)}'
        if base_schema[column] != target[column]:
            base_key, change_key = f"CAST({base_key} AS VARCHAR)", f"CAST({change_key} AS VARCHAR)"
        pairs.append(f"{base_key} = {change_key}")
    return " AND ".join(pairs)


def _report_key_name(column: str) -> str:
    return f"key_{column}" if column in REPORT_FIELDS else column
