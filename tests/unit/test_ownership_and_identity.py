"""Write-ahead ownership records and identity checks, on real files and a real DuckDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.sync.destination import Capabilities, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.identity import IdentityCheck, identity_verdicts
from airflow_provider_zeotap.sync.models import Outcome
from airflow_provider_zeotap.sync.modes import AUDIENCE_MODES, Operation
from airflow_provider_zeotap.sync.ownership import OwnershipLog
from airflow_provider_zeotap.sync.runner import _refresh_changes, payload_fingerprint
from tests.support.sync_harness import RecordingDestination, SyncHarness


class LowercaseMembers(RecordingDestination):
    """A list whose members are identified by their lowercased email, like a normalising API."""

    capabilities = Capabilities(
        name="Lowercase list",
        mode_argument="audience_mode",
        modes=AUDIENCE_MODES,
        batch_size=2,
        max_batch_size=100,
        required_fields=("email",),
        default_fields=("email",),
        identity_fields=("email",),
    )

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ours_seen: dict[str, bool] = {}

    def identity(self, row: OutboundRow) -> str | None:
        return str(row.payload.get("email") or "").lower() or None

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        for row in rows:
            self.ours_seen[row.payload["email"]] = row.ours
        return super().send(operation, rows)


@pytest.fixture
def harness(tmp_path):
    return SyncHarness(str(tmp_path / "state"), primary_key=("email",))


def members(*emails: str) -> list[dict]:
    return [{"email": e} for e in emails]


def test_records_written_before_a_failed_send_make_the_row_ours_in_the_next_run(harness):
    failing = LowercaseMembers(fail=lambda row: True)
    _, first = harness.sync(members("a@x.com", "b@x.com"), failing, mode="mirror")
    assert first.failed == 2 and all(ours is False for ours in failing.ours_seen.values())

    log = OwnershipLog(harness.storage, "unbound")
    assert log.load() == {"a@x.com", "b@x.com"}  # recorded before sending, kept though nothing was acknowledged

    retry = LowercaseMembers()
    _, second = harness.sync(members("a@x.com", "b@x.com"), retry, mode="mirror")
    assert second.succeeded == 2 and retry.ours_seen == {"a@x.com": True, "b@x.com": True}
    assert log.load() == set()  # both are in the baseline now: the records were folded away


def sent(*emails: str) -> list[tuple[str, dict, dict]]:
    """Ownership entries as the runner writes them: identity, key, payload as sent."""
    return [(e.lower(), {"email": e}, {"email": e}) for e in emails]


def test_a_removal_that_lands_drops_the_record_and_one_that_fails_keeps_it(harness):
    harness.sync(members("a@x.com", "b@x.com", "c@x.com"), LowercaseMembers(), mode="mirror")
    log = OwnershipLog(harness.storage, "unbound")
    log.record("earlier", 0, sent("b@x.com"))
    _, result = harness.sync(members("a@x.com", "c@x.com"), LowercaseMembers(), mode="mirror")
    assert result.succeeded == 1 and log.load() == set()  # b was removed for good: its record is dropped
    log.record("earlier", 1, sent("Z@x.com"))  # a create whose answer never came
    failing = LowercaseMembers(fail=lambda row: True)
    _, failed = harness.sync(members("a@x.com"), failing, mode="mirror")
    assert (failed.failed, failed.unconfirmed_removals) == (2, 1)  # c's removal, and Z's
    assert log.load() == {"z@x.com"}  # Z's removal failed: still recorded, tried again next run
    # Both failures are in the report that the summary points to, Z's (beyond the plan) after the plan's own.
    with open(failed.rejected_rows_uri.removeprefix("file://"), encoding="utf-8") as report:
        lines = [json.loads(line) for line in report]
    assert [(line["email"], line["change"], line["operation"], line["outcome"]) for line in lines] == [
        ("c@x.com", "removed", "remove", "failed"),
        ("Z@x.com", "removed", "remove", "failed"),
    ]
    assert all(line["reason"] for line in lines)


def test_a_mirror_removes_a_create_it_never_saw_confirmed_once_its_row_leaves_the_source(harness):
    """Every answer to a create was lost: not in the baseline, so no diff removes it; the record does."""
    lost = LowercaseMembers(fail=lambda row: row.payload["email"] == "Lost@x.com")
    _, first = harness.sync(members("a@x.com", "Lost@x.com"), lost, mode="mirror")
    assert first.failed == 1 and [r["email"] for _, r in lost.delivered] == ["a@x.com"]
    _, kept = harness.sync(members("a@x.com", "Lost@x.com"), LowercaseMembers(), mode="mirror")
    assert kept.succeeded == 1 and kept.unconfirmed_removals == 0  # still in the source: sent again, not removed
    log = OwnershipLog(harness.storage, "unbound")
    assert log.load() == set()

    again = LowercaseMembers(fail=lambda row: row.payload["email"] == "Lost@x.com")
    harness.sync(members("a@x.com", "b@x.com"), again, mode="mirror")  # b added; nothing lost
    log.record("crashed", 0, sent("Orphan@x.com"))  # sent, then every answer lost
    upsert = LowercaseMembers()
    _, not_mirror = harness.sync(members("a@x.com", "b@x.com", "c@x.com"), upsert, mode="add")
    assert not_mirror.unconfirmed_removals == 0 and Operation.REMOVE not in [op for op, _ in upsert.delivered]
    mirror = LowercaseMembers()
    _, removed = harness.sync(members("a@x.com", "b@x.com", "c@x.com", "d@x.com"), mirror, mode="mirror")
    assert removed.unconfirmed_removals == 1
    assert (Operation.REMOVE, {"email": "Orphan@x.com"}) in mirror.delivered  # as it was sent, key and all
    assert log.load() == set()  # removed for good: the record is dropped
    _, quiet = harness.sync(members("a@x.com", "b@x.com", "c@x.com", "d@x.com"), LowercaseMembers(), mode="mirror")
    assert quiet.unconfirmed_removals == 0 and quiet.succeeded == 0


class ForeignAware(LowercaseMembers):
    """Leaves alone a member that was there before the sync (unless the row is ours), as the list adapters do."""

    def __init__(self, foreign: set[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.foreign = foreign

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        self.ours_seen.update({r.payload["email"]: r.ours for r in rows})
        left = [r for r in rows if not r.ours and r.payload["email"] in self.foreign and not operation.removes]
        outcomes = [RowOutcome.skipped(r, "already there, someone else's: left alone") for r in left]
        return outcomes + super().send(operation, [r for r in rows if r not in left])


def test_a_row_left_alone_drops_its_record_so_the_next_run_does_not_claim_it(harness):
    first = ForeignAware({"f@x.com"})
    _, result = harness.sync(members("a@x.com", "f@x.com"), first, mode="mirror")
    assert (result.succeeded, result.skipped) == (1, 1)
    assert OwnershipLog(harness.storage, "unbound").load() == set()  # recorded before the send, dropped after
    second = ForeignAware({"f@x.com"})
    _, again = harness.sync(members("a@x.com", "f@x.com"), second, mode="mirror")
    assert second.ours_seen == {"f@x.com": False} and again.skipped == 1  # still someone else's


def test_identity_verdicts_reject_every_row_of_a_shared_identity_and_keep_a_wanted_removal(tmp_path):
    checks = [
        IdentityCheck(0, "added", "jo@ex.com", '{"id": 1}'),
        IdentityCheck(1, "added", "jo@ex.com", '{"id": 2}'),
        IdentityCheck(2, "added", "ann@ex.com", '{"id": 3}'),
        IdentityCheck(3, "removed", "ann@ex.com", '{"id": 9}'),
        IdentityCheck(4, "removed", "gone@ex.com", '{"id": 8}'),
    ]
    changes = tmp_path / "changes.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 9, 8]}), changes)
    verdicts = identity_verdicts(checks, base_snapshot=None, changes_path=str(changes), primary_key=["id"],
                                 work_dir=str(tmp_path))
    assert set(verdicts) == {0, 1, 3}
    assert verdicts[0][0] is Outcome.REJECTED and '{"id": 2}' in verdicts[0][1] and '{"id": 1}' not in verdicts[0][1]
    assert verdicts[1][0] is Outcome.REJECTED and '{"id": 1}' in verdicts[1][1]
    assert verdicts[3] == (Outcome.IDENTITY_KEPT, 'not removed: row {"id": 3} still has identity "ann@ex.com"')


def test_a_respelled_member_keeps_its_record_and_stays_the_syncs_own(harness):
    harness.sync(members("A@X.com", "b@x.com"), LowercaseMembers(), mode="mirror")
    destination = LowercaseMembers()
    _, result = harness.sync(members("a@x.com", "b@x.com"), destination, mode="mirror")
    assert [op for op, _ in destination.delivered] == [Operation.ADD]  # no REMOVE went out
    assert (result.identity_kept, result.succeeded) == (1, 1)
    assert destination.ours_seen == {"a@x.com": True}  # the record is handed over, not someone else's


def test_payload_fingerprints_ignore_left_out_and_cleared_fields_alike():
    assert payload_fingerprint({"email": "a@x.com", "phone": None}) == payload_fingerprint({"email": "a@x.com"})
    assert payload_fingerprint({"email": "a@x.com", "n": 1})[0] != payload_fingerprint({"email": "a@x.com", "n": 2})[0]
    assert payload_fingerprint({"b": 1, "a": None, "c": "x"})[1] == ["b", "c"]


def test_the_changes_file_of_a_rebind_lists_every_row_once_in_key_order(tmp_path):
    snapshot = tmp_path / "snapshot.parquet"
    pq.write_table(pa.table({"id": [3, 1, 2], "v": ["c", "a", "b"]}), snapshot)
    out = tmp_path / "rebind" / "changes.parquet"
    assert _refresh_changes(str(snapshot), ["id"], str(out), None) == 3
    rows = pq.read_table(out).to_pylist()
    assert [(r["id"], r["__change"], r["__row_id"]) for r in rows] == [(1, "refresh", 0), (2, "refresh", 1), (3, "refresh", 2)]
    assert _refresh_changes(str(snapshot), ["id"], str(out), None) == 3  # a retried task reuses the same file


def test_a_refused_create_is_not_removed_later_unless_an_earlier_attempt_may_have_landed(harness):
    refused = ("r@x.com", "Lost@x.com")
    refuse = LowercaseMembers(reject=lambda row: "invalid" if row.payload["email"] in refused else None)
    log = OwnershipLog(harness.storage, "unbound")
    log.record("crashed", 0, sent("Lost@x.com"))  # an earlier attempt, answer lost: may have landed
    _, first = harness.sync(members("a@x.com", "r@x.com", "Lost@x.com"), refuse, mode="mirror")
    assert first.rejected == 2
    assert log.unconfirmed_identities() == {"lost@x.com"}  # r was refused every time: it never landed
    mirror = LowercaseMembers()
    _, second = harness.sync(members("a@x.com"), mirror, mode="mirror")
    assert [(op, r["email"]) for op, r in mirror.delivered] == [(Operation.REMOVE, "Lost@x.com")]
    assert second.unconfirmed_removals == 1 and log.load() == {"r@x.com"}  # Lost removed; r stays, never landed


KILLED_MID_WRITE = """
import os, signal, sys
import pyarrow.parquet as parquet
from airflow_provider_zeotap.sync.ownership import OwnershipLog
from airflow_provider_zeotap.sync.storage import SyncStorage

