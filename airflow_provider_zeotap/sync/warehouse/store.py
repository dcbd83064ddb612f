"""The committed state of a sync kept in the warehouse: the diff computed there, the commit merged there.

What travels out of the warehouse is only what the delivery needs: the changed rows (streamed through
the driver's server-side cursor into the same changes file the worker diff writes), the invalid rows,
and, on request, the few committed rows that share an identity with this run's rows. What travels in
is the acknowledged rows, loaded into a scratch table and merged in one transaction that also moves
the sync's version row (compare-and-set).

A session sets the canonical text forms the row hash is computed over (time zone, date style) before
anything is hashed, so a hash stored by one run compares with the next run's. See
``docs/warehouse-diff.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from airflow_provider_zeotap.errors import ConfigurationError, StaleBaseError
from airflow_provider_zeotap.sync.commit import _applied_sql, _check_one_outcome_per_row
from airflow_provider_zeotap.sync.diff import (
    CHANGES_FILE,
    INVALID_FILE,
    REASON_COLUMN,
    check_column_names,
    fetch_row,
    parquet_relation,
    quote_identifier,
    quote_literal,
    scratch_duckdb,
)
from airflow_provider_zeotap.sync.models import (
    CHANGE_COLUMN,
    IDENTITY_COLUMN,
    PAYLOAD_FIELDS_COLUMN,
    PAYLOAD_HASH_COLUMN,
    ROW_ID_COLUMN,
    Change,
    PlanCounts,
    WarehousePlan,
)
from airflow_provider_zeotap.sync.sources import DbApiHookLike, query_to_parts
from airflow_provider_zeotap.sync.storage import written_whole
from airflow_provider_zeotap.sync.warehouse.dialects import (
    ACK_SCRATCH,
    DUPS_SCRATCH,
    HASH_COLUMN,
    LOOKUP_SCRATCH,
    SOURCE_SCRATCH,
    STATE_DELIVERY_COLUMNS,
    Dialect,
    DuckDBDialect,
    dialect_for,
)

log = logging.getLogger(__name__)

HASHES_FILE = "hashes.parquet"
#: Rows bound per INSERT round when the acknowledged rows or the identities go in.
_LOAD_CHUNK = 5_000
_KIND_ORDER = (Change.ADDED, Change.CHANGED, Change.REMOVED, Change.REFRESH)


def state_table_name(sync_id: str) -> str:
    """One table per sync: readable, valid in every dialect, and distinct for ids that read alike."""
    plain = re.sub(r"[^A-Za-z0-9_]", "_", sync_id)[:40]
    return f"state_{plain}_{hashlib.sha256(sync_id.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class WarehouseDiffOutput:
    changes_path: str
    invalid_path: str
    hashes_path: str
    counts: PlanCounts
    source_columns: list[str]
    columns: list[str]
    version: int
    state_table: str


class WarehouseState:
    """One sync's state table and version row in one warehouse, reached through a DB-API hook."""

    def __init__(self, hook: DbApiHookLike, dialect: Dialect | str, *, sync_id: str, state_schema: str) -> None:
        self.hook = hook
        self.dialect = dialect if isinstance(dialect, Dialect) else dialect_for(dialect)
        self.sync_id = sync_id
        self.schema = state_schema
        self.table = state_table_name(sync_id)

    @classmethod
    def of_plan(cls, hook: DbApiHookLike, plan: WarehousePlan, sync_id: str) -> WarehouseState:
        return cls(hook, plan.dialect, sync_id=sync_id, state_schema=plan.state_schema)

    @property
    def where(self) -> str:
        return f"{self.schema}.{self.table}"

    # -- sessions ----------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[tuple[Any, Any]]:
        with closing(self.hook.get_conn()) as conn:
            cursor = conn.cursor()
            try:
                for statement in self.dialect.session_setup:
                    cursor.execute(statement)
                self._commit(conn, cursor)
                yield conn, cursor
            finally:
                with suppress(Exception):
                    cursor.close()

    def _begin(self, cursor: Any) -> None:
        if isinstance(self.dialect, DuckDBDialect):
            cursor.execute("BEGIN TRANSACTION")

    def _commit(self, conn: Any, cursor: Any) -> None:
        if isinstance(self.dialect, DuckDBDialect):
            with suppress(Exception):  # autocommit mode: there is no open transaction to end
                cursor.execute("COMMIT")
            return
        conn.commit()

    def _rollback(self, conn: Any, cursor: Any) -> None:
        with suppress(Exception):
            if isinstance(self.dialect, DuckDBDialect):
                cursor.execute("ROLLBACK")
            else:
                conn.rollback()

    def _drop_scratch(self, conn: Any, cursor: Any, *names: str) -> None:
        for name in names:
            cursor.execute(self.dialect.drop_scratch(self.schema, name))
        self._commit(conn, cursor)

    def _stream(self, conn: Any, sql: str, out_dir: str, parameters: Sequence[Any] = (), chunk_size: int = 50_000) -> list[str]:
        """A result streamed into Parquet parts through the driver's server-side cursor (``sources``)."""
        return query_to_parts(conn, sql, out_dir, chunk_size=chunk_size, parameters=tuple(parameters), engine_columns=True)

    # -- the diff ----------------------------------------------------------------------------------
    def diff(
        self,
        *,
        sql: str,
        parameters: Any,
        primary_key: list[str],
        columns: list[str] | None,
        first_run: bool,
        full_refresh: bool,
        out_dir: str,
        chunk_size: int = 50_000,
        memory_limit: str | None = None,
    ) -> WarehouseDiffOutput:
        d = self.dialect
        with self._session() as (conn, cursor):
            try:
                names, types = self._describe(cursor, sql, parameters)
                _require(names, primary_key, "primary-key column")
                _require(names, columns or [], "compared column")
                compared = list(columns) if columns is not None else list(names)
                cursor.execute(d.create_schema(self.schema))
                cursor.execute(d.create_versions_table(self.schema))
                cursor.execute(d.ensure_version(self.schema), d.ensure_version_parameters(self.sync_id))
                self._check_state_table(cursor, names, types, first_run)
                self._drop_scratch(conn, cursor, SOURCE_SCRATCH, DUPS_SCRATCH)
                source = d.scratch_from_source(self.schema, SOURCE_SCRATCH, sql, d.row_hash("s", compared))
                cursor.execute(source) if parameters is None else cursor.execute(source, parameters)
                cursor.execute(d.create_dups(self.schema, primary_key), ())
                if first_run:
                    cursor.execute(d.drop_table(self.schema, self.table))
                    cursor.execute(
                        d.create_state_table(self.schema, self.table, d.scratch(self.schema, SOURCE_SCRATCH), names)
                    )
                cursor.execute(d.read_version(self.schema), (self.sync_id,))
                version = int(cursor.fetchone()[0])
                cursor.execute(d.source_counts(self.schema, primary_key), ())
                total, null_keys = (int(v) for v in cursor.fetchone())
                cursor.execute(f"SELECT COALESCE(SUM(n), 0) FROM {d.scratch(self.schema, DUPS_SCRATCH)}", ())
                duplicated = int(cursor.fetchone()[0])
                self._commit(conn, cursor)
                kinds = [Change.ADDED, Change.CHANGED, Change.REFRESH if full_refresh else Change.REMOVED]
                parts: list[str] = []
                for kind in kinds:
                    parts += self._stream(
                        conn, self._kind_query(kind, primary_key, names), os.path.join(out_dir, "wh", kind.value),
                        chunk_size=chunk_size,
                    )
                reasons = [f"null primary key: {k}" for k in primary_key] + ["duplicate primary key (", " rows)"]
                invalid_parts = self._stream(
                    conn, d.invalid_query(self.schema, primary_key, names), os.path.join(out_dir, "wh", "invalid"),
                    reasons, chunk_size=chunk_size,
                )
            except Exception:
                self._rollback(conn, cursor)
                raise
            finally:
                with suppress(Exception):
                    self._drop_scratch(conn, cursor, SOURCE_SCRATCH, DUPS_SCRATCH)
        paths = {name: os.path.join(out_dir, name) for name in (CHANGES_FILE, INVALID_FILE, HASHES_FILE)}
        kind_counts = _write_changes(parts, names, primary_key, paths[CHANGES_FILE], paths[HASHES_FILE], out_dir, memory_limit)
        _write_invalid(invalid_parts, paths[INVALID_FILE], out_dir, memory_limit)
        shutil.rmtree(os.path.join(out_dir, "wh"), ignore_errors=True)
        added, changed = kind_counts.get("added", 0), kind_counts.get("changed", 0)
        refresh, invalid = kind_counts.get("refresh", 0), null_keys + duplicated
        counts = PlanCounts(
            added=added, changed=changed, removed=kind_counts.get("removed", 0), refresh=refresh,
            unchanged=total - invalid - added - changed - refresh, invalid=invalid, total=total,
        )
        return WarehouseDiffOutput(
            changes_path=paths[CHANGES_FILE], invalid_path=paths[INVALID_FILE], hashes_path=paths[HASHES_FILE],
            counts=counts, source_columns=names, columns=compared, version=version, state_table=self.table,
        )

    def _describe(self, cursor: Any, sql: str, parameters: Any) -> tuple[list[str], list[tuple[str, ...]]]:
        """The source's column names, and each one's type as the driver describes it."""
        statement = self.dialect.describe_source(sql)
        cursor.execute(statement) if parameters is None else cursor.execute(statement, parameters)
        names = [str(column[0]) for column in cursor.description]
        types = [_described_type(column) for column in cursor.description]
        cursor.fetchall()
        check_column_names(names)
        for name in names:
            self.dialect.quote(name)  # a name the dialect cannot quote is refused before anything runs
        return names, types

    def _check_state_table(self, cursor: Any, names: list[str], types: list[tuple[str, ...]], first_run: bool) -> None:
        """The state table of a committed sync must exist and hold the source's columns."""
        statement, parameters = self.dialect.state_columns(self.schema, self.table)
        cursor.execute(statement, tuple(parameters))
        existing = [str(row[0]) for row in cursor.fetchall()]
        if first_run:
            return
        if not existing:
            raise ConfigurationError(
                f"Sync {self.sync_id!r} was committed with its state in the warehouse table {self.where}, which is "
                "gone. Restore it (from the warehouse's time travel or a backup), or start the sync afresh under a "
                "new sync_id (its first run sends every row as new)."
            )
        expected = [*names, HASH_COLUMN, *STATE_DELIVERY_COLUMNS]
        if existing != expected:
            held = [c for c in existing if not c.startswith("__")]
            raise ConfigurationError(
                f"Sync {self.sync_id!r}: the source's columns {names} differ from those its warehouse state table "
                f"{self.where} was created with {held}. Select the same columns, or start the sync afresh under a "
                "new sync_id (a new column set is a new sync)."
            )
        # A value of a changed type would be stored in the old one, which may round it: refused instead.
        cursor.execute(f"SELECT {self.dialect.columns(names)} FROM {self.dialect.table(self.schema, self.table)} WHERE 1 = 0")
        held_types = [_described_type(column) for column in cursor.description]
        cursor.fetchall()
        for name, now, before in zip(names, types, held_types):
            if now != before:
                raise ConfigurationError(
                    f"Sync {self.sync_id!r}: source column {name!r} is now of type {_type_text(now)}, but the warehouse "
                    f"state table {self.where} holds it as {_type_text(before)}. Cast it back in the source query "
                    f"(e.g. CAST({name} AS ...)), or start the sync afresh under a new sync_id."
                )

    def _kind_query(self, kind: Change, keys: list[str], names: list[str]) -> str:
        d = self.dialect
        if kind is Change.ADDED:
            return d.added_query(self.schema, self.table, keys, names)
        if kind is Change.REMOVED:
            return d.removed_query(self.schema, self.table, keys, names)
        return d.changed_query(self.schema, self.table, keys, names, refresh=kind is Change.REFRESH)

    # -- the commit --------------------------------------------------------------------------------
    def commit(
        self,
        *,
        plan_id: str,
        base_version: int,
        changes_path: str,
        hashes_path: str,
        outcome_paths: list[str],
        acted_on: set[str],
        primary_key: list[str],
        replace_all: bool,
        work_dir: str,
        memory_limit: str | None = None,
    ) -> tuple[int, int]:
        """Merge the acknowledged rows into the state table and move the version row; return (rows, version).

        One transaction: the version row is checked and bumped first (it also locks the row against a
        concurrent commit), so a stale plan changes nothing.
        """
        d = self.dialect
        new_version = base_version + 1
        with self._session() as (conn, cursor):
            statement, parameters = d.state_columns(self.schema, self.table)
            cursor.execute(statement, tuple(parameters))
            columns = [str(row[0]) for row in cursor.fetchall()]
            if not columns:
                raise ConfigurationError(
                    f"Sync {self.sync_id!r}: its warehouse state table {self.where} is gone; nothing was committed. "
                    "Restore it, or start the sync afresh under a new sync_id."
                )
            try:
                self._begin(cursor)
                cursor.execute(
                    d.bump_version(self.schema),
                    (new_version, plan_id, self.sync_id, base_version, plan_id, new_version),
                )
                cursor.execute(d.read_version(self.schema), (self.sync_id,))
                version, holder = cursor.fetchone()
                if int(version) != new_version or holder != plan_id:
                    raise StaleBaseError(
                        f"Sync {self.sync_id!r}: plan {plan_id} is stale. It was computed against version {base_version} "
                        f"of the warehouse state {self.where}, which is now at version {version} (plan {holder}). "
                        "Nothing was committed. Run the DAG again (a new run diffs against the new state), and keep "
                        "max_active_runs=1 for sync DAGs."
                    )
                cursor.execute(d.drop_scratch(self.schema, ACK_SCRATCH))
                cursor.execute(d.create_acknowledged(self.schema, self.table))
                insert = d.insert_acknowledged(self.schema, [*columns, CHANGE_COLUMN])
                for rows in _acknowledged_rows(
                    changes_path, hashes_path, outcome_paths, acted_on, columns, work_dir, memory_limit
                ):
                    d.load_rows(cursor, insert, rows)
                for statement in d.merge(self.schema, self.table, primary_key, columns, replace_all=replace_all):
                    cursor.execute(statement, ())
                cursor.execute(d.count_rows(self.schema, self.table), ())
                (rows,) = cursor.fetchone()
                cursor.execute(d.drop_scratch(self.schema, ACK_SCRATCH))
                self._commit(conn, cursor)
            except Exception:
                self._rollback(conn, cursor)
                raise
        return int(rows), new_version

    # -- committed rows by identity, and every committed row ---------------------------------------
    def rows_with_identities(self, identities: Iterable[str], primary_key: list[str], out_path: str) -> str:
        """The committed rows (key and ``__identity``) whose identity is one of ``identities``, as Parquet.

        The identity check and the ownership records ask about a run's few identities; only the
        committed rows that hold one of them leave the warehouse.
        """
        d = self.dialect
        folder = os.path.dirname(out_path)
        with self._session() as (conn, cursor):
            try:
                self._drop_scratch(conn, cursor, LOOKUP_SCRATCH)
                cursor.execute(d.create_lookup(self.schema))
                insert = d.insert_lookup(self.schema)
                chunk: list[tuple[str]] = []
                for identity in identities:
                    chunk.append((identity,))
                    if len(chunk) >= _LOAD_CHUNK:
                        d.load_rows(cursor, insert, chunk)
                        chunk = []
                d.load_rows(cursor, insert, chunk)
                self._commit(conn, cursor)
                parts = self._stream(
                    conn, d.rows_with_identities(self.schema, self.table, primary_key), os.path.join(folder, "wh-lookup")
                )
            finally:
                with suppress(Exception):
                    self._drop_scratch(conn, cursor, LOOKUP_SCRATCH)
        _combine(parts, out_path, folder)
        shutil.rmtree(os.path.join(folder, "wh-lookup"), ignore_errors=True)
        return out_path

    def rebind_changes(
        self, *, changes_path: str, hashes_path: str, names: list[str], primary_key: list[str], out_path: str
    ) -> int:
        """Every current row as a 'refresh' change, numbered in key order, for a target that is new.

        The current rows are the plan's added, changed and refreshed rows, and the committed rows the
        plan does not touch (unchanged: the state holds their values). Their hashes go beside, as
        ``<out>.hashes.parquet``, for the commit. Written once per plan, so a retried task resumes.
        """
        hashes_out = out_path.removesuffix(".parquet") + ".hashes.parquet"
        if os.path.exists(out_path) and os.path.exists(hashes_out):
            return int(fetch_row_of(out_path))
        folder = os.path.dirname(out_path)
        os.makedirs(folder, exist_ok=True)
        state_path = os.path.join(folder, "committed_rows.parquet")
        with self._session() as (conn, _cursor):
            parts = self._stream(
                conn, self.dialect.state_rows_query(self.schema, self.table, names), os.path.join(folder, "wh-state")
            )
        _combine(parts, state_path, folder)
        shutil.rmtree(os.path.join(folder, "wh-state"), ignore_errors=True)
        keys = ", ".join(quote_identifier(k) for k in primary_key)
        source = ", ".join(quote_identifier(n) for n in names)
        match = " AND ".join(f'"s".{quote_identifier(k)} = "c".{quote_identifier(k)}' for k in primary_key)
        nothing = ", ".join(
            f"CAST(NULL AS {t}) AS {quote_identifier(c)}"
            for c, t in ((IDENTITY_COLUMN, "VARCHAR"), (PAYLOAD_HASH_COLUMN, "VARCHAR"), (PAYLOAD_FIELDS_COLUMN, _FIELDS_TYPE))
        )
        with scratch_duckdb(folder) as con:
            con.execute(
                f"""CREATE TEMP TABLE "rows" AS
                    SELECT *, row_number() OVER (ORDER BY {keys}) - 1 AS "{ROW_ID_COLUMN}" FROM (
                        SELECT {', '.join(f'"c".{quote_identifier(n)}' for n in names)}, "h"."{HASH_COLUMN}"
                        FROM {parquet_relation([changes_path])} AS "c"
                        JOIN {parquet_relation([hashes_path])} AS "h" ON "h"."{ROW_ID_COLUMN}" = "c"."{ROW_ID_COLUMN}"
                        WHERE "c"."{CHANGE_COLUMN}" <> '{Change.REMOVED.value}'
                        UNION ALL BY NAME
                        SELECT {', '.join(f'"s".{quote_identifier(n)}' for n in names)}, CAST("s"."{HASH_COLUMN}" AS VARCHAR)
                        FROM {parquet_relation([state_path])} AS "s"
                        WHERE NOT EXISTS (SELECT 1 FROM {parquet_relation([changes_path])} AS "c" WHERE {match})
                    )"""
            )
            with written_whole(out_path) as partial:  # renamed last: its presence means both files are whole
                (rows,) = fetch_row(
                    con,
                    f"""COPY (SELECT {source}, {nothing}, '{Change.REFRESH.value}' AS "{CHANGE_COLUMN}", "{ROW_ID_COLUMN}"
                        FROM "rows" ORDER BY "{ROW_ID_COLUMN}") TO {quote_literal(partial)} (FORMAT parquet)""",
                )
                con.execute(
                    f"""COPY (SELECT "{ROW_ID_COLUMN}", "{HASH_COLUMN}" FROM "rows" ORDER BY "{ROW_ID_COLUMN}")
                        TO {quote_literal(hashes_out)} (FORMAT parquet)"""
                )
        os.remove(state_path)
        return int(rows)


