"""The delivery runner: commit rule, splitting, guards, dry run, compare-and-set, resume after a kill."""

from __future__ import annotations

import dataclasses
import json

import pytest

from airflow_provider_zeotap.http.errors import ConfigurationError
from airflow_provider_zeotap.sync.state import StaleBaseError
from airflow_provider_zeotap.sync.destination import BatchRefused, RowOutcome
from tests.support.sync_harness import DictStore, Killed, RecordingDestination, SyncHarness

ROWS = [{"id": i, "email": f"user{i}@example.com", "name": f"User {i}"} for i in range(1, 11)]


@pytest.fixture
def harness(tmp_path):
    return SyncHarness(str(tmp_path))


def sent_ids(destination: RecordingDestination) -> list[int]:
    return sorted(int(p["email"][4:].split("@")[0]) for _, rows in destination.calls for p in rows)


def test_rejected_and_failed_rows_come_back_next_run_and_acknowledged_ones_do_not(harness):
    first = RecordingDestination(
        reject=lambda r: "bad row" if r.payload["email"] == "user2@example.com" else None,
        fail=lambda r: r.payload["email"] == "user3@example.com",
    )
    plan, result = harness.sync(ROWS, first)
    assert (result.succeeded, result.rejected, result.failed) == (8, 1, 1)
    assert result.committed is not None and result.committed.rows == 8
    rejected = [json.loads(line) for line in open(result.rejected_rows_uri.removeprefix("file://"))]
    assert {(r["id"], r["outcome"]) for r in rejected} == {(2, "rejected"), (3, "failed")}
    assert next(r["reason"] for r in rejected if r["id"] == 2) == "bad row"

    second = RecordingDestination()
    plan2, result2 = harness.sync(ROWS, second)
    assert plan2.counts.added == 2 and plan2.counts.unchanged == 8
    assert sent_ids(second) == [2, 3]
    assert result2.committed.rows == 10

    third = RecordingDestination()
    plan3, result3 = harness.sync(ROWS, third)
    assert third.calls == [] and plan3.counts.unchanged == 10


def test_a_changed_row_that_fails_keeps_its_old_state_and_is_sent_again(harness):
    harness.sync(ROWS, RecordingDestination())
    changed = [dict(r, name="Renamed") if r["id"] in (4, 5) else r for r in ROWS]
    flaky = RecordingDestination(fail=lambda r: r.payload["email"] == "user4@example.com")
    _, result = harness.sync(changed, flaky)
    assert (result.succeeded, result.failed) == (1, 1)
    again = RecordingDestination()
    plan, _ = harness.sync(changed, again)
    assert plan.counts.changed == 1 and sent_ids(again) == [4]
    assert again.delivered[0][1]["name"] == "Renamed"


def test_modes_choose_what_is_sent_and_unsent_changes_are_committed_as_seen(harness):
    harness.sync(ROWS, RecordingDestination())
    source = [dict(r, name="New") if r["id"] == 1 else r for r in ROWS if r["id"] != 10] + [
        {"id": 11, "email": "user11@example.com", "name": "User 11"}
    ]
    insert = RecordingDestination()
    _, result = harness.sync(source, insert, mode="insert")
    assert [op.value for op, _ in insert.calls] == ["create"]
    assert sent_ids(insert) == [11]
    assert result.not_acted_on == 2  # the change of id 1 and the removal of id 10
    follow = RecordingDestination()
    plan, _ = harness.sync(source, follow, mode="mirror")
    assert follow.calls == [] and plan.counts.changed == 0 and plan.counts.removed == 0


def test_mirror_removes_only_keys_this_sync_delivered(harness):
    harness.sync(ROWS[:5], RecordingDestination(reject=lambda r: "no" if r.payload["email"] == "user5@example.com" else None),
                 mode="audience_mirror")
    remover = RecordingDestination()
    harness.sync(ROWS[:2], remover, mode="audience_mirror")
    removed = sorted(p["email"] for op, rows in remover.calls if op.removes for p in rows)
    assert removed == ["user3@example.com", "user4@example.com"]  # never user5, which never landed


def test_a_refused_batch_is_split_until_the_bad_rows_stand_alone(harness):
    destination = RecordingDestination(poison=lambda r: r.payload["email"] in ("user4@example.com", "user9@example.com"))
    _, result = harness.sync(ROWS, destination, batch_size=10)
    assert result.rejected == 2 and result.succeeded == 8
    assert sorted(p["email"] for _, p in destination.delivered) == sorted(
        r["email"] for r in ROWS if r["id"] not in (4, 9)
    )
    assert max(len(rows) for _, rows in destination.calls) == 10
    bad = ("user4@example.com", "user9@example.com")
    isolated = [rows[0]["email"] for _, rows in destination.calls if len(rows) == 1 and rows[0]["email"] in bad]
    assert sorted(isolated) == sorted(bad)
    assert len(destination.calls) <= 1 + 2 * 2 * 4  # halving: at most two calls per level for each bad row


