"""Extract a source into local Parquet parts that the diff reads together.

A source is streamed: a query result is fetched ``chunk_size`` rows at a time and each chunk becomes
one Parquet file, so memory stays bounded by one chunk whatever the result size. That bound holds only
if the driver does not load the whole result when the query runs, which the default cursors of
psycopg2, psycopg 3 and the MySQL drivers all do. Those are read through a server-side cursor instead
(``_result_cursor``): a named cursor inside a transaction that is rolled back at the end for
PostgreSQL, ``SSCursor`` for MySQLdb and PyMySQL. SQLite steps through a result lazily and needs none,
nor does mysql.connector's default cursor; any other driver is read in chunks as it is, and the log
says that its own buffering is not under the extract's control. A PostgreSQL named cursor runs the
query as ``DECLARE ... CURSOR FOR <query>``, so the query must be one SELECT (VALUES, WITH ...); a
set-up statement in front of it is refused with that explanation.

Types come from the cursor where the driver describes them (PostgreSQL type OIDs through psycopg2 or
psycopg 3, see ``_POSTGRES_TYPES``): a NUMERIC(12,3) column is DECIMAL(12,3) in every part, whatever
the values of a chunk. JSON and JSONB arrive parsed from both drivers and are stored as their JSON
text, so a column keeps one type whatever shape its documents have. A value the declared type cannot
hold is an error naming the column, never a silent conversion. Undescribed columns get Arrow's
inference per chunk, and the diff settles the parts' types for the run (``diff.run_types``).

The diff reads the parts with ``union_by_name``, which promotes types that disagree between parts
(BIGINT and DOUBLE become DOUBLE). One disagreement that promotion would get wrong is a chunk where
a column is entirely null: inferred on its own it has no type, and writing it as text would turn the
whole column into text. Such a column is written with the type an earlier chunk established, or with
Arrow's null type, which DuckDB reads as ``NULL`` and which unifies with whatever the other parts hold.
The other is integers beyond 2**53 beside fractional numbers, which DOUBLE would round: the diff
refuses it across parts, and a single chunk holding both is refused here, naming the column (Arrow
would otherwise have to choose between rounding them and turning every number into text).

Every function refuses a column name the engine cannot carry (see ``check_column_names``), and an
empty source whose columns are known still yields one empty Parquet file carrying them, so the diff
can run and report zero rows instead of failing for want of a schema.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_zeotap.sync.diff import (
    check_column_names,
    open_duckdb,
    quote_literal,
    relation_schema,
)

#: File suffixes and the reader that understands them. ``.json`` may hold an array or JSON lines.
_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
_COMPRESSION_SUFFIXES = {".gz", ".zst"}

log = logging.getLogger(__name__)


class DbApiHookLike(Protocol):
    """The part of Airflow's common.sql ``DbApiHook`` that extraction uses."""

    def get_conn(self) -> Any: ...


# --------------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------------


def rows_to_parts(
    rows: list[dict[str, Any]], out_dir: str, *, columns: Sequence[str] | None = None
) -> list[str]:
    """Write a small in-memory list of rows as one Parquet part.

    Columns are the union of the rows' keys in first-seen order; a row lacking a key has null there.
    ``columns`` names columns up front (they come first), which is how an empty list keeps a schema;
    an empty list without ``columns`` has no known columns and yields no part at all, which the diff
    reads as an empty source in the committed snapshot's columns.
    """
    names = list(dict.fromkeys([*(columns or []), *(key for row in rows for key in row)]))
    check_column_names(names)
    if not names:
        return []
    values = [[row.get(name) for row in rows] for name in names]
    writer = _PartWriter(names, out_dir)
    writer.write_columns(values, len(rows))
    return writer.finish()


def sql_to_parts(
    hook: DbApiHookLike,
    sql: str,
    out_dir: str,
    *,
    chunk_size: int = 50_000,
    parameters: Sequence[Any] | Mapping[str, Any] | None = None,
    server_side_cursor: bool = True,
) -> list[str]:
    """Run ``sql`` through a DB-API connection and write one Parquet part per fetched chunk.

    ``server_side_cursor=False`` uses the driver's default cursor even where it buffers the whole
    result; it exists to measure what the server-side cursor saves.
    """
    with closing(hook.get_conn()) as conn:
        return query_to_parts(
            conn, sql, out_dir, chunk_size=chunk_size, parameters=parameters, server_side_cursor=server_side_cursor
        )