def _described_type(column: Any) -> tuple[str, ...]:
    """A column's type as DB-API describes it: the type code, with precision and scale where given."""
    return tuple(str(part) for part in (column[1], column[4], column[5]))


def _type_text(described: tuple[str, ...]) -> str:
    code, precision, scale = described
    return code if precision == "None" else f"{code} ({precision}, {scale})"


def _require(names: list[str], wanted: Iterable[str], role: str) -> None:
    for column in wanted:
        if column not in names:
            raise ValueError(
                f"The {role} {column!r} is not in the source; available columns: {', '.join(map(repr, names))}."
            )


_FIELDS_TYPE = "VARCHAR[]"


def _delivery_select(alias: str) -> str:
    """Delivery columns as the changes file types them (the state keeps the field list as JSON text)."""
    return (
        f'CAST({alias}."{IDENTITY_COLUMN}" AS VARCHAR) AS "{IDENTITY_COLUMN}", '
        f'CAST({alias}."{PAYLOAD_HASH_COLUMN}" AS VARCHAR) AS "{PAYLOAD_HASH_COLUMN}", '
        f'CAST(from_json(CAST({alias}."{PAYLOAD_FIELDS_COLUMN}" AS VARCHAR), \'["VARCHAR"]\') AS {_FIELDS_TYPE}) '
        f'AS "{PAYLOAD_FIELDS_COLUMN}"'
    )


