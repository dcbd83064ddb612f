"""Optimizely emulator (frame and projects so far): tokens, error shape, projects."""

from __future__ import annotations

import httpx

from airflow_provider_zeotap.testing import OptimizelyEmulator


def test_tokens_and_error_shape(optimizely_emulator: OptimizelyEmulator) -> None:
    optimizely_emulator.set_faults(rate_per_second=None)
    project_id = optimizely_emulator.create_project("Web")
    url = f"{optimizely_emulator.api_url}/projects/{project_id}"
    refused = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    body = refused.json()
    assert (body["code"], body["messages"]) == ("UNAUTHORIZED", {})
    assert set(body) == {"code", "message", "messages", "uuid"}
    read_only = {"Authorization": f"Bearer {optimizely_emulator.read_only_token}"}
    assert httpx.get(url, headers=read_only).json()["name"] == "Web"
    forbidden = httpx.patch(url, headers=read_only, json={"name": "Renamed"})
    assert (forbidden.status_code, forbidden.json()["code"]) == (403, "FORBIDDEN")
    assert optimizely_emulator.projects[project_id]["name"] == "Web"


def test_projects(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    optimizely_emulator.set_faults(rate_per_second=None)
    project_id = optimizely_emulator.create_project("Web")
    assert optimizely.get(f"/projects/{project_id}").json()["id"] == project_id
    missing = optimizely.get("/projects/1")
    assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")
    assert optimizely.patch(f"/projects/{project_id}", json={"name": "Renamed"}).json()["name"] == "Renamed"
    assert optimizely.patch(f"/projects/{project_id}", json={"id": 5}).status_code == 400
    assert [p["id"] for p in optimizely.get("/projects", params={"per_page": 100}).json()] == [project_id]
    assert optimizely.get("/projects", params={"per_page": 101}).status_code == 400
    extra = optimizely_emulator.airflow_connection()["extra"]
    assert extra == {"project_id": str(project_id)}


def test_objects_page_and_keys_are_unique_in_a_project(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    optimizely_emulator.set_faults(rate_per_second=None, rate_per_minute=None)
    project = optimizely_emulator.create_project("Web")
    other = optimizely_emulator.create_project("App")
    for i in range(30):
        created = optimizely.post(f"/projects/{project}/custom_events", json={"key": f"event_{i}"})
        assert created.status_code == 201 and created.json()["name"] == f"event_{i}"  # the name defaults to the key
    assert len(optimizely.get(f"/projects/{project}/custom_events").json()) == 25  # per_page defaults to 25
    pages = [optimizely.get(f"/projects/{project}/custom_events", params={"page": p, "per_page": 20}).json()
             for p in (1, 2, 3)]
    assert [len(p) for p in pages] == [20, 10, 0]
    duplicate = optimizely.post(f"/projects/{project}/custom_events", json={"key": "event_3"})
    assert (duplicate.status_code, duplicate.json()["code"]) == (400, "BAD_REQUEST")
    assert "event_3" in duplicate.json()["message"]
    assert optimizely.post(f"/projects/{other}/custom_events", json={"key": "event_3"}).status_code == 201
    assert optimizely.post("/attributes", json={"key": "plan"}).status_code == 400  # project_id is required
    assert optimizely.post("/attributes", json={"project_id": project, "key": "plan", "kind": "x"}).status_code == 400
    assert optimizely.get("/attributes").status_code == 400
    attribute = optimizely.post("/attributes", json={"project_id": project, "key": "plan", "name": "Plan"}).json()
    renamed = optimizely.patch(f"/attributes/{attribute['id']}", json={"name": "Tier"})
    assert renamed.json()["name"] == "Tier" and optimizely.patch(f"/attributes/{attribute['id']}", json={"key": "x"}).status_code == 400
    bad = optimizely.post("/audiences", json={"project_id": project, "name": "A", "conditions": '["and"]'})
    assert bad.status_code == 400 and "operand" in bad.json()["message"]
    audience = optimizely.post("/audiences", json={"project_id": project, "name": "A"}).json()
    assert audience["conditions"] == '["everyone"]'


def test_list_content_is_replaced_whole_and_uploads_stay_under_5_mb(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    optimizely_emulator.set_faults(rate_per_second=None, rate_per_minute=None)
    project = optimizely_emulator.create_project("Web")
    list_id = optimizely_emulator.create_list_attribute(project, "vips", ["a", "b"])
    assert optimizely.get(f"/list_attributes/{list_id}").json()["list_content"] == "a,b"
    assert optimizely.patch(f"/list_attributes/{list_id}", json={"list_content": "c"}).status_code == 200
    assert optimizely_emulator.list_members(list_id) == ["c"]
    too_big = optimizely.patch(f"/list_attributes/{list_id}", json={"list_content": "x" * (5 * 1024 * 1024)})
    assert too_big.status_code == 400 and "under 5 MB" in too_big.json()["message"]
    assert optimizely_emulator.list_members(list_id) == ["c"]
    listed = optimizely.get("/list_attributes", params={"project_id": project}).json()
    assert [row["id"] for row in listed] == [list_id]
    created = optimizely.post("/list_attributes", json={"project_id": project, "name": "bad name", "key_field": "id",
                                                        "list_type": "cookies"})
    assert created.status_code == 400
    assert optimizely.get("/list_attributes/1").json()["code"] == "NOT_FOUND"


def test_a_list_changes_right_after_the_nth_read(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    optimizely_emulator.set_faults(rate_per_second=None, rate_per_minute=None)
    project = optimizely_emulator.create_project("Web")
    list_id = optimizely_emulator.create_list_attribute(project, "vips", ["a"])
    admin = f"{optimizely_emulator.url}/_emulator/list_attributes/{list_id}/change_after_get"
    assert httpx.post(admin, json={"after_gets": 2, "add": ["x{n}"], "remove": ["a"], "times": 2}).status_code == 204
    reads = [optimizely.get(f"/list_attributes/{list_id}").json()["list_content"] for _ in range(4)]
    assert reads == ["a", "a", "x1", "x1,x2"]  # each read answered before the change it triggers


def test_more_than_2_a_second_or_120_a_minute_is_429_with_retry_after(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    project = optimizely_emulator.create_project("Web")
    answers = [optimizely.get(f"/projects/{project}") for _ in range(3)]
    assert [a.status_code for a in answers][:2] == [200, 200] and answers[2].status_code == 429
    assert int(answers[2].headers["Retry-After"]) >= 1 and answers[2].json()["code"] == "TOO_MANY_REQUESTS"
    optimizely_emulator.set_faults(rate_per_second=None)  # the minute limit alone
    statuses = [optimizely.get(f"/projects/{project}").status_code for _ in range(121)]
    assert statuses.count(200) == 120 and statuses[-1] == 429
