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
can in theory collide; the chance that a changed row goes unnoticed is about 2**-64 per row. Nulls
hash alike whatever their type, so a compared column that is missing from the base counts as null
there.

Values are compared by what they are, not by the type a chunk of the extract happened to get. The
type Arrow infers depends on the values in a chunk (``1.50`` is DECIMAL(3,2), one new ``12345.125``
makes the column DECIMAL(8,3)), and comparing stored bytes across such a change would resend every
row. Because both sides are hashed in the same run, the hash expression is chosen per column from the
pair of types:

- same type on both sides (the usual case): the raw value is hashed, at full speed;
- different types: both sides hash a canonical text, a class tag and a normalised value, so the extra
  cost is paid only by the columns whose type moved. The classes are exact numbers (every integer
  width and DECIMAL, by value with trailing zeros stripped: ``1.50`` = ``1.500``, BIGINT ``7`` =
  DECIMAL ``7.00``, as the mapping sends integral decimals as integers), floating point (FLOAT and
  DOUBLE, as a DOUBLE), instants (every TIMESTAMP width and TIMESTAMPTZ, as UTC epoch microseconds, a
  TIMESTAMP being read as UTC; nanoseconds are kept when there are any) and text. Any other type is
  its own class. Values of different classes always differ: ``1`` to ``'1'`` or ``1`` to ``1.0`` is
  a change, because the JSON a destination receives changes.

The run's column types are fixed before anything is hashed (``run_types``), so the snapshot a run
commits does not flip with the values of a chunk: the types the source declared (an SQL extract takes
them from the cursor, see ``sources.py``), then, per column, the committed snapshot's type where the
current one converts to it without loss (DECIMAL(3,2) into DECIMAL(8,3), INTEGER into BIGINT), else
DuckDB's union of the parts. The one union that would change values, BIGINT and DOUBLE parts holding
an integer beyond 2**53, is refused and names the column. The committed snapshot's ``__`` columns are
the engine's own; they never take part in typing or in the source. Every conversion between TIMESTAMP
and TIMESTAMPTZ in a diff treats the naive value as UTC, whatever the machine's time zone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
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
    limit = memory_limit or DEFAULT_MEMORY_LIMIT
    config: dict[str, str | bool | int | float | list[str]] = {
        "temp_directory": temp_directory,
        "preserve_insertion_order": preserve_order,
        "memory_limit": limit,
    }
    threads = threads or threads_for(limit)
    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")  # it would draw on stderr, that is into the task log
    return con


#: What one DuckDB thread needs of a memory budget to spill rather than fail: each thread holds its own
#: blocks of every operator, so a small budget shared by several threads runs out where one thread fits.
MEMORY_PER_THREAD = 128 * 2**20
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def threads_for(memory_limit: str) -> int | None:
    """Threads for a budget: one per ``MEMORY_PER_THREAD``, at most the machine's cores (None: DuckDB's own)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", memory_limit)
    if not match or match.group(2).upper() not in _UNITS:
        return None
    budget = float(match.group(1)) * _UNITS[match.group(2).upper()]
    return max(1, min(os.cpu_count() or 1, int(budget // MEMORY_PER_THREAD)))


@contextmanager
def scratch_duckdb(
    near: str | None, *, memory_limit: str | None = None, preserve_order: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``open_duckdb`` spilling into a temporary folder beside ``near``, removed with the connection.

    For the engine's short statements over a run's files: nothing of theirs outlives the statement,
    and a spill never lands among the files the statement reads or writes.
    """
    with (
        tempfile.TemporaryDirectory(prefix=".duckdb-", dir=near) as spill,
        closing(open_duckdb(spill, memory_limit=memory_limit, preserve_order=preserve_order)) as con,
    ):
        yield con


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
# Types: the run's types, and values compared across types.
# --------------------------------------------------------------------------------------------------

