"""Moving the committed snapshot forward by acknowledged rows, and the outcome reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.commit import (
    commit_snapshot,
    count_outcomes,
    write_outcome_file,
    write_rejected_rows,
)
from airflow_provider_zeotap.sync import diff as diff_module
from airflow_provider_zeotap.sync.diff import DiffOutput, diff_snapshots, open_duckdb
from airflow_provider_zeotap.sync.models import CHANGE_COLUMN, DELIVERY_COLUMNS, ROW_ID_COLUMN
from tests.support.parquet import write

ALL_KINDS = {"added", "changed", "removed"}


def diff(
    tmp_path: Path, name: str, source: str, base: str | None, key: list[str] | None = None
) -> DiffOutput:
    return diff_snapshots(
        source_parts=[source],
        base_snapshot=base,
        primary_key=key or ["id"],
        columns=None,
        full_refresh=False,
        out_dir=str(tmp_path / name),
    )


def outcomes(path: Path, *records: tuple[int, str, str] | tuple[int, str, str, str | None]) -> str:
    """An outcome file of ``(row_id, outcome, operation[, reason])``, as the runner writes it."""
    write_outcome_file(str(path), [
        {"row_id": row_id, "outcome": outcome, "operation": operation, "reason": (reason or [None])[0]}
        for row_id, outcome, operation, *reason in records
    ])
    return str(path)


def commit(
    tmp_path: Path,
    base: str | None,
    plan: DiffOutput,
    outcome_paths: list[str],
    acted_on: set[str] = ALL_KINDS,
) -> dict[int, dict]:
    """Commit into ``committed.parquet``, and return the new snapshot as {id: row}."""
    out = tmp_path / "committed.parquet"
    rows = commit_snapshot(
        base_snapshot=base,
        changes_path=plan.changes_path,
        outcome_paths=outcome_paths,
        acted_on=acted_on,
        primary_key=["id"],
        out_path=str(out),
    )
    table = pq.read_table(out).to_pylist()
    assert rows == len(table)
    return {row["id"]: {k: v for k, v in row.items() if k not in DELIVERY_COLUMNS} for row in table}


@pytest.fixture
def base(tmp_path: Path) -> str:
    return write(tmp_path / "base.parquet", {"id": [1, 2, 3], "name": ["a", "b", "c"]})


@pytest.fixture
def plan(tmp_path: Path, base: str) -> DiffOutput:
    """Row 0 adds 4, row 1 changes 2 (b -> B), row 2 removes 3; 1 is unchanged."""
    source = write(tmp_path / "source.parquet", {"id": [1, 2, 4], "name": ["a", "B", "d"]})
    result = diff(tmp_path, "plan", source, base)
    kinds = [
        (row[ROW_ID_COLUMN], row["id"], row[CHANGE_COLUMN])
        for row in pq.read_table(result.changes_path).to_pylist()
    ]
    assert kinds == [(0, 4, "added"), (1, 2, "changed"), (2, 3, "removed")]
    return result


ATTEMPTS = [(0, "create"), (1, "update"), (2, "delete")]


def test_acknowledged_changes_of_every_kind_are_applied(tmp_path: Path, base: str, plan: DiffOutput) -> None:
    done = outcomes(tmp_path / "o.parquet", *((row_id, "succeeded", op) for row_id, op in ATTEMPTS))

    snapshot = commit(tmp_path, base, plan, [done])

    assert snapshot == {1: {"id": 1, "name": "a"}, 2: {"id": 2, "name": "B"}, 4: {"id": 4, "name": "d"}}


@pytest.mark.parametrize("outcome", ["rejected", "failed", None])
def test_unacknowledged_changes_of_every_kind_keep_the_base_state(
    tmp_path: Path, base: str, plan: DiffOutput, outcome: str | None
) -> None:
    # None: the rows were never attempted, so the outcome file says nothing about them.
    records = [(row_id, outcome, op, "nope") for row_id, op in ATTEMPTS] if outcome else []
    report = outcomes(tmp_path / "o.parquet", *records)

    snapshot = commit(tmp_path, base, plan, [report])

    # 4 stays absent, 2 keeps 'b', 3 stays.
    assert snapshot == {1: {"id": 1, "name": "a"}, 2: {"id": 2, "name": "b"}, 3: {"id": 3, "name": "c"}}


def test_kinds_the_mode_does_not_send_are_applied_as_seen(
    tmp_path: Path, base: str, plan: DiffOutput
) -> None:
    # An upsert-only mode: removals are never sent; the added row failed, the changed one succeeded.
    report = outcomes(tmp_path / "o.parquet", (0, "failed", "upsert"), (1, "succeeded", "upsert"))

    snapshot = commit(tmp_path, base, plan, [report], acted_on={"added", "changed"})

    assert snapshot == {1: {"id": 1, "name": "a"}, 2: {"id": 2, "name": "B"}}


def test_nothing_acted_on_applies_everything_whatever_the_outcomes(
    tmp_path: Path, base: str, plan: DiffOutput
) -> None:
    report = outcomes(tmp_path / "o.parquet", *((row_id, "rejected", op) for row_id, op in ATTEMPTS))

    snapshot = commit(tmp_path, base, plan, [report], acted_on=set())

    assert sorted(snapshot) == [1, 2, 4] and snapshot[2]["name"] == "B"


@pytest.mark.parametrize("split", [True, False], ids=["across-files", "within-a-file"])
def test_a_row_reported_twice_is_refused_and_nothing_is_committed(
    tmp_path: Path, base: str, plan: DiffOutput, split: bool
) -> None:
    if split:
        files = [outcomes(tmp_path / "a.parquet", (1, "rejected", "update", "429")),
                 outcomes(tmp_path / "b.parquet", (1, "succeeded", "update"))]
    else:
        files = [outcomes(tmp_path / "o.parquet", (1, "succeeded", "update"), (0, "succeeded", "create"),
                          (1, "failed", "update"))]

    # The message says what happened and what to do about it: report a bug with the delivery folder.
    with pytest.raises(
        RuntimeError,
        match=r"report row 1 more than once; nothing was committed\. This is a bug in the delivery runner: "
        r"please report it with the plan's delivery folder\.$",
    ):
        commit(tmp_path, base, plan, files)
    assert not (tmp_path / "committed.parquet").exists()


def test_first_commit_without_base_keeps_only_acknowledged_rows(tmp_path: Path) -> None:
    source = write(tmp_path / "s.parquet", {"id": [1, 2, 3], "name": ["a", "b", "c"]})
    plan = diff(tmp_path, "plan", source, None)
    report = outcomes(
        tmp_path / "o.parquet", (0, "succeeded", "create"), (2, "rejected", "create", "invalid email")
    )

    assert commit(tmp_path, None, plan, [report]) == {1: {"id": 1, "name": "a"}}


def test_rejected_rows_come_back_in_the_next_diff_and_acknowledged_ones_do_not(
    tmp_path: Path, base: str
) -> None:
    source = write(tmp_path / "s.parquet", {"id": [1, 2, 3, 4, 5], "name": ["A", "B", "c", "d", "e"]})
    first = diff(tmp_path, "run1", source, base)
    rows = {row["id"]: row[ROW_ID_COLUMN] for row in pq.read_table(first.changes_path).to_pylist()}
    report = outcomes(
        tmp_path / "o.parquet",
        (rows[1], "succeeded", "upsert"),
        (rows[2], "rejected", "upsert", "bad name"),
        (rows[4], "succeeded", "upsert"),
        (rows[5], "failed", "upsert", "timeout"),
    )
    committed = tmp_path / "committed.parquet"
    commit_snapshot(
        base_snapshot=base,
        changes_path=first.changes_path,
        outcome_paths=[report],
        acted_on=ALL_KINDS,
        primary_key=["id"],
        out_path=str(committed),
    )

    second = diff(tmp_path, "run2", source, str(committed))

    again = {(row["id"], row[CHANGE_COLUMN]) for row in pq.read_table(second.changes_path).to_pylist()}
    assert again == {(2, "changed"), (5, "added")}
    assert second.counts.unchanged == 3


def test_schema_follows_the_changes_file(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "old": ["o", "o"], "n": [1, 2]}, {"n": pa.int32()})
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "n": [1, 3], "new": ["x", None]}, {"n": pa.int64()})
    plan = diff(tmp_path, "plan", source, base)

    snapshot = commit(tmp_path, base, plan, [], acted_on={"changed"})  # nothing acknowledged yet

    schema = pq.read_schema(tmp_path / "committed.parquet")
    assert schema.names == ["id", "n", "new", *DELIVERY_COLUMNS]
    assert schema.field("n").type == pa.int64()
    assert snapshot == {1: {"id": 1, "n": 1, "new": None}, 2: {"id": 2, "n": 2, "new": None}}


def test_column_gone_all_null_keeps_unacknowledged_base_values(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "tag": ["x", "y"]})
    source = write(tmp_path / "s.parquet", {"id": [1, 2], "tag": [None, None]}, {"tag": pa.null()})
    plan = diff(tmp_path, "plan", source, base)
    report = outcomes(tmp_path / "o.parquet", (0, "succeeded", "update"), (1, "failed", "update"))

    snapshot = commit(tmp_path, base, plan, [report])

    # Row 2 still holds 'y' downstream: the snapshot must say so, or it would never be re-sent.
    assert snapshot == {1: {"id": 1, "tag": None}, 2: {"id": 2, "tag": "y"}}


def test_key_type_change_matches_base_rows_on_their_text_form(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"id": ["1", "2"], "name": ["a", "b"]})
    source = write(tmp_path / "s.parquet", {"id": [1, 3], "name": ["A", "c"]})
    plan = diff(tmp_path, "plan", source, base)
    report = outcomes(
        tmp_path / "o.parquet",
        (0, "succeeded", "create"),
        (1, "succeeded", "update"),
        (2, "rejected", "delete"),
    )

    snapshot = commit(tmp_path, base, plan, [report])

    assert snapshot == {1: {"id": 1, "name": "A"}, 2: {"id": 2, "name": "b"}, 3: {"id": 3, "name": "c"}}


def test_unknown_change_kind_in_acted_on_is_refused(tmp_path: Path, base: str, plan: DiffOutput) -> None:
    with pytest.raises(ValueError, match="unknown change kinds \\['upserted'\\]"):
        commit(tmp_path, base, plan, [], acted_on={"added", "upserted"})


def test_rejected_rows_report(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"reason": ["r1", "r2"], "id": [1, 2], "v": ["a", "b"]})
    source = write(
        tmp_path / "s.parquet", {"reason": ["r1", "r3", "r4"], "id": [1, 3, 4], "v": ["A", "c", "d"]}
    )
    plan = diff(tmp_path, "plan", source, base, key=["reason", "id"])
    # Rows: 0 adds (r3, 3), 1 adds (r4, 4), 2 changes (r1, 1), 3 removes (r2, 2).
    first = outcomes(
        tmp_path / "a.parquet", (0, "succeeded", "create"), (2, "rejected", "update", "bad v")
    )
    second = outcomes(
        tmp_path / "b.parquet",
        (3, "failed", "delete", "503"),
        (1, "succeeded", "create"),
    )
    out = tmp_path / "report" / "rejected.jsonl"

    count = write_rejected_rows(
        changes_path=plan.changes_path,
        outcome_paths=[first, second],
        primary_key=["reason", "id"],
        out_path=str(out),
    )

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == 2
    assert lines == [
        {
            "key_reason": "r1",
            "id": 1,
            "change": "changed",
            "operation": "update",
            "outcome": "rejected",
            "reason": "bad v",
        },
        {
            "key_reason": "r2",
            "id": 2,
            "change": "removed",
            "operation": "delete",
            "outcome": "failed",
            "reason": "503",
        },
    ]


def test_no_rejected_rows_writes_no_file(tmp_path: Path, plan: DiffOutput) -> None:
    report = outcomes(tmp_path / "o.parquet", (0, "succeeded", "create"))
    out = tmp_path / "rejected.jsonl"

    assert (
        write_rejected_rows(
            changes_path=plan.changes_path, outcome_paths=[report], primary_key=["id"], out_path=str(out)
        )
        == 0
    )
    assert not out.exists()


def test_count_outcomes_counts_rows_per_operation_and_outcome_across_files(tmp_path: Path) -> None:
    first = outcomes(
        tmp_path / "a.parquet", (0, "failed", "upsert"), (1, "succeeded", "upsert"), (2, "rejected", "delete")
    )
    second = outcomes(tmp_path / "b.parquet", (4, "succeeded", "upsert"), (3, "failed", "delete"))
    empty = outcomes(tmp_path / "empty.parquet")

    assert count_outcomes([first, second, empty]) == {
        "upsert": {"succeeded": 2, "failed": 1},
        "delete": {"rejected": 1, "failed": 1},
    }
    assert count_outcomes([]) == {}


def test_a_primary_key_column_missing_from_the_committed_snapshot_is_refused_with_advice(tmp_path: Path) -> None:
    # The sync's key became 'email', a column the committed snapshot (keyed on 'id') never had.
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "name": ["a", "b"]})
    source = write(tmp_path / "s.parquet", {"email": ["a@x.io", "b@x.io"], "id": [1, 2], "name": ["a", "b"]})
    plan = diff(tmp_path, "plan", source, None, key=["email"])
    out = tmp_path / "committed.parquet"

    with pytest.raises(
        ValueError,
        match=r"^The primary-key column 'email' is missing from the committed snapshot or the changes file; "
        r"did the primary key change\? Reset the sync state\.$",
    ):
        commit_snapshot(
            base_snapshot=base,
            changes_path=plan.changes_path,
            outcome_paths=[],
            acted_on=ALL_KINDS,
            primary_key=["email"],
            out_path=str(out),
        )
    assert not out.exists()


def test_a_key_that_became_text_matches_base_rows_whose_old_values_are_not_numbers(tmp_path: Path) -> None:
    # The key was an integer and is now text, with a value ('x') that is no number: keys compare as text.
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "name": ["a", "b"]})
    source = write(tmp_path / "s.parquet", {"id": ["1", "x"], "name": ["A", "x"]})
    plan = diff(tmp_path, "plan", source, base)
    # Rows: 0 adds 'x', 1 changes '1', 2 removes '2'.
    report = outcomes(
        tmp_path / "o.parquet", (0, "succeeded", "create"), (1, "succeeded", "update"), (2, "failed", "delete")
    )

    snapshot = commit(tmp_path, base, plan, [report])

    assert snapshot == {"1": {"id": "1", "name": "A"}, "2": {"id": "2", "name": "b"}, "x": {"id": "x", "name": "x"}}


def test_a_composite_key_moves_each_row_by_all_its_key_columns(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", {"org": ["a", "a", "b"], "id": [1, 2, 1], "v": ["a1", "a2", "b1"]})
    source = write(tmp_path / "s.parquet", {"org": ["a", "a", "b"], "id": [1, 2, 1], "v": ["A1", "A2", "b1"]})
    plan = diff(tmp_path, "plan", source, base, key=["org", "id"])
    rows = {(row["org"], row["id"]): row[ROW_ID_COLUMN] for row in pq.read_table(plan.changes_path).to_pylist()}
    assert set(rows) == {("a", 1), ("a", 2)}
    report = outcomes(
        tmp_path / "o.parquet", (rows["a", 1], "succeeded", "update"), (rows["a", 2], "rejected", "update", "bad v")
    )
    out = tmp_path / "committed.parquet"

    commit_snapshot(
        base_snapshot=base,
        changes_path=plan.changes_path,
        outcome_paths=[report],
        acted_on=ALL_KINDS,
        primary_key=["org", "id"],
        out_path=str(out),
    )

    # ('b', 1) shares its id with the acknowledged ('a', 1) and is untouched; ('a', 2) keeps its base value.
    committed = sorted((row["org"], row["id"], row["v"]) for row in pq.read_table(out).to_pylist())
    assert committed == [("a", 1, "A1"), ("a", 2, "a2"), ("b", 1, "b1")]


@pytest.mark.parametrize("with_base", [True, False], ids=["with-a-base", "first-commit"])
def test_a_new_column_null_in_every_row_is_committed_as_a_column_of_nulls(tmp_path: Path, with_base: bool) -> None:
    base = write(tmp_path / "b.parquet", {"id": [1, 2], "name": ["a", "b"]}) if with_base else None
    source = write(
        tmp_path / "s.parquet", {"id": [1, 2], "name": ["A", "B"], "extra": [None, None]}, {"extra": pa.null()}
    )
    plan = diff(tmp_path, "plan", source, base)
    rows = {row["id"]: row[ROW_ID_COLUMN] for row in pq.read_table(plan.changes_path).to_pylist()}
    report = outcomes(tmp_path / "o.parquet", (rows[1], "succeeded", "upsert"), (rows[2], "failed", "upsert", "503"))

    snapshot = commit(tmp_path, base, plan, [report])

    # 1 is acknowledged; 2 keeps its base row (or stays absent), read with the new column as null.
    expected = {1: {"id": 1, "name": "A", "extra": None}}
    if with_base:
        expected[2] = {"id": 2, "name": "b", "extra": None}
    assert snapshot == expected



def delivered(path: Path, *records: tuple[int, str, str | None, str | None, list[str] | None]) -> str:
    """An outcome file of ``(row_id, outcome, identity, payload_hash, payload_fields)``."""
    write_outcome_file(str(path), [
        {"row_id": row_id, "outcome": outcome, "operation": "upsert", "identity": identity,
         "payload_hash": payload_hash, "payload_fields": fields}
        for row_id, outcome, identity, payload_hash, fields in records
    ])
    return str(path)


def test_the_snapshot_keeps_what_was_delivered_new_where_sent_and_the_base_record_where_not(tmp_path: Path) -> None:
    source1 = write(tmp_path / "s1.parquet", {"id": [1, 2, 4], "email": ["a@x.io", "b@x.io", "d@x.io"]})
    first = diff(tmp_path, "run1", source1, None)
    rows = {row["id"]: row[ROW_ID_COLUMN] for row in pq.read_table(first.changes_path).to_pylist()}
    base = str(tmp_path / "committed1.parquet")
    commit_snapshot(
        base_snapshot=None,
        changes_path=first.changes_path,
        outcome_paths=[delivered(tmp_path / "o1.parquet", *(
            (rows[i], "succeeded", f"id-{i}", f"hash-{i}", ["email"]) for i in (1, 2, 4)
        ))],
        acted_on=ALL_KINDS,
        primary_key=["id"],
        out_path=base,
    )
    # Run 2: 1 and 2 change, 3 is added, 4 is untouched.
    source2 = write(tmp_path / "s2.parquet", {"id": [1, 2, 3, 4], "email": ["A@x.io", "B@x.io", "c@x.io", "d@x.io"]})
    second = diff(tmp_path, "run2", source2, base)
    rows = {row["id"]: row[ROW_ID_COLUMN] for row in pq.read_table(second.changes_path).to_pylist()}
    report = delivered(
        tmp_path / "o2.parquet",
        (rows[1], "succeeded", "id-1b", "hash-1b", ["email"]),
        # Its payload equals the one delivered: committed without a request, so nothing new was delivered.
        (rows[2], "unchanged_payload", None, None, None),
        (rows[3], "succeeded", "id-3", "hash-3", ["email"]),
    )
    out = tmp_path / "committed2.parquet"

    commit_snapshot(
        base_snapshot=base,
        changes_path=second.changes_path,
        outcome_paths=[report],
        acted_on=ALL_KINDS,
        primary_key=["id"],
        out_path=str(out),
    )

    committed = {
        row["id"]: (row["email"], *(row[c] for c in DELIVERY_COLUMNS)) for row in pq.read_table(out).to_pylist()
    }
    assert committed == {
        1: ("A@x.io", "id-1b", "hash-1b", ["email"]),
        2: ("B@x.io", "id-2", "hash-2", ["email"]),
        3: ("c@x.io", "id-3", "hash-3", ["email"]),
        4: ("d@x.io", "id-4", "hash-4", ["email"]),
    }


def test_the_commit_and_the_reports_run_under_the_tasks_memory_limit_and_spill_beside_their_output(
    tmp_path: Path, base: str, plan: DiffOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, str | None]] = []

    def recording_open_duckdb(temp_directory: str, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        opened.append((temp_directory, kwargs.get("memory_limit")))
        return open_duckdb(temp_directory, **kwargs)

    monkeypatch.setattr(diff_module, "open_duckdb", recording_open_duckdb)
    report = outcomes(tmp_path / "o.parquet", (0, "succeeded", "create"), (1, "rejected", "update", "bad"))
    committed, rejected = tmp_path / "state" / "committed.parquet", tmp_path / "report" / "rejected.jsonl"

    commit_snapshot(
        base_snapshot=base,
        changes_path=plan.changes_path,
        outcome_paths=[report],
        acted_on=ALL_KINDS,
        primary_key=["id"],
        out_path=str(committed),
        memory_limit="300MB",
    )
    write_rejected_rows(
        changes_path=plan.changes_path,
        outcome_paths=[report],
        primary_key=["id"],
        out_path=str(rejected),
        memory_limit="200MB",
    )
    count_outcomes([report], memory_limit="100MB")

    assert [limit for _, limit in opened] == ["300MB", "200MB", "100MB"]
    # The commit and the report spill into a scratch folder beside what they write, on the state's volume.
    assert [Path(folder).parent for folder, _ in opened[:2]] == [committed.parent, rejected.parent]