def _write_changes(
    parts: list[str], names: list[str], keys: list[str], path: str, hashes_path: str, out_dir: str,
    memory_limit: str | None,
) -> dict[str, int]:
    """The streamed change rows as the worker diff's changes file: same columns, types, kinds and row ids.

    Row ids are numbered here, in DuckDB, in the worker diff's order (kind, then key), so both paths
    number alike whatever the warehouse's collation. The row hashes go to a file of their own, which
    the commit reads: the changes file stays exactly the worker's.
    """
    rank = " ".join(f"WHEN '{kind.value}' THEN {i}" for i, kind in enumerate(_KIND_ORDER))
    order = ", ".join(quote_identifier(k) for k in keys)
    source = ", ".join(f'"c".{quote_identifier(n)}' for n in names)
    with scratch_duckdb(out_dir, memory_limit=memory_limit) as con:
        con.execute(
            f"""CREATE TEMP TABLE "numbered" AS
                SELECT *, row_number() OVER (ORDER BY CASE "{CHANGE_COLUMN}" {rank} END, {order}) - 1 AS "{ROW_ID_COLUMN}"
                FROM {parquet_relation(parts)}"""
        )
        con.execute(
            f"""COPY (SELECT {source}, {_delivery_select('"c"')}, CAST("c"."{CHANGE_COLUMN}" AS VARCHAR) AS "{CHANGE_COLUMN}",
                       "c"."{ROW_ID_COLUMN}"
                FROM "numbered" AS "c" ORDER BY "{ROW_ID_COLUMN}") TO {quote_literal(path)} (FORMAT parquet)"""
        )
        con.execute(
            f"""COPY (SELECT "{ROW_ID_COLUMN}", CAST("{HASH_COLUMN}" AS VARCHAR) AS "{HASH_COLUMN}" FROM "numbered"
                ORDER BY "{ROW_ID_COLUMN}") TO {quote_literal(hashes_path)} (FORMAT parquet)"""
        )
        rows = con.execute(f'SELECT "{CHANGE_COLUMN}", count(*) FROM "numbered" GROUP BY ALL').fetchall()
    return {str(kind): int(n) for kind, n in rows}