def test_rows_without_a_required_field_are_rejected_without_being_sent(harness):
    rows = ROWS[:3] + [{"id": 99, "email": None, "name": "No mail"}]
    destination = RecordingDestination()
    _, result = harness.sync(rows, destination)
    assert result.rejected == 1 and result.succeeded == 3
    assert all(p.get("email") for _, batch in destination.calls for p in batch)


def test_dry_run_sends_nothing_commits_nothing_and_writes_payloads(harness):
    plan = harness.plan(ROWS)
    destination = RecordingDestination()
    result = harness.runner(plan, destination, dry_run=True, dry_run_sample=4).run()
    assert destination.calls == []
    assert harness.pointer.read() is None
    assert result.dry_run and result.operations["upsert"].selected == 10
    lines = open(result.dry_run_payloads_uri.removeprefix("file://")).read().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["payload"]["email"].endswith("@example.com")


def test_guards_refuse_before_anything_is_sent(harness):
    rows = [{"id": i, "email": f"user{i}@example.com", "name": "x"} for i in range(200)]
    harness.sync(rows, RecordingDestination(), batch_size=100)
    destination = RecordingDestination()
    with pytest.raises(ConfigurationError, match="max_removal_ratio"):
        harness.sync(rows[:50], destination, mode="mirror")
    assert destination.calls == []
    with pytest.raises(ConfigurationError, match="allow_empty_source"):
        harness.sync([], destination, mode="mirror")
    assert destination.calls == []


def test_commit_is_compare_and_set(harness):
    harness.sync(ROWS[:3], RecordingDestination())
    stale = harness.plan(ROWS[:5])
    harness.sync(ROWS[:4], RecordingDestination())  # another run commits in between
    late = RecordingDestination()
    with pytest.raises(StaleBaseError, match="is stale.*Nothing was sent"):
        harness.runner(stale, late).run()
    assert late.calls == []  # checked before the first write, not only at commit


def test_resume_after_a_kill_sends_at_most_one_batch_twice_and_commits_everything(harness):
    plan = harness.plan(ROWS)  # 10 rows, batch size 3 -> 4 batches
    dying = RecordingDestination(kill_at_call=3)
    with pytest.raises(Killed):
        harness.runner(plan, dying).run()
    assert harness.checkpoints.get(f"delivery:{plan.plan_id}")["next_batch"] == 2
    partial = harness.pointer.read()
    assert partial is not None and partial.rows == 6  # what was acknowledged before the kill is kept

    retry = RecordingDestination()
    result = harness.runner(plan, retry).run()  # the same plan: a retry of the same task
    assert result.resumed_from_batch == 2
    assert sent_ids(retry) == [7, 8, 9, 10]
    assert result.committed.rows == 10
    nothing = RecordingDestination()
    harness.sync(ROWS, nothing)
    assert nothing.calls == []


def test_composite_primary_keys_flow_through_to_the_rejected_rows_file(tmp_path):
    harness = SyncHarness(str(tmp_path), primary_key=("region", "id"))
    rows = [{"region": r, "id": 1, "email": f"{r}@example.com", "name": r} for r in ("eu", "us")]
    _, result = harness.sync(rows, RecordingDestination(reject=lambda r: "nope" if r.key["region"] == "us" else None))
    rejected = [json.loads(line) for line in open(result.rejected_rows_uri.removeprefix("file://"))]
    assert rejected == [{"region": "us", "id": 1, "change": "added", "operation": "upsert", "outcome": "rejected",
                         "reason": "nope"}]


def test_checkpoints_are_per_plan(harness):
    store = DictStore()
    plan = harness.plan(ROWS)
    harness.runner(plan, RecordingDestination(), checkpoints=store).run()
    assert store.get(f"delivery:{plan.plan_id}")["next_batch"] == 4


def test_rows_refused_for_their_own_data_are_not_resent_until_they_change(harness):
    rows = [dict(r, name="bad") if r["id"] == 1 else r for r in ROWS]
    invalid_name = lambda r: r.payload["name"] == "bad"  # noqa: E731
    _, first = harness.sync(rows, RecordingDestination(invalid=invalid_name))
    assert first.rejected == 1 and first.committed.rejected_uri

    again = RecordingDestination(invalid=invalid_name)
    _, second = harness.sync(rows, again)
    assert again.calls == [] and second.rejected == 1  # remembered and reported, not sent

    forced = RecordingDestination(invalid=invalid_name)
    harness.runner(harness.plan(rows), forced, retry_rejected=True).run()
    assert sent_ids(forced) == [1]

    fixed = RecordingDestination(invalid=invalid_name)
    _, last = harness.sync([dict(r, name="good") if r["id"] == 1 else r for r in ROWS], fixed)
    assert sent_ids(fixed) == [1] and last.rejected == 0


