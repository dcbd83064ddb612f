"""Golden SQL of the warehouse dialects, and the rules every dialect keeps: quoted, validated names, bound values.

Snowflake and BigQuery are not run in this suite (no service to run them on): their SQL is pinned here,
statement by statement, so a change to it is a deliberate one. To accept a change, run with
``ZEOTAP_UPDATE_GOLDEN=1`` and review the diff of ``tests/unit/golden/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.sync.warehouse.dialects import (
    ACK_SCRATCH,
    DIALECTS,
    SOURCE_SCRATCH,
    Dialect,
    dialect_for,
)
from airflow_provider_zeotap.sync.warehouse.store import state_table_name

GOLDEN = Path(__file__).parent / "golden"
SCHEMA = "zeotap_sync"
KEYS = ["customer_id"]
COLUMNS = ["customer_id", "email", "plan"]


def statements(dialect: Dialect) -> str:
    """Every statement of a diff and a commit, in the order they run, for a fixed sync."""
    table = state_table_name("vip.customers")
    state_columns = [*COLUMNS, "__row_hash", "__identity", "__payload_hash", "__payload_fields"]
    parts = {
        "session": "; ".join(dialect.session_setup),
        "create schema": dialect.create_schema(SCHEMA),
        "create versions table": dialect.create_versions_table(SCHEMA),
        "first version row": dialect.ensure_version(SCHEMA),
        "source into scratch, with the row hash": dialect.scratch_from_source(
            SCHEMA, SOURCE_SCRATCH, "SELECT customer_id, email, plan FROM crm.customers",
            dialect.row_hash("s", COLUMNS)),
        "duplicated keys": dialect.create_dups(SCHEMA, KEYS),
        "create state table": dialect.create_state_table(SCHEMA, table, dialect.scratch(SCHEMA, SOURCE_SCRATCH),
                                                         COLUMNS),
        "state table columns": dialect.state_columns(SCHEMA, table)[0],
        "counts": dialect.source_counts(SCHEMA, KEYS),
        "added": dialect.added_query(SCHEMA, table, KEYS, COLUMNS),
        "changed": dialect.changed_query(SCHEMA, table, KEYS, COLUMNS),
        "removed": dialect.removed_query(SCHEMA, table, KEYS, COLUMNS),
        "refresh (full_refresh)": dialect.changed_query(SCHEMA, table, KEYS, COLUMNS, refresh=True),
        "invalid rows": dialect.invalid_query(SCHEMA, KEYS, COLUMNS),
        "commit: version compare-and-set": dialect.bump_version(SCHEMA),
        "commit: read version": dialect.read_version(SCHEMA),
        "commit: acknowledged rows table": dialect.create_acknowledged(SCHEMA, table),
        "commit: load acknowledged rows": dialect.insert_acknowledged(SCHEMA, [*state_columns, "__change"]),
        "commit: merge": "\n".join(dialect.merge(SCHEMA, table, KEYS, state_columns, replace_all=False)),
        "commit: merge on a rebind": "\n".join(dialect.merge(SCHEMA, table, KEYS, state_columns, replace_all=True)),
        "commit: drop scratch": dialect.drop_scratch(SCHEMA, ACK_SCRATCH),
        "identity lookup": dialect.rows_with_identities(SCHEMA, table, KEYS),
    }
    return "".join(f"-- {name}\n{sql};\n\n" for name, sql in parts.items())


@pytest.mark.parametrize("name", ["snowflake", "bigquery", "postgres", "duckdb"])
def test_golden_sql(name: str) -> None:
    text = statements(dialect_for(name))
    path = GOLDEN / f"warehouse_{name}.sql"
    if os.environ.get("ZEOTAP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run with ZEOTAP_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} SQL changed: run with ZEOTAP_UPDATE_GOLDEN=1 and review the diff"


def test_snowflake_and_bigquery_spell_what_they_spell_differently() -> None:
    snowflake, bigquery = dialect_for("snowflake"), dialect_for("gcpbigquery")
    assert snowflake.row_hash("s", ["a"]) == "MD5(TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL('0', s.\"a\")))"
    assert bigquery.row_hash("s", ["a", "b"]) == "TO_HEX(MD5(TO_JSON_STRING([TO_JSON(s.`a`), TO_JSON(s.`b`)])))"
    assert snowflake.merge(SCHEMA, "t1", KEYS, COLUMNS, replace_all=False)[0].startswith('MERGE INTO "zeotap_sync"."t1"')
    assert bigquery.scratch(SCHEMA, ACK_SCRATCH) == "`zeotap_sync`.`zeotap_acknowledged`"  # no temp tables outside a session
    assert snowflake.scratch(SCHEMA, ACK_SCRATCH) == '"zeotap_acknowledged"'


@pytest.mark.parametrize("name", sorted(set(DIALECTS)))
def test_names_are_quoted_and_values_are_never_in_the_sql(name: str) -> None:
    dialect = dialect_for(name)
    if dialect.quote_char == '"':
        assert dialect.quote('we"ird name') == '"we""ird name"'
    else:
        with pytest.raises(ValueError, match="backticks"):
            dialect.quote("we`ird")
    for sql in (dialect.bump_version(SCHEMA), dialect.read_version(SCHEMA), dialect.ensure_version(SCHEMA),
                dialect.insert_acknowledged(SCHEMA, COLUMNS), dialect.invalid_query(SCHEMA, KEYS, COLUMNS)):
        assert "'" not in sql.replace("'removed'", "")  # every value is a placeholder
        assert dialect.param in sql
    with pytest.raises(ValueError, match="not a plain schema name"):
        dialect.table("zeotap; DROP TABLE x", "t")


def test_a_sync_id_becomes_a_plain_distinct_table_name() -> None:
    assert state_table_name("vip.customers") != state_table_name("vip_customers")
    assert state_table_name("a-b.c").startswith("state_a_b_c_")


def test_an_unknown_connection_type_names_the_dialects_and_the_worker_path() -> None:
    with pytest.raises(ValueError, match="no SQL dialect for connection type 'sqlite'.*diff_in='worker'"):
        dialect_for("sqlite")


def test_diff_in_warehouse_is_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ConfigurationError, match="diff_in='warehouse' .* needs sql \\+ conn_id"):
        SyncDiffOperator(task_id="d", sync_id="s", primary_key="id", rows=[{"id": 1}], diff_in="warehouse")
    with pytest.raises(ConfigurationError, match="diff_in must be 'worker' or 'warehouse'"):
        SyncDiffOperator(task_id="d", sync_id="s", primary_key="id", sql="SELECT 1", conn_id="c", diff_in="cloud")
    with pytest.raises(ConfigurationError, match="state_schema 'my-schema' is not a plain schema name"):
        SyncDiffOperator(task_id="d", sync_id="s", primary_key="id", sql="SELECT 1", conn_id="c", diff_in="warehouse",
                         state_schema="my-schema")