def query_to_parts(
    conn: Any,
    sql: str,
    out_dir: str,
    *,
    chunk_size: int = 50_000,
    parameters: Sequence[Any] | Mapping[str, Any] | None = None,
    server_side_cursor: bool = True,
    engine_columns: bool = False,
) -> list[str]:
    """``sql_to_parts`` over a connection the caller keeps open (the warehouse diff's own session).

    ``engine_columns`` lets the result carry the engine's ``__`` columns: the warehouse diff's queries
    return the changes file's bookkeeping columns, which a user's source may not.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    with _result_cursor(conn, chunk_size, server_side_cursor) as cursor:
        _execute(cursor, sql, parameters)
        chunk, description = _first_chunk(cursor, chunk_size)
        names = [str(column[0]) for column in description]
        check_column_names([name for name in names if not (engine_columns and name.startswith("__"))])
        writer = _PartWriter(names, out_dir, declared_types(conn, description))
        while chunk:
            writer.write_columns(_transpose(chunk, len(names)), len(chunk))
            chunk = cursor.fetchmany(chunk_size)
        return writer.finish()


def file_to_parts(path: str, out_dir: str, *, format: str | None = None) -> list[str]:
    """Make a local Parquet, CSV or JSON(-lines) file readable by the diff.

    A Parquet file is already what the diff reads and is returned as it is (only its column names are
    checked). CSV and JSON are converted by DuckDB in one streaming ``COPY``, with DuckDB's type
    detection; a header-only CSV gives an empty part that keeps the header's columns.
    """
    kind = _resolve_format(path, format)
    if kind == "parquet":
        check_column_names(pq.read_schema(path).names)
        return [path]
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, _part_name(0))
    with (
        tempfile.TemporaryDirectory(dir=out_dir) as spill_dir,
        closing(open_duckdb(spill_dir, preserve_order=True)) as con,  # parts keep the file's row order
    ):
        relation = _reader_sql(kind, path)
        check_column_names(relation_schema(con, relation))
        con.execute(f"COPY (SELECT * FROM {relation}) TO {quote_literal(target)} (FORMAT parquet)")
    return [target]


# --------------------------------------------------------------------------------------------------
# Cursors that stream.
# --------------------------------------------------------------------------------------------------

_POSTGRES_DRIVERS = ("psycopg2", "psycopg")
_MYSQL_DRIVERS = ("MySQLdb", "pymysql")


def driver_of(conn: Any) -> str:
    """The DB-API driver's package, from the connection's class: no driver is imported to find out."""
    return type(conn).__module__.split(".")[0]


@contextmanager
def _result_cursor(conn: Any, chunk_size: int, server_side: bool) -> Iterator[Any]:
    """A cursor whose ``fetchmany`` reads from the server as it goes, where the driver has one."""
    driver = driver_of(conn)
    if server_side and driver in _POSTGRES_DRIVERS:
        with _postgres_named_cursor(conn, driver, chunk_size) as cursor:
            yield cursor
        return
    streaming = _mysql_streaming_cursor_class(driver) if server_side else None
    if streaming is not None:
        log.info("Reading the result through %s's SSCursor, which streams it from the server.", driver)
        cursor = conn.cursor(streaming)
    else:
        log.info("%s", _fallback_note(driver, chunk_size, server_side))
        cursor = conn.cursor()
    with closing(cursor):
        yield cursor


@contextmanager
def _postgres_named_cursor(conn: Any, driver: str, chunk_size: int) -> Iterator[Any]:
    """A named (server-side) cursor: each ``fetchmany`` is one ``FETCH`` of ``chunk_size`` rows.

    A named cursor lives in a transaction, so autocommit is switched off for the extract. Nothing is
    written: the transaction is rolled back and autocommit restored at the end, also on error.
    """
    autocommit = bool(getattr(conn, "autocommit", False))
    if autocommit:
        conn.autocommit = False
    cursor = conn.cursor(name=f"zeotap_extract_{uuid.uuid4().hex[:16]}")
    cursor.itersize = chunk_size
    log.info("Reading the result through a %s server-side cursor, %d rows per fetch.", driver, chunk_size)
    try:
        yield cursor
    finally:
        _quietly(cursor.close, "closing the server-side cursor")
        _quietly(conn.rollback, "ending the extract's transaction")
        if autocommit:
            _quietly(lambda: setattr(conn, "autocommit", True), "restoring autocommit")


def _mysql_streaming_cursor_class(driver: str) -> type | None:
    if driver not in _MYSQL_DRIVERS:
        return None
    try:
        return getattr(importlib.import_module(f"{driver}.cursors"), "SSCursor", None)
    except ImportError:
        return None


def _fallback_note(driver: str, chunk_size: int, server_side: bool) -> str:
    """The one log line that says how a result is read without a server-side cursor."""
    if not server_side:
        return (
            f"Server-side cursor turned off: {driver}'s default cursor is used and may hold the whole "
            f"result in memory; rows are written {chunk_size} at a time."
        )
    if driver == "sqlite3":
        return (
            "sqlite3 has no server-side cursor and needs none: SQLite steps through the result as rows "
            f"are fetched, so each fetch of {chunk_size} rows reads only those rows."
        )
    if driver == "mysql":
        return (
            "mysql.connector's default cursor is unbuffered: rows are read from the server as they are "
            f"fetched, {chunk_size} at a time."
        )
    return (
        f"No server-side cursor is known for {driver}: rows are fetched {chunk_size} at a time, but the "
        "driver may hold the whole result in memory."
    )


def _execute(cursor: Any, sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None) -> None:
    """Run the query; a named cursor's ``DECLARE`` takes one query only, which its error should say."""
    try:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not getattr(cursor, "name", None) or not _is_programming_error(error):
            if not _is_database_error(error):
                raise
            # The database refused the query (a typo, a missing table or column, no permission): say so in the
            # words of the setting to fix, not as the driver's traceback from deep inside the extract.
            raise ValueError(
                f"the source query (sql) failed: {type(error).__name__}: {first_line}. Fix the diff task's sql (run it "
                "in a SQL client on the same connection first); nothing was read or sent."
            ) from error
        raise ValueError(
            f"The source query could not be opened as a server-side cursor ({first_line}). The cursor runs "
            "it as DECLARE ... CURSOR FOR <query>, which takes a single SELECT, VALUES or WITH ... SELECT: "
            "move set-up statements (SET, CREATE ...) into a view or function, and check the query's syntax."
        ) from error