def _write_invalid(parts: list[str], path: str, out_dir: str, memory_limit: str | None) -> None:
    with scratch_duckdb(out_dir, memory_limit=memory_limit) as con:
        con.execute(
            f"""COPY (SELECT * REPLACE (CAST("{REASON_COLUMN}" AS VARCHAR) AS "{REASON_COLUMN}")
                FROM {parquet_relation(parts)}) TO {quote_literal(path)} (FORMAT parquet)"""
        )


def _combine(parts: list[str], out_path: str, folder: str) -> None:
    with scratch_duckdb(folder) as con:
        con.execute(f"COPY (SELECT * FROM {parquet_relation(parts)}) TO {quote_literal(out_path)} (FORMAT parquet)")


def fetch_row_of(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _acknowledged_rows(
    changes_path: str,
    hashes_path: str,
    outcome_paths: list[str],
    acted_on: set[str],
    columns: list[str],
    work_dir: str,
    memory_limit: str | None,
) -> Iterator[list[tuple[Any, ...]]]:
    """The changes that take effect (``commit._applied_sql``: the worker's rule), as state-table rows.

    What this run delivered wins; a change not sent keeps what the state said was delivered.
    """
    changes = parquet_relation([changes_path])
    values = []
    for column in columns:
        name = quote_identifier(column)
        if column == HASH_COLUMN:
            values.append(f'"h".{name}')
        elif column == PAYLOAD_FIELDS_COLUMN:
            values.append(f'CAST(to_json(coalesce("a"."o_payload_fields", "a".{name})) AS VARCHAR)')
        elif column == IDENTITY_COLUMN:
            values.append(f'coalesce("a"."o_identity", "a".{name})')
        elif column == PAYLOAD_HASH_COLUMN:
            values.append(f'coalesce("a"."o_payload_hash", "a".{name})')
        else:
            values.append(f'"a".{name}')
    values.append(f'"a"."{CHANGE_COLUMN}"')
    with scratch_duckdb(work_dir, memory_limit=memory_limit) as con:
        _check_one_outcome_per_row(con, outcome_paths)
        reader = con.sql(
            f"""SELECT {', '.join(values)} FROM ({_applied_sql(changes, outcome_paths, acted_on)}) AS "a"
                JOIN {parquet_relation([hashes_path])} AS "h" ON "h"."{ROW_ID_COLUMN}" = "a"."{ROW_ID_COLUMN}"
                ORDER BY "a"."{ROW_ID_COLUMN}\""""
        ).to_arrow_reader(_LOAD_CHUNK)
        for batch in reader:
            columns_ = [column.to_pylist() for column in batch.columns]
            yield [tuple(_plain(v) for v in row) for row in zip(*columns_)]


def _plain(value: Any) -> Any:
    """A value a DB-API driver binds as its column type; JSON documents were extracted as their text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def marker(plan: WarehousePlan, version: int, rows: int) -> dict[str, Any]:
    """What the committed marker file says: where the state is, and its version at this commit."""
    return {**plan.model_dump(mode="json", exclude={"hashes_uri", "base_version"}), "version": version, "rows": rows}


def read_marker(path: str) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


__all__ = ["WarehouseState", "WarehouseDiffOutput", "state_table_name", "marker", "read_marker", "fetch_row"]
