"""Zeotap Profile API emulator: key, scopes, orgId, identifier limits, upsert, search and delete."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from airflow_provider_zeotap.testing import ZeotapEmulator
from airflow_provider_zeotap.testing.zeotap import NO_IDENTIFIER, NO_ORG_ID


def write(emulator: ZeotapEmulator, email: str, **profile: Any) -> dict[str, Any]:
    return {"orgId": emulator.org_id, "region": "EU", "ids": {"email": email}, "upsert": {"profile": profile}}


def test_key_and_scopes(zeotap_emulator: ZeotapEmulator) -> None:
    url = f"{zeotap_emulator.api_url}/users"
    body = write(zeotap_emulator, "a@x.com")
    assert httpx.post(url, json=body, headers={"apikey": "wrong"}).status_code == 401
    read_only = {"apikey": zeotap_emulator.api_key, "scopes": "profile.read"}
    assert httpx.post(url, json=body, headers=read_only).status_code == 403
    assert zeotap_emulator.profiles == {}


def test_upsert_search_delete(zeotap_emulator: ZeotapEmulator, zeotap: httpx.Client) -> None:
    created = zeotap.post("/users", json=write(zeotap_emulator, "a@x.com", tier="gold")).json()
    ucid = created[0]["ucid"]
    updated = zeotap.post("/users", json=write(zeotap_emulator, "a@x.com", score=3)).json()
    assert updated[0]["ucid"] == ucid
    assert updated[0]["profile"] == {"tier": "gold", "score": 3}
    search = {"orgId": zeotap_emulator.org_id, "regions": ["EU"], "search": {"email": ["a@x.com", "b@x.com"]}}
    assert [profile["ucid"] for profile in zeotap.post("/users/_search", json=search).json()] == [ucid]
    delete = {"orgId": zeotap_emulator.org_id, "region": "EU", "ids": {"email": ["a@x.com", "b@x.com"]}}
    assert zeotap.post("/users/_delete", json=delete).json() == {
        "ucids": [ucid],
        "deletedProfiles": ["a@x.com"],
        "profilesNotFound": ["b@x.com"],
    }
    assert zeotap_emulator.profiles == {}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/users", {"ids": {"email": "a@x.com"}}, NO_ORG_ID),
        ("/users", {"orgId": 1577, "ids": {"email": ""}}, NO_IDENTIFIER),
        ("/users/_search", {"orgId": 1577, "search": {"email": []}}, NO_IDENTIFIER),
        ("/users/_search", {"orgId": 1577, "search": {"email": [f"{n}@x" for n in range(6)]}}, "At most 5"),
        ("/users/_delete", {"orgId": 1577, "ids": {"email": [f"{n}@x" for n in range(401)]}}, "At most 400"),
    ],
)
def test_bad_requests(zeotap: httpx.Client, path: str, body: dict[str, Any], message: str) -> None:
    response = zeotap.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)


def test_enforces_the_documented_limits_by_default(zeotap_emulator: ZeotapEmulator) -> None:
    assert (zeotap_emulator.faults.rate_per_minute, zeotap_emulator.faults.rate_per_second) == (10_000, 200)
