"""Extracting sources into Parquet parts, checked by reading the parts the way the diff does."""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.diff import diff_snapshots
from airflow_provider_zeotap.sync.sources import file_to_parts, rows_to_parts, sql_to_parts


class SqliteHook:
    """Just enough of a DbApiHook: ``get_conn`` over a real DB-API driver."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[sqlite3.Connection] = []

    def get_conn(self) -> sqlite3.Connection:
        self.opened.append(sqlite3.connect(self.path))
        return self.opened[-1]


@pytest.fixture
def hook(tmp_path: Path) -> SqliteHook:
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE people (id INTEGER, "first name" TEXT, score, note TEXT)')
        conn.executemany(
            "INSERT INTO people VALUES (?, ?, ?, ?)",
            [
                (1, "Zoë", None, None),
                (2, "Ærø", None, None),
                (3, "李", 7, None),
                (4, None, 8.5, None),
                (5, "e", 9, "n"),
            ],
        )
    return SqliteHook(db)


def read_parts(parts: list[str]) -> tuple[dict[str, str], list[tuple]]:
    """Schema and rows of the parts read together, as the diff reads them."""
    files = ", ".join(f"'{part}'" for part in parts)
    relation = duckdb.sql(f"SELECT * FROM read_parquet([{files}], union_by_name = true)")
    return dict(zip(relation.columns, map(str, relation.types))), sorted(relation.fetchall(), key=repr)


# ------------------------------------------------------------------------------------------ rows



def diff_of(parts: list[str], base: str | None, tmp_path: Path):
    """The diff of extracted parts keyed by ``id``, against ``base``."""
    return diff_snapshots(
        source_parts=parts, base_snapshot=base, primary_key=["id"], columns=None, full_refresh=False,
        out_dir=str(tmp_path / "plan"),
    )

def test_rows_union_keys_in_first_seen_order_and_fill_nulls(tmp_path: Path) -> None:
    parts = rows_to_parts(
        [{"id": 1, "b": "x"}, {"c": 2.5, "id": 2}, {"b": "é", "id": 3, "d": True}], str(tmp_path)
    )

    schema, rows = read_parts(parts)

    assert list(schema) == ["id", "b", "c", "d"]
    assert rows == [(1, "x", None, None), (2, None, 2.5, None), (3, "é", None, True)]


def test_rows_with_mixed_value_kinds_fall_back_to_text(tmp_path: Path) -> None:
    schema, rows = read_parts(rows_to_parts([{"id": 1, "v": 1}, {"id": 2, "v": "a"}], str(tmp_path)))

    assert schema["v"] == "VARCHAR"
    assert rows == [(1, "1"), (2, "a")]


def test_empty_rows_keep_the_given_columns(tmp_path: Path) -> None:
    parts = rows_to_parts([], str(tmp_path), columns=["id", "name"])

    assert len(parts) == 1
    assert pq.read_schema(parts[0]).names == ["id", "name"]
    assert pq.read_metadata(parts[0]).num_rows == 0
    assert rows_to_parts([], str(tmp_path / "none")) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": 1, "__change": "x"}, r"'__change' starts with '__'.*rename it"),
        ({"id": 1, "": "x"}, "empty name"),
    ],
)
def test_rows_with_unusable_column_names_are_refused(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rows_to_parts([row], str(tmp_path))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- sql


def test_sql_streams_one_part_per_chunk(hook: SqliteHook, tmp_path: Path) -> None:
    parts = sql_to_parts(hook, 'SELECT id, "first name" FROM people ORDER BY id', str(tmp_path), chunk_size=2)

    schema, rows = read_parts(parts)

    assert [Path(part).name for part in parts] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        hook.opened[0].execute("SELECT 1")
    assert schema == {"id": "BIGINT", "first name": "VARCHAR"}
    assert rows == [(1, "Zoë"), (2, "Ærø"), (3, "李"), (4, None), (5, "e")]


def test_sql_all_null_chunks_take_the_type_of_the_other_chunks(hook: SqliteHook, tmp_path: Path) -> None:
    # With chunks of two rows: score is null, null | 7, 8.5 | 9 and note is null, null | null, null | 'n'.
    parts = sql_to_parts(hook, "SELECT id, score, note FROM people ORDER BY id", str(tmp_path), chunk_size=2)

    schema, rows = read_parts(parts)

    # Text for the null chunk would have made the whole column VARCHAR; int then float gives DOUBLE.
    assert schema == {"id": "BIGINT", "score": "DOUBLE", "note": "VARCHAR"}
    assert rows == [(1, None, None), (2, None, None), (3, 7.0, None), (4, 8.5, None), (5, 9.0, "n")]


def test_sql_null_chunk_after_typed_chunk_keeps_that_type_and_diffs_clean(
    hook: SqliteHook, tmp_path: Path
) -> None:
    parts = sql_to_parts(
        hook,
        "SELECT id, CASE WHEN id < 3 THEN id * 10 END AS n FROM people ORDER BY id",
        str(tmp_path / "src"),
        chunk_size=2,
    )
    assert pq.read_schema(parts[1]).field("n").type == pa.int64()  # rows 3, 4: all null
    base = tmp_path / "base.parquet"
    pq.write_table(
        pa.table({"id": [1, 2, 3, 4, 5], "n": pa.array([10, 20, None, None, None], pa.int64())}), base
    )

    result = diff_of(parts, str(base), tmp_path)

    assert result.counts.unchanged == 5 and result.counts.changed == 0


def test_sql_parameters_are_passed_to_the_driver(hook: SqliteHook, tmp_path: Path) -> None:
    parts = sql_to_parts(hook, "SELECT id FROM people WHERE id > ?", str(tmp_path), parameters=(3,))

    assert read_parts(parts)[1] == [(4,), (5,)]


def test_sql_empty_result_still_carries_the_column_names(hook: SqliteHook, tmp_path: Path) -> None:
    parts = sql_to_parts(hook, 'SELECT id, "first name" FROM people WHERE id > 99', str(tmp_path / "src"))

    assert [pq.read_schema(part).names for part in parts] == [["id", "first name"]]
    result = diff_of(parts, None, tmp_path)
    assert result.counts.total == 0 and result.source_columns == ["id", "first name"]


def test_sql_empty_result_against_a_base_removes_every_committed_key(
    hook: SqliteHook, tmp_path: Path
) -> None:
    parts = sql_to_parts(hook, 'SELECT id, "first name" FROM people WHERE id > 99', str(tmp_path / "src"))
    base = tmp_path / "base.parquet"
    pq.write_table(pa.table({"id": [1, 2], "first name": ["a", "b"]}), base)

    result = diff_of(parts, str(base), tmp_path)

    # The empty extract has no types; the removed rows keep the committed ones, keys included.
    assert result.counts.removed == 2 and result.counts.total == 0
    changes = pq.read_table(result.changes_path)
    assert changes.schema.field("id").type == pa.int64()
    assert changes.column("first name").to_pylist() == ["a", "b"]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT id, score AS __row_id FROM people", "'__row_id' starts with '__'"),
        ("SELECT id, id FROM people", "'id' occurs twice"),
    ],
)
def test_sql_unusable_column_names_are_refused(
    hook: SqliteHook, tmp_path: Path, sql: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sql_to_parts(hook, sql, str(tmp_path))


# ------------------------------------------------------------------------------------------ files


def test_parquet_file_is_used_in_place(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": [1]}), path)

    assert file_to_parts(str(path), str(tmp_path / "parts")) == [str(path)]
    assert not (tmp_path / "parts").exists()


def test_csv_is_converted_with_detected_types(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text('id,"first name",score\n1,Zoë,1.5\n2,"Ærø, Jr.",\n', encoding="utf-8")

    schema, rows = read_parts(file_to_parts(str(path), str(tmp_path / "parts")))

    assert schema == {"id": "BIGINT", "first name": "VARCHAR", "score": "DOUBLE"}
    assert rows == [(1, "Zoë", 1.5), (2, "Ærø, Jr.", None)]


def test_header_only_csv_gives_an_empty_part_with_columns(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("id,name\n", encoding="utf-8")

    parts = file_to_parts(str(path), str(tmp_path / "parts"))

    assert pq.read_schema(parts[0]).names == ["id", "name"] and pq.read_metadata(parts[0]).num_rows == 0


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.ndjson", "rows.json", "rows.data"])
def test_json_lines_are_converted(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in [{"id": 1, "tag": "a"}, {"id": 2, "x y": 3}]) + "\n")
    fmt = "jsonl" if name.endswith(".data") else None

    schema, rows = read_parts(file_to_parts(str(path), str(tmp_path / "parts"), format=fmt))

    assert list(schema) == ["id", "tag", "x y"]
    assert rows == [(1, "a", None), (2, None, 3)]


def test_json_array_file_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"id": 1}, {"id": 2}]))

    assert read_parts(file_to_parts(str(path), str(tmp_path / "parts")))[1] == [(1,), (2,)]


def test_unknown_suffix_without_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass format="):
        file_to_parts(str(tmp_path / "rows.txt"), str(tmp_path))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_with_reserved_column_names_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    if suffix == ".csv":
        path.write_text("id,__reason\n1,x\n")
    else:
        pq.write_table(pa.table({"id": [1], "__reason": ["x"]}), path)

    with pytest.raises(ValueError, match="'__reason' starts with '__'"):
        file_to_parts(str(path), str(tmp_path / "parts"))
    assert not list((tmp_path / "parts").glob("*.parquet"))


# ------------------------------------------------------------------------------- types over chunks


@pytest.fixture
def decimal_hook(tmp_path: Path) -> SqliteHook:
    """SQLite returning Decimal for a column declared DEC, as warehouse drivers do for NUMERIC."""
    sqlite3.register_converter("DEC", lambda raw: Decimal(raw.decode()))
    db = tmp_path / "decimals.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE prices (id INTEGER, price DEC TEXT)")  # text affinity keeps "1.50"
        rows = [(i, "1.50") for i in range(1, 5)] + [(5, "12345.125")]
        conn.executemany("INSERT INTO prices VALUES (?, ?)", rows)

    class DecimalHook(SqliteHook):
        def get_conn(self) -> sqlite3.Connection:
            self.opened.append(sqlite3.connect(self.path, detect_types=sqlite3.PARSE_DECLTYPES))
            return self.opened[-1]

    return DecimalHook(db)


def test_a_later_chunk_that_widens_a_decimal_gives_one_type_for_the_run(
    decimal_hook: SqliteHook, tmp_path: Path
) -> None:
    parts = sql_to_parts(decimal_hook, "SELECT id, price FROM prices ORDER BY id", str(tmp_path / "src"), chunk_size=2)
    assert [str(pq.read_schema(part).field("price").type) for part in parts] == [
        "decimal128(3, 2)", "decimal128(3, 2)", "decimal128(8, 3)"
    ]

    first = diff_of(parts, None, tmp_path / "one")
    schema, rows = read_parts([first.snapshot_path])
    assert schema["price"] == "DECIMAL(8,3)"
    assert [price for _, price in rows] == [Decimal("1.500")] * 4 + [Decimal("12345.125")]

    # Next run the wide row is gone: every chunk is DECIMAL(3,2) again, and nothing else changed.
    again = sql_to_parts(
        decimal_hook, "SELECT id, price FROM prices WHERE id < 5 ORDER BY id", str(tmp_path / "src2"), chunk_size=2
    )
    second = diff_of(again, first.snapshot_path, tmp_path / "two")
    assert second.counts.removed == 1 and second.counts.changed == 0 and second.counts.unchanged == 4
    assert read_parts([second.snapshot_path])[0]["price"] == "DECIMAL(8,3)"


def test_integers_beyond_2_53_with_floats_are_never_rounded(hook: SqliteHook, tmp_path: Path) -> None:
    big = 2**53 + 1
    with closing(sqlite3.connect(hook.path)) as conn, conn:
        conn.execute("CREATE TABLE m (id INTEGER, n)")
        conn.executemany("INSERT INTO m VALUES (?, ?)", [(1, big), (2, 0.5), (3, 1)])

    # In one chunk Arrow would have to round or turn the numbers into text: refused, naming the column.
    with pytest.raises(ValueError, match=r"Source column 'n' mixes integers and fractional numbers"):
        sql_to_parts(hook, "SELECT id, n FROM m ORDER BY id", str(tmp_path / "one"))
    # Across chunks each part is exact on its own; the diff refuses to read them as one DOUBLE column.
    parts = sql_to_parts(hook, "SELECT id, n FROM m ORDER BY id", str(tmp_path / "two"), chunk_size=1)
    with pytest.raises(ValueError, match=rf"Source column 'n' .*{big}.*Cast the column"):
        diff_of(parts, None, tmp_path)


def test_sqlite_says_once_how_its_rows_are_read(
    hook: SqliteHook, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="airflow_provider_zeotap.sync.sources"):
        sql_to_parts(hook, "SELECT id FROM people", str(tmp_path), chunk_size=2)

    notes = [r.getMessage() for r in caplog.records if r.name == "airflow_provider_zeotap.sync.sources"]
    assert notes == [
        "sqlite3 has no server-side cursor and needs none: SQLite steps through the result as rows are "
        "fetched, so each fetch of 2 rows reads only those rows."
    ]


def test_a_statement_without_a_result_set_is_refused(hook: SqliteHook, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no result set"):
        sql_to_parts(hook, "UPDATE people SET note = 'x' WHERE id = 99", str(tmp_path))
