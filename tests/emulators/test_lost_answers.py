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
