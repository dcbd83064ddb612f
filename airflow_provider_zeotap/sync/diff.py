"""Compare the current source with the committed snapshot by primary key, inside DuckDB.

The diff never pulls row data into Python: every step is one SQL statement over Parquet files, so a
ten-million-row source costs a few seconds and a bounded amount of memory (DuckDB spills to a
temporary directory inside the output directory when ``memory_limit`` is reached).

How it works, and why in this shape:

1. A source of several parts (one per fetched chunk) is first merged into one file: every later step
   scans the source again, and one file scans much faster than hundreds of small ones.
2. ``pending``: a full outer join of ``(key, hash of the compared columns)`` from both sides keeps the
   keys that differ. Joining narrow ``(key, hash)`` rows instead of whole rows keeps the hash table
   small; the typical delta is a few percent of the source.
3. ``dups``: source keys that occur more than once. The join's counts prove most sources free of
   them; only when they do not is every source key grouped (see ``_may_have_duplicates``).
4. ``delta``: ``pending`` without the duplicated keys, numbered with its ``__row_id``.
5. The changes file joins ``delta`` back to the full rows (source rows for added and changed keys, base
   rows for removed ones), so wide rows are only ever read by a scan, never held in a hash table.
6. The snapshot is the valid source rows. Without invalid rows it is the source file itself: the
   merged file is moved into place, a single given part is byte-copied (a copy, not a link: it may
   belong to someone else and be rewritten later). Either way the source is not re-encoded twice.

Change detection uses DuckDB's ``hash`` over the stored values, computed for both sides in the same
run (the base snapshot stores full rows, so no hash needs to survive a DuckDB upgrade). A 64-bit hash
can in theory collide; the chance that a changed row goes unnoticed is about 2**-64 per row. Values
hash by their stored type: a change of type such as ``1`` to ``'1'`` or ``1`` to ``1.0`` counts as a
change, while widening an integer (INTEGER to BIGINT) does not, because the JSON a destination
receives is the same. Nulls hash alike whatever their type, so a compared column that is missing from
the base counts as null there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any

import duckdb

from airflow_provider_zeotap.sync.models import (
    CHANGE_COLUMN,
    DELIVERY_COLUMNS,
    IDENTITY_COLUMN,
    INTERNAL_PREFIX,
    PAYLOAD_FIELDS_COLUMN,
    PAYLOAD_HASH_COLUMN,
    ROW_ID_COLUMN,
    Change,
    PlanCounts,
)

#: Column of the invalid-rows file that says why a row was set aside.
REASON_COLUMN = "__reason"

SNAPSHOT_FILE = "snapshot.parquet"
CHANGES_FILE = "changes.parquet"
INVALID_FILE = "invalid.parquet"

#: DuckDB's own default is 80% of the machine's memory, which several tasks on one Airflow worker
#: would each claim. One gigabyte runs a 10M-row diff without spilling; larger inputs spill to disk.
DEFAULT_MEMORY_LIMIT = "1GB"

#: How DuckDB names the type of a column whose values are all null (Arrow's null type).
_NULL_TYPE = '"NULL"'

#: Order of the change kinds in the changes file (and so of ``__row_id``).
_KIND_ORDER = (Change.ADDED.value, Change.CHANGED.value, Change.REMOVED.value, Change.REFRESH.value)

#: Types of the delivery columns a committed snapshot keeps beside each row (see ``models``).
DELIVERY_TYPES = {IDENTITY_COLUMN: "VARCHAR", PAYLOAD_HASH_COLUMN: "VARCHAR", PAYLOAD_FIELDS_COLUMN: "VARCHAR[]"}


# --------------------------------------------------------------------------------------------------
# Helpers shared by the sync modules that talk to DuckDB.
# --------------------------------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """Quote a column name for SQL; names may hold spaces, quotes and any unicode."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string (a file path, a reason text) as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def parquet_relation(paths: Sequence[str]) -> str:
    """SQL for reading Parquet files together; ``union_by_name`` tolerates parts whose types differ."""
    files = ", ".join(quote_literal(path) for path in paths)
    return f"read_parquet([{files}], union_by_name = true)"


