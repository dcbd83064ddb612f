"""ZeotapProfileHook against the local emulator: the id limits, sections, per-call org, and what is refused unsent."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.hooks.zeotap import MTLS_HOST, NO_ORG_ID, ZeotapProfileHook
from airflow_provider_zeotap.http import ConfigurationError, PermissionDeniedError
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration


def bodies(emulator, path: str) -> list[dict]:
    return [r.json for r in emulator.requests if r.path == f"/cdp/v1{path}"]


def test_upsert_sends_one_id_and_the_sections_given(zeotap):
    hook = ZeotapProfileHook()
    answer = hook.upsert_profile("email", "a@x.com", profile={"tier": "gold"}, consent={"gdpr": True},
                                 mkt_preferences={"sms": False}, region="UK")
    assert answer[0]["profile"] == {"tier": "gold"} and answer[0]["region"] == "UK"
    assert bodies(zeotap, "/users") == [{
        "orgId": zeotap.org_id, "region": "UK", "ids": {"email": "a@x.com"},
        "upsert": {"profile": {"tier": "gold"}, "consent": {"gdpr": True}, "mkt_preferences": {"sms": False}},
    }]
    assert zeotap.requests[0].headers["content-type"] == "application/json"
    assert zeotap.requests[0].headers["scopes"] == "profile.read,profile.write,profile.delete"


def test_fetch_splits_into_calls_of_five_and_delete_into_calls_of_400(zeotap):
    for n in range(7):
        zeotap.create_profile("email", f"{n}@x.com", profile={"n": n})
    hook = ZeotapProfileHook()
    profiles = hook.fetch_profiles("email", [f"{n}@x.com" for n in range(7)] + ["nobody@x.com"])
    assert sorted(p["profile"]["n"] for p in profiles) == list(range(7))
    assert [len(b["search"]["email"]) for b in bodies(zeotap, "/users/_search")] == [5, 3]

    ids = [f"{n}@x.com" for n in range(450)]
    result = hook.delete_profiles("email", ids)
    assert [len(b["ids"]["email"]) for b in bodies(zeotap, "/users/_delete")] == [400, 50]
    assert sorted(result.deleted) == sorted(f"{n}@x.com" for n in range(7))
    assert len(result.not_found) == 443 and result.requests == 2
    assert zeotap.profiles == {}


def test_async_forms_gather_their_calls(zeotap):
    for n in range(12):
        zeotap.create_profile("user_id", f"u{n}")
    zeotap.set_faults(latency_ms=200)
    hook = ZeotapProfileHook()

    async def run():
        try:
            fetched = await hook.afetch_profiles("user_id", [f"u{n}" for n in range(12)])
            written = await asyncio.gather(*(hook.aupsert_profile("user_id", f"v{n}", profile={"n": n})
                                             for n in range(6)))
            deleted = await hook.adelete_profiles("user_id", ["u1", "gone"])
            return fetched, written, deleted
        finally:
            await hook.aclose()

    fetched, written, deleted = asyncio.run(run())
    assert len(fetched) == 12 and len(written) == 6
    assert (deleted.deleted, deleted.not_found) == (["u1"], ["gone"])
    assert zeotap.max_in_flight_seen("POST", "/cdp/v1/users/_search") == 3  # 5 + 5 + 2 ids, at once
    assert zeotap.max_in_flight_seen("POST", "/cdp/v1/users") >= 3


def test_empty_ids_and_a_missing_org_are_refused_before_any_call(zeotap, monkeypatch):
    hook = ZeotapProfileHook()
    with pytest.raises(ValueError, match="1 of 3 ids are empty.*Search failed as no Identifier found"):
        hook.delete_profiles("email", ["a@x.com", " ", "b@x.com"])
    with pytest.raises(ValueError, match="ids must be a list"):
        hook.fetch_profiles("email", "a@x.com")
    assert hook.fetch_profiles("email", []) == []  # nothing to look up: no call
    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env("zeotap", zeotap.url, zeotap.api_key,
                                                                      region="EU"))
    with pytest.raises(ConfigurationError, match=f"{NO_ORG_ID}.*'org_id' extra of connection 'zeotap_default'"):
        ZeotapProfileHook().upsert_profile("email", "a@x.com", profile={"a": 1})
    assert zeotap.requests == []
    # Given per call, the org needs no extra.
    ZeotapProfileHook().upsert_profile("email", "a@x.com", profile={"a": 1}, org_id=zeotap.org_id)
    assert bodies(zeotap, "/users")[0]["orgId"] == zeotap.org_id


def test_a_missing_scope_is_refused_with_the_api_message_and_is_fatal(zeotap, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env(
        "zeotap", zeotap.url, zeotap.api_key, org_id=str(zeotap.org_id), region="EU", scopes="profile.read"))
    with pytest.raises(PermissionDeniedError) as caught:
        ZeotapProfileHook().upsert_profile("email", "a@x.com", profile={"a": 1})
    assert isinstance(caught.value, FatalError)
    assert "The request lacks the scope profile.write" in str(caught.value)
    assert "set the 'scopes' extra" in str(caught.value)


def test_a_400_about_the_org_or_the_scopes_is_fatal_and_one_about_the_row_is_not(zeotap):
    from airflow_provider_zeotap.hooks.zeotap import ZeotapRequestRefused, _fatal_if_not_about_the_row
    from airflow_provider_zeotap.http import BadRequestError

    def refused(message: str) -> BadRequestError:
        return BadRequestError(message, vendor="Zeotap", method="POST", path="/users", status=400)

    assert isinstance(_fatal_if_not_about_the_row(refused(NO_ORG_ID)), ZeotapRequestRefused)
    scopes = _fatal_if_not_about_the_row(refused("Request failed as no scopes were found in request"))
    assert isinstance(scopes, FatalError) and scopes.status == 400 and "no scopes" in str(scopes)
    assert not isinstance(_fatal_if_not_about_the_row(refused("Unknown section(s) ['x']")), FatalError)


def test_a_client_certificate_without_a_host_means_the_mtls_host(monkeypatch):
    trustme = pytest.importorskip("trustme")
    client = trustme.CA().issue_cert("worker@example.com")
    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env(
        "zeotap", "", "key", org_id="1", region="EU",
        client_cert="".join(blob.bytes().decode() for blob in client.cert_chain_pems),
        client_private_key=client.private_key_pem.bytes().decode()))
    assert ZeotapProfileHook().base_url == f"{MTLS_HOST}/cdp/v1"
    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env("zeotap", "", "key", org_id="1", region="EU"))
    assert ZeotapProfileHook().base_url == "https://api.zeotap.com/cdp/v1"
