"""The Permutive adapter against the emulator over real sockets: ownership, settling refused batches, clears.

Rows are built by hand, as the engine would hand them over, so each test controls ``ours`` (the engine's
word on whether the sync recorded the segment) and counts the requests the adapter makes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from airflow_provider_zeotap.destinations.permutive import PermutiveSegments, code_from_name
from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.sync.destination import BatchRefused, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.models import Change, Outcome
from airflow_provider_zeotap.sync.modes import Operation
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

A, C, R = Change.ADDED, Change.CHANGED, Change.REMOVED


@pytest.fixture
def hook(permutive_emulator, monkeypatch) -> Iterator[PermutiveHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_PERMUTIVE_DEFAULT",
        connection_env("permutive", permutive_emulator.url, permutive_emulator.write_key,
                       backoff_initial=0.01, backoff_max=0.05, max_attempts=3),
    )
    hook = PermutiveHook()
    yield hook
    hook.close()


@pytest.fixture
def import_id(permutive_emulator) -> str:
    return permutive_emulator.create_import("Warehouse segments")


def code(i: int) -> str:
    return f"seg-{i:05d}"


def row(i: int, change: Change = A, *, ours: bool = False, **payload) -> OutboundRow:
    """Row ``i`` as the engine hands it over; keyword fields replace (or, as None, clear) the defaults."""
    fields = {"segment_code": code(i), "segment_name": f"Segment {i}", "description": f"rows of segment {i}"}
    fields.update(payload)
    return OutboundRow(row_id=i, change=change, key={"code": code(i)}, payload=fields, ours=ours)


def seed(emulator, import_id: str, i: int, **fields) -> None:
    """A segment already in the import, as row ``i`` would create it unless ``fields`` say otherwise."""
    values = {"name": f"Segment {i}", "description": f"rows of segment {i}", **fields}
    emulator.create_segment(import_id, code(i), values["name"], values["description"])


def patches(emulator) -> list[list[dict]]:
    """The operations of every non-empty PATCH the emulator received, oldest first."""
    return [r.json["operations"] for r in emulator.requests if r.method == "PATCH" and r.json.get("operations")]


def listing_reads(emulator, import_id: str) -> int:
    return sum(1 for r in emulator.requests if r.method == "GET" and r.path.endswith(f"/imports/{import_id}/segments"))


def codes_of(operations: Sequence[dict]) -> list[str]:
    return [op["data"]["code"] if op["operation"] == "Create" else op["code"] for op in operations]


def deliver(adapter: PermutiveSegments, operation: Operation, rows: list[OutboundRow]) -> list[RowOutcome]:
    """What the engine does with a batch (the contract in ``sync/destination.py``): halve a refused one."""
    try:
        return adapter.send(operation, rows)
    except BatchRefused as refused:
        if len(rows) == 1:
            return [RowOutcome.rejected(rows[0], refused.reason, permanent=refused.permanent)]
        middle = len(rows) // 2
        return deliver(adapter, operation, rows[:middle]) + deliver(adapter, operation, rows[middle:])


def by_row(outcomes: list[RowOutcome]) -> dict[int, RowOutcome]:
    return {outcome.row_id: outcome for outcome in outcomes}


# -- ownership -----------------------------------------------------------------------------------------

def test_a_create_meeting_a_foreign_segment_with_the_same_content_is_rejected_unless_ours(
    permutive_emulator, hook, import_id
):
    seed(permutive_emulator, import_id, 1)  # someone else made it, with exactly what row 1 holds
    before = permutive_emulator.segments(import_id)
    adapter = PermutiveSegments(hook, import_id=import_id)

    [outcome] = adapter.send(Operation.CREATE, [row(1, ours=False)])
    assert outcome.outcome is Outcome.REJECTED and not outcome.permanent
    assert "'seg-00001' already exists" in outcome.reason and "take_over_existing=True" in outcome.reason
    assert permutive_emulator.segments(import_id) == before  # same id, same updated_at: untouched

    permutive_emulator.clear_requests()
    [outcome] = adapter.send(Operation.CREATE, [row(1, ours=True)])
    assert outcome.outcome is Outcome.SUCCEEDED
    assert len(patches(permutive_emulator)) == 1  # the refused Create; the content matches, nothing to update
    assert permutive_emulator.segments(import_id) == before


def test_an_own_segment_that_differs_from_the_row_is_brought_to_the_rows_values(
    permutive_emulator, hook, import_id
):
    seed(permutive_emulator, import_id, 1, name="Old name")
    seed(permutive_emulator, import_id, 2, description="an old description")
    seed(permutive_emulator, import_id, 3, description="written by hand")
    adapter = PermutiveSegments(hook, import_id=import_id)
    silent = row(3, ours=True)
    silent.payload.pop("description")  # says nothing of the description: it is left as it is
    rows = [row(1, ours=True), row(2, ours=True, description=None), silent]

    assert [o.outcome for o in adapter.send(Operation.CREATE, rows)] == [Outcome.SUCCEEDED] * 3
    refused, update = patches(permutive_emulator)
    assert [op["operation"] for op in refused] == ["Create"] * 3
    assert sorted(update, key=lambda op: op["code"]) == [
        {"operation": "Update", "code": code(1), "data": {"name": "Segment 1"}},
        {"operation": "Update", "code": code(2), "data": {"description": ""}},
    ]
    stored = permutive_emulator.segments(import_id)
    assert (stored[code(1)]["name"], stored[code(1)]["description"]) == ("Segment 1", "rows of segment 1")
    assert stored[code(2)]["description"] == ""
    assert stored[code(3)]["description"] == "written by hand"


def test_upsert_takes_over_an_existing_code_whoever_made_it(permutive_emulator, hook, import_id):
    seed(permutive_emulator, import_id, 1, name="Made by hand")
    adapter = PermutiveSegments(hook, import_id=import_id)
    [outcome] = adapter.send(Operation.UPSERT, [row(1, A, ours=False)])
    assert outcome.outcome is Outcome.SUCCEEDED
    assert permutive_emulator.segments(import_id)[code(1)]["name"] == "Segment 1"


# -- settling refused batches ----------------------------------------------------------------------------

def test_resuming_a_killed_12_batch_create_costs_one_patch_per_batch_plus_the_two_that_changed(
    permutive_emulator, hook, import_id
):
    batches = [list(range(b * 50, (b + 1) * 50)) for b in range(12)]
    killed = PermutiveSegments(hook, import_id=import_id)
    for batch in batches[:6]:  # the earlier run landed six batches, then was killed
        assert {o.outcome for o in killed.send(Operation.CREATE, [row(i) for i in batch])} == {Outcome.SUCCEEDED}
    hook.delete_segment(import_id, code(170))  # meanwhile someone deleted one of them...
    renamed = 75  # ...and the warehouse renamed another

    permutive_emulator.clear_requests()
    resumed = PermutiveSegments(hook, import_id=import_id)
    outcomes: list[RowOutcome] = []
    for number, batch in enumerate(batches):
        rows = [row(i, ours=number < 6, **({"segment_name": "Renamed"} if i == renamed else {})) for i in batch]
        outcomes += resumed.send(Operation.CREATE, rows)

    assert [o.outcome for o in outcomes] == [Outcome.SUCCEEDED] * 600
    sent = patches(permutive_emulator)
    # 12 batches, one Update for the renamed segment, one Create for the deleted one (splitting cost 66+).
    assert len(sent) == 14
    assert [op for ops in sent for op in ops if op["operation"] == "Update"] == [
        {"operation": "Update", "code": code(renamed), "data": {"name": "Renamed"}}
    ]
    assert [code(170)] in [codes_of(ops) for ops in sent]
    # One read of 299 segments (100 a page) settles the refused batches; one more, just before the first
    # batch that is not yet the sync's own, tells its codes from someone else's.
    assert listing_reads(permutive_emulator, import_id) == 6
    stored = permutive_emulator.segments(import_id)
    assert sorted(stored) == [code(i) for i in range(600)]
    assert stored[code(renamed)]["name"] == "Renamed"


def test_a_lost_answer_to_a_1000_create_batch_costs_two_patches_and_one_read(permutive_emulator, hook, import_id):
    # The first PATCH lands but its answer is cut off; the HTTP core sends it again and meets 409.
    permutive_emulator.set_faults(drop_first=1, path_prefix=f"/audience-api/v1/imports/{import_id}/segments")
    adapter = PermutiveSegments(hook, import_id=import_id)

    outcomes = adapter.send(Operation.CREATE, [row(i, ours=True) for i in range(1000)])

    assert [o.outcome for o in outcomes] == [Outcome.SUCCEEDED] * 1000
    requests = [r for r in permutive_emulator.requests if r.method == "PATCH"]
    assert [(r.fault, r.status) for r in requests] == [("dropped", 200), (None, 409)]
    assert listing_reads(permutive_emulator, import_id) == 10  # 1,000 segments, 100 a page
    assert len(permutive_emulator.segments(import_id)) == 1000


def test_an_invalid_row_among_own_existing_rows_is_isolated_and_the_existing_ones_settle_in_bulk(
    permutive_emulator, hook, import_id
):
    existing = list(range(8, 16))
    for i in existing:
        seed(permutive_emulator, import_id, i, **({"description": "stale"} if i == 12 else {}))
    bad = OutboundRow(row_id=0, change=A, key={"code": "bad code!"},
                      payload={"segment_code": "bad code!", "segment_name": "Broken"})
    rows = [bad] + [row(i) for i in range(1, 8)] + [row(i, ours=True) for i in existing]
    adapter = PermutiveSegments(hook, import_id=import_id)

    outcomes = by_row(deliver(adapter, Operation.CREATE, rows))

    assert outcomes[0].outcome is Outcome.REJECTED and outcomes[0].permanent
    assert "ValidationError" in outcomes[0].reason
    assert all(outcomes[i].outcome is Outcome.SUCCEEDED for i in range(1, 16))
    sent = [codes_of(ops) for ops in patches(permutive_emulator)]
    own = {code(i) for i in existing}
    # The existing rows went out in the whole batch and in their half, never alone: the 409 was settled
    # by one read, not by halving. Only the invalid row (and a neighbour, by halving) stood alone.
    assert [len(codes) for codes in sent if own & set(codes)] == [16, 8, 1]
    assert [codes for codes in sent if own & set(codes)][-1] == [code(12)]  # the Update of the stale one
    assert sorted(codes[0] for codes in sent if len(codes) == 1) == ["bad code!", code(1), code(12)]
    stored = permutive_emulator.segments(import_id)
    assert sorted(stored) == [code(i) for i in range(1, 16)]
    assert stored[code(12)]["description"] == "rows of segment 12"


def test_updates_of_vanished_segments_become_creates_and_deletes_of_gone_ones_are_done(
    permutive_emulator, hook, import_id
):
    for i in (1, 2, 4):
        seed(permutive_emulator, import_id, i)
    adapter = PermutiveSegments(hook, import_id=import_id)

    updates = adapter.send(Operation.UPDATE, [row(i, C, ours=True, segment_name=f"New {i}") for i in (1, 2, 3)])
    assert [o.outcome for o in updates] == [Outcome.SUCCEEDED] * 3
    refused, settled = patches(permutive_emulator)
    assert sorted(zip([op["operation"] for op in settled], codes_of(settled))) == [
        ("Create", code(3)), ("Update", code(1)), ("Update", code(2))
    ]
    assert {s["name"] for s in permutive_emulator.segments(import_id).values()} == {"New 1", "New 2", "New 3", "Segment 4"}

    permutive_emulator.clear_requests()
    deletes = adapter.send(Operation.DELETE, [row(i, R, ours=True) for i in (4, 5)])
    assert [o.outcome for o in deletes] == [Outcome.SUCCEEDED] * 2
    # 404 for code 5, settled from what the first read (kept current) knows: no second read.
    assert [codes_of(ops) for ops in patches(permutive_emulator)] == [[code(4), code(5)], [code(4)]]
    assert listing_reads(permutive_emulator, import_id) == 0
    assert sorted(permutive_emulator.segments(import_id)) == [code(1), code(2), code(3)]


def test_a_segment_made_by_someone_else_after_the_read_is_found_by_one_fresh_read(
    permutive_emulator, hook, import_id
):
    seed(permutive_emulator, import_id, 1)
    adapter = PermutiveSegments(hook, import_id=import_id)
    assert adapter.send(Operation.CREATE, [row(1, ours=True)])[0].outcome is Outcome.SUCCEEDED  # read once
    seed(permutive_emulator, import_id, 2, name="Made by hand")  # after the read: the adapter cannot know

    permutive_emulator.clear_requests()
    outcomes = by_row(adapter.send(Operation.CREATE, [row(1, ours=True), row(2), row(3)]))

    assert outcomes[1].outcome is Outcome.SUCCEEDED and outcomes[3].outcome is Outcome.SUCCEEDED
    assert outcomes[2].outcome is Outcome.REJECTED and "take_over_existing=True" in outcomes[2].reason
    # Rows that are not the sync's own are judged against a read taken just before the first of them is
    # sent: code 2 is someone else's and never sent; code 1 (ours) meets 409 and is settled from that read.
    assert [codes_of(ops) for ops in patches(permutive_emulator)] == [[code(1), code(3)], [code(3)]]
    assert listing_reads(permutive_emulator, import_id) == 1
    assert permutive_emulator.segments(import_id)[code(2)]["name"] == "Made by hand"


# -- clears, identity, errors ----------------------------------------------------------------------------

def test_a_cleared_description_is_sent_as_an_empty_string_and_a_missing_one_is_left_alone(
    permutive_emulator, hook, import_id
):
    seed(permutive_emulator, import_id, 1, description="to be cleared")
    seed(permutive_emulator, import_id, 2, description="to be kept")
    adapter = PermutiveSegments(hook, import_id=import_id)
    kept = row(2, C, ours=True, segment_name="Renamed 2")
    kept.payload.pop("description")

    outcomes = adapter.send(Operation.UPDATE, [row(1, C, ours=True, description=None), kept])

    assert [o.outcome for o in outcomes] == [Outcome.SUCCEEDED] * 2
    [operations] = patches(permutive_emulator)
    assert operations == [
        {"operation": "Update", "code": code(1), "data": {"name": "Segment 1", "description": ""}},
        {"operation": "Update", "code": code(2), "data": {"name": "Renamed 2"}},
    ]
    stored = permutive_emulator.segments(import_id)
    assert stored[code(1)]["description"] == ""
    assert (stored[code(2)]["name"], stored[code(2)]["description"]) == ("Renamed 2", "to be kept")


def test_identity_is_the_code_sent_and_the_target_is_the_import(hook, import_id):
    adapter = PermutiveSegments(hook, import_id=import_id, segment_name="Default name")
    assert adapter.identity(row(7)) == code(7)
    assert adapter.identity(row(7, segment_code="")) == code_from_name("Segment 7")
    assert adapter.identity(row(7, segment_code=None, segment_name=None)) == code_from_name("Default name")
    assert adapter.target() == {"import_id": import_id}


def test_server_errors_after_retries_fail_the_rows_and_a_bad_key_stops(
    permutive_emulator, hook, import_id, monkeypatch
):
    permutive_emulator.set_faults(error_rate=1.0, error_status=503)
    adapter = PermutiveSegments(hook, import_id=import_id)
    outcomes = adapter.send(Operation.CREATE, [row(1, ours=True), row(2, ours=True)])
    assert [o.outcome for o in outcomes] == [Outcome.FAILED] * 2 and "503" in outcomes[0].reason
    assert len(patches(permutive_emulator)) == 3  # max_attempts

    permutive_emulator.set_faults()
    monkeypatch.setenv("AIRFLOW_CONN_PERMUTIVE_BAD", connection_env("permutive", permutive_emulator.url, "not-a-key"))
    with pytest.raises(FatalError, match="InvalidAPIKey|401"):
        PermutiveSegments(PermutiveHook("permutive_bad"), import_id=import_id).send(Operation.CREATE, [row(1)])
    assert permutive_emulator.segments(import_id) == {}


def test_the_hook_refuses_a_batch_over_5000_operations_before_sending_it(hook, import_id, permutive_emulator):
    """The hook's own limit: a caller that skips the engine's batch sizes learns it before the API refuses it."""
    operation = {"operation": "Create", "data": {"code": "c", "name": "n"}}
    with pytest.raises(ValueError, match="at most 5000 operations, got 5001"):
        hook.batch_segments(import_id, [operation] * 5001)
    assert [r for r in permutive_emulator.requests if r.method == "PATCH"] == []
