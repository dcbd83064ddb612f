"""One small class per warehouse: the SQL the warehouse-side diff and commit need, in its dialect.

Every statement is built here from identifiers only: names are validated and quoted by the dialect,
values (sync ids, plan ids, versions, rows) are always bound parameters, never written into SQL.
PostgreSQL and DuckDB run for real in the test suite; Snowflake and BigQuery only generate SQL that
golden-SQL tests pin (see ``docs/warehouse-diff.md``: untested against the real services).

Adding a dialect means one subclass of :class:`Dialect` that overrides what its SQL spells
differently, and one line in ``DIALECTS``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from airflow_provider_zeotap.sync.models import (
    CHANGE_COLUMN,
    IDENTITY_COLUMN,
    PAYLOAD_FIELDS_COLUMN,
    PAYLOAD_HASH_COLUMN,
    Change,
)

#: The state table's own columns beside the source's: the row hash and what was delivered.
HASH_COLUMN = "__row_hash"
#: Delivery columns as the state table keeps them; ``__payload_fields`` as a JSON array text.
STATE_DELIVERY_COLUMNS = (IDENTITY_COLUMN, PAYLOAD_HASH_COLUMN, PAYLOAD_FIELDS_COLUMN)
VERSIONS_TABLE = "sync_versions"
#: Scratch tables of one diff or commit session.
SOURCE_SCRATCH = "zeotap_source"
DUPS_SCRATCH = "zeotap_dups"
ACK_SCRATCH = "zeotap_acknowledged"
LOOKUP_SCRATCH = "zeotap_lookup"

#: Table aliases in the generated SQL.
_S, _T, _A, _D = "s", "t", "a", "d"
_DN = "d.n"

#: The invalid-rows file's reason column (as ``diff.REASON_COLUMN``).
REASON = "__reason"

#: A schema name the author gives: plain, so it means the same thing in every dialect.
SCHEMA_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_schema(name: str) -> str:
    if not isinstance(name, str) or not SCHEMA_PATTERN.fullmatch(name):
        raise ValueError(
            f"state_schema {name!r} is not a plain schema name: use 1-63 letters, digits or '_', starting with a "
            "letter or '_' (e.g. state_schema='zeotap_sync')."
        )
    return name


class Dialect:
    """SQL of the warehouse-side diff, PostgreSQL's spelling by default (which DuckDB mostly shares)."""

    name: ClassVar[str] = "postgres"
    #: The DB-API placeholder of the dialect's driver.
    param: ClassVar[str] = "%s"
    quote_char: ClassVar[str] = '"'
    #: Statements that make text forms canonical for the session (the hash is over text).
    session_setup: ClassVar[tuple[str, ...]] = (
        "SET TIME ZONE 'UTC'",
        "SET DateStyle = 'ISO, YMD'",
        "SET IntervalStyle = 'postgres'",
        "SET extra_float_digits = 1",
    )
    #: Whether scratch tables are the session's own temporary tables (else tables in the state schema).
    temporary_scratch: ClassVar[bool] = True

    # -- names -------------------------------------------------------------------------------------
    def quote(self, name: str) -> str:
        """A quoted identifier; a name the dialect cannot quote safely is refused, never cleaned up."""
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{name!r} cannot be an SQL identifier.")
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def table(self, schema: str, name: str) -> str:
        return f"{self.quote(validate_schema(schema))}.{self.quote(name)}"

    def scratch(self, schema: str, name: str) -> str:
        """Where a scratch table lives: the session's temporary space, or the state schema."""
        return self.quote(name) if self.temporary_scratch else self.table(schema, name)

    def columns(self, names: Sequence[str], alias: str | None = None) -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + self.quote(n) for n in names)

    # -- the row hash ------------------------------------------------------------------------------
    def row_hash(self, alias: str, columns: Sequence[str]) -> str:
        """MD5 of the compared values' canonical text: a row's text form, where null and '' differ."""
        values = ", ".join(f"{alias}.{self.quote(c)}" for c in columns) or "NULL"
        return f"md5(CAST(ROW({values}, 0) AS TEXT))"

    # -- set-up --------------------------------------------------------------------------------------
    def create_schema(self, schema: str) -> str:
        return f"CREATE SCHEMA IF NOT EXISTS {self.quote(validate_schema(schema))}"

    def create_versions_table(self, schema: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table(schema, VERSIONS_TABLE)} ("
            'sync_id VARCHAR(128) PRIMARY KEY, version BIGINT NOT NULL, plan_id VARCHAR(64), '
            'committed_at TIMESTAMP)'
        )

    def ensure_version(self, schema: str) -> str:
        """The first version row of a sync (parameters: sync id twice); a later run finds it there."""
        versions = self.table(schema, VERSIONS_TABLE)
        return (
            f'INSERT INTO {versions} (sync_id, version) SELECT {self.param}, 0 '
            f'WHERE NOT EXISTS (SELECT 1 FROM {versions} WHERE sync_id = {self.param})'
        )

    def ensure_version_parameters(self, sync_id: str) -> tuple[str, ...]:
        return (sync_id, sync_id)

    def read_version(self, schema: str) -> str:
        return f'SELECT version, plan_id FROM {self.table(schema, VERSIONS_TABLE)} WHERE sync_id = {self.param}'

    def bump_version(self, schema: str) -> str:
        """The compare-and-set, inside the commit's transaction. Parameters: new version, plan id,
        sync id, base version, plan id, new version. One row updated: the plan's base is still the
        committed state, or this same plan committed it (a retried task commits again)."""
        p = self.param
        return (
            f'UPDATE {self.table(schema, VERSIONS_TABLE)} SET version = {p}, plan_id = {p}, '
            f'committed_at = CURRENT_TIMESTAMP WHERE sync_id = {p} AND (version = {p} OR '
            f'(plan_id = {p} AND version = {p}))'
        )

    def scratch_from_source(self, schema: str, name: str, source_sql: str, hash_expr: str) -> str:
        """The source, read once into a scratch table with its row hash: every change kind reads the
        same rows, and the author's query (and its parameters) runs exactly once."""
        return (
            f"{self._create_scratch(schema, name)} AS SELECT {_S}.*, {hash_expr} AS {self.quote(HASH_COLUMN)} "
            f'FROM ({source_sql}) AS s'
        )

    def _create_scratch(self, schema: str, name: str) -> str:
        if self.temporary_scratch:
            return f"CREATE TEMPORARY TABLE {self.quote(name)}"
        return f"CREATE TABLE {self.table(schema, name)}"

    def drop_scratch(self, schema: str, name: str) -> str:
        return f"DROP TABLE IF EXISTS {self.scratch(schema, name)}"

    def create_state_table(self, schema: str, table: str, source: str, columns: Sequence[str]) -> str:
        """The state table with the source's own column types, plus the hash and delivery columns."""
        return (
            f"CREATE TABLE {self.table(schema, table)} AS SELECT {self.columns(columns, _S)}, "
            f's.{self.quote(HASH_COLUMN)}, {self._null_text(IDENTITY_COLUMN)}, '
            f"{self._null_text(PAYLOAD_HASH_COLUMN)}, {self._null_text(PAYLOAD_FIELDS_COLUMN)} "
            f'FROM {source} AS s WHERE 1 = 0'
        )

    def _null_text(self, name: str) -> str:
        return f"CAST(NULL AS {self.text_type}) AS {self.quote(name)}"

    text_type: ClassVar[str] = "TEXT"

    def state_columns(self, schema: str, table: str) -> tuple[str, Sequence[Any]]:
        """The state table's columns in order (empty: it does not exist)."""
        return (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            f"{self.param} AND table_name = {self.param} ORDER BY ordinal_position",
            (schema, table),
        )

    def drop_table(self, schema: str, table: str) -> str:
        return f"DROP TABLE IF EXISTS {self.table(schema, table)}"

    def describe_source(self, source_sql: str) -> str:
        return f'SELECT * FROM ({source_sql}) AS s WHERE 1 = 0'

    # -- the diff: one statement per change kind ---------------------------------------------------
    def key_match(self, left: str, right: str, keys: Sequence[str]) -> str:
        return " AND ".join(f"{left}.{self.quote(k)} = {right}.{self.quote(k)}" for k in keys)

    def valid_source(self, schema: str, keys: Sequence[str]) -> str:
        """Source rows with a whole key that occurs once (the others are set aside as invalid)."""
        not_null = " AND ".join(f's.{self.quote(k)} IS NOT NULL' for k in keys)
        dups = self.scratch(schema, DUPS_SCRATCH)
        return (
            f'{self.scratch(schema, SOURCE_SCRATCH)} AS s WHERE {not_null} AND NOT EXISTS '
            f'(SELECT 1 FROM {dups} AS d WHERE {self.key_match(_D, _S, keys)})'
        )

    def create_dups(self, schema: str, keys: Sequence[str]) -> str:
        not_null = " AND ".join(f"{self.quote(k)} IS NOT NULL" for k in keys)
        cols = self.columns(keys)
        return (
            f'{self._create_scratch(schema, DUPS_SCRATCH)} AS SELECT {cols}, COUNT(*) AS n '
            f"FROM {self.scratch(schema, SOURCE_SCRATCH)} WHERE {not_null} GROUP BY {cols} HAVING COUNT(*) > 1"
        )

    def source_counts(self, schema: str, keys: Sequence[str]) -> str:
        nulls = " OR ".join(f"{self.quote(k)} IS NULL" for k in keys)
        return (
            f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {nulls} THEN 1 ELSE 0 END), 0) "
            f"FROM {self.scratch(schema, SOURCE_SCRATCH)}"
        )

    def _delivered(self, alias: str | None) -> str:
        return ", ".join(
            f"{alias}.{self.quote(c)} AS {self.quote(c)}" if alias else self._null_text(c)
            for c in STATE_DELIVERY_COLUMNS
        )

    def _kind(self, kind: Change) -> str:
        # A fixed engine word, not data: written as a literal so every change kind query stays one statement.
        return f"'{kind.value}' AS {self.quote(CHANGE_COLUMN)}"

    def added_query(self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
        state = self.table(schema, table)
        return (
            f'SELECT {self.columns(columns, _S)}, {self._delivered(None)}, '
            f's.{self.quote(HASH_COLUMN)}, {self._kind(Change.ADDED)} FROM {self.valid_source(schema, keys)} '
            f'AND NOT EXISTS (SELECT 1 FROM {state} AS t WHERE {self.key_match(_T, _S, keys)})'
        )

    def changed_query(
        self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str], *, refresh: bool = False
    ) -> str:
        """Current rows of committed keys whose hash moved (``refresh``: those whose hash did not)."""
        state = self.table(schema, table)
        compare = "=" if refresh else "<>"
        kind = Change.REFRESH if refresh else Change.CHANGED
        match = self.key_match(_T, _S, keys)
        return (
            f'SELECT {self.columns(columns, _S)}, {self._delivered(_T)}, '
            f's.{self.quote(HASH_COLUMN)}, {self._kind(kind)} FROM {state} AS t JOIN '
            f'(SELECT s.* FROM {self.valid_source(schema, keys)}) AS s ON {match} '
            f'WHERE s.{self.quote(HASH_COLUMN)} {compare} t.{self.quote(HASH_COLUMN)}'
        )

    def removed_query(self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
        """Committed keys no source row has (a duplicated key is still in the source: not removed)."""
        state = self.table(schema, table)
        return (
            f'SELECT {self.columns(columns, _T)}, {self._delivered(_T)}, '
            f't.{self.quote(HASH_COLUMN)}, {self._kind(Change.REMOVED)} FROM {state} AS t WHERE NOT EXISTS '
            f'(SELECT 1 FROM {self.scratch(schema, SOURCE_SCRATCH)} AS s WHERE {self.key_match(_S, _T, keys)})'
        )

    def invalid_query(self, schema: str, keys: Sequence[str], columns: Sequence[str]) -> str:
        reasons = " ".join(
            f"WHEN {_S}.{self.quote(k)} IS NULL THEN {self.param}" for k in keys
        )
        dups = self.scratch(schema, DUPS_SCRATCH)
        nulls = " OR ".join(f's.{self.quote(k)} IS NULL' for k in keys)
        return (
            f'SELECT {self.columns(columns, _S)}, CASE {reasons} ELSE '
            f"{self.concat(self.param, self.cast_text(_DN), self.param)} END "
            f'AS {self.quote(REASON)} FROM {self.scratch(schema, SOURCE_SCRATCH)} AS s LEFT JOIN {dups} AS d ON '
            f'{self.key_match(_D, _S, keys)} WHERE {nulls} OR d.n IS NOT NULL'
        )

    def concat(self, *parts: str) -> str:
        return " || ".join(parts)

    def cast_text(self, expr: str) -> str:
        return f"CAST({expr} AS {self.text_type})"

    def state_rows_query(self, schema: str, table: str, columns: Sequence[str]) -> str:
        """Every committed row with its hash (a rebind sends every current row)."""
        return f'SELECT {self.columns(columns, _T)}, {_T}.{self.quote(HASH_COLUMN)} FROM {self.table(schema, table)} AS t'

    # -- lookups by identity (the identity check, ownership records) ------------------------------
    def create_lookup(self, schema: str) -> str:
        return f'{self._create_scratch(schema, LOOKUP_SCRATCH)} (lookup_identity {self.text_type})'

    def insert_lookup(self, schema: str) -> str:
        return f'INSERT INTO {self.scratch(schema, LOOKUP_SCRATCH)} (lookup_identity) VALUES ({self.param})'

    def rows_with_identities(self, schema: str, table: str, keys: Sequence[str]) -> str:
        return (
            f'SELECT {self.columns(keys, _T)}, t.{self.quote(IDENTITY_COLUMN)} '
            f'FROM {self.table(schema, table)} AS t WHERE t.{self.quote(IDENTITY_COLUMN)} IN '
            f'(SELECT lookup_identity FROM {self.scratch(schema, LOOKUP_SCRATCH)})'
        )

    # -- the commit --------------------------------------------------------------------------------
    def create_acknowledged(self, schema: str, table: str) -> str:
        """A scratch table shaped like the state table, plus the change kind, for the acknowledged rows."""
        return (
            f'{self._create_scratch(schema, ACK_SCRATCH)} AS SELECT t.*, {self._null_text(CHANGE_COLUMN)} '
            f'FROM {self.table(schema, table)} AS t WHERE 1 = 0'
        )

    def insert_acknowledged(self, schema: str, columns: Sequence[str]) -> str:
        marks = ", ".join([self.param] * len(columns))
        return f"INSERT INTO {self.scratch(schema, ACK_SCRATCH)} ({self.columns(columns)}) VALUES ({marks})"

    def merge(self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str], *, replace_all: bool) -> list[str]:
        """The acknowledged rows into the state table: removed keys go, the others take the new row.

        A delete of every acknowledged key then an insert of the kept ones: one transaction, and it needs
        no unique constraint. ``replace_all`` (a rebind) starts from an empty state.
        """
        state = self.table(schema, table)
        ack = self.scratch(schema, ACK_SCRATCH)
        statements = [f"DELETE FROM {state} WHERE 1 = 1"] if replace_all else [
            f'DELETE FROM {state} AS t WHERE EXISTS (SELECT 1 FROM {ack} AS a WHERE '
            f'{self.key_match(_A, _T, keys)})'
        ]
        statements.append(
            f"INSERT INTO {state} ({self.columns(columns)}) SELECT {self.columns(columns)} FROM {ack} "
            f"WHERE {self.quote(CHANGE_COLUMN)} <> '{Change.REMOVED.value}'"
        )
        return statements

    def count_rows(self, schema: str, table: str) -> str:
        return f"SELECT COUNT(*) FROM {self.table(schema, table)}"

    def load_rows(self, cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Bind many rows to one INSERT; a driver with a faster path for it overrides this."""
        if rows:
            cursor.executemany(sql, rows)


class PostgresDialect(Dialect):
    name = "postgres"

    def quote(self, name: str) -> str:
        """psycopg reads ``%`` in a statement as a placeholder, so a name holding one is refused."""
        if isinstance(name, str) and "%" in name:
            raise ValueError(f"Column {name!r} holds '%', which PostgreSQL drivers read as a placeholder; alias it.")
        return super().quote(name)

    def load_rows(self, cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """psycopg2's ``executemany`` is one round trip per row; ``execute_values`` sends pages of rows."""
        if not rows:
            return
        if type(cursor).__module__.split(".")[0] == "psycopg2":
            from psycopg2.extras import execute_values

            head, _, values = sql.rpartition(" VALUES ")
            del values
            execute_values(cursor, head + " VALUES %s", rows, page_size=1000)
            return
        cursor.executemany(sql, rows)


class DuckDBDialect(Dialect):
    """A DuckDB file as the warehouse. Its cursors are connections of their own, which do not see another
    connection's temporary tables, so the scratch tables live in the state schema and are dropped after."""

    name = "duckdb"
    param = "?"
    session_setup = ("SET TimeZone = 'UTC'",)
    temporary_scratch = False
    text_type = "VARCHAR"

    def row_hash(self, alias: str, columns: Sequence[str]) -> str:
        """MD5 of a JSON array of the compared values: JSON keeps null apart from 'null' and '' ."""
        values = ", ".join(f"{alias}.{self.quote(c)}" for c in columns) or "NULL"
        return f"md5(CAST(json_array({values}) AS VARCHAR))"

    def state_columns(self, schema: str, table: str) -> tuple[str, Sequence[Any]]:
        return (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            (schema, table),
        )


class SnowflakeDialect(Dialect):
    """Snowflake: untested against the real service; the SQL is pinned by golden tests."""

    name = "snowflake"
    session_setup = ("ALTER SESSION SET TIMEZONE = 'UTC'",)
    text_type = "VARCHAR"

    def row_hash(self, alias: str, columns: Sequence[str]) -> str:
        pairs = ", ".join(f"'{i}', {alias}.{self.quote(c)}" for i, c in enumerate(columns))
        return f"MD5(TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL({pairs})))"

    def merge(self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str], *, replace_all: bool) -> list[str]:
        state = self.table(schema, table)
        ack = self.scratch(schema, ACK_SCRATCH)
        removed = f"'{Change.REMOVED.value}'"
        change = self.quote(CHANGE_COLUMN)
        statements = [f"DELETE FROM {state} WHERE 1 = 1"] if replace_all else []
        updates = ", ".join(f'{self.quote(c)} = a.{self.quote(c)}' for c in columns if c not in keys)
        statements.append(
            f'MERGE INTO {state} AS t USING {ack} AS a ON {self.key_match(_T, _A, keys)} '
            f'WHEN MATCHED AND a.{change} = {removed} THEN DELETE '
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f'WHEN NOT MATCHED AND a.{change} <> {removed} THEN INSERT ({self.columns(columns)}) '
            f'VALUES ({self.columns(columns, _A)})'
        )
        return statements


