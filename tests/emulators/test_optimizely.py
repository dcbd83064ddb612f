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
