"""Optimizely REST API v2: bearer token, JSON errors, 2 requests/s and 120/min.

The destination (audiences, list attributes, custom events, attributes) arrives in a later issue; this
hook carries the connection, the limits and the connection test.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_zeotap.hooks.base import ApiHook, ConnectionSettings
from airflow_provider_zeotap.http import ApiError, ConfigurationError, Limits


_PROJECT = re.compile(r"/projects/([^/?]+)")


class OptimizelySettings(ConnectionSettings):
    project_id: str | None = None


class OptimizelyHook(ApiHook):
    conn_name_attr = "optimizely_conn_id"
    default_conn_name = "optimizely_default"
    conn_type = "optimizely"
    hook_name = "Optimizely"

    vendor = "Optimizely"
    path_prefix = "/v2"
    default_limits = Limits(rate_per_second=2, rate_per_minute=120, max_in_flight=2)
    settings_model = OptimizelySettings
    list_paths = ("/projects",)

    def _headers(self, secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    def project_id(self, project_id: str | int | None = None) -> str:
        value = project_id or self.settings.project_id  # type: ignore[attr-defined]
        if not value:
            raise ConfigurationError(
                f"No Optimizely project id: pass project_id to the task or set the 'project_id' extra of "
                f"connection {self.conn_id!r}."
            )
        return str(value)

    def get_project(self, project_id: str | int | None = None) -> dict[str, Any]:
        return self.client.json("GET", f"/projects/{self.project_id(project_id)}")

    def _check_connection(self) -> str:
        if self.settings.project_id:  # type: ignore[attr-defined]
            project = self.get_project()
            return f"Connected to Optimizely project {project.get('name')!r} ({project.get('id')})."
        self.client.json("GET", "/projects", params={"per_page": 1})
        return "Connected to Optimizely (no default project_id set)."

    def _advice(self, error: ApiError) -> str | None:
        if error.status == 403:
            return (
                "Optimizely token has no access here (HTTP 403): generate a personal access token with write "
                f"permission on this project (Profile > API Access) and put it in connection {self.conn_id!r}."
            )
        match = _PROJECT.fullmatch(error.path)
        if error.status == 404 and match:
            return (
                f"Optimizely project {match.group(1)!r} was not found: check the 'project_id' extra of connection "
                f"{self.conn_id!r} or the task's project_id."
            )
        return super()._advice(error)
