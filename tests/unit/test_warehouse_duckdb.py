"""A DuckDB file as the warehouse: the warehouse-side diff against the worker diff, and its safety rules.

The diff task is the real ``SyncDiffOperator`` (both ``diff_in``), the delivery the real runner, the
destination a recording one. Each step compares the two paths: plans (changes files), what was sent,
and the committed state (the worker's snapshot against the warehouse's state table).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.errors import ConfigurationError, GuardError, StaleBaseError
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.models import Binding
from airflow_provider_zeotap.sync.warehouse.store import WarehouseState, state_table_name
from tests.support.reliability import reliability_case
from tests.support.sync_harness import RecordingDestination
from tests.support.warehouse_harness import DiffHarness, DuckDBHook

SQL = "SELECT * FROM main.people"
COLUMNS = "id BIGINT, email VARCHAR, name VARCHAR, score DECIMAL(8, 2), seen TIMESTAMP"


class LowercaseEmails(RecordingDestination):
    """A destination that normalises emails: 'A@x' and 'a@x' are one record there."""

    def identity(self, row: OutboundRow) -> str | None:
        email = row.payload.get("email")
        return str(email).lower() if email else None


def person(i: int, **overrides: Any) -> dict[str, Any]:
    return {"id": i, "email": f"user{i}@example.com", "name": f"Name {i}", "score": f"{i * 1.5:.2f}",
            "seen": f"2026-01-0{1 + i % 9} 08:00:00", **overrides}


class Pair:
    """The same source, diffed on the worker and in the warehouse, each sync with its own destination."""

    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, destination: type = RecordingDestination) -> None:
        self.path = str(tmp_path / "warehouse.duckdb")
        monkeypatch.setenv("AIRFLOW_CONN_DUCK_WH", json.dumps({"conn_type": "duckdb", "host": self.path}))
        hook = DuckDBHook(self.path)
        self.sides = {
            path: DiffHarness(str(tmp_path / path), sync_id=f"people_{path}", conn_id="duck_wh", hook=hook,
                              diff_in=path, sql=SQL)
            for path in ("worker", "warehouse")
        }
        self.destinations = {path: destination() for path in self.sides}

    def load(self, rows: list[dict[str, Any]]) -> None:
        with duckdb.connect(self.path) as con:
            con.execute(f"CREATE OR REPLACE TABLE main.people ({COLUMNS})")
            for row in rows:
                con.execute("INSERT INTO main.people VALUES (?, ?, ?, ?, ?)",
                            [row["id"], row["email"], row["name"], row["score"], row["seen"]])

    def run(self, mode: str = "mirror", plan_kwargs: dict | None = None, **runner_kwargs: Any) -> dict[str, Any]:
        out = {}
        for path, side in self.sides.items():
            destination = self.destinations[path]
            destination.calls.clear()
            plan = side.plan(**(plan_kwargs or {}))
            result = side.runner(plan, destination, mode, **runner_kwargs).run()
            out[path] = (plan, result, [(op.value, rows) for op, rows in destination.calls])
        (wplan, wresult, wcalls), (hplan, hresult, hcalls) = out["worker"], out["warehouse"]
        assert hplan.counts == wplan.counts
        worker_changes = pq.read_table(wplan.changes_uri.removeprefix("file://"))
        warehouse_changes = pq.read_table(hplan.changes_uri.removeprefix("file://"))
        assert [(f.name, str(f.type)) for f in warehouse_changes.schema] == [
            (f.name, str(f.type)) for f in worker_changes.schema]
        assert warehouse_changes.to_pylist() == worker_changes.to_pylist()
        assert hcalls == wcalls
        assert (hresult.succeeded, hresult.rejected, hresult.failed, hresult.identity_kept) == (
            wresult.succeeded, wresult.rejected, wresult.failed, wresult.identity_kept)
        assert self.warehouse_state() == self.worker_state(wresult)
        return {"worker": wresult, "warehouse": hresult, "plan": hplan, "calls": hcalls}

    def worker_state(self, result: Any) -> list[dict]:
        if result.committed is None:
            return []
        rows = pq.read_table(result.committed.snapshot_uri.removeprefix("file://")).to_pylist()
        return sorted(rows, key=lambda row: row["id"])

    def warehouse_state(self) -> list[dict]:
        with duckdb.connect(self.path) as con:
            table = f'zeotap_sync."{state_table_name("people_warehouse")}"'
            exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                 [state_table_name("people_warehouse")]).fetchone()[0]
            if not exists:
                return []
            cursor = con.execute(f"SELECT * EXCLUDE (__row_hash) FROM {table} ORDER BY id")
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        for row in rows:
            row["__payload_fields"] = json.loads(row["__payload_fields"]) if row["__payload_fields"] else None
        return rows


@reliability_case("bad input", "warehouse diff (DuckDB file)", "a row the destination rejects, then the row is fixed",
                  "rejected, not committed, not re-sent while unchanged; sent once fixed, as the worker diff does")
def test_duckdb_warehouse_matches_the_worker_diff_run_for_run(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    for destination in pair.destinations.values():
        destination.invalid = lambda row: row.payload.get("name") == "BAD"
    pair.load([person(i, name="BAD") if i == 4 else person(i) for i in range(1, 8)])
    first = pair.run()
    assert first["plan"].counts.added == 7 and first["warehouse"].rejected == 1
    assert first["warehouse"].committed.rows == 6

    rows = [person(i, name="BAD") if i == 4 else person(i) for i in range(1, 10) if i != 2]
    rows[0]["score"] = "42.00"
    pair.load(rows)
    second = pair.run()
    counts = second["plan"].counts
    assert (counts.added, counts.changed, counts.removed) == (3, 1, 1)
    assert second["warehouse"].rejected == 1  # remembered: not sent again while unchanged
    assert ("delete", [{"email": "user2@example.com", "name": "Name 2"}]) in second["calls"]

    pair.load([dict(r, name="Fixed") if r["id"] == 4 else r for r in rows])
    third = pair.run()
    assert third["calls"] == [("upsert", [{"email": "user4@example.com", "name": "Fixed"}])]
    assert third["warehouse"].committed.rows == 8

    # full_refresh sends every current row again and removes nothing, on both paths alike.
    refreshed = pair.run(plan_kwargs={"full_refresh": True})
    assert refreshed["plan"].counts.refresh == 8 and refreshed["warehouse"].succeeded == 8


def test_rebind_sends_every_current_row_to_the_new_target_as_the_worker_diff_does(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    pair.load([person(i) for i in range(1, 6)])
    pair.run(binding=_binding("list-1"))
    pair.load([person(i) for i in range(1, 7) if i != 3])
    with pytest.raises(ConfigurationError, match="rebind=True"):
        pair.sides["warehouse"].runner(pair.sides["warehouse"].plan(), pair.destinations["warehouse"],
                                       binding=_binding("list-2")).run()
    rebound = pair.run(binding=_binding("list-2"), rebind=True)
    assert rebound["warehouse"].rebound and rebound["warehouse"].succeeded == 5  # 1, 2, 4, 5 and the new 6
    assert [op for op, _ in rebound["calls"]] == ["upsert"] * len(rebound["calls"])  # nothing removed


def test_an_identity_held_by_an_unchanged_committed_row_is_rejected_as_on_the_worker(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch, destination=LowercaseEmails)
    pair.load([person(1, email="Jo@Example.com"), person(2)])
    pair.run(mode="upsert")
    pair.load([person(1, email="Jo@Example.com"), person(2), person(3, email="jo@example.COM")])
    clash = pair.run(mode="upsert")
    assert clash["warehouse"].rejected == 1 and clash["calls"] == []


def test_guards_refuse_as_on_the_worker(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    pair.load([person(i) for i in range(1, 6)])
    pair.run()
    pair.load([person(1)])
    side = pair.sides["warehouse"]
    pair.destinations["warehouse"].calls.clear()
    with pytest.raises(GuardError, match="max_removals=2"):
        side.runner(side.plan(), pair.destinations["warehouse"], guards=Guards(max_removals=2)).run()
    assert pair.destinations["warehouse"].calls == []


def test_a_stale_plan_changes_nothing_in_the_warehouse(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    side = pair.sides["warehouse"]
    pair.load([person(i) for i in range(1, 4)])
    side.runner(side.plan(), RecordingDestination()).run()
    pair.load([person(i) for i in range(1, 6)])
    older, newer = side.plan(), side.plan()
    side.runner(newer, RecordingDestination()).run()
    before = pair.warehouse_state()
    state = WarehouseState(DuckDBHook(pair.path), "duckdb", sync_id=side.sync_id, state_schema="zeotap_sync")
    with pytest.raises(StaleBaseError, match="is stale"):
        state.commit(plan_id=older.plan_id, base_version=older.warehouse.base_version,
                     changes_path=older.changes_uri.removeprefix("file://"),
                     hashes_path=older.warehouse.hashes_uri.removeprefix("file://"), outcome_paths=[],
                     acted_on={"added"}, primary_key=["id"], replace_all=False, work_dir=str(tmp_path))
    assert pair.warehouse_state() == before
    with pytest.raises(StaleBaseError):  # and the runner refuses it before sending anything
        side.runner(older, RecordingDestination()).run()


def test_a_missing_state_table_a_new_column_set_or_a_new_type_names_the_fix(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    side = pair.sides["warehouse"]
    pair.load([person(1)])
    side.runner(side.plan(), RecordingDestination()).run()
    with duckdb.connect(pair.path) as con:
        con.execute("ALTER TABLE main.people ADD COLUMN plan VARCHAR")
    with pytest.raises(ConfigurationError, match="differ from those its warehouse state table .* new sync_id"):
        side.plan()
    with duckdb.connect(pair.path) as con:
        con.execute("ALTER TABLE main.people DROP COLUMN plan")
        con.execute("ALTER TABLE main.people ALTER score TYPE DECIMAL(8, 1)")
    with pytest.raises(ConfigurationError, match=r"^Sync 'people_warehouse': source column 'score' is now of type DECIMAL\(8,1\), .* holds it as DECIMAL\(8,2\)\. Cast"):
        side.plan()
    with duckdb.connect(pair.path) as con:
        con.execute("ALTER TABLE main.people ALTER score TYPE DECIMAL(8, 2)")
        con.execute(f'DROP TABLE zeotap_sync."{state_table_name(side.sync_id)}"')
    with pytest.raises(ConfigurationError, match="which is gone. Restore it .* new sync_id"):
        side.plan()


def _binding(list_id: str) -> Binding:
    return Binding(dag_id="d", task_id="t", operator="Op", conn_id="c", destination="Test destination",
                   target={"list_id": list_id}, mode_family="delivers")


def test_a_sync_keeps_the_diff_in_it_was_committed_with(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    worker = pair.sides["worker"]
    pair.load([person(1)])
    worker.runner(worker.plan(), RecordingDestination()).run()
    switched = DiffHarness(str(tmp_path / "worker"), sync_id=worker.sync_id, conn_id="duck_wh", hook=worker.hook,
                           diff_in="warehouse", sql=SQL, pointer_store=worker.pointer_store)
    with pytest.raises(ConfigurationError, match="committed by a diff on the worker, and this task has "
                                                 "diff_in='warehouse'.*new sync_id"):
        switched.plan()


def test_take_over_existing_is_refused_for_a_warehouse_plan_before_sending(tmp_path, monkeypatch):
    pair = Pair(tmp_path, monkeypatch)
    side = pair.sides["warehouse"]
    pair.load([person(1)])
    destination = RecordingDestination()
    with pytest.raises(ConfigurationError, match="take_over_existing=True .* use diff_in='worker'"):
        side.runner(side.plan(), destination, take_over_existing=True).run()
    assert destination.calls == []


def test_a_create_never_confirmed_is_removed_on_the_worker_and_named_in_a_warning_in_the_warehouse(
    tmp_path, monkeypatch, caplog
):
    """The worker diff has the source beside it to tell that the row left; the warehouse diff does not."""
    pair = Pair(tmp_path, monkeypatch)
    pair.load([person(1), person(2)])
    for destination in pair.destinations.values():
        destination.fail = lambda row: row.payload.get("email") == "user2@example.com"  # every answer lost
    first = pair.run()
    assert first["warehouse"].failed == 1 and first["warehouse"].committed.rows == 1
    pair.load([person(1)])
    sent: dict[str, list] = {}
    for path, side in pair.sides.items():
        destination = RecordingDestination()
        with caplog.at_level("WARNING"):
            result = side.runner(side.plan(), destination, "mirror").run()
        sent[path] = [(op.value, rows) for op, rows in destination.calls]
        assert result.unconfirmed_removals == (1 if path == "worker" else 0)
    assert sent["worker"] == [("delete", [{"email": "user2@example.com", "name": "Name 2"}])]
    assert sent["warehouse"] == []
    assert "1 records this sync sent as creates were never confirmed" in caplog.text
    assert "diff_in='worker'" in caplog.text
