"""Extract a source into local Parquet parts that the diff reads together.

A source is streamed: a query result is fetched ``chunk_size`` rows at a time and each chunk becomes
one Parquet file, so memory stays bounded by one chunk whatever the result size. The diff reads the
parts with ``union_by_name``, which promotes types that disagree between parts (BIGINT and DOUBLE
become DOUBLE). The one disagreement that promotion would get wrong is a chunk where a column is
entirely null: inferred on its own it has no type, and writing it as text would turn the whole
column into text. Such a column is written with the type an earlier chunk established, or with
Arrow's null type, which DuckDB reads as ``NULL`` and which unifies with whatever the other parts hold.

Every function refuses a column name the engine cannot carry (see ``check_column_names``), and an
empty source whose columns are known still yields one empty Parquet file carrying them, so the diff
can run and report zero rows instead of failing for want of a schema.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
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
) -> list[str]:
    """Run ``sql`` through a DB-API connection and write one Parquet part per fetched chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cursor:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        if cursor.description is None:
            raise ValueError("The source query returned no result set (is it a SELECT?).")
        names = [str(column[0]) for column in cursor.description]
        check_column_names(names)
        writer = _PartWriter(names, out_dir)
        while chunk := cursor.fetchmany(chunk_size):
            writer.write_columns(_transpose(chunk, len(names)), len(chunk))
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
    """DB-API rows to columns; ``zip`` does it in C, without a Python loop over the values."""
    columns = list(zip(*rows))
    if len(columns) != width:
        raise ValueError(f"The cursor returned rows of {len(columns)} values for {width} columns.")
    return columns


class _PartWriter:
    """Writes chunks as numbered Parquet parts, keeping each column's first known type.

    The first non-null type of a column is remembered so that a later all-null chunk is written with
    it; types that genuinely differ between chunks (int then float) are left for the reader to unify.
    """

    def __init__(self, names: list[str], out_dir: str) -> None:
        self._names = names
        self._out_dir = out_dir
        self._types: dict[str, pa.DataType] = {}
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
        array = _infer_array(values) if length else pa.nulls(0)
        if pa.types.is_null(array.type):
            return pa.nulls(length, self._types.get(name, pa.null()))
        self._types.setdefault(name, array.type)
        return array

    def _write(self, table: pa.Table) -> None:
        path = os.path.join(self._out_dir, _part_name(len(self._parts)))
        pq.write_table(table, path)
        self._parts.append(path)


def _infer_array(values: Sequence[Any]) -> pa.Array:
    """Arrow's own inference; values of mixed kinds in one column (1 and 'a') fall back to text."""
    try:
        return pa.array(values, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return pa.array(_as_text(values), type=pa.string())


def _as_text(values: Iterable[Any]) -> list[str | None]:
    return [None if value is None else str(value) for value in values]