def _is_database_error(error: BaseException) -> bool:
    """DB-API ``DatabaseError`` (every error the database itself reports), told by name: no driver is imported."""
    return any(kind.__name__ == "DatabaseError" for kind in type(error).__mro__)


def _is_programming_error(error: BaseException) -> bool:
    """DB-API ``ProgrammingError`` (syntax, wrong statement), told by name: no driver is imported."""
    return any(kind.__name__ == "ProgrammingError" for kind in type(error).__mro__)


def _first_chunk(cursor: Any, chunk_size: int) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
    """The first chunk and the result's description.

    A psycopg2 named cursor describes its result only after the first ``FETCH``; other cursors do at
    ``execute``, and a statement without a result set must be refused before a fetch (which would
    raise a driver error saying less).
    """
    chunk: Sequence[Sequence[Any]] = []
    if cursor.description is None and getattr(cursor, "name", None):
        chunk = cursor.fetchmany(chunk_size)
    if cursor.description is None:
        raise ValueError("The source query returned no result set (is it a SELECT?).")
    if not chunk:
        chunk = cursor.fetchmany(chunk_size)
    return chunk, cursor.description


def _quietly(action: Callable[[], Any], what: str) -> None:
    """Clean-up after an extract: a failure is logged and must not hide the error that ended it."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - any driver error; the connection is closed next anyway
        log.warning("Ignored an error while %s: %s", what, error)


# --------------------------------------------------------------------------------------------------
# Types the driver declares.
# --------------------------------------------------------------------------------------------------


def _json_text(value: Any) -> Any:
    """Drivers hand JSON over parsed; its JSON text keeps one column type whatever the documents hold."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)


def _bytes(value: Any) -> Any:
    return value if value is None or isinstance(value, bytes) else bytes(value)