#: Integer types: (signed, rank by width, decimal digits of the widest value).
_INTEGERS = {
    "TINYINT": (True, 1, 3),
    "SMALLINT": (True, 2, 5),
    "INTEGER": (True, 3, 10),
    "BIGINT": (True, 4, 19),
    "HUGEINT": (True, 5, 39),
    "UTINYINT": (False, 1, 3),
    "USMALLINT": (False, 2, 5),
    "UINTEGER": (False, 3, 10),
    "UBIGINT": (False, 4, 20),
    "UHUGEINT": (False, 5, 39),
}
_FLOATS = ("FLOAT", "DOUBLE")
#: Timestamp types by precision rank; TIMESTAMPTZ is an instant too but never converted to or from.
_TIMESTAMPS = {"TIMESTAMP_S": 1, "TIMESTAMP_MS": 2, "TIMESTAMP": 3, "TIMESTAMP_NS": 4}
_NANOSECONDS = ("TIMESTAMP_NS", "TIMESTAMPTZ_NS")
_INSTANTS = (*_TIMESTAMPS, "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ_NS")
_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")
#: Integers above this magnitude have no exact DOUBLE form.
_EXACT_IN_DOUBLE = 2**53


def user_columns(schema: dict[str, str]) -> list[str]:
    """A committed snapshot's columns without the engine's own ``__`` bookkeeping columns."""
    return [name for name in schema if not name.startswith(INTERNAL_PREFIX)]


def value_class(type_: str) -> str:
    """Which values compare with which across a type change; see the module docstring."""
    if type_ in _INTEGERS or _DECIMAL.fullmatch(type_):
        return "number"
    if type_ in _FLOATS:
        return "float"
    if type_ in _INSTANTS:
        return "instant"
    if type_ == "VARCHAR":
        return "text"
    return type_


def canonical_expr(expr: str, type_: str) -> str:
    """A value of ``type_`` as text that equals the text of the same value held in any other type.

    The class tag keeps kinds apart (the number 1 is not the text '1'); null stays null, so nulls
    still hash alike.
    """
    kind = value_class(type_)
    if kind == "number":
        return f"'n:' || {_number_text(expr, type_)}"
    if kind == "float":
        return f"'f:' || CAST(CAST({expr} AS DOUBLE) AS VARCHAR)"
    if kind == "instant":
        return f"'t:' || {_instant_text(expr, type_)}"
    if kind == "text":
        return f"'s:' || {expr}"
    return f"{quote_literal(type_ + ':')} || CAST({expr} AS VARCHAR)"


def key_text(expr: str, type_: str) -> str:
    """A key as the text both sides join on when its type differs between them.

    Plain text, as a committed text key must still meet a current integer key ('1' and 1), except
    that an exact number loses its trailing zeros, as in ``canonical_expr``.
    """
    return _number_text(expr, type_) if value_class(type_) == "number" else f"CAST({expr} AS VARCHAR)"


def _number_text(expr: str, type_: str) -> str:
    """Integers as they print; a DECIMAL with a scale prints all of it, so its trailing zeros go."""
    match = _DECIMAL.fullmatch(type_)
    if match and int(match.group(2)) > 0:
        return f"rtrim(rtrim(CAST({expr} AS VARCHAR), '0'), '.')"
    return f"CAST({expr} AS VARCHAR)"


def _instant_text(expr: str, type_: str) -> str:
    """UTC epoch microseconds; a nanosecond value that is not a whole microsecond keeps its digits."""
    if type_ not in _NANOSECONDS:
        return f"CAST(epoch_us({expr}) AS VARCHAR)"
    ns = f"epoch_ns({expr})"
    whole_us = f"CAST({ns} // 1000 AS VARCHAR)"
    return f"CASE WHEN {ns} % 1000 = 0 THEN {whole_us} ELSE CAST({ns} AS VARCHAR) || 'ns' END"


def converts_losslessly(current: str, committed: str) -> bool:
    """Whether every value of type ``current`` has an exact form in type ``committed``.

    Judged on the types alone, never on the values, so the answer cannot change from run to run.
    """
    if current == committed or current == _NULL_TYPE:
        return True
    if current in _INTEGERS:
        return _integer_fits(current, committed)
    decimal = _DECIMAL.fullmatch(current)
    target = _DECIMAL.fullmatch(committed)
    if decimal and target:
        (precision, scale), (to_precision, to_scale) = map(int, decimal.groups()), map(int, target.groups())
        return to_scale >= scale and to_precision - to_scale >= precision - scale
    if current == "FLOAT":
        return committed == "DOUBLE"
    if current in _TIMESTAMPS and committed in _TIMESTAMPS:
        # Finer units only down to microseconds: TIMESTAMP_NS covers a narrower range of dates.
        return _TIMESTAMPS[current] <= _TIMESTAMPS[committed] <= _TIMESTAMPS["TIMESTAMP"]
    return False


