"""Permutive emulator over real sockets: keys, imports, paging and the atomic batch endpoint."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from airflow_provider_zeotap.testing import PermutiveEmulator


def create(code: str, name: str | None = None) -> dict[str, Any]:
    return {"operation": "Create", "data": {"code": code, "name": code.title() if name is None else name}}


def test_keys(permutive_emulator: PermutiveEmulator) -> None:
    import_id = permutive_emulator.create_import("Imp")
    url = f"{permutive_emulator.api_url}/imports/{import_id}"
    for headers in [{}, {"X-API-Key": "not-a-key"}]:
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "InvalidAPIKey", "message": "The API key is missing or invalid"}
    read_only = {"X-API-Key": permutive_emulator.read_only_key}
    assert httpx.get(url, headers=read_only).json()["id"] == import_id
    refused = httpx.patch(f"{url}/segments", headers=read_only, json={"operations": [create("a")]})
    assert refused.status_code == 403
    assert refused.json()["error"] == "InsufficientAPIKey"
    assert permutive_emulator.segments(import_id) == {}


def test_imports(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    import_id = permutive_emulator.create_import("Zeotap audiences")
    got = permutive.get(f"/imports/{import_id}").json()
    assert {key: got[key] for key in ("id", "name", "code")} == {
        "id": import_id,
        "name": "Zeotap audiences",
        "code": "zeotap_audiences",
    }
    assert [element["id"] for element in permutive.get("/imports").json()["elements"]] == [import_id]
    missing = permutive.get("/imports/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["error"] == "DoesNotExist"


def test_batch_creates_updates_and_deletes(
    permutive_emulator: PermutiveEmulator, permutive: httpx.Client
) -> None:
    import_id = permutive_emulator.create_import("Imp")
    permutive_emulator.create_segment(import_id, "old", "Old")
    permutive_emulator.create_segment(import_id, "gone", "Gone")
    operations = [
        {"operation": "Create", "data": {"code": "new", "name": "New", "description": "d"}},
        {"operation": "Update", "code": "old", "data": {"name": "Renamed"}},
        {"operation": "Delete", "code": "gone"},
    ]
    response = permutive.patch(f"/imports/{import_id}/segments", json={"operations": operations})
    assert response.status_code == 200
    items = {item["code"]: item for item in response.json()["items"]}
    assert set(items) == {"new", "old"}
    assert items["new"]["description"] == "d" and items["new"]["import_id"] == import_id
    segments = permutive_emulator.segments(import_id)
    assert {code: segment["name"] for code, segment in segments.items()} == {"old": "Renamed", "new": "New"}


def test_batch_order_is_shuffled_reproducibly(
    permutive: httpx.Client, permutive_emulator: PermutiveEmulator
) -> None:
    codes = [f"c{n:02}" for n in range(20)]

    def applied_order(import_id: str) -> list[str]:
        body = {"operations": [create(code) for code in codes]}
        return [
            item["code"]
            for item in permutive.patch(f"/imports/{import_id}/segments", json=body).json()["items"]
        ]

    first = applied_order(permutive_emulator.create_import("A"))
    assert sorted(first) == codes and first != codes
    permutive_emulator.reset()
    assert applied_order(permutive_emulator.create_import("A")) == first


@pytest.mark.parametrize(
    "bad",
    [
        create("has space"),
        create("x" * 101),
        create("ok", name=""),
        {"operation": "Create", "data": {"code": "no-name"}},
        {"operation": "Upsert", "data": {"code": "u", "name": "U"}},
        {"operation": "Update", "code": "seeded"},
        {"operation": "Delete"},
        "Create",
    ],
)
def test_one_invalid_operation_refuses_the_whole_batch(
    permutive_emulator: PermutiveEmulator, permutive: httpx.Client, bad: Any
) -> None:
    import_id = permutive_emulator.create_import("Imp")
    permutive_emulator.create_segment(import_id, "seeded", "Seeded")
    operations = [create("fine-1"), bad, create("fine-2"), {"operation": "Delete", "code": "seeded"}]
    response = permutive.patch(f"/imports/{import_id}/segments", json={"operations": operations})
    assert response.status_code == 400
    assert response.json() == {
        "error": "ValidationError",
        "message": "The batch holds one or more invalid operations",
    }
    assert set(permutive_emulator.segments(import_id)) == {"seeded"}


@pytest.mark.parametrize(
    ("operations", "status", "error"),
    [
        ([create("fresh"), create("seeded")], 409, "AlreadyExists"),
        ([create("twice"), create("twice")], 409, "AlreadyExists"),
        (
            [create("fresh"), {"operation": "Update", "code": "missing", "data": {"name": "M"}}],
            404,
            "DoesNotExist",
        ),
        ([create("fresh"), {"operation": "Delete", "code": "missing"}], 404, "DoesNotExist"),
        (
            [{"operation": "Delete", "code": "seeded"}, {"operation": "Delete", "code": "seeded"}],
            400,
            "ValidationError",
        ),
    ],
)
def test_conflicts_refuse_the_whole_batch(
    permutive_emulator: PermutiveEmulator,
    permutive: httpx.Client,
    operations: list[dict[str, Any]],
    status: int,
    error: str,
) -> None:
    import_id = permutive_emulator.create_import("Imp")
    permutive_emulator.create_segment(import_id, "seeded", "Seeded")
    response = permutive.patch(f"/imports/{import_id}/segments", json={"operations": operations})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "fresh" not in response.json()["message"]  # one error for the batch, naming no operation
    assert set(permutive_emulator.segments(import_id)) == {"seeded"}


def test_batch_size_limit(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    import_id = permutive_emulator.create_import("Imp")
    too_many = {"operations": [create(f"s{n}") for n in range(5001)]}
    response = permutive.patch(f"/imports/{import_id}/segments", json=too_many)
    assert (response.status_code, response.json()["error"]) == (400, "ValidationError")
    assert permutive_emulator.segments(import_id) == {}
    just_enough = {"operations": too_many["operations"][:5000]}
    assert len(permutive.patch(f"/imports/{import_id}/segments", json=just_enough).json()["items"]) == 5000


def test_undecodable_body_is_plain_text(
    permutive_emulator: PermutiveEmulator, permutive: httpx.Client
) -> None:
    import_id = permutive_emulator.create_import("Imp")
    for body in [b"{oops", b'{"ops": []}', b"[]"]:
        response = permutive.patch(f"/imports/{import_id}/segments", content=body)
        assert (response.status_code, response.text) == (400, "Invalid value for: body")
        assert response.headers["content-type"].startswith("text/plain")


def test_paging_with_next_token(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    permutive_emulator.page_size = 3
    import_id = permutive_emulator.create_import("Imp")
    for n in range(7):
        permutive_emulator.create_segment(import_id, f"s{n}", f"S{n}")
    codes: list[str] = []
    params: dict[str, str] = {}
    pages = 0
    while True:
        page = permutive.get(f"/imports/{import_id}/segments", params=params).json()
        pages += 1
        assert page["pagination"]["total_count"] == 7
        codes += [segment["code"] for segment in page["elements"]]
        token = page["pagination"].get("next_token")
        if token is None:
            break
        params = {"pagination_token": token}
    assert (pages, codes) == (3, [f"s{n}" for n in range(7)])
    bad_token = permutive.get(f"/imports/{import_id}/segments", params={"pagination_token": "garbage"})
    assert (bad_token.status_code, bad_token.json()["error"]) == (400, "ValidationError")


def test_single_segment_endpoints(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    import_id = permutive_emulator.create_import("Imp")
    created = permutive.post(f"/imports/{import_id}/segments", json={"code": "one", "name": "One"})
    assert created.status_code == 201
    segment = created.json()
    assert (
        permutive.post(f"/imports/{import_id}/segments", json={"code": "one", "name": "One"}).status_code
        == 409
    )
    assert permutive.get(f"/imports/{import_id}/segments/{segment['id']}").json() == segment
    assert permutive.delete(f"/imports/{import_id}/segments/one").status_code == 204
    assert permutive.delete(f"/imports/{import_id}/segments/one").status_code == 404


def test_admin_seed_import(permutive_emulator: PermutiveEmulator) -> None:
    created = httpx.post(f"{permutive_emulator.url}/_emulator/imports", json={"name": "Seeded"}).json()
    assert permutive_emulator.imports[created["id"]]["name"] == "Seeded"
    state = httpx.get(f"{permutive_emulator.url}/_emulator/state").json()
    assert state["imports"][0]["segments"] == []