#: PostgreSQL type OID to the Arrow type its values are stored as, and how a driver's value is
#: prepared for it (None: as it is). float4 is stored as float64: drivers return it as a Python
#: float parsed from its text, which a float32 would change (0.1 would come back 0.10000000149011612).
_POSTGRES_TYPES: dict[int, tuple[pa.DataType, Callable[[Any], Any] | None]] = {
    16: (pa.bool_(), None),  # bool
    17: (pa.binary(), _bytes),  # bytea
    20: (pa.int64(), None),  # int8
    21: (pa.int16(), None),  # int2
    23: (pa.int32(), None),  # int4
    25: (pa.string(), None),  # text
    114: (pa.string(), _json_text),  # json
    700: (pa.float64(), None),  # float4
    701: (pa.float64(), None),  # float8
    1042: (pa.string(), None),  # bpchar
    1043: (pa.string(), None),  # varchar
    1082: (pa.date32(), None),  # date
    1114: (pa.timestamp("us"), None),  # timestamp
    1184: (pa.timestamp("us", tz="UTC"), None),  # timestamptz
    2950: (pa.string(), _text),  # uuid (psycopg 3 returns uuid.UUID)
    3802: (pa.string(), _json_text),  # jsonb
}
_NUMERIC_OID = 1700
#: DuckDB reads decimals of at most 38 digits.
_MAX_DECIMAL_PRECISION = 38