def _integer_fits(current: str, committed: str) -> bool:
    signed, rank, digits = _INTEGERS[current]
    if committed in _INTEGERS:
        to_signed, to_rank, _ = _INTEGERS[committed]
        if signed and not to_signed:
            return False
        return to_rank > rank if to_signed and not signed else to_rank >= rank
    target = _DECIMAL.fullmatch(committed)
    if target:
        precision, scale = map(int, target.groups())
        return precision - scale >= digits
    return False


def run_types(
    con: duckdb.DuckDBPyConnection,
    source_parts: list[str],
    read_schema: dict[str, str],
    base_schema: dict[str, str],
) -> dict[str, str]:
    """The types this run's source is diffed and committed with, fixed once for all its parts.

    ``read_schema`` is DuckDB's union of the parts, which already carries any type the source
    declared. A column whose committed type takes every current value exactly keeps the committed
    type, so a snapshot does not narrow and widen with the values of each run.
    """
    _refuse_rounded_integers(con, source_parts, read_schema)
    committed = {name: base_schema[name] for name in user_columns(base_schema)}
    types: dict[str, str] = {}
    for name, type_ in read_schema.items():
        known = committed.get(name)
        types[name] = known if known is not None and converts_losslessly(type_, known) else type_
    return types


def _refuse_rounded_integers(
    con: duckdb.DuckDBPyConnection, source_parts: list[str], read_schema: dict[str, str]
) -> None:
    """Refuse a column whose parts mix exact numbers beyond 2**53 with floating point.

    DuckDB's union of an integer (or DECIMAL) part and a DOUBLE part is DOUBLE, which would round such
    a number without a word. Only an extract with a floating-point column is looked at: the parts'
    footers, and the values of the parts where that column is exact.
    """
    floats = [name for name, type_ in read_schema.items() if type_ in _FLOATS]
    if len(source_parts) < 2 or not floats:
        return
    exact_parts: dict[str, list[str]] = {}
    for part in _parts_not_all_floating(con, source_parts, floats):
        schema = relation_schema(con, parquet_relation([part]))
        for name in floats:
            if value_class(schema.get(name, "")) == "number":
                exact_parts.setdefault(name, []).append(part)
    for name, parts in exact_parts.items():
        column = quote_identifier(name)
        beyond, example = fetch_row(
            con,
            f"""SELECT count(*), CAST(any_value({column}) AS VARCHAR) FROM {parquet_relation(parts)}
                WHERE abs({column}) > {_EXACT_IN_DOUBLE}""",
        )
        if beyond:
            raise ValueError(
                f"Source column {name!r} holds integers in some chunks and fractional numbers in others, "
                f"and {beyond} value(s) (e.g. {example}) are beyond 2**53: reading the column as DOUBLE "
                f"would round them. Cast the column in the source to an exact type "
                f"(e.g. CAST({name} AS NUMERIC(38, 6))) or to text."
            )