class RefusingForTheData(RecordingDestination):
    """Refuses a whole batch, for good, when one of its rows holds bad data (like Permutive's atomic batch)."""

    def send(self, operation, rows):
        if any(row.payload["name"] == "bad" for row in rows):
            self.calls.append((operation, [dict(r.payload) for r in rows]))
            raise BatchRefused("ValidationError: invalid data", permanent=True)
        return super().send(operation, rows)


def test_a_row_whose_batch_is_refused_for_good_is_remembered_once_it_stands_alone(harness):
    """Splitting isolates the bad row; refused alone, it keeps the refusal's ``permanent`` and is not resent."""
    rows = [dict(r, name="bad") if r["id"] == 2 else r for r in ROWS]
    first = RefusingForTheData()
    _, result = harness.sync(rows, first, batch_size=4)
    assert (result.rejected, result.succeeded) == (1, 9)
    assert [{"email": "user2@example.com", "name": "bad"}] in [batch for _, batch in first.calls]  # refused alone

    again = RefusingForTheData()
    _, second = harness.sync(rows, again, batch_size=4)
    assert again.calls == [] and second.rejected == 1  # remembered as refused for its data, so not sent


class IdentifiedByEmail(RecordingDestination):
    capabilities = dataclasses.replace(RecordingDestination.capabilities, identity_fields=("email",))


class Validating(RecordingDestination):
    strict = True

    def validate(self, operation, row):
        return "looks wrong" if self.strict and row.payload["name"] == "odd" else None


def test_a_removing_mode_needs_the_identity_column_as_primary_key(harness):
    plan = harness.plan(ROWS)
    with pytest.raises(ConfigurationError, match="primary_key='email'"):
        harness.runner(plan, IdentifiedByEmail(), mode="audience_mirror")
    harness.runner(plan, IdentifiedByEmail(), mode="audience_add").run()  # adding alone is fine


def test_rows_rejected_before_sending_are_checked_again_each_run(harness):
    rows = [dict(r, name="odd") if r["id"] == 1 else r for r in ROWS]
    _, first = harness.sync(rows, Validating())
    assert first.rejected == 1
    relaxed = Validating()
    relaxed.strict = False  # the user fixed a setting; the row itself did not change
    harness.sync(rows, relaxed)
    assert sent_ids(relaxed) == [1]


def test_old_plans_and_snapshots_are_pruned_after_a_commit(harness, tmp_path):
    import os

    for round_ in range(8):
        _, result = harness.sync([dict(r, name=f"v{round_}") for r in ROWS], RecordingDestination())
    plans = os.listdir(tmp_path / "test_sync" / "plans")
    snapshots = {n.split(".")[0] for n in os.listdir(tmp_path / "test_sync" / "committed")}
    assert len(plans) == 5 and result.plan_id in plans
    assert len(snapshots) == 2 and harness.pointer.read().snapshot_id in snapshots


class PerRowWithBadKeyAt(RecordingDestination):
    """A per-row API whose key is revoked when row ``bad_id`` is sent."""

    def __init__(self, bad_id: int) -> None:
        super().__init__()
        self.bad_id = bad_id

    def send(self, operation, rows):
        from airflow_provider_zeotap.destinations.base import send_each
        from airflow_provider_zeotap.http import AuthenticationError

        def one(row):
            self.calls.append((operation, [dict(row.payload)]))
            if row.key["id"] == self.bad_id:
                raise AuthenticationError("Please, log in", vendor="Test", method="POST", path="/users", status=401)
            return RowOutcome.ok(row)

        return send_each(rows, one, max_in_flight=1)


def test_a_revoked_key_mid_batch_keeps_the_rows_answered_before_it(harness):
    from airflow_provider_zeotap.http import AuthenticationError

    plan = harness.plan(ROWS)  # batches of 3: [1,2,3] [4,5,6] ...
    with pytest.raises(AuthenticationError):
        harness.runner(plan, PerRowWithBadKeyAt(5)).run()
    assert harness.pointer.read().rows == 4  # 1-3 from the first batch, 4 from the stopped one
    retry = RecordingDestination()
    result = harness.runner(plan, retry).run()
    assert result.resumed_from_batch == 1 and sent_ids(retry) == [4, 5, 6, 7, 8, 9, 10]
    assert result.committed.rows == 10


def test_a_delivery_stopped_before_any_row_was_acknowledged_commits_nothing(harness):
    """The destination down for the whole run: the baseline, its binding and ownership records stay as they were."""
    down = RecordingDestination(fail=lambda row: True, kill_at_call=3)
    with pytest.raises(Killed):
        harness.runner(harness.plan(ROWS), down).run()
    assert harness.pointer.read() is None  # not even an empty baseline

    one_refused = RecordingDestination(fail=lambda row: True, kill_at_call=3,
                                       invalid=lambda row: row.payload["email"] == "user1@example.com")
    with pytest.raises(Killed):
        harness.runner(harness.plan(ROWS), one_refused).run()
    committed = harness.pointer.read()  # an answer other than "failed" is kept: the refusal is remembered
    assert committed is not None and committed.rows == 0 and committed.rejected_uri is not None