def open_duckdb(
    temp_directory: str,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    preserve_order: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A fresh in-process database per call, so no state or memory outlives one task.

    ``memory_limit`` defaults to ``DEFAULT_MEMORY_LIMIT``; past it DuckDB spills to
    ``temp_directory``. Insertion order is kept only on request (``preserve_order``: a file's row
    order means something to the reader); elsewhere every output whose order matters says so with
    ORDER BY, and dropping the guarantee lets DuckDB stream large scans in parallel with less memory.
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "temp_directory": temp_directory,
        "preserve_insertion_order": preserve_order,
        "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT,
    }
    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")  # it would draw on stderr, that is into the task log
    return con


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The one row a statement returns (an aggregate, or the row count a COPY reports)."""
    row = con.execute(sql).fetchone()
    if row is None:
        raise RuntimeError(f"DuckDB returned no row for: {sql.strip()[:200]}")
    return row


def relation_schema(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column name to DuckDB type name, in column order."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {row[0]: row[1] for row in rows}


def conform_columns(alias: str, target: dict[str, str], schema: dict[str, str]) -> str:
    """Select list that reads rows of ``schema`` as rows of ``target`` (same names, same types).

    A column missing from ``schema`` is null; a column whose type differs is converted, and is null
    where a value has no form in the target type. Used to stack older rows under current ones: the
    current types must win, or one old row would turn a column's type for good.
    """
    return ", ".join(_conformed(alias, name, type_, schema) for name, type_ in target.items())


def _conformed(alias: str, column: str, target_type: str, schema: dict[str, str]) -> str:
    name = quote_identifier(column)
    if column not in schema:
        return f"CAST(NULL AS {target_type}) AS {name}"
    if schema[column] == target_type:
        return f"{alias}.{name}"
    return f"TRY_CAST({alias}.{name} AS {target_type}) AS {name}"


def settle_null_types(schema: dict[str, str], known: dict[str, str]) -> dict[str, str]:
    """``schema`` with each column of unknown type (all values null) typed as ``known`` has it.

    An empty or all-null extract has no types to infer; reading it as the committed types keeps a
    momentarily empty source from looking like a type change of every column.
    """
    return {name: known.get(name, type_) if type_ == _NULL_TYPE else type_ for name, type_ in schema.items()}


def check_column_names(names: Iterable[str]) -> None:
    """Refuse names the engine cannot carry: empty, duplicated, or in the engine's ``__`` namespace."""
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ValueError("A source column has an empty name; give it an alias in the source query.")
        if name.startswith(INTERNAL_PREFIX):
            raise ValueError(
                f"Source column {name!r} starts with {INTERNAL_PREFIX!r}, which is reserved for the "
                f"sync engine's own columns; rename it (e.g. SELECT {name} AS {name.lstrip('_') or 'col'})."
            )
        if name in seen:
            raise ValueError(f"Source column {name!r} occurs twice; give one of them an alias.")
        seen.add(name)


# --------------------------------------------------------------------------------------------------
# The diff.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffOutput:
    """Where the diff wrote its files, and what it counted."""

    snapshot_path: str
    changes_path: str
    invalid_path: str
    counts: PlanCounts
    #: Every column of the source, in source order.
    source_columns: list[str]
    #: The columns whose change counts.
    columns: list[str]