def half_then_killed(table, where, **kwargs):
    with open(where, "wb") as half:
        half.write(b"PAR1")  # the first bytes of a Parquet file; then the process dies
    os.kill(os.getpid(), signal.SIGKILL)

parquet.write_table = half_then_killed
log = OwnershipLog(SyncStorage(sys.argv[1], sys.argv[2]), "unbound")
log.record("killed", 3, [("c@x.com", {"email": "c@x.com"}, {"email": "c@x.com"})])
"""


def test_a_record_half_written_when_the_task_was_killed_is_never_read(harness):
    """A SIGKILL mid-write once left a 4-byte Parquet file, and every later run of the sync failed reading it."""
    harness.sync(members("a@x.com"), LowercaseMembers(), mode="mirror")
    log = OwnershipLog(harness.storage, "unbound")
    log.record("earlier", 0, sent("b@x.com"))
    child = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, harness.storage.state_uri, harness.storage.sync_id],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    names = os.listdir(harness.storage.local_dir(log.folder))
    assert [n for n in names if n.startswith("killed-")] == ["killed-000003.parquet.partial"]  # never the real name
    assert log.load() == {"b@x.com"}  # the half-written record is not there to break the read
    _, after = harness.sync(members("a@x.com"), LowercaseMembers(), mode="mirror")  # the next run goes on
    assert after.failed == 0 and log.load() == set()
    assert not [n for n in os.listdir(harness.storage.local_dir(log.folder)) if n.endswith(".partial")]  # cleared