class DeclaredType:
    """A column's type from the cursor description, and how to make its values an Arrow array."""

    def __init__(self, type_: pa.DataType, prepare: Callable[[Any], Any] | None = None) -> None:
        self.type = type_
        self.prepare = prepare

    def array(self, name: str, values: Sequence[Any]) -> pa.Array:
        prepared = values if self.prepare is None else [self.prepare(value) for value in values]
        try:
            return pa.array(prepared, type=self.type, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as error:
            raise ValueError(
                f"Source column {name!r} is declared {self.type} by the database, but a value does not fit "
                f"it ({error}). Cast the column in the source query to a type that holds it (e.g. text)."
            ) from None


def declared_types(conn: Any, description: Sequence[Sequence[Any]]) -> list[DeclaredType | None]:
    """Per column, the type the driver declares, or None where it declares none this engine reads."""
    driver = driver_of(conn)
    if driver in ("duckdb", "_duckdb"):
        return [_duckdb_type(column) for column in description]
    if driver not in _POSTGRES_DRIVERS:
        return [None] * len(description)
    return [_postgres_type(column) for column in description]


#: DuckDB type names (a DuckDB file read as a warehouse) to the Arrow type their values are stored as.
_DUCKDB_TYPES: dict[str, pa.DataType] = {
    "BOOLEAN": pa.bool_(),
    "SMALLINT": pa.int16(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "FLOAT": pa.float64(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
}
_DUCKDB_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")


def _duckdb_type(column: Any) -> DeclaredType | None:
    """DuckDB describes each column by its type, so a DECIMAL(8,2) is one in every chunk, as with PostgreSQL."""
    name = str(column[1])
    if name in _DUCKDB_TYPES:
        return DeclaredType(_DUCKDB_TYPES[name])
    match = _DUCKDB_DECIMAL.fullmatch(name)
    return _numeric_type(int(match.group(1)), int(match.group(2))) if match else None


def _postgres_type(column: Any) -> DeclaredType | None:
    code = column[1]
    if code == _NUMERIC_OID:
        return _numeric_type(getattr(column, "precision", None), getattr(column, "scale", None))
    known = _POSTGRES_TYPES.get(code) if isinstance(code, int) else None
    return DeclaredType(*known) if known else None


def _numeric_type(precision: int | None, scale: int | None) -> DeclaredType | None:
    """NUMERIC(p, s) as DECIMAL(p, s); an unconstrained NUMERIC (no or out-of-range typmod) is inferred."""
    if precision is None or scale is None:
        return None
    if not 1 <= precision <= _MAX_DECIMAL_PRECISION or not 0 <= scale <= precision:
        return None
    return DeclaredType(pa.decimal128(precision, scale))


# --------------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------------


def _resolve_format(path: str, explicit: str | None) -> str:
    if explicit is not None:
        kind = explicit.lower().lstrip(".")
        kind = _FORMATS.get(f".{kind}", kind)
        if kind not in set(_FORMATS.values()):
            raise ValueError(f"Unknown file format {explicit!r}; use one of parquet, csv, jsonl, json.")
        return kind
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise ValueError(
        f"Cannot tell the format of {path!r} from its name; pass format= one of parquet, csv, jsonl, json."
    )


def _reader_sql(kind: str, path: str) -> str:
    if kind == "csv":
        return f"read_csv({quote_literal(path)}, header = true)"
    json_format = "newline_delimited" if kind == "jsonl" else "auto"
    return f"read_json({quote_literal(path)}, format = {quote_literal(json_format)})"


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# --------------------------------------------------------------------------------------------------
# Chunks to Parquet.
# --------------------------------------------------------------------------------------------------


def _transpose(rows: Sequence[Sequence[Any]], width: int) -> list[tuple[Any, ...]]:
    """DB-API rows to columns; ``zip`` does it in C, without a Python loop over the values.

    A connection configured with a dict cursor (psycopg2's RealDictCursor, say) gives mappings, whose
    values are taken in the description's order.
    """
    if rows and isinstance(rows[0], Mapping):
        rows = [tuple(row.values()) for row in rows]
    columns = list(zip(*rows))
    if len(columns) != width:
        raise ValueError(f"The cursor returned rows of {len(columns)} values for {width} columns.")
    return columns


class _PartWriter:
    """Writes chunks as numbered Parquet parts, in declared types or keeping each column's first one.

    A column with a declared type is written in it in every chunk. Otherwise the first non-null type
    of a column is remembered so that a later all-null chunk is written with it; types that genuinely
    differ between chunks (int then float) are left for the diff to settle.
    """

    def __init__(
        self, names: list[str], out_dir: str, declared: Sequence[DeclaredType | None] | None = None
    ) -> None:
        self._names = names
        self._out_dir = out_dir
        self._declared = {name: d for name, d in zip(names, declared or []) if d is not None}
        self._types: dict[str, pa.DataType] = {name: d.type for name, d in self._declared.items()}
        self._parts: list[str] = []
        os.makedirs(out_dir, exist_ok=True)

    def write_columns(self, columns: Sequence[Sequence[Any]], length: int) -> None:
        arrays = [self._array(name, values, length) for name, values in zip(self._names, columns)]
        self._write(pa.Table.from_arrays(arrays, names=self._names))

    def finish(self) -> list[str]:
        """The parts written; an empty source gets one empty part so its columns are still known."""
        if not self._parts:
            empty = [pa.nulls(0, self._types.get(name, pa.null())) for name in self._names]
            self._write(pa.Table.from_arrays(empty, names=self._names))
        return list(self._parts)

    def _array(self, name: str, values: Sequence[Any], length: int) -> pa.Array:
        if name in self._declared:
            return self._declared[name].array(name, values)
        array = _infer_array(name, values) if length else pa.nulls(0)
        if pa.types.is_null(array.type):
            return pa.nulls(length, self._types.get(name, pa.null()))
        self._types.setdefault(name, array.type)
        return array

    def _write(self, table: pa.Table) -> None:
        path = os.path.join(self._out_dir, _part_name(len(self._parts)))
        pq.write_table(table, path)
        self._parts.append(path)


def _infer_array(name: str, values: Sequence[Any]) -> pa.Array:
    """Arrow's own inference; values of mixed kinds in one column (1 and 'a') fall back to text.

    Integers and floats together become DOUBLE, which Arrow refuses for an integer beyond 2**53. Text
    would turn every number of the column into a string, so that case is refused with the fix.
    """
    try:
        return pa.array(values, from_pandas=False)
    except pa.ArrowInvalid as error:
        if "exactly representable" in str(error):
            raise ValueError(
                f"Source column {name!r} mixes integers and fractional numbers, and an integer is beyond "
                f"2**53, which a DOUBLE column would round ({error}). Cast the column in the source to an "
                f"exact type (e.g. CAST({name} AS NUMERIC(38, 6))) or to text."
            ) from None
        return pa.array(_as_text(values), type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return pa.array(_as_text(values), type=pa.string())


def _as_text(values: Iterable[Any]) -> list[str | None]:
    return [None if value is None else str(value) for value in values]