class BigQueryDialect(Dialect):
    """BigQuery: untested against the real service; the SQL is pinned by golden tests.

    Temporary tables exist only inside a BigQuery session or script, so the scratch tables live in
    the state dataset and are dropped after; the source is read with the Storage Read API by the
    driver, which is BigQuery's way of streaming a result.
    """

    name = "bigquery"
    quote_char = "`"
    session_setup = ()
    temporary_scratch = False
    text_type = "STRING"

    def quote(self, name: str) -> str:
        if not isinstance(name, str) or not name or "`" in name or "\\" in name or "\x00" in name:
            raise ValueError(f"{name!r} cannot be a BigQuery identifier (no backticks or backslashes).")
        return f"`{name}`"

    def row_hash(self, alias: str, columns: Sequence[str]) -> str:
        """MD5 of the compared values as a JSON array (TO_JSON keeps null apart from 'null' and '')."""
        values = ", ".join(f"TO_JSON({alias}.{self.quote(c)})" for c in columns) or "TO_JSON(NULL)"
        return f"TO_HEX(MD5(TO_JSON_STRING([{values}])))"

    def create_versions_table(self, schema: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table(schema, VERSIONS_TABLE)} ("
            "`sync_id` STRING NOT NULL, `version` INT64 NOT NULL, `plan_id` STRING, `committed_at` TIMESTAMP)"
        )

    def ensure_version(self, schema: str) -> str:
        """BigQuery takes no WHERE without a FROM: the first version row is a MERGE."""
        return (
            f"MERGE INTO {self.table(schema, VERSIONS_TABLE)} AS v USING (SELECT {self.param} AS sync_id) AS n "
            "ON v.sync_id = n.sync_id WHEN NOT MATCHED THEN INSERT (sync_id, version) VALUES (n.sync_id, 0)"
        )

    def ensure_version_parameters(self, sync_id: str) -> tuple[str, ...]:
        return (sync_id,)

    def state_columns(self, schema: str, table: str) -> tuple[str, Sequence[Any]]:
        """A dataset's own INFORMATION_SCHEMA (BigQuery has no project-wide one without a region)."""
        return (
            f"SELECT column_name FROM {self.quote(validate_schema(schema))}.INFORMATION_SCHEMA.COLUMNS "
            f"WHERE table_name = {self.param} ORDER BY ordinal_position",
            (table,),
        )

    def merge(self, schema: str, table: str, keys: Sequence[str], columns: Sequence[str], *, replace_all: bool) -> list[str]:
        return SnowflakeDialect.merge(self, schema, table, keys, columns, replace_all=replace_all)  # type: ignore[arg-type]


DIALECTS: dict[str, type[Dialect]] = {
    "postgres": PostgresDialect,
    "postgresql": PostgresDialect,
    "duckdb": DuckDBDialect,
    "snowflake": SnowflakeDialect,
    "gcpbigquery": BigQueryDialect,
    "bigquery": BigQueryDialect,
    "google_cloud_platform": BigQueryDialect,
}


def dialect_for(conn_type: str | None) -> Dialect:
    """The dialect of an Airflow connection type, or an error listing the ones there are."""
    cls = DIALECTS.get((conn_type or "").lower())
    if cls is None:
        raise ValueError(
            f"diff_in='warehouse' has no SQL dialect for connection type {conn_type!r}; it knows "
            f"{', '.join(sorted(set(DIALECTS)))}. Use diff_in='worker' for this connection."
        )
    return cls()