def _parts_not_all_floating(
    con: duckdb.DuckDBPyConnection, parts: list[str], columns: list[str]
) -> list[str]:
    """Parts where one of ``columns`` may not be stored as floating point, from one read of the footers.

    A cheap first pass (``parquet_schema`` is one query where a DESCRIBE per part of a 200-part extract
    takes a third of a second); a part it keeps is then described properly. A nested field that shares
    a column's name can only make a part kept needlessly, never missed.
    """
    names = ", ".join(quote_literal(name) for name in columns)
    rows = con.execute(
        f"""SELECT DISTINCT file_name FROM parquet_schema([{", ".join(map(quote_literal, parts))}])
            WHERE name IN ({names}) AND type IS DISTINCT FROM 'DOUBLE' AND type IS DISTINCT FROM 'FLOAT'"""
    ).fetchall()
    kept = {os.path.abspath(row[0]) for row in rows}
    by_path = {os.path.abspath(part): part for part in parts}
    if not kept <= by_path.keys():
        return parts  # a file name DuckDB spells otherwise: describe every part rather than miss one
    return [by_path[path] for path in by_path if path in kept]


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

    def key_exprs(self, alias: str, schema: dict[str, str] | None = None) -> list[str]:
        """Key columns as joined: as stored, or as text where the type differs between the sides.

        Each side's text is made from that side's own type, so a key read as DECIMAL(3,2) on one side
        and DECIMAL(8,3) on the other still matches (``1.5`` both times). Without ``schema`` the alias
        tells the side: ``"b"`` is the committed snapshot throughout this module, any other the source.
        """
        if schema is None:
            schema = self.base_schema if self.base is not None and alias == '"b"' else self.output_schema
        exprs = []
        for column in self.primary_key:
            expr = f"{alias}.{quote_identifier(column)}"
            exprs.append(key_text(expr, schema[column]) if self.key_as_text(column) else expr)
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

    def compared_canonically(self, column: str) -> bool:
        """Whether a column's type differs between the sides, so its values hash in canonical form."""
        if self.base is None or column not in self.base_schema or column not in self.source_schema:
            return False
        return self.base_schema[column] != self.source_schema[column]

    def hash_expr(self, alias: str, schema: dict[str, str]) -> str:
        """One hash of a side's compared values; see the module docstring for the per-column rule."""
        values = [self._hashed_value(alias, column, schema) for column in self.hashed]
        return f"hash({', '.join(values)})" if values else "0::UBIGINT"

    def _hashed_value(self, alias: str, column: str, schema: dict[str, str]) -> str:
        if column not in schema:
            return "NULL"
        expr = f"{alias}.{quote_identifier(column)}"
        return canonical_expr(expr, schema[column]) if self.compared_canonically(column) else expr

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
            source = _one_source_file(con, source_parts, work_dir, inputs.source_schema)
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


def _one_source_file(
    con: duckdb.DuckDBPyConnection, source_parts: list[str], work_dir: str, types: dict[str, str]
) -> _SourceFile:
    """The only part as it is, or all parts merged into one file in the run's ``types`` first.

    Every step of the diff scans the source again, and DuckDB scans one file far faster than hundreds
    of small per-chunk parts. The merge costs one rewrite, the one the snapshot would need anyway:
    when every row is valid the merged file becomes the snapshot. A single part is rewritten only
    when a column's type must change, so that the snapshot carries the run's types.
    """
    if not source_parts:
        return _SourceFile(None)
    relation = parquet_relation(source_parts)
    read = relation_schema(con, relation)
    if len(source_parts) == 1 and read == types:
        return _SourceFile(source_parts[0])
    merged = os.path.join(work_dir, "source.parquet")
    columns = ", ".join(_typed_column(name, read[name], type_) for name, type_ in types.items())
    con.execute(f"COPY (SELECT {columns} FROM {relation}) TO {quote_literal(merged)} (FORMAT parquet)")
    return _SourceFile(merged, owned=True)


def _typed_column(name: str, read_type: str, run_type: str) -> str:
    """A plain CAST: ``run_types`` only picks types every value converts to exactly."""
    quoted = quote_identifier(name)
    return quoted if read_type == run_type else f"CAST({quoted} AS {run_type}) AS {quoted}"


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
    """Read both schemas, fix the run's types and check the requested columns before any data is touched.

    ``source_schema`` is the run's types (``run_types``), which ``_one_source_file`` then gives the
    source file, so both sides are hashed from the types the snapshot will be committed with.
    """
    con.execute("SET TimeZone = 'UTC'")  # a TIMESTAMP meets a TIMESTAMPTZ as UTC, on any machine
    base = parquet_relation([base_snapshot]) if base_snapshot is not None else None
    base_schema = relation_schema(con, base) if base is not None else {}
    source = _source_relation(source_parts, base, user_columns(base_schema), primary_key)
    read_schema = relation_schema(con, source)
    check_column_names(read_schema)
    source_schema = run_types(con, source_parts, read_schema, base_schema)
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
    source_parts: list[str], base: str | None, base_columns: list[str], primary_key: list[str]
) -> str:
    """The source parts; without any, no rows in the committed user columns (or just the key on a first run).

    The committed snapshot's ``__`` columns are the engine's bookkeeping, never part of a source.
    """
    if source_parts:
        return parquet_relation(source_parts)
    if base is not None and base_columns:
        return f"(SELECT {', '.join(map(quote_identifier, base_columns))} FROM {base} LIMIT 0)"
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
    projected = ", ".join(f"{e} AS {k}" for e, k in zip(inputs.key_exprs('"t"', schema), keys))
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
              AND {key_text(converted, source_type)}
                  IS DISTINCT FROM {key_text(f'"b".{name}', inputs.base_schema[column])}
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
