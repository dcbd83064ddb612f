"""The snapshot diff, on real Parquet files and a real DuckDB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.diff import DiffOutput, converts_losslessly, diff_snapshots
from airflow_provider_zeotap.sync.models import CHANGE_COLUMN, DELIVERY_COLUMNS, ROW_ID_COLUMN, PlanCounts
from tests.support.parquet import write

REASON = "__reason"


def read(path: str, order_by: str | None = None) -> list[dict]:
    """Rows of a file, without the delivery columns (their own tests look at them)."""
    table = pq.read_table(path)
    rows = [{k: v for k, v in row.items() if k not in DELIVERY_COLUMNS} for row in table.to_pylist()]
    return sorted(rows, key=lambda row: row[order_by]) if order_by else rows


def run(tmp_path: Path, source: list[str], base: str | None, key: list[str], **options) -> DiffOutput:
    options.setdefault("columns", None)
    options.setdefault("full_refresh", False)
    return diff_snapshots(
        source_parts=source, base_snapshot=base, primary_key=key, out_dir=str(tmp_path / "plan"), **options
    )


def changes_by_kind(result: DiffOutput) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in read(result.changes_path):
        grouped.setdefault(row[CHANGE_COLUMN], []).append(row)
    return grouped


@pytest.fixture
def base(tmp_path: Path) -> str:
    return write(
        tmp_path / "base.parquet", {"id": [1, 2, 3, 4], "name": ["a", "b", "c", "d"], "n": [10, 20, 30, 40]}
    )


def test_first_run_adds_every_valid_row_in_key_order(tmp_path: Path) -> None:
    source = write(tmp_path / "s.parquet", {"id": [3, 1, 2], "name": ["c", "a", "b"]})

    result = run(tmp_path, [source], None, ["id"])

    assert result.counts == PlanCounts(added=3, total=3)
    assert read(result.changes_path) == [
        {"id": 1, "name": "a", CHANGE_COLUMN: "added", ROW_ID_COLUMN: 0},
        {"id": 2, "name": "b", CHANGE_COLUMN: "added", ROW_ID_COLUMN: 1},
        {"id": 3, "name": "c", CHANGE_COLUMN: "added", ROW_ID_COLUMN: 2},
    ]
    assert read(result.snapshot_path, "id") == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert pq.read_schema(result.invalid_path).names == ["id", "name", REASON]
    assert result.source_columns == ["id", "name"] and result.columns == ["id", "name"]


def test_added_changed_removed_unchanged(tmp_path: Path, base: str) -> None:
    source = write(
        tmp_path / "s.parquet",
        {"id": [5, 2, 1, 4, 6], "name": ["e", "B", "a", "d", "f"], "n": [50, 20, 10, 41, 60]},
    )

    result = run(tmp_path, [source], base, ["id"])

    assert result.counts == PlanCounts(added=2, changed=2, removed=1, unchanged=1, total=5)
    assert read(result.changes_path) == [
        {"id": 5, "name": "e", "n": 50, CHANGE_COLUMN: "added", ROW_ID_COLUMN: 0},
        {"id": 6, "name": "f", "n": 60, CHANGE_COLUMN: "added", ROW_ID_COLUMN: 1},
        {"id": 2, "name": "B", "n": 20, CHANGE_COLUMN: "changed", ROW_ID_COLUMN: 2},
        {"id": 4, "name": "d", "n": 41, CHANGE_COLUMN: "changed", ROW_ID_COLUMN: 3},
        # A removed row carries the committed values: the source no longer has them.
        {"id": 3, "name": "c", "n": 30, CHANGE_COLUMN: "removed", ROW_ID_COLUMN: 4},
    ]
    assert [row["id"] for row in read(result.snapshot_path, "id")] == [1, 2, 4, 5, 6]


def test_changes_file_types_and_stable_row_ids(tmp_path: Path, base: str) -> None:
    source = write(tmp_path / "s.parquet", {"id": [9, 8, 2], "name": ["x", "y", "B"], "n": [1, 2, 20]})

    first = run(tmp_path / "one", [source], base, ["id"])
    second = run(tmp_path / "two", [source], base, ["id"])

    assert read(first.changes_path) == read(second.changes_path)
    schema = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{first.changes_path}')").fetchall()
    assert {row[0]: row[1] for row in schema}[ROW_ID_COLUMN] == "BIGINT"
    assert sorted(row[ROW_ID_COLUMN] for row in read(first.changes_path)) == list(
        range(first.counts.added + first.counts.changed + first.counts.removed)
    )


def test_composite_key_compares_every_key_column(tmp_path: Path) -> None:
    base = write(
        tmp_path / "b.parquet", {"tenant": ["t1", "t1", "t2"], "id": [1, 2, 1], "v": ["a", "b", "c"]}
    )
    source = write(
        tmp_path / "s.parquet", {"tenant": ["t1", "t2", "t2"], "id": [1, 1, 2], "v": ["a", "C", "d"]}
    )

    result = run(tmp_path, [source], base, ["tenant", "id"])

    got = {
        kind: [(r["tenant"], r["id"], r["v"]) for r in rows] for kind, rows in changes_by_kind(result).items()
    }
    assert got == {"added": [("t2", 2, "d")], "changed": [("t2", 1, "C")], "removed": [("t1", 2, "b")]}
    assert result.counts.unchanged == 1


def test_null_key_rows_are_invalid_and_name_the_column(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"tenant": ["t1"], "id": [1], "v": ["a"]})
    source = write(
        tmp_path / "s.parquet",
        {"tenant": ["t1", None, "t2", None], "id": [1, 2, None, None], "v": ["a", "x", "y", "z"]},
    )

    result = run(tmp_path, [source], base, ["tenant", "id"])

    reasons = {row["v"]: row[REASON] for row in read(result.invalid_path)}
    # With both key columns null, the first one in key order is named.
    assert reasons == {
        "x": "null primary key: tenant",
        "y": "null primary key: id",
        "z": "null primary key: tenant",
    }
    assert result.counts == PlanCounts(unchanged=1, invalid=3, total=4)
    assert read(result.changes_path) == []
    assert read(result.snapshot_path) == [{"tenant": "t1", "id": 1, "v": "a"}]


def test_duplicate_key_invalidates_all_its_rows_and_is_not_removed(tmp_path: Path, base: str) -> None:
    # Key 2 is committed and now duplicated; key 7 is new and duplicated three times.
    source = write(
        tmp_path / "s.parquet",
        {
            "id": [1, 2, 2, 3, 4, 7, 7, 7],
            "name": ["a", "b", "b2", "c", "d", "x", "y", "z"],
            "n": [10, 20, 21, 30, 40, 1, 2, 3],
        },
    )

    result = run(tmp_path, [source], base, ["id"])

    invalid = sorted((row["id"], row["name"], row[REASON]) for row in read(result.invalid_path))
    assert invalid == [
        (2, "b", "duplicate primary key (2 rows)"),
        (2, "b2", "duplicate primary key (2 rows)"),
        (7, "x", "duplicate primary key (3 rows)"),
        (7, "y", "duplicate primary key (3 rows)"),
        (7, "z", "duplicate primary key (3 rows)"),
    ]
    # A data-quality glitch must not delete key 2 downstream, nor send any version of it.
    assert read(result.changes_path) == []
    assert result.counts == PlanCounts(unchanged=3, invalid=5, total=8)
    assert [row["id"] for row in read(result.snapshot_path, "id")] == [1, 3, 4]


@pytest.mark.parametrize("full_refresh", [False, True])
@pytest.mark.parametrize(
    ("extra_id", "extra_name", "why"),
    [
        (1, "a", "an exact copy of a committed, unchanged row"),
        (9, "z", "a new key, twice"),
    ],
)
def test_every_kind_of_duplicate_is_found(
    tmp_path: Path, base: str, extra_id: int, extra_name: str, why: str, full_refresh: bool
) -> None:
    rows = {"id": [1, 2, 3, 4, 9], "name": ["a", "b", "c", "d", "z"], "n": [10, 20, 30, 40, 90]}
    for column, value in (("id", extra_id), ("name", extra_name), ("n", 10 if extra_id == 1 else 90)):
        rows[column].append(value)
    source = write(tmp_path / "s.parquet", rows)

    result = run(tmp_path, [source], base, ["id"], full_refresh=full_refresh)

    assert {row["id"] for row in read(result.invalid_path)} == {extra_id}, why
    assert result.counts.invalid == 2
    assert extra_id not in {row["id"] for row in read(result.changes_path)}
    assert extra_id not in {row["id"] for row in read(result.snapshot_path)}


def test_value_type_change_counts_as_changed_but_integer_widening_does_not(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "code": [1, None], "n": [5, 6]}, {"n": pa.int32()})
    source = write(
        tmp_path / "s.parquet", {"id": [1, 2], "code": ["1", None], "n": [5, 6]}, {"n": pa.int64()}
    )

    result = run(tmp_path, [source], base, ["id"])

    # 1 -> '1' is a change of what the destination receives; NULL stays NULL whatever the type.
    assert [(row["id"], row["code"]) for row in changes_by_kind(result)["changed"]] == [(1, "1")]
    assert result.counts.unchanged == 1


def test_key_type_change_joins_on_text_and_keeps_the_source_type(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": ["1", "2"], "v": ["a", "b"]})
    source = write(tmp_path / "s.parquet", {"id": [1, 3], "v": ["a", "c"]})

    result = run(tmp_path, [source], base, ["id"])

    got = {kind: [row["id"] for row in rows] for kind, rows in changes_by_kind(result).items()}
    assert got == {"added": [3], "removed": [2]}
    assert pq.read_schema(result.changes_path).field("id").type == pa.int64()
    assert result.counts.unchanged == 1


def test_key_type_change_refuses_a_removed_key_without_exact_new_form(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": ["1", "007"], "v": ["a", "b"]})
    source = write(tmp_path / "s.parquet", {"id": [1, 7], "v": ["a", "b"]})

    # '007' would become 7 and delete the current record 7 downstream.
    with pytest.raises(ValueError, match="'id' changed type from VARCHAR to BIGINT.*'007'"):
        run(tmp_path, [source], base, ["id"])


def test_unicode_values_and_awkward_column_names(tmp_path: Path) -> None:
    key, quoted, spaced, accented = 'clé "id"', "it's", "first name", "naïve 名前"
    base = write(
        tmp_path / "b.parquet",
        {key: ["é1", "é2"], quoted: ["x", "y"], spaced: ["Zoë", "Ærø"], accented: ["🙂", "a"]},
    )
    source = write(
        tmp_path / "s.parquet",
        {key: ["é1", "é2"], quoted: ["x", "y'"], spaced: ["Zoë", "Ærø"], accented: ["🙃", "a"]},
    )

    result = run(tmp_path, [source], base, [key], columns=[key, spaced, accented])

    # Only the compared columns count: the change in "it's" alone is not a change.
    assert read(result.changes_path) == [
        {key: "é1", quoted: "x", spaced: "Zoë", accented: "🙃", CHANGE_COLUMN: "changed", ROW_ID_COLUMN: 0}
    ]
    assert result.source_columns == [key, quoted, spaced, accented]
    assert result.columns == [key, spaced, accented]


def test_column_subset_ignores_other_columns_but_sends_their_current_values(
    tmp_path: Path, base: str
) -> None:
    source = write(
        tmp_path / "s.parquet", {"id": [1, 2, 3, 4], "name": ["a", "b", "C", "d"], "n": [11, 20, 31, 40]}
    )

    result = run(tmp_path, [source], base, ["id"], columns=["name"])

    assert [(row["id"], row["name"], row["n"]) for row in read(result.changes_path)] == [(3, "C", 31)]
    assert result.counts == PlanCounts(changed=1, unchanged=3, total=4)


def test_full_refresh_resends_unchanged_rows_and_removes_nothing(tmp_path: Path, base: str) -> None:
    source = write(tmp_path / "s.parquet", {"id": [1, 2, 5], "name": ["a", "B", "e"], "n": [10, 20, 50]})

    result = run(tmp_path, [source], base, ["id"], full_refresh=True)

    # Real changes are counted apart from the unchanged row that is only sent again.
    assert result.counts == PlanCounts(added=1, changed=1, removed=0, refresh=1, unchanged=0, total=3)
    assert [(row["id"], row[CHANGE_COLUMN]) for row in read(result.changes_path)] == [
        (5, "added"),
        (2, "changed"),
        (1, "refresh"),
    ]


def test_schema_change_added_and_dropped_columns(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2, 3], "old": ["o1", "o2", "o3"], "v": ["a", "b", "c"]})
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "v": ["a", "b"], "new": [None, "n2"]})

    result = run(tmp_path, [source], base, ["id"])

    # 'new' is missing from the base, so it is NULL there: only a non-null value is a change.
    assert read(result.changes_path) == [
        {"id": 2, "v": "b", "new": "n2", CHANGE_COLUMN: "changed", ROW_ID_COLUMN: 0},
        {"id": 3, "v": "c", "new": None, CHANGE_COLUMN: "removed", ROW_ID_COLUMN: 1},
    ]
    assert result.counts.unchanged == 1
    assert pq.read_schema(result.snapshot_path).names == ["id", "v", "new"]


def test_empty_source_with_columns_removes_everything(tmp_path: Path, base: str) -> None:
    source = write(
        tmp_path / "s.parquet",
        {"id": [], "name": [], "n": []},
        {"id": pa.int64(), "name": pa.string(), "n": pa.int64()},
    )

    result = run(tmp_path, [source], base, ["id"])

    assert result.counts == PlanCounts(removed=4, total=0)
    assert read(result.snapshot_path) == []
    assert pq.read_schema(result.snapshot_path).names == ["id", "name", "n"]


def test_empty_source_on_first_run_reports_zero(tmp_path: Path) -> None:
    source = write(tmp_path / "s.parquet", {"id": [], "v": []}, {"id": pa.int64(), "v": pa.null()})

    result = run(tmp_path, [source], None, ["id"])

    assert result.counts == PlanCounts()
    assert read(result.changes_path) == [] and pq.read_schema(result.changes_path).names == [
        "id",
        "v",
        *DELIVERY_COLUMNS,
        CHANGE_COLUMN,
        ROW_ID_COLUMN,
    ]


def test_no_parts_is_an_empty_source_in_the_committed_columns(tmp_path: Path, base: str) -> None:
    result = run(tmp_path, [], base, ["id"])

    assert result.counts == PlanCounts(removed=4, total=0)
    assert result.source_columns == ["id", "name", "n"]
    assert [(row["id"], row["name"], row[CHANGE_COLUMN]) for row in read(result.changes_path)][:1] == [
        (1, "a", "removed")
    ]
    assert run(tmp_path / "first", [], None, ["id"]).counts == PlanCounts()


def test_parts_with_differing_schemas_are_read_together(tmp_path: Path, base: str) -> None:
    first = write(
        tmp_path / "p0.parquet", {"id": [1, 2], "name": ["a", "b"], "n": [None, None]}, {"n": pa.null()}
    )
    second = write(tmp_path / "p1.parquet", {"n": [30, 40], "id": [3, 4], "name": ["c", "d"]})

    result = run(tmp_path, [first, second], base, ["id"], memory_limit="256MB", threads=1)

    assert [(row["id"], row["n"]) for row in changes_by_kind(result)["changed"]] == [(1, None), (2, None)]
    assert read(result.snapshot_path, "id") == [
        {"id": 1, "name": "a", "n": None},
        {"id": 2, "name": "b", "n": None},
        {"id": 3, "name": "c", "n": 30},
        {"id": 4, "name": "d", "n": 40},
    ]


def test_key_duplicated_across_parts_is_invalid_and_work_files_are_cleaned(tmp_path: Path, base: str) -> None:
    first = write(tmp_path / "p0.parquet", {"id": [1, 2], "name": ["a", "b"], "n": [10, 20]})
    second = write(tmp_path / "p1.parquet", {"id": [2, 3], "name": ["b", "c"], "n": [20, 30]})

    result = run(tmp_path, [first, second], base, ["id"])

    assert [(row["id"], row[REASON]) for row in read(result.invalid_path)] == [
        (2, "duplicate primary key (2 rows)"),
        (2, "duplicate primary key (2 rows)"),
    ]
    assert [row["id"] for row in read(result.snapshot_path, "id")] == [1, 3]
    assert [(row["id"], row[CHANGE_COLUMN]) for row in read(result.changes_path)] == [(4, "removed")]
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) == [
        "changes.parquet",
        "invalid.parquet",
        "snapshot.parquet",
    ]


def test_snapshot_of_a_single_clean_part_is_a_copy_not_the_source(tmp_path: Path, base: str) -> None:
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "name": ["a", "b"], "n": [10, 20]})

    result = run(tmp_path, [source], base, ["id"])

    assert result.snapshot_path != source
    assert Path(result.snapshot_path).read_bytes() == Path(source).read_bytes()
    Path(source).unlink()
    assert len(read(result.snapshot_path)) == 2


@pytest.mark.parametrize(
    ("key", "columns", "message"),
    [
        (
            ["missing"],
            None,
            r"primary-key column 'missing' is not in the source; available columns: 'id', 'name', 'n'",
        ),
        (["id"], ["name", "nope"], r"compared column 'nope' is not in the source; available columns: 'id'"),
    ],
)
def test_unknown_columns_are_refused_before_any_work(
    tmp_path: Path, base: str, key, columns, message
) -> None:
    with pytest.raises(ValueError, match=message):
        run(tmp_path, [base], base, key, columns=columns)
    assert not (tmp_path / "plan" / "changes.parquet").exists()


def test_base_without_the_key_column_is_refused(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"email": ["a@x"], "v": [1]})
    source = write(tmp_path / "s.parquet", {"id": [1], "email": ["a@x"], "v": [1]})

    with pytest.raises(ValueError, match="'id' is not in the committed snapshot"):
        run(tmp_path, [source], base, ["id"])


def test_reserved_source_column_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path / "s.parquet", {"id": [1], "__change": ["x"]})

    with pytest.raises(ValueError, match="'__change' starts with '__'"):
        run(tmp_path, [source], None, ["id"])


# ------------------------------------------------------------------------------- types across runs


def described(path: str) -> dict[str, str]:
    rows = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    return {row[0]: row[1] for row in rows}


def test_one_wider_decimal_is_one_added_row_not_a_resync(tmp_path: Path) -> None:
    # The reported case: 1,000 rows of 1.50 are DECIMAL(3,2); one new 12345.125 makes it DECIMAL(8,3).
    ids = list(range(1000))
    base = write(tmp_path / "b.parquet", {"id": ids, "price": [Decimal("1.50")] * 1000})
    source = write(
        tmp_path / "s.parquet", {"id": [*ids, 1000], "price": [Decimal("1.50")] * 1000 + [Decimal("12345.125")]}
    )
    assert (described(base)["price"], described(source)["price"]) == ("DECIMAL(3,2)", "DECIMAL(8,3)")

    result = run(tmp_path, [source], base, ["id"])

    assert result.counts == PlanCounts(added=1, unchanged=1000, total=1001)
    assert [(row["id"], row["price"]) for row in read(result.changes_path)] == [(1000, Decimal("12345.125"))]


def test_a_narrower_current_decimal_keeps_the_committed_type(tmp_path: Path) -> None:
    base = write(
        tmp_path / "b.parquet", {"id": [1, 2], "price": [Decimal("1.500"), Decimal("12345.125")]}
    )
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "price": [Decimal("1.50"), Decimal("2.25")]})

    result = run(tmp_path, [source], base, ["id"])

    # DECIMAL(3,2) converts into the committed DECIMAL(8,3) exactly, so the snapshot does not narrow.
    assert described(result.snapshot_path)["price"] == "DECIMAL(8,3)"
    assert described(result.changes_path)["price"] == "DECIMAL(8,3)"
    assert [(row["id"], row["price"]) for row in read(result.changes_path)] == [(2, Decimal("2.250"))]
    assert result.counts.unchanged == 1


@pytest.mark.parametrize(
    ("committed", "current", "snapshot_type"),
    [
        (pa.int32(), pa.int64(), "BIGINT"),  # widened: the current type is kept
        (pa.int64(), pa.int32(), "BIGINT"),  # narrowed: the committed type is kept
        (pa.int64(), pa.decimal128(20, 0), "DECIMAL(20,0)"),
        (pa.int8(), pa.uint64(), "UBIGINT"),
    ],
)
def test_integers_of_any_width_compare_by_value(
    tmp_path: Path, committed: pa.DataType, current: pa.DataType, snapshot_type: str
) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "n": [7, 8]}, {"n": committed})
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "n": [7, 9]}, {"n": current})

    result = run(tmp_path, [source], base, ["id"])

    assert [(row["id"], row["n"]) for row in read(result.changes_path)] == [(2, 9)]
    assert result.counts.unchanged == 1
    assert described(result.snapshot_path)["n"] == snapshot_type


def test_integral_decimal_equals_the_integer_and_a_fraction_does_not(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2, 3], "n": [7, 7, -10]}, {"n": pa.int64()})
    source = write(
        tmp_path / "s.parquet",
        {"id": [1, 2, 3], "n": [Decimal("7.00"), Decimal("7.50"), Decimal("-10.00")]},
        {"n": pa.decimal128(10, 2)},
    )

    result = run(tmp_path, [source], base, ["id"])

    assert [(row["id"], row["n"]) for row in read(result.changes_path)] == [(2, Decimal("7.50"))]
    assert result.counts.unchanged == 2


def test_a_real_change_under_a_type_change_is_detected(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2, 3], "price": [Decimal("1.50"), Decimal("2.00"), None]})
    source = write(
        tmp_path / "s.parquet",
        {"id": [1, 2, 3], "price": [Decimal("1.501"), Decimal("20.000"), Decimal("0.000")]},
    )

    result = run(tmp_path, [source], base, ["id"])

    # 1.50 -> 1.501, 2 -> 20 (trailing zeros are stripped after the point only), null -> 0.
    assert [row["id"] for row in read(result.changes_path)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("committed", "current", "why"),
    [
        (pa.array([1], pa.int64()), pa.array(["1"]), "a number became text"),
        (pa.array([1], pa.int64()), pa.array([1.0]), "an exact number became a float: the JSON is 1.0"),
        (pa.array([Decimal("1.50")]), pa.array(["1.5"]), "a decimal became text"),
        (pa.array([True]), pa.array([1], pa.int8()), "a boolean became a number"),
    ],
)
def test_a_value_of_another_kind_is_a_change(
    tmp_path: Path, committed: pa.Array, current: pa.Array, why: str
) -> None:
    base = tmp_path / "b.parquet"
    source = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": [1], "v": committed}), base)
    pq.write_table(pa.table({"id": [1], "v": current}), source)

    result = run(tmp_path, [str(source)], str(base), ["id"])

    assert result.counts.changed == 1, why


UTC = dt.timezone.utc


@pytest.mark.parametrize(
    ("committed", "current"),
    [
        (pa.timestamp("us"), pa.timestamp("us", tz="UTC")),
        (pa.timestamp("us", tz="UTC"), pa.timestamp("us")),
        (pa.timestamp("us", tz="Europe/Paris"), pa.timestamp("ms")),
        (pa.timestamp("s"), pa.timestamp("ns")),
        (pa.timestamp("ns", tz="UTC"), pa.timestamp("us")),
    ],
)
def test_timestamps_compare_as_utc_instants_whatever_their_width(
    tmp_path: Path, committed: pa.DataType, current: pa.DataType
) -> None:
    instants = [dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC), dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)]
    moved = [instants[0], instants[1] + dt.timedelta(seconds=1)]
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "at": _timestamps(instants, committed)}, {"at": committed})
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "at": _timestamps(moved, current)}, {"at": current})

    result = run(tmp_path, [source], base, ["id"])

    # A naive TIMESTAMP is read as UTC: the same instant is unchanged, one second later is a change.
    assert [row["id"] for row in read(result.changes_path)] == [2]
    assert result.counts.unchanged == 1


def _timestamps(instants: list[dt.datetime], type_: pa.DataType) -> list[dt.datetime]:
    return instants if type_.tz else [instant.replace(tzinfo=None) for instant in instants]


def test_sub_microsecond_nanoseconds_are_a_change(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "at": [0, 5_000]}, {"at": pa.timestamp("us")})
    source = write(
        tmp_path / "s.parquet", {"id": [1, 2], "at": [1, 5_000_000]}, {"at": pa.timestamp("ns")}
    )

    result = run(tmp_path, [source], base, ["id"])

    # Row 1 moved by one nanosecond; row 2 is the same 5 ms in both widths.
    assert [row["id"] for row in read(result.changes_path)] == [1]


def test_decimal_keys_of_different_scales_still_match(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [Decimal("1.50"), Decimal("2.00")], "v": ["a", "b"]})
    source = write(
        tmp_path / "s.parquet", {"id": [Decimal("1.500"), Decimal("12345.125")], "v": ["a", "c"]}
    )

    result = run(tmp_path, [source], base, ["id"])

    got = {kind: [row["id"] for row in rows] for kind, rows in changes_by_kind(result).items()}
    assert got == {"added": [Decimal("12345.125")], "removed": [Decimal("2.000")]}
    assert result.counts.unchanged == 1


def test_parts_with_a_later_wider_decimal_give_one_type_for_the_run(tmp_path: Path) -> None:
    first = write(tmp_path / "p0.parquet", {"id": [1, 2], "price": [Decimal("1.50"), None]})
    second = write(tmp_path / "p1.parquet", {"id": [3], "price": [Decimal("12345.125")]})

    result = run(tmp_path, [first, second], None, ["id"])

    assert described(result.snapshot_path)["price"] == "DECIMAL(8,3)"
    assert [row["price"] for row in read(result.snapshot_path, "id")] == [
        Decimal("1.500"), None, Decimal("12345.125")
    ]


@pytest.mark.parametrize(
    "big", [2**53 + 1, Decimal(2**53 + 1), Decimal("-9007199254740993.5")], ids=["bigint", "decimal", "fraction"]
)
def test_numbers_beyond_2_53_beside_floats_in_other_parts_are_refused(tmp_path: Path, big) -> None:
    first = write(tmp_path / "p0.parquet", {"id": [1, 3], "n": [big, 1]})
    second = write(tmp_path / "p1.parquet", {"id": [2], "n": [0.5]})

    # As one DOUBLE column, 9007199254740993 would silently become 9007199254740992.
    with pytest.raises(ValueError, match=r"Source column 'n' .*1 value.*9007199254740993.*Cast the column"):
        run(tmp_path, [first, second], None, ["id"])
    small = write(tmp_path / "p2.parquet", {"id": [3], "n": [2**53]})
    assert run(tmp_path / "ok", [small, second], None, ["id"]).counts.added == 2


def test_engine_columns_of_the_committed_snapshot_stay_out_of_the_source(tmp_path: Path) -> None:
    base = write(
        tmp_path / "b.parquet",
        {
            "id": [1, 2],
            "n": [7, 8],
            "__identity": ["a@x", "b@x"],
            "__payload_hash": [11, 12],
            "__payload_fields": [["n"], ["n"]],
        },
        {"n": pa.int64()},
    )
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "n": [7, 9]}, {"n": pa.int32()})

    result = run(tmp_path, [source], base, ["id"])

    assert result.source_columns == ["id", "n"]
    assert pq.read_schema(result.snapshot_path).names == ["id", "n"]
    assert described(result.snapshot_path)["n"] == "BIGINT"
    assert [row["id"] for row in read(result.changes_path)] == [2]
    empty = run(tmp_path / "empty", [], base, ["id"])
    assert empty.source_columns == ["id", "n"] and empty.counts.removed == 2


@pytest.mark.parametrize(
    ("current", "committed", "exact"),
    [
        ("DECIMAL(3,2)", "DECIMAL(8,3)", True),
        ("DECIMAL(8,3)", "DECIMAL(3,2)", False),
        ("DECIMAL(5,2)", "DECIMAL(6,3)", True),
        ("DECIMAL(5,2)", "DECIMAL(5,3)", False),  # 999.99 has no DECIMAL(5,3) form
        ("INTEGER", "BIGINT", True),
        ("BIGINT", "INTEGER", False),
        ("UINTEGER", "BIGINT", True),
        ("UBIGINT", "BIGINT", False),
        ("INTEGER", "UBIGINT", False),  # -1
        ("INTEGER", "DECIMAL(12,2)", True),
        ("BIGINT", "DECIMAL(18,0)", False),  # 19 digits
        ("BIGINT", "DOUBLE", False),  # above 2**53
        ("FLOAT", "DOUBLE", True),
        ("TIMESTAMP_MS", "TIMESTAMP", True),
        ("TIMESTAMP", "TIMESTAMP_NS", False),  # a narrower range of dates
        ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", False),
        ('"NULL"', "VARCHAR", True),
        ("VARCHAR", "BIGINT", False),
    ],
)
def test_a_committed_type_is_kept_only_where_every_current_value_converts_exactly(
    current: str, committed: str, exact: bool
) -> None:
    assert converts_losslessly(current, committed) is exact


def test_relative_part_paths_are_checked_for_rounding_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "p0.parquet", {"id": [1], "n": [2**53 + 1]})
    write(tmp_path / "p1.parquet", {"id": [2], "n": [0.5]})
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        run(tmp_path, ["p0.parquet", "./p1.parquet"], None, ["id"])
