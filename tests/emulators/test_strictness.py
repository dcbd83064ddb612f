"""Each emulator refuses what the real API refuses, over HTTP, with the documented status and text.

One test per leniency found by probing the emulators (issue 13, item 6): a DAG author's CI runs against these
emulators, so a request the real API refuses must be refused here too, or the client bug hides until
production. The wire facts are in ``docs/wire/``; the fault knobs in ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from airflow_provider_zeotap.testing import (
    OptimizelyEmulator,
    PermutiveEmulator,
    PersonyzeEmulator,
    ZeotapEmulator,
)
from airflow_provider_zeotap.testing.personyze import TOO_MANY_SIMULTANEOUS
from airflow_provider_zeotap.testing.request_log import max_overlap

CUT = (httpx.RemoteProtocolError, httpx.ReadError)


def zeotap_write(emulator: ZeotapEmulator, ids: dict[str, Any]) -> dict[str, Any]:
    return {"orgId": emulator.org_id, "region": emulator.region, "ids": ids, "upsert": {"profile": {"a": 1}}}


async def _concurrently(count: int, send: Callable[[httpx.AsyncClient, int], Any], **client: Any) -> list[Any]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits, **client) as session:
        return await asyncio.gather(*(send(session, n) for n in range(count)))


# -- Personyze ---------------------------------------------------------------------------------------------


def test_personyze_serializes_users_posts_and_refuses_one_that_waited_over_a_second(
    personyze_emulator: PersonyzeEmulator,
) -> None:
    """8 POSTs at once, each taking 300 ms: one at a time, so the ones that would wait over 1 s are refused."""
    personyze_emulator.set_faults(latency_ms=300)
    answers = asyncio.run(_concurrently(
        8, lambda session, n: session.post("/users", json={"email": f"u{n}@x.com"}),
        base_url=personyze_emulator.api_url, auth=("api", personyze_emulator.api_key),
    ))
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert 2 <= len(accepted) <= 5 and len(refused) == 8 - len(accepted)
    assert {(a.status_code, a.text, a.headers["content-type"].split(";")[0]) for a in refused} == {
        (400, TOO_MANY_SIMULTANEOUS, "text/plain")
    }
    assert len(personyze_emulator.users) == len(accepted)  # a refused POST changed nothing
    waited = [r.finished_at - r.started_at for r in personyze_emulator.requests if r.status == 400]  # type: ignore[operator]
    assert min(waited) >= 1.0  # refused only after waiting its second
    # Other routes are not serialized: GETs at the same latency overlap.
    asyncio.run(_concurrently(
        3, lambda session, n: session.get("/account"),
        base_url=personyze_emulator.api_url, auth=("api", personyze_emulator.api_key),
    ))
    assert personyze_emulator.max_in_flight_seen(method="GET") == 3


def test_personyze_throttles_with_503_and_no_retry_after(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    for limit in ({"rate_per_second": 1}, {"rate_per_minute": 1}):
        personyze_emulator.set_faults(**limit)
        assert personyze.get("/account").status_code == 200
        throttled = personyze.post("/users", json={"email": "a@x.com"})
        assert (throttled.status_code, throttled.text) == (503, "Service Unavailable"), limit
        assert "retry-after" not in throttled.headers
        assert personyze_emulator.users == {}
        assert personyze_emulator.requests[-1].fault == "rate_limited"


def test_personyze_busy_answer_can_be_injected_with_its_real_text(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(
        error_rate=1, error_status=400, error_message=TOO_MANY_SIMULTANEOUS, method="POST", path="/rest/users"
    )
    busy = personyze.post("/users", json={"email": "a@x.com"})
    assert (busy.status_code, busy.text, busy.headers["content-type"].split(";")[0]) == (
        400, TOO_MANY_SIMULTANEOUS, "text/plain",
    )
    assert "retry-after" not in busy.headers
    assert personyze_emulator.users == {}
    assert personyze.get("/account").status_code == 200  # another method and path: untouched


# -- Zeotap ------------------------------------------------------------------------------------------------


def test_zeotap_refuses_a_write_whose_id_is_a_list(zeotap_emulator: ZeotapEmulator, zeotap: httpx.Client) -> None:
    for ids in (["a@x.com", "b@x.com"], ["a@x.com"]):  # two ids, and a list of one
        refused = zeotap.post("/users", json=zeotap_write(zeotap_emulator, {"email": ids}))
        assert refused.status_code == 400
        assert refused.json() == {"code": 400, "message": "Write accepts exactly one identifier with one id per call"}
    assert zeotap_emulator.profiles == {}


async def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
    """One POST on its own connection, over a bare socket: hundreds at once cost an HTTP client's pool seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(head + [f"{k}: {v}" for k, v in headers.items()]) + "\r\n\r\n").encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, *header_lines = answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), fields, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_zeotap_admits_200_requests_in_flight_not_200_a_second(zeotap_emulator: ZeotapEmulator) -> None:
    """210 writes sent at once, each held 1 s: 200 are admitted, the others are 429 with Retry-After."""
    zeotap_emulator.set_faults(latency_ms=1000)  # the documented 200 in flight and 10,000/min stay in force
    headers = {"apikey": zeotap_emulator.api_key, "scopes": "profile.write", "Content-Type": "application/json"}

    async def send_all() -> list[tuple[int, dict[str, str], Any]]:
        bodies = [json.dumps(zeotap_write(zeotap_emulator, {"email": f"{n}@x.com"})).encode() for n in range(210)]
        return await asyncio.gather(*(_raw_post(zeotap_emulator.port, "/cdp/v1/users", headers, b) for b in bodies))

    answers = asyncio.run(send_all())
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 429}
    assert all((fields["retry-after"], body["code"]) == ("1", 429) for status, fields, body in answers if status == 429)
    admitted = [(r.started_at, r.finished_at) for r in zeotap_emulator.requests if r.status == 200]
    assert max_overlap(admitted) == 200  # never more than 200 open at once, and the limit was reached
    for refused in (r for r in zeotap_emulator.requests if r.status == 429):  # refused only when 200 were open
        assert sum(start <= refused.started_at < end for start, end in admitted) == 200  # type: ignore[operator]
    assert len(zeotap_emulator.profiles) == statuses.count(200)


