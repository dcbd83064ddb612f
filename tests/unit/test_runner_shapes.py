"""The four shapes an API can have, served by one runner: per-operation batch sizes, whole-or-nothing
batches, combined operations, async destinations with batches in flight; and the take-over of a mirror."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.answers import AnswerJournal
from airflow_provider_zeotap.sync.destination import BatchRefused, Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import AUDIENCE_MODES, RECORD_MODES, Operation
from airflow_provider_zeotap.sync.ownership import OwnershipLog
from tests.support.sync_harness import Killed, RecordingDestination, SyncHarness

ROWS = [{"id": i, "email": f"user{i}@example.com", "name": f"User {i}"} for i in range(1, 13)]


@pytest.fixture
def harness(tmp_path):
    return SyncHarness(str(tmp_path))


@pytest.fixture
def members(tmp_path):
    """An audience keyed by what identifies a member, as a removing mode requires."""
    return SyncHarness(str(tmp_path), primary_key=("email",))


def _ids(rows: Sequence[OutboundRow]) -> list[int]:
    return [int(str(r.payload["email"])[4:].split("@")[0]) for r in rows]


class PerOperationSizes(RecordingDestination):
    """Writes one row a request, deletes four at a time (Zeotap's shape)."""

    capabilities = Capabilities(
        name="Per-operation sizes",
        mode_argument="sync_mode",
        modes=RECORD_MODES,
        batch_size=100,
        max_batch_size=1000,
        batch_sizes={Operation.UPSERT: 5, Operation.DELETE: 4},
        max_batch_sizes={Operation.DELETE: 4},
        required_fields=("email",),
        default_fields=("email", "name"),
    )


def test_each_operation_is_cut_at_its_own_batch_size(harness):
    harness.sync(ROWS, PerOperationSizes())
    destination = PerOperationSizes()
    _, result = harness.sync([dict(r, name="New") for r in ROWS[:2]], destination, mode="mirror")
    sizes = [(op.value, len(rows)) for op, rows in destination.calls]
    # 10 removals in batches of at most 4, removals first; then the 2 changes in one batch of up to 5.
    assert sizes == [("delete", 4), ("delete", 4), ("delete", 2), ("upsert", 2)]
    assert result.batches == 4 and result.committed.rows == 2


def test_a_batch_size_above_an_operations_maximum_is_refused_naming_the_operation(harness):
    plan = harness.plan(ROWS)
    with pytest.raises(ConfigurationError, match="from 1 to 4 for delete operations"):
        harness.runner(plan, PerOperationSizes(), mode="mirror", batch_size=10)
    harness.runner(plan, PerOperationSizes(), mode="upsert", batch_size=10)  # upsert never deletes: allowed


class WholeList(RecordingDestination):
    """One write per batch that lands whole or not at all (Optimizely's list_content)."""

    capabilities = Capabilities(
        name="Whole list",
        mode_argument="audience_mode",
        modes=AUDIENCE_MODES,
        batch_size=1000,
        max_batch_size=1000,
        required_fields=("email",),
        default_fields=("email",),
        identity_fields=("email",),
        split_refused_batches=False,
        combined_operations=True,
    )

    def __init__(self, *, existing: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.existing = existing
        self.combined: list[list[tuple[str, list[int]]]] = []

    def send_combined(self, parts):
        self.combined.append([(op.value, [str(r.payload["email"]).split("@")[0] for r in rows]) for op, rows in parts])
        outcomes: list[RowOutcome] = []
        for operation, rows in parts:
            outcomes += self.send(operation, rows)
        return outcomes

    def existing_records(self):
        return None if self.existing is None else [{"email": e} for e in self.existing]


def test_a_combined_destination_gets_one_write_for_the_removes_and_adds_of_a_batch(members):
    members.sync(ROWS[:6], WholeList(), mode="mirror")
    destination = WholeList()
    _, result = members.sync(ROWS[3:9], destination, mode="mirror")
    assert destination.combined == [[("remove", ["user1", "user2", "user3"]), ("add", ["user7", "user8", "user9"])]]
    assert result.committed.rows == 6


def test_a_refused_whole_list_write_is_never_split_and_every_row_comes_back_next_run(members):
    destination = WholeList(poison=lambda row: row.payload["email"] == "user2@example.com")
    _, result = members.sync(ROWS[:5], destination, mode="mirror")
    assert len(destination.combined) == 1  # no halving
    assert (result.rejected, result.succeeded) == (5, 0)
    again = WholeList()
    _, second = members.sync(ROWS[:5], again, mode="mirror")
    assert again.combined == [[("add", [f"user{i}" for i in range(1, 6)])]] and second.committed.rows == 5


def test_a_splitting_destination_still_isolates_the_row_at_fault(harness):
    destination = RecordingDestination(poison=lambda row: row.payload["email"] == "user2@example.com")
    _, result = harness.sync(ROWS[:3], destination)
    assert (result.rejected, result.succeeded) == (1, 2) and len(destination.calls) > 1


def test_take_over_removes_what_the_target_holds_that_the_source_lacks(members):
    destination = WholeList(existing=["user1@example.com", "stranger@example.com", "other@example.com"])
    _, result = members.sync(ROWS[:3], destination, mode="mirror", take_over_existing=True)
    # One write: the strangers out, the source in; user1 was there already and stays (now the sync's own).
    assert destination.combined == [[("remove", ["stranger", "other"]), ("add", ["user1", "user2", "user3"])]]
    removed = [payload["email"] for op, payload in destination.delivered if op is Operation.REMOVE]
    assert sorted(removed) == ["other@example.com", "stranger@example.com"]
    assert result.taken_over_removals == 2 and result.committed.rows == 3


def test_without_take_over_a_mirror_never_reads_or_removes_what_it_did_not_deliver(members):
    destination = WholeList(existing=["stranger@example.com"])
    _, result = members.sync(ROWS[:3], destination, mode="mirror")
    assert not [p for op, p in destination.delivered if op is Operation.REMOVE]
    assert result.taken_over_removals == 0


def test_take_over_removals_count_against_the_removal_guards(members):
    destination = WholeList(existing=[f"stranger{i}@example.com" for i in range(5)])
    with pytest.raises(ConfigurationError, match="would remove 5 rows, more than max_removals=3"):
        members.sync(ROWS[:3], destination, mode="mirror", take_over_existing=True, guards=Guards(max_removals=3))
    assert destination.calls == []


def test_a_take_over_removal_that_fails_is_named_in_the_rejected_rows_report(members):
    destination = WholeList(existing=["stranger@example.com"], fail=lambda row: "stranger" in row.payload["email"])
    _, result = members.sync(ROWS[:1], destination, mode="mirror", take_over_existing=True)
    assert (result.failed, result.succeeded, result.taken_over_removals) == (1, 1, 1)
    with open(result.rejected_rows_uri.removeprefix("file://"), encoding="utf-8") as report:
        lines = [json.loads(line) for line in report]
    assert [(line["email"], line["change"], line["operation"], line["outcome"]) for line in lines] == [
        ("stranger@example.com", "removed", "remove", "failed")
    ]


def test_take_over_needs_a_destination_that_can_list_its_target(members):
    with pytest.raises(ConfigurationError, match="cannot list what its target holds"):
        members.sync(ROWS[:3], WholeList(existing=None), mode="mirror", take_over_existing=True)


def test_a_retried_take_over_removes_the_same_records_it_read_the_first_time(members):
    plan = members.plan(ROWS[:2])
    first = WholeList(existing=["stranger@example.com"], kill_at_call=1)
    with pytest.raises(Killed):
        members.runner(plan, first, mode="mirror", take_over_existing=True).run()
    retry = WholeList(existing=[])  # the target no longer lists it: the plan's own reading stands
    result = members.runner(plan, retry, mode="mirror", take_over_existing=True).run()
    assert [p["email"] for op, p in retry.delivered if op is Operation.REMOVE] == ["stranger@example.com"]
    assert result.committed.rows == 2


class AsyncDestination(Destination):
    """Answers after a delay, and records how many batches were in flight at once."""

    capabilities = Capabilities(
        name="Async destination",
        mode_argument="sync_mode",
        modes=MappingProxyType(dict(RECORD_MODES)),
        batch_size=2,
        max_batch_size=100,
        required_fields=("email",),
        default_fields=("email", "name"),
        batches_in_flight=3,
    )

    def __init__(self, *, delays: dict[int, float] | None = None, kill: int | None = None) -> None:
        self.delays = delays or {}
        self.kill = kill
        self.in_flight = 0
        self.peak = 0
        self.sent: list[int] = []
        self.loops: set[int] = set()
        self.closed_on: int | None = None

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        self.loops.add(id(asyncio.get_running_loop()))
        ids = _ids(rows)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(ids[0], 0.05))
            if self.kill in ids:
                raise Killed()
            self.sent += ids
            return [RowOutcome.ok(row) for row in rows]
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed_on = id(asyncio.get_running_loop())


def test_an_async_destination_has_several_batches_in_flight_on_one_loop(harness):
    destination = AsyncDestination()
    _, result = harness.sync(ROWS, destination)
    assert destination.peak == 3  # the window, never more
    assert sorted(destination.sent) == list(range(1, 13))
    assert len(destination.loops) == 1 and destination.closed_on in destination.loops
    assert result.batches == 6 and result.committed.rows == 12


def test_batches_that_finish_out_of_order_are_checkpointed_and_not_sent_again(harness):
    plan = harness.plan(ROWS)
    # Batch 0 (rows 1-2) is slow and is killed; batches 1 and 2 finish first.
    first = AsyncDestination(delays={1: 0.5}, kill=1)
    with pytest.raises(Killed):
        harness.runner(plan, first).run()
    checkpoint = harness.checkpoints.get(f"delivery:{plan.plan_id}")
    assert checkpoint["next_batch"] == 0 and {1, 2} <= set(checkpoint["done"])
    retry = AsyncDestination()
    result = harness.runner(plan, retry).run()
    assert set(retry.sent).isdisjoint(first.sent)  # nothing acknowledged is sent twice
    assert sorted(first.sent + retry.sent) == list(range(1, 13))
    assert result.committed.rows == 12 and result.succeeded == 12


class RowByRow(Destination):
    """One request per row, two batches in flight, each answer reported as it comes (Zeotap's shape)."""

    capabilities = replace(AsyncDestination.capabilities, name="Row by row", batch_size=4, batches_in_flight=2)

    def __init__(self, *, kill: int | None = None, refuse: int | None = None) -> None:
        self.kill = kill
        self.refuse = refuse
        self.sent: list[int] = []

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        outcomes = []
        for row in rows:
            await asyncio.sleep(0.01)
            (number,) = _ids([row])
            if number == self.kill:
                raise Killed()
            self.sent.append(number)
            answer = RowOutcome.rejected(row, "bad", permanent=True) if number == self.refuse else RowOutcome.ok(row)
            outcomes.append(self.answered(answer))
        return outcomes


def test_a_retry_after_a_kill_mid_batch_sends_only_the_rows_that_had_no_answer(harness):
    plan = harness.plan(ROWS)
    first = RowByRow(kill=3, refuse=2)  # batches 0 (rows 1-4) and 1 (5-8) in flight; row 2 refused, 3 kills
    with pytest.raises(Killed):
        harness.runner(plan, first).run()
    assert {1, 2, 5, 6} <= set(first.sent) and harness.pointer.read() is None  # no batch ended
    retry = RowByRow()
    result = harness.runner(plan, retry).run()
    assert set(retry.sent).isdisjoint(first.sent)  # an answered row is never sent again, the refused one neither
    assert sorted(first.sent + retry.sent) == list(range(1, 13))
    assert (result.succeeded, result.rejected) == (11, 1) and result.committed.rows == 11
    assert not [name for name in os.listdir(harness.storage.local_dir(harness.storage.plan_uri(plan.plan_id, "delivery")))
                if name.startswith("answers-")]  # every batch's outcomes are written: no answers kept


class OneBatchAtATime(RowByRow):
    """The same batches, one in flight at a time: which rows a kill finds answered does not depend on timing."""

    capabilities = replace(RowByRow.capabilities, batches_in_flight=1)


def test_a_second_kill_keeps_the_ownership_records_of_the_rows_the_first_try_had_answers_for(harness):
    """Try 2 skips rows answered by try 1 but records the batch's creates whole: killed again before its commit,
    the records must still hold those rows, or a later mirror could never remove them (they may have landed)."""
    plan = harness.plan(ROWS)
    first = RowByRow(kill=3)
    with pytest.raises(Killed):
        harness.runner(plan, first).run()
    log = OwnershipLog(harness.storage, "unbound")
    recorded_by_try_1 = log.load()
    assert len(recorded_by_try_1) == 8  # batches 0 and 1 were in flight
    second = OneBatchAtATime(kill=4)  # batch 0 alone: row 3 goes out again and lands, row 4 kills
    with pytest.raises(Killed):
        harness.runner(plan, second).run()
    assert second.sent == [3] and harness.pointer.read() is None  # rows 1 and 2 were not sent again
    assert log.load() >= recorded_by_try_1


def test_an_answer_cut_by_the_kill_is_skipped_and_its_row_sent_again(tmp_path):
    journal = AnswerJournal(str(tmp_path))
    rows = [OutboundRow(row_id=i, change=Change.ADDED, key={"id": i}, payload={}) for i in range(3)]
    journal.open(7, [0, 1, 2])
    journal.add(RowOutcome.ok(rows[0]))
    journal.add(RowOutcome.failed(rows[1], "no answer"))  # not an answer: sent again
    journal.add(RowOutcome.ok(OutboundRow(row_id=99, change=Change.ADDED, key={}, payload={})))  # not this batch's
    journal.close(7, [0, 1, 2])
    journal.add(RowOutcome.ok(rows[2]))  # after the batch: not kept
    with open(tmp_path / "answers-000007.jsonl", "a", encoding="utf-8") as file:
        file.write('{"row_id": 2, "outcome": "succ')  # the kill cut the last line
    assert journal.earlier(7) == {0: RowOutcome.ok(rows[0])}
    journal.discard(7)
    assert journal.earlier(7) == {} and not os.listdir(tmp_path)


def test_an_async_batch_error_stops_the_delivery_and_keeps_what_was_acknowledged(harness):
    destination = AsyncDestination(kill=5, delays={5: 0.2})
    plan = harness.plan(ROWS)
    with pytest.raises(Killed):
        harness.runner(plan, destination).run()
    committed = harness.pointer.read()
    assert committed is not None and committed.rows == len(destination.sent) and committed.rows >= 4


def test_rows_of_a_failed_outcome_stay_out_of_the_baseline_in_async_delivery(harness):
    class Flaky(AsyncDestination):
        async def asend(self, operation, rows):
            outcomes = await super().asend(operation, rows)
            return [RowOutcome.failed(row, "HTTP 503") if _ids([row])[0] == 3 else o for row, o in zip(rows, outcomes)]

    _, result = harness.sync(ROWS, Flaky())
    assert (result.succeeded, result.failed) == (11, 1)
    assert result.operations["upsert"].failed == 1 and result.committed.rows == 11


def test_the_objects_made_before_a_delivery_are_frozen_out_of_the_collector_during_it(tmp_path):
    """Full collector passes over the task's imports held the loop 0.2 s each; frozen, they are skipped."""
    import gc

    class Watching(AsyncDestination):
        async def asend(self, operation, rows):
            self.frozen = gc.get_freeze_count()
            return await super().asend(operation, rows)

    # A runner that forked this process (a mutation run does) may have frozen objects of its own: start
    # from none, and give them back frozen at the end.
    frozen_by_the_runner = gc.get_freeze_count() > 0
    gc.unfreeze()
    try:
        watching = Watching()
        SyncHarness(str(tmp_path / "a")).sync(ROWS, watching)
        assert watching.frozen > 1000 and gc.get_freeze_count() == 0  # frozen during, given back after
        killed = Watching(kill=3)
        with pytest.raises(Killed):
            SyncHarness(str(tmp_path / "b")).sync(ROWS, killed)
        assert killed.frozen > 1000 and gc.get_freeze_count() == 0
        gc.freeze()  # a forked worker's frozen objects are its own: left frozen
        before = gc.get_freeze_count()
        SyncHarness(str(tmp_path / "c")).sync(ROWS, Watching())
        assert gc.get_freeze_count() > before / 2  # not given back: the delivery did not unfreeze them
    finally:
        gc.unfreeze()
        if frozen_by_the_runner:
            gc.freeze()
