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


def test_an_optimizely_create_whose_answer_was_lost_is_done_not_a_duplicate(optimizely_emulator, monkeypatch):
    """The create lands, its answer is cut off, the HTTP core's retry is refused as a duplicate key: the row is
    the task's own create, not someone else's event (found by the fault matrix)."""
    from airflow_provider_zeotap.destinations.optimizely_objects import OptimizelyObjects
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
    from airflow_provider_zeotap.sync.destination import OutboundRow
    from airflow_provider_zeotap.sync.models import Change, Outcome
    from airflow_provider_zeotap.sync.modes import Operation
    from tests.integration.conftest import connection_env

    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", connection_env(
        "optimizely", optimizely_emulator.url, optimizely_emulator.token, backoff_initial=0.01, backoff_max=0.02))
    project = optimizely_emulator.create_project("Web")
    optimizely_emulator.create_object("custom_events", project, key="by_hand")
    optimizely_emulator.set_faults(drop_first=1, method="POST")

    def row(row_id: int, key: str) -> OutboundRow:
        return OutboundRow(row_id=row_id, change=Change.ADDED, key={"key": key}, payload={"key": key, "name": key})

    with OptimizelyHook() as hook:
        events = OptimizelyObjects(hook, object_type="custom_events", project_id=project)
        outcomes = events.send(Operation.CREATE, [row(1, "signup"), row(2, "by_hand")])
    assert [(o.outcome, o.reason) for o in outcomes][0] == (Outcome.SUCCEEDED, None)
    assert outcomes[1].outcome is Outcome.REJECTED and "already exists" in outcomes[1].reason  # not ours: refused
    posts = [(r.json["key"], r.fault, r.status) for r in optimizely_emulator.requests if r.method == "POST"]
    # The two rows are sent side by side: only the order of each row's own requests is fixed.
    assert [p for p in posts if p[0] == "signup"] == [("signup", "dropped", 201), ("signup", None, 400)]
    assert [p for p in posts if p[0] == "by_hand"] == [("by_hand", None, 400)]
    assert sorted(e["key"] for e in optimizely_emulator.objects("custom_events", project)) == ["by_hand", "signup"]