def test_zeotap_refuses_a_body_that_is_not_application_json(zeotap_emulator: ZeotapEmulator) -> None:
    body = json.dumps(zeotap_write(zeotap_emulator, {"email": "a@x.com"}))  # valid JSON, the wrong type
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", None):
        headers = {"apikey": zeotap_emulator.api_key, "scopes": "profile.write"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        refused = httpx.post(f"{zeotap_emulator.api_url}/users", content=body, headers=headers)
        assert refused.status_code == 415
        assert refused.json() == {
            "code": 415,
            "message": f"Content-Type must be application/json, not {content_type or 'none'!r}",
        }
    assert zeotap_emulator.profiles == {}


# -- Optimizely --------------------------------------------------------------------------------------------


def test_optimizely_project_setup_answers_201_with_the_project_it_created(
    optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client
) -> None:
    created = httpx.post(f"{optimizely_emulator.url}/_emulator/projects", json={"name": "Web"})
    assert created.status_code == 201
    project = created.json()
    assert list(optimizely_emulator.projects) == [project["id"]]
    assert optimizely.get(f"/projects/{project['id']}").json() == project
    assert (project["name"], project["status"]) == ("Web", "active")


# -- every fault before and after the write ----------------------------------------------------------------


def _post_user(emulator: PersonyzeEmulator, client: httpx.Client) -> Any:
    return client.post("/users", json={"email": "w@x.com"})


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({"error_rate": 1, "error_status": 500}, (500, None)),
        ({"error_rate": 1, "error_status": 429, "retry_after": 2}, (429, "2")),
        ({"drop_first": 1}, CUT),
    ],
    ids=["5xx", "429", "dropped"],
)
@pytest.mark.parametrize("when", ["before", "after"])
def test_every_fault_fires_before_or_after_the_write(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client, knobs: dict[str, Any], expected: Any, when: str
) -> None:
    """Before: the client sees the fault and nothing changed. After: the same fault, but the write landed."""
    timing = "drop_when" if "drop_first" in knobs else "error_when"
    personyze_emulator.set_faults(**knobs, **{timing: when})
    if expected is CUT:
        with pytest.raises(CUT):
            personyze.post("/users", json={"email": "w@x.com"})
    else:
        answer = personyze.post("/users", json={"email": "w@x.com"})
        assert (answer.status_code, answer.headers.get("retry-after")) == expected
    landed = [user["email"] for user in personyze_emulator.users.values()]
    assert landed == ([] if when == "before" else ["w@x.com"])
    assert personyze_emulator.requests[-1].fault == ("dropped" if expected is CUT else "error")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_204_answer_can_be_cut(permutive_emulator: PermutiveEmulator, permutive: httpx.Client, when: str) -> None:
    """An answer with no body is lost by hanging up before its status line; after: the delete happened."""
    import_id = permutive_emulator.create_import("Imp")
    permutive_emulator.create_segment(import_id, "vip", "VIP")
    permutive_emulator.set_faults(drop_first=1, drop_when=when, method="DELETE")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        permutive.delete(f"/imports/{import_id}/segments/vip")
    assert list(permutive_emulator.segments(import_id)) == ([] if when == "after" else ["vip"])
    assert permutive.get(f"/imports/{import_id}").status_code == 200  # a new connection works


@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rate": 1},
        {"error_rate": 1, "error_when": "after"},
        {"drop_first": 1},
        {"drop_first": 1, "drop_when": "before"},
        {"drop_rate": 1},
        {"rate_per_second": 1},
        {"rate_per_minute": 1},
        {"max_in_flight": 1, "latency_ms": 300},
    ],
    ids=lambda knobs: ",".join(knobs),
)
def test_every_fault_form_can_target_one_method_and_one_path(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client, knobs: dict[str, Any]
) -> None:
    """Aimed at ``POST /rest/users``: GETs, other paths (even under it) and other methods pass untouched."""
    personyze_emulator.set_faults(**knobs, method="POST", path="/rest/users")
    list_id = personyze_emulator.create_list("VIP")
    untouched = [
        personyze.get("/account"),
        personyze.get("/users/where/email=a%40x.com"),
        personyze.post("/user_lists", json={"name": "Other"}),
        personyze.post("/user_list_users", json={"user_list_id": list_id, "user_email": "m@x.com"}),
        personyze.get("/account"),
    ]
    assert [answer.status_code for answer in untouched] == [200] * 5
    assert [entry.fault for entry in personyze_emulator.requests] == [None] * 5
    auth = ("api", personyze_emulator.api_key)
    answers = asyncio.run(_concurrently(  # two at once: the second meets what the first used up
        2, lambda session, n: session.post("/users", json={"email": f"{n}@x.com"}),
        base_url=personyze_emulator.api_url, auth=auth,
    )) if "max_in_flight" in knobs else None
    outcomes = [a.status_code for a in answers] if answers else []
    for _ in range(0 if answers else 2):  # one after the other: the second meets the limit the first used up
        try:
            outcomes.append(personyze.post("/users", json={"email": "a@x.com"}).status_code)
        except CUT:
            outcomes.append("cut")
    assert any(outcome != 200 for outcome in outcomes)
    assert {entry.path for entry in personyze_emulator.requests if entry.fault} == {"/rest/users"}
