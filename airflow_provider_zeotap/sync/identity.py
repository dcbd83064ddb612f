"""Identity after normalisation: what the destination sees decides which rows are one record.

A destination may normalise what identifies a record (a lowercased email, a code generated from a
name). Two source rows that normalise alike would overwrite each other's record, and a removal of one
spelling would delete the record the other still wants. So before anything is sent:

- rows of this run with one identity are all rejected, each naming the others (never merged);
- a row whose identity is already the record of another committed row that did not change is
  rejected, naming that row;
- a removal whose identity a current row still has is not sent (``identity_kept``): the record stays.

Identities of the current changes come from the adapter (in Python, one pass over the changes file);
those of unchanged rows come from the committed snapshot's ``__identity`` column, so the whole source
is never mapped again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_zeotap.sync.commit import key_match
from airflow_provider_zeotap.sync.diff import (
    INTERNAL_PREFIX,
    open_duckdb,
    parquet_relation,
    quote_identifier,
    relation_schema,
)
from airflow_provider_zeotap.sync.models import IDENTITY_COLUMN, Change, Outcome

_SCHEMA = pa.schema([("row_id", pa.int64()), ("kind", pa.string()), ("identity", pa.string()), ("key", pa.string())])
_CHUNK = 10_000
#: How many other rows a rejection names before it says "and N more".
_NAMED = 3


@dataclass(frozen=True)
class IdentityCheck:
    row_id: int
    kind: str
    identity: str
    #: The row's primary key as JSON, for messages.
    key: str


def identity_verdicts(
    checks: Iterable[IdentityCheck],
    *,
    base_snapshot: str | None,
    changes_path: str,
    primary_key: Sequence[str],
    work_dir: str,
    memory_limit: str | None = None,
    held_rows: Callable[[str], str | None] | None = None,
) -> dict[int, tuple[Outcome, str]]:
    """Row id -> (rejected or identity_kept, reason) for the rows the rules above catch; others absent.

    Every aggregate runs over the few identities that matter (shared ones, removed ones), never one
    group per row, so memory stays flat however many rows change.

    ``held_rows``, given the file of this run's identities, returns the committed rows holding one of
    them (key columns and ``__identity``), in place of ``base_snapshot``: a baseline kept in the
    warehouse is asked for those few rows instead of being read whole.
    """
    with tempfile.TemporaryDirectory(prefix=".identity-", dir=work_dir) as folder:
        ids_path = os.path.join(folder, "identities.parquet")
        if not _write(checks, ids_path):
            return {}
        if held_rows is not None:
            base_snapshot = held_rows(ids_path)
        with closing(open_duckdb(folder, memory_limit=memory_limit)) as con:
            rows = con.execute(_verdicts_sql(con, ids_path, base_snapshot, changes_path, primary_key)).fetchall()
    verdicts: dict[int, tuple[Outcome, str]] = {}
    for row_id, outcome, reason in rows:
        verdicts.setdefault(int(row_id), (Outcome(outcome), reason))
    return verdicts


def _write(checks: Iterable[IdentityCheck], path: str) -> int:
    written = 0
    with pq.ParquetWriter(path, _SCHEMA) as writer:
        chunk: list[IdentityCheck] = []
        for check in checks:
            chunk.append(check)
            if len(chunk) >= _CHUNK:
                written += _flush(writer, chunk)
                chunk = []
        written += _flush(writer, chunk)
    return written


def _flush(writer: pq.ParquetWriter, chunk: list[IdentityCheck]) -> int:
    if chunk:
        writer.write_table(pa.Table.from_pylist([c.__dict__ for c in chunk], schema=_SCHEMA))
    return len(chunk)


def _verdicts_sql(con: duckdb.DuckDBPyConnection, ids_path: str, base_snapshot: str | None, changes_path: str, primary_key: Sequence[str]) -> str:
    removed = Change.REMOVED.value
    held = """SELECT NULL::VARCHAR AS "identity", NULL::VARCHAR AS "key" WHERE false"""
    if base_snapshot is not None:
        base = parquet_relation([base_snapshot])
        base_schema = relation_schema(con, base)
        if IDENTITY_COLUMN in base_schema:
            changes = parquet_relation([changes_path])
            changes_schema = {k: v for k, v in relation_schema(con, changes).items() if not k.startswith(INTERNAL_PREFIX)}
            key_json = "to_json({" + ", ".join(f"{_literal(c)}: \"b\".{quote_identifier(c)}" for c in primary_key) + "})"
            held = f"""SELECT "b"."{IDENTITY_COLUMN}" AS "identity", CAST({key_json} AS VARCHAR) AS "key"
                       FROM {base} AS "b" ANTI JOIN {changes} AS "a" ON {key_match(primary_key, base_schema, changes_schema)}
                       WHERE "b"."{IDENTITY_COLUMN}" IN (SELECT "identity" FROM "ids")"""
    return f"""
        WITH "ids" AS (SELECT * FROM read_parquet('{ids_path.replace("'", "''")}')),
        "current" AS (SELECT * FROM "ids" WHERE "kind" <> '{removed}'),
        "held" AS ({held}),
        "shared" AS (SELECT "identity" FROM "current" GROUP BY "identity" HAVING count(*) > 1),
        "groups" AS (
            SELECT "identity", list("key" ORDER BY "row_id") AS "keys", count(*) AS "n"
            FROM "current" SEMI JOIN "shared" USING ("identity") GROUP BY "identity"
        ),
        "removed" AS (SELECT DISTINCT "identity" FROM "ids" WHERE "kind" = '{removed}'),
        "wanted" AS (
            SELECT "identity", min("key") AS "key" FROM (
                SELECT "identity", "key" FROM "current" UNION ALL SELECT "identity", "key" FROM "held"
            ) SEMI JOIN "removed" USING ("identity") GROUP BY "identity"
        )
        SELECT "c"."row_id", '{Outcome.REJECTED.value}',
               'identity ' || to_json("c"."identity") || ' is shared by ' || "g"."n" || ' rows of this run (the others: '
               || array_to_string(list_slice(list_filter("g"."keys", lambda k: k <> "c"."key"), 1, {_NAMED}), ', ')
               || CASE WHEN "g"."n" - 1 > {_NAMED} THEN ' and ' || ("g"."n" - 1 - {_NAMED}) || ' more' ELSE '' END
               || '); they would become one record at the destination, so none of them is sent. Make them distinct '
               || 'in the source (after normalisation)'
        FROM "current" AS "c" JOIN "groups" AS "g" USING ("identity")
        UNION ALL
        SELECT "c"."row_id", '{Outcome.REJECTED.value}',
               'identity ' || to_json("c"."identity") || ' is already the record of committed row ' || "h"."key"
               || ', which is unchanged; two rows would become one record, so this one is not sent. Make them distinct '
               || 'in the source (after normalisation), or remove the other row'
        FROM "current" AS "c" JOIN "held" AS "h" USING ("identity")
        UNION ALL
        SELECT "r"."row_id", '{Outcome.IDENTITY_KEPT.value}',
               'not removed: row ' || "w"."key" || ' still has identity ' || to_json("r"."identity")
        FROM "ids" AS "r" JOIN "wanted" AS "w" USING ("identity")
        WHERE "r"."kind" = '{removed}'
        ORDER BY 1
    """


def _literal(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"