@dataclass(frozen=True)
class _Inputs:
    """The two sides of the diff as SQL, with what is known about their schemas."""

    source: str
    base: str | None
    #: The source's columns and types as read.
    source_schema: dict[str, str]
    base_schema: dict[str, str]
    #: The types the changes file carries: the source's, where known (see ``settle_null_types``).
    output_schema: dict[str, str]
    primary_key: list[str]
    #: Columns whose change counts, as given or every source column.
    compared: list[str]

    @property
    def hashed(self) -> list[str]:
        """Compared columns without the key columns, which the join itself compares."""
        return [c for c in dict.fromkeys(self.compared) if c not in self.primary_key]

    def key_as_text(self, column: str) -> bool:
        """A key whose type differs between the sides is joined on its text form."""
        return self.base is not None and self.base_schema[column] != self.output_schema[column]

    def key_exprs(self, alias: str) -> list[str]:
        exprs = []
        for column in self.primary_key:
            expr = f"{alias}.{quote_identifier(column)}"
            exprs.append(f"CAST({expr} AS VARCHAR)" if self.key_as_text(column) else expr)
        return exprs

    def key_aliases(self) -> list[str]:
        """Neutral names for the key columns inside the work tables, free of any quoting concerns."""
        return [f'"k{i}"' for i in range(len(self.primary_key))]

    def key_match(self, left: str, right_alias: str) -> str:
        """Join condition of a side (``left`` alias, key expressions) with a work table's key aliases."""
        pairs = zip(self.key_exprs(left), self.key_aliases())
        return " AND ".join(f"{expr} = {right_alias}.{key}" for expr, key in pairs)

    def key_not_null(self, alias: str) -> str:
        return " AND ".join(f"{alias}.{quote_identifier(c)} IS NOT NULL" for c in self.primary_key)

    def hash_expr(self, alias: str, schema: dict[str, str]) -> str:
        values = [f"{alias}.{quote_identifier(c)}" if c in schema else "NULL" for c in self.hashed]
        return f"hash({', '.join(values)})" if values else "0::UBIGINT"

    def source_projection(self, alias: str) -> str:
        return conform_columns(alias, self.output_schema, self.source_schema)

    def base_projection(self, alias: str) -> str:
        """Base rows in the source's columns and types, so removed rows stack under current ones."""
        return conform_columns(alias, self.output_schema, self.base_schema)


