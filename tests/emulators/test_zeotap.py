"""Zeotap Profile API emulator: key, scopes, orgId, identifier limits, upsert, search and delete."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from airflow_provider_zeotap.testing import ZeotapEmulator
from airflow_provider_zeotap.testing.zeotap import NO_IDENTIFIER, NO_ORG_ID, NO_SCOPES, ONE_ID_PER_WRITE


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
        ("/users", {"orgId": 1577, "ids": {"email": ["a@x.com"]}}, ONE_ID_PER_WRITE),
        ("/users", {"orgId": 1577, "ids": {"email": "a@x.com", "user_id": "u1"}}, ONE_ID_PER_WRITE),
        ("/users", {"orgId": 1577, "ids": {"email": "a@x.com"}, "upsert": {"profiles": {"a": 1}}}, "Unknown section"),
        ("/users", {"orgId": 1577, "ids": {"email": "a@x.com"}, "upsert": {"consent": "yes"}}, "upsert must map"),
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
    assert (zeotap_emulator.faults.rate_per_minute, zeotap_emulator.faults.max_in_flight) == (10_000, 200)


def test_json_only_and_a_scopes_header_is_required(zeotap_emulator: ZeotapEmulator, zeotap: httpx.Client) -> None:
    body = write(zeotap_emulator, "a@x.com")
    as_form = zeotap.post("/users", content="orgId=1577", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert as_form.status_code == 415 and "application/json" in as_form.json()["message"]
    no_scopes = httpx.post(f"{zeotap_emulator.api_url}/users", json=body, headers={"apikey": zeotap_emulator.api_key})
    assert (no_scopes.status_code, no_scopes.json()["message"]) == (400, NO_SCOPES)
    assert zeotap_emulator.profiles == {}


def test_another_organisation_is_forbidden(zeotap_emulator: ZeotapEmulator, zeotap: httpx.Client) -> None:
    response = zeotap.post("/users", json={**write(zeotap_emulator, "a@x.com"), "orgId": 9})
    assert response.status_code == 403 and "organisation 9" in response.json()["message"]


def test_more_requests_in_flight_than_allowed_are_429(zeotap_emulator: ZeotapEmulator) -> None:
    zeotap_emulator.set_faults(max_in_flight=2, latency_ms=400)
    headers = {"apikey": zeotap_emulator.api_key, "scopes": "profile.write"}

    async def three_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=zeotap_emulator.api_url, headers=headers, timeout=5) as client:
            return await asyncio.gather(*(
                client.post("/users", json=write(zeotap_emulator, f"{n}@x.com")) for n in range(3)
            ))

    statuses = sorted(response.status_code for response in asyncio.run(three_at_once()))
    assert statuses == [200, 200, 429]
    refused = next(r for r in zeotap_emulator.requests if r.status == 429)
    assert refused.fault == "rate_limited"
    assert len(zeotap_emulator.profiles) == 2
    # The slots are given back: one at a time, every request gets through.
    assert [httpx.post(f"{zeotap_emulator.api_url}/users", json=write(zeotap_emulator, f"{n}@y.com"),
                       headers=headers).status_code for n in range(3)] == [200, 200, 200]


def test_more_than_the_rolling_minute_allows_is_429_with_retry_after(zeotap_emulator: ZeotapEmulator,
                                                                      zeotap: httpx.Client) -> None:
    zeotap_emulator.set_faults(rate_per_minute=3)
    answers = [zeotap.post("/users", json=write(zeotap_emulator, f"{n}@x.com")) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
