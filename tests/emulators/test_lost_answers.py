"""``drop_first``: lose exactly the answers a test means to lose, after the write landed."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_zeotap.testing import PersonyzeEmulator


def test_drop_first_cuts_off_exactly_that_many_answers_after_the_writes_landed(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(drop_first=2, path_prefix="/rest/users")
    assert personyze.get("/account").status_code == 200  # outside the prefix: not counted
    for email in ("first@x.com", "second@x.com"):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            personyze.post("/users", json={"email": email})
    assert personyze.post("/users", json={"email": "third@x.com"}).status_code == 200
    assert sorted(user["email"] for user in personyze_emulator.users.values()) == [
        "first@x.com",
        "second@x.com",
        "third@x.com",
    ]
    assert [entry.fault for entry in personyze_emulator.requests] == [None, "dropped", "dropped", None]


def test_setting_the_faults_again_starts_the_count_afresh(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(drop_first=1)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        personyze.get("/account")
    assert personyze.get("/account").status_code == 200
    personyze_emulator.set_faults(drop_first=1)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        personyze.get("/account")


def _optimizely(optimizely_emulator, monkeypatch) -> int:
    from tests.integration.conftest import connection_env

    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", connection_env(
        "optimizely", optimizely_emulator.url, optimizely_emulator.token, backoff_initial=0.01, backoff_max=0.02))
    return optimizely_emulator.create_project("Web")


def _row(row_id: int, key_field: str, key: str):
    from airflow_provider_zeotap.sync.destination import OutboundRow
    from airflow_provider_zeotap.sync.models import Change

    return OutboundRow(row_id=row_id, change=Change.ADDED, key={key_field: key}, payload={key_field: key})


def test_an_optimizely_create_whose_answer_was_lost_is_done_not_a_duplicate(optimizely_emulator, monkeypatch):
    """The create lands and its answer is cut off: it is not replayed (a replay would be refused as a duplicate
    key at best); the project's events, read again, show it landed, so the row is the task's own create, not
    someone else's event (found by the fault matrix)."""
    from airflow_provider_zeotap.destinations.optimizely_objects import OptimizelyObjects
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.sync.models import Outcome
    from airflow_provider_zeotap.sync.modes import Operation

    project = _optimizely(optimizely_emulator, monkeypatch)
    optimizely_emulator.create_object("custom_events", project, key="by_hand")
    optimizely_emulator.set_faults(drop_first=1, method="POST")
    with OptimizelyHook() as hook:
        events = OptimizelyObjects(hook, object_type="custom_events", project_id=project)
        outcomes = events.send(Operation.CREATE, [_row(1, "key", "signup"), _row(2, "key", "by_hand")])
    assert [(o.outcome, o.reason) for o in outcomes][0] == (Outcome.SUCCEEDED, None)
    assert outcomes[1].outcome is Outcome.REJECTED and "already exists" in outcomes[1].reason  # not ours: refused
    posts = [(r.json["key"], r.fault, r.status) for r in optimizely_emulator.requests if r.method == "POST"]
    # The two rows are sent side by side: only the order of each row's own requests is fixed.
    assert [p for p in posts if p[0] == "signup"] == [("signup", "dropped", 201)]  # never replayed
    assert [p for p in posts if p[0] == "by_hand"] == [("by_hand", None, 400)]
    assert sorted(e["key"] for e in optimizely_emulator.objects("custom_events", project)) == ["by_hand", "signup"]


@pytest.mark.parametrize("drop_when", ["after", "before"])
def test_an_audience_create_whose_answer_was_lost_is_never_replayed_into_a_second_audience(
    optimizely_emulator, monkeypatch, drop_when
):
    """Audience names are not unique: a replayed create would make a second audience of the same name. The
    create is not replayed; a read tells whether it landed (the row succeeded) or not (it failed: sent again
    on the next run, never twice in one)."""
    from airflow_provider_zeotap.destinations.optimizely_objects import OptimizelyObjects
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.sync.models import Outcome
    from airflow_provider_zeotap.sync.modes import Operation

    project = _optimizely(optimizely_emulator, monkeypatch)
    optimizely_emulator.set_faults(drop_first=1, drop_when=drop_when, method="POST")
    with OptimizelyHook() as hook:
        audiences = OptimizelyObjects(hook, object_type="audiences", project_id=project)
        (outcome,) = audiences.send(Operation.UPSERT, [_row(1, "name", "VIP buyers")])
    names = [a["name"] for a in optimizely_emulator.objects("audiences", project)]
    posts = [r for r in optimizely_emulator.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].fault == "dropped"
    if drop_when == "after":
        assert outcome.outcome is Outcome.SUCCEEDED and names == ["VIP buyers"]
    else:
        assert outcome.outcome is Outcome.FAILED and "did not land" in str(outcome.reason) and names == []