def diff_snapshots(
    *,
    source_parts: list[str],
    base_snapshot: str | None,
    primary_key: list[str],
    columns: list[str] | None,
    full_refresh: bool,
    out_dir: str,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> DiffOutput:
    """Write the snapshot, changes and invalid-rows files of one sync run into ``out_dir``.

    ``full_refresh`` re-sends every valid row (unchanged ones as 'refresh') and removes nothing, so a
    destination can be rebuilt without losing rows the source no longer has. No ``source_parts`` at
    all is an empty source whose columns are unknown (an empty list of rows): it is read as no rows in
    the committed snapshot's columns, so the plan can show every key as removed and a guard can judge.
    """
    if not primary_key:
        raise ValueError("A primary key of at least one column is required.")
    os.makedirs(out_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=".duckdb-", dir=out_dir)
    try:
        with closing(open_duckdb(work_dir, memory_limit=memory_limit, threads=threads)) as con:
            inputs = _inputs(con, source_parts, base_snapshot, primary_key, columns)
            source = _one_source_file(con, source_parts, work_dir)
            if source.owned:
                inputs = replace(inputs, source=parquet_relation(source.parts))
            return _run_diff(con, inputs, source, full_refresh, out_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@dataclass(frozen=True)
class _SourceFile:
    """The source as one Parquet file (None: no parts at all); ``owned`` if the diff wrote it."""

    path: str | None
    owned: bool = False

    @property
    def parts(self) -> list[str]:
        return [self.path] if self.path else []


def _one_source_file(con: duckdb.DuckDBPyConnection, source_parts: list[str], work_dir: str) -> _SourceFile:
    """The only part as it is, or all parts merged into one file first.

    Every step of the diff scans the source again, and DuckDB scans one file far faster than hundreds
    of small per-chunk parts. The merge costs one rewrite, the one the snapshot would need anyway:
    when every row is valid the merged file becomes the snapshot.
    """
    if len(source_parts) <= 1:
        return _SourceFile(source_parts[0] if source_parts else None)
    merged = os.path.join(work_dir, "source.parquet")
    con.execute(
        f"COPY (SELECT * FROM {parquet_relation(source_parts)}) TO {quote_literal(merged)} (FORMAT parquet)"
    )
    return _SourceFile(merged, owned=True)


def _run_diff(
    con: duckdb.DuckDBPyConnection, inputs: _Inputs, source: _SourceFile, full_refresh: bool, out_dir: str
) -> DiffOutput:
    total, null_keys = _count_source(con, inputs)
    con.execute(_pending_sql(inputs, full_refresh))
    possible = _may_have_duplicates(con, inputs, keyed_rows=total - null_keys)
    con.execute(_duplicates_sql(inputs, possible=possible))
    con.execute(_delta_sql(inputs, full_refresh))
    if inputs.base is not None:
        _check_removed_keys_convert(con, inputs)
    (duplicated,) = fetch_row(con, 'SELECT coalesce(sum("n"), 0) FROM "dups"')
    invalid = null_keys + int(duplicated)

    paths = {name: os.path.join(out_dir, name) for name in (SNAPSHOT_FILE, CHANGES_FILE, INVALID_FILE)}
    con.execute(_invalid_sql(inputs, paths[INVALID_FILE], empty=invalid == 0))
    con.execute(_changes_sql(inputs, paths[CHANGES_FILE]))
    _write_snapshot(con, inputs, source, paths[SNAPSHOT_FILE], has_invalid=invalid > 0)
    return DiffOutput(
        snapshot_path=paths[SNAPSHOT_FILE],
        changes_path=paths[CHANGES_FILE],
        invalid_path=paths[INVALID_FILE],
        counts=_plan_counts(
            _kind_counts(con, "delta"), total=total, invalid=invalid, full_refresh=full_refresh
        ),
        source_columns=list(inputs.source_schema),
        columns=inputs.compared,
    )


def _plan_counts(kinds: dict[str, int], *, total: int, invalid: int, full_refresh: bool) -> PlanCounts:
    """Unchanged rows are never materialised: they are what is left of the valid rows."""
    added = kinds.get(Change.ADDED.value, 0)
    changed = kinds.get(Change.CHANGED.value, 0)
    return PlanCounts(
        added=added,
        changed=changed,
        removed=kinds.get(Change.REMOVED.value, 0),
        refresh=kinds.get(Change.REFRESH.value, 0),
        unchanged=total - invalid - added - changed - kinds.get(Change.REFRESH.value, 0),
        invalid=invalid,
        total=total,
    )


def _inputs(
    con: duckdb.DuckDBPyConnection,
    source_parts: list[str],
    base_snapshot: str | None,
    primary_key: list[str],
    columns: list[str] | None,
) -> _Inputs:
    """Read both schemas and check the requested columns before any data is touched."""
    base = parquet_relation([base_snapshot]) if base_snapshot is not None else None
    base_schema = relation_schema(con, base) if base is not None else {}
    source = _source_relation(source_parts, base, base_schema, primary_key)
    source_schema = relation_schema(con, source)
    check_column_names(source_schema)
    _require_columns(source_schema, primary_key, "primary-key column", "the source")
    _require_columns(source_schema, columns or [], "compared column", "the source")
    if base is not None:
        # A committed snapshot without the key column was keyed differently: its rows cannot be matched.
        _require_columns(
            base_schema,
            primary_key,
            "primary-key column",
            "the committed snapshot (did the primary key change?)",
        )
    compared = list(columns) if columns is not None else list(source_schema)
    return _Inputs(
        source=source,
        base=base,
        source_schema=source_schema,
        base_schema=base_schema,
        output_schema=settle_null_types(source_schema, base_schema),
        primary_key=list(primary_key),
        compared=compared,
    )


def _source_relation(
    source_parts: list[str], base: str | None, base_schema: dict[str, str], primary_key: list[str]
) -> str:
    """The source parts; without any, no rows in the committed columns (or just the key on a first run)."""
    if source_parts:
        return parquet_relation(source_parts)
    if base is not None:
        user_columns = ", ".join(quote_identifier(c) for c in base_schema if not c.startswith(INTERNAL_PREFIX))
        return f"(SELECT {user_columns} FROM {base} LIMIT 0)"
    return f"(SELECT {', '.join(f'NULL AS {quote_identifier(c)}' for c in primary_key)} LIMIT 0)"


def _require_columns(schema: dict[str, str], wanted: Iterable[str], role: str, where: str) -> None:
    for column in wanted:
        if column not in schema:
            available = ", ".join(repr(c) for c in schema) or "none"
            raise ValueError(f"The {role} {column!r} is not in {where}; available columns: {available}.")


def _pending_sql(inputs: _Inputs, full_refresh: bool) -> str:
    """Every key that may need sending or removing, before duplicated keys are set aside.

    That is keys present on one side only, and keys on both whose hash differs; on a full refresh also
    the unchanged keys, as 'refresh'. Removed keys stay here even on a full refresh: their count feeds
    the duplicate check.
    """
    keys = inputs.key_aliases()
    on = " AND ".join(f'"cur".{k} = "com".{k}' for k in keys)
    merged = ", ".join(f'coalesce("cur".{k}, "com".{k}) AS {k}' for k in keys)
    wanted = "" if full_refresh else 'WHERE "cur"."h" IS DISTINCT FROM "com"."h"'
    return f"""
        CREATE TEMP TABLE "pending" AS
        WITH "cur" AS ({_hashes_sql(inputs, inputs.source, inputs.source_schema)}
        ), "com" AS ({_hashes_sql(inputs, inputs.base, inputs.base_schema)}
        )
        SELECT {merged},
            CASE WHEN "com"."h" IS NULL THEN '{Change.ADDED.value}'
                 WHEN "cur"."h" IS NULL THEN '{Change.REMOVED.value}'
                 WHEN "cur"."h" IS DISTINCT FROM "com"."h" THEN '{Change.CHANGED.value}'
                 ELSE '{Change.REFRESH.value}' END AS "kind"
        FROM "cur" FULL OUTER JOIN "com" ON {on}
        {wanted}
    """


def _may_have_duplicates(con: duckdb.DuckDBPyConnection, inputs: _Inputs, *, keyed_rows: int) -> bool:
    """Whether the source may hold a key twice, judged from counts the join has already produced.

    Every source row with a key either matches a committed key or is 'added'. Without duplicates the
    matched rows are exactly the committed keys that were not removed, and no added key repeats. When
    both hold, the exact check (a GROUP BY over every source key, a sixth of the diff's time) is
    skipped.
    """
    kinds = _kind_counts(con, "pending")
    matched = keyed_rows - kinds.get(Change.ADDED.value, 0)
    if matched != _committed_keys(con, inputs) - kinds.get(Change.REMOVED.value, 0):
        return True
    keys = ", ".join(inputs.key_aliases())
    (repeated,) = fetch_row(
        con,
        f"""SELECT count(*) FROM (
                SELECT {keys} FROM "pending" WHERE "kind" = '{Change.ADDED.value}' GROUP BY ALL HAVING count(*) > 1
            )""",
    )
    return bool(repeated)


def _committed_keys(con: duckdb.DuckDBPyConnection, inputs: _Inputs) -> int:
    if inputs.base is None:
        return 0
    not_null = inputs.key_not_null('"t"')
    (rows,) = fetch_row(con, f'SELECT count(*) FROM {inputs.base} AS "t" WHERE {not_null}')
    return int(rows)


def _kind_counts(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    rows = con.execute(f'SELECT "kind", count(*) FROM {quote_identifier(table)} GROUP BY ALL').fetchall()
    return {kind: int(n) for kind, n in rows}


def _duplicates_sql(inputs: _Inputs, *, possible: bool) -> str:
    """Keys occurring more than once: all their rows are invalid, none of them is sent.

    When ``_may_have_duplicates`` ruled them out, the table is created empty without a scan.
    """
    keys = ", ".join(
        f"{expr} AS {alias}" for expr, alias in zip(inputs.key_exprs('"s"'), inputs.key_aliases())
    )
    where = inputs.key_not_null('"s"') if possible else "false"
    return f"""
        CREATE TEMP TABLE "dups" AS
        SELECT {keys}, count(*) AS "n"
        FROM {inputs.source} AS "s"
        WHERE {where}
        GROUP BY ALL
        HAVING count(*) > 1
    """


def _delta_sql(inputs: _Inputs, full_refresh: bool) -> str:
    """Every key to send (or remove), numbered in a stable order: kind, then key.

    A full refresh sends every valid current key (unchanged ones as 'refresh') and removes nothing.
    """
    keys = ", ".join(inputs.key_aliases())
    rank = " ".join(f"WHEN {quote_literal(kind)} THEN {i}" for i, kind in enumerate(_KIND_ORDER))
    wanted = f"""WHERE "kind" <> '{Change.REMOVED.value}'""" if full_refresh else ""
    return f"""
        CREATE TEMP TABLE "delta" AS
        SELECT "p".*, row_number() OVER (ORDER BY CASE "kind" {rank} END, {keys}) - 1 AS "row_id"
        FROM "pending" AS "p" ANTI JOIN "dups" USING ({keys})
        {wanted}
    """


def _hashes_sql(inputs: _Inputs, relation: str | None, schema: dict[str, str]) -> str:
    """``(key, hash)`` of one side's rows with a non-null key; no rows when there is no base."""
    keys = inputs.key_aliases()
    if relation is None:
        nulls = ", ".join(f"NULL AS {k}" for k in keys)
        return f'SELECT {nulls}, NULL::UBIGINT AS "h" WHERE false'
    projected = ", ".join(f"{e} AS {k}" for e, k in zip(inputs.key_exprs('"t"'), keys))
    return f"""
            SELECT {projected}, {inputs.hash_expr('"t"', schema)} AS "h"
            FROM {relation} AS "t"
            WHERE {inputs.key_not_null('"t"')}"""


def _check_removed_keys_convert(con: duckdb.DuckDBPyConnection, inputs: _Inputs) -> None:
    """Refuse to remove a committed key that the source's key type cannot express exactly.

    The changes file carries keys in the source's type. After a key type change (say VARCHAR to
    BIGINT), a removed key such as '007' would become 7 and delete the wrong record downstream.
    """
    for column in inputs.primary_key:
        if not inputs.key_as_text(column):
            continue
        name, source_type = quote_identifier(column), inputs.output_schema[column]
        converted = f'TRY_CAST("b".{name} AS {source_type})'
        count, example = fetch_row(
            con,
            f"""
            SELECT count(*), any_value(CAST("b".{name} AS VARCHAR))
            FROM {inputs.base} AS "b" JOIN "delta" AS "d" ON {inputs.key_match('"b"', '"d"')}
            WHERE "d"."kind" = '{Change.REMOVED.value}'
              AND CAST({converted} AS VARCHAR) IS DISTINCT FROM CAST("b".{name} AS VARCHAR)
            """,
        )
        if count:
            raise ValueError(
                f"The primary-key column {column!r} changed type from {inputs.base_schema[column]} to "
                f"{source_type}, and {count} committed key(s) to remove (e.g. {example!r}) have no exact "
                f"{source_type} form. Cast the key back to {inputs.base_schema[column]} in the source, "
                "or reset the sync state."
            )


def _count_source(con: duckdb.DuckDBPyConnection, inputs: _Inputs) -> tuple[int, int]:
    """Rows read, and rows with a null key. Reads the key columns only."""
    nulls = " OR ".join(f'"s".{quote_identifier(c)} IS NULL' for c in inputs.primary_key)
    total, null_keys = fetch_row(
        con, f'SELECT count(*), count(*) FILTER (WHERE {nulls}) FROM {inputs.source} AS "s"'
    )
    return int(total), int(null_keys)


def _invalid_sql(inputs: _Inputs, path: str, *, empty: bool) -> str:
    """Rows set aside with a reason; with none, an empty file that still has the columns."""
    if empty:
        select = f'SELECT "s".*, NULL::VARCHAR AS "{REASON_COLUMN}" FROM {inputs.source} AS "s" LIMIT 0'
        return f"COPY ({select}) TO {quote_literal(path)} (FORMAT parquet)"
    null_checks = [
        f'WHEN "s".{quote_identifier(c)} IS NULL THEN {quote_literal("null primary key: " + c)}'
        for c in inputs.primary_key
    ]
    reason = f"""CASE {" ".join(null_checks)}
        ELSE 'duplicate primary key (' || "d"."n" || ' rows)' END"""
    nulls = " OR ".join(f'"s".{quote_identifier(c)} IS NULL' for c in inputs.primary_key)
    return f"""
        COPY (
            SELECT "s".*, {reason} AS "{REASON_COLUMN}"
            FROM {inputs.source} AS "s" LEFT JOIN "dups" AS "d" ON {inputs.key_match('"s"', '"d"')}
            WHERE {nulls} OR "d"."n" IS NOT NULL
        ) TO {quote_literal(path)} (FORMAT parquet)
    """


def _changes_sql(inputs: _Inputs, path: str) -> str:
    """Full rows of the delta: current values for added and changed keys, base values for removed.

    Every row also carries what the committed snapshot says was delivered for its key (the delivery
    columns: identity, payload hash, fields with a value), so the runner can tell a clear from a null
    that was never sent, and a payload that did not change from one that did. Added keys have none.
    """
    change_columns = f'"d"."kind" AS "{CHANGE_COLUMN}", "d"."row_id" AS "{ROW_ID_COLUMN}"'
    delivered = inputs.base is not None and all(c in inputs.base_schema for c in DELIVERY_COLUMNS)
    if delivered:
        current_from = f"""{inputs.source} AS "s" JOIN "delta" AS "d" ON {inputs.key_match('"s"', '"d"')}
            LEFT JOIN (SELECT * FROM {inputs.base} AS "b" SEMI JOIN "delta" AS "d" ON {inputs.key_match('"b"', '"d"')}
                       WHERE "d"."kind" <> '{Change.ADDED.value}') AS "b" ON {inputs.key_match('"b"', '"d"')}"""
    else:
        current_from = f"""{inputs.source} AS "s" JOIN "delta" AS "d" ON {inputs.key_match('"s"', '"d"')}"""
    current = f"""
            SELECT {inputs.source_projection('"s"')}, {_delivery_projection('"b"' if delivered else None)}, {change_columns}
            FROM {current_from}
            WHERE "d"."kind" <> '{Change.REMOVED.value}'"""
    removed = ""
    if inputs.base is not None:
        removed = f"""
            UNION ALL
            SELECT {inputs.base_projection('"b"')}, {_delivery_projection('"b"' if delivered else None)}, {change_columns}
            FROM {inputs.base} AS "b" JOIN "delta" AS "d" ON {inputs.key_match('"b"', '"d"')}
            WHERE "d"."kind" = '{Change.REMOVED.value}'"""
    return f"""
        COPY (
            {current}{removed}
            ORDER BY "{ROW_ID_COLUMN}"
        ) TO {quote_literal(path)} (FORMAT parquet)
    """


def _delivery_projection(alias: str | None) -> str:
    """The delivery columns of the committed row ``alias`` (typed nulls when there is none)."""
    return ", ".join(
        f"{alias}.{quote_identifier(name)} AS {quote_identifier(name)}" if alias
        else f"CAST(NULL AS {type_}) AS {quote_identifier(name)}"
        for name, type_ in DELIVERY_TYPES.items()
    )


def _write_snapshot(
    con: duckdb.DuckDBPyConnection, inputs: _Inputs, source: _SourceFile, path: str, *, has_invalid: bool
) -> None:
    """The valid current rows: the source file itself when all rows are valid, else rewritten.

    A source file the diff did not write is copied, not moved or linked: it may belong to someone
    else and be rewritten later.
    """
    if source.path is not None and not has_invalid:
        if source.owned:
            os.replace(source.path, path)
        else:
            shutil.copyfile(source.path, path)
        return
    con.execute(
        f"""
        COPY (
            SELECT "s".*
            FROM {inputs.source} AS "s" ANTI JOIN "dups" AS "d" ON {inputs.key_match('"s"', '"d"')}
            WHERE {inputs.key_not_null('"s"')}
        ) TO {quote_literal(path)} (FORMAT parquet)
        """
    )
