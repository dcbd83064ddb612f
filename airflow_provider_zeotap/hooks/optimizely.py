"""Optimizely REST API v2: bearer token, JSON errors, 2 requests/s and 120/min.

What the sync needs of the API: the project, its audiences, custom events and attributes (list, create,
update), and its list attributes (list, get, create, update). A list attribute's ``list_content`` is a
comma-separated string of ids, and writing it replaces the whole list: the API has no per-member call,
and an upload must stay under 5 MB (``MAX_UPLOAD_BYTES``). Wire facts and their sources:
``docs/wire/optimizely.md``.

Pacing: the documented limits are 2 requests/s and 120/min (Feature Experimentation) or 100/min (Web
Experimentation, the ``web_experimentation`` extra). They are counted in sliding windows measured from
answers (``Limits.sliding_windows``), so a run sustains nearly 2/s and the server never sees a third
request within one second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_provider_zeotap.hooks.base import ApiHook, ConnectionSettings
from airflow_provider_zeotap.http import ApiError, ConfigurationError, Limits

#: The most a list attribute upload may weigh (the request body), per the public docs ("under 5 MB").
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
#: Page size of every list read; the API's maximum.
PER_PAGE = 100
#: Web Experimentation's documented limit (requests per minute).
WEB_EXPERIMENTATION_RATE_PER_MINUTE = 100

_PROJECT = re.compile(r"/projects/([^/?]+)")
_LIST_ATTRIBUTE = re.compile(r"/list_attributes/([^/?]+)")

#: Object type -> how its collection is read and written. ``project_path`` True: under the project's path.
OBJECT_PATHS: Mapping[str, tuple[str, bool]] = {
    "audiences": ("audiences", False),
    "custom_events": ("custom_events", True),
    "attributes": ("attributes", False),
    "list_attributes": ("list_attributes", False),
}


class OptimizelySettings(ConnectionSettings):
    project_id: str | None = None
    #: The token is for Web Experimentation: its limit is 100 requests/min.
    web_experimentation: bool = False


class OptimizelyHook(ApiHook):
    conn_name_attr = "optimizely_conn_id"
    default_conn_name = "optimizely_default"
    conn_type = "optimizely"
    hook_name = "Optimizely"

    vendor = "Optimizely"
    path_prefix = "/v2"
    default_limits = Limits(rate_per_second=2, rate_per_minute=120, max_in_flight=2, sliding_windows=True)
    settings_model = OptimizelySettings
    list_paths = ("/projects",)

    def _headers(self, secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    @property
    def limits(self) -> Limits:  # type: ignore[override]
        """The documented limits, 100/min for Web Experimentation; explicit rate extras win over both."""
        defaults = self.default_limits
        if self.settings.web_experimentation:  # type: ignore[attr-defined]
            defaults = defaults.model_copy(update={"rate_per_minute": WEB_EXPERIMENTATION_RATE_PER_MINUTE})
        return self.settings.limits(defaults)

    def project_id(self, project_id: str | int | None = None) -> str:
        value = project_id or self.settings.project_id  # type: ignore[attr-defined]
        if not value:
            raise ConfigurationError(
                f"No Optimizely project id: pass project_id to the task or set the 'project_id' extra of "
                f"connection {self.conn_id!r}."
            )
        return check_project_id(value)

    # -- projects ----------------------------------------------------------------------------------
    def get_project(self, project_id: str | int | None = None) -> dict[str, Any]:
        return self.client.json("GET", f"/projects/{self.project_id(project_id)}")

    # -- audiences, custom events, attributes, list attributes ---------------------------------------
    def _collection(self, object_type: str, project_id: str | int | None) -> tuple[str, dict[str, str]]:
        """The collection path of an object type, and the query that scopes it to the project."""
        name, under_project = OBJECT_PATHS[object_type]
        project = self.project_id(project_id)
        if under_project:
            return f"/projects/{project}/{name}", {}
        return f"/{name}", {"project_id": project}

    def iter_objects(self, object_type: str, project_id: str | int | None = None) -> Iterator[dict[str, Any]]:
        """Every object of a type in the project, page by page (``per_page`` 100) until a short page."""
        path, scope = self._collection(object_type, project_id)
        page = 1
        while True:
            rows = self.client.json("GET", path, params={**scope, "page": page, "per_page": PER_PAGE})
            if not isinstance(rows, list):
                raise ApiError(
                    f"expected a JSON array, got {type(rows).__name__}", vendor=self.vendor, method="GET", path=path
                )
            yield from rows
            if len(rows) < PER_PAGE:
                return
            page += 1

    def create_object(
        self, object_type: str, fields: Mapping[str, Any], project_id: str | int | None = None
    ) -> dict[str, Any]:
        """``POST`` one object; never replayed after an answer that may have been lost once the create landed
        (an audience's name is not unique: a replay would make a second one). The caller checks instead."""
        path, scope = self._collection(object_type, project_id)
        body = {**({"project_id": int(scope["project_id"])} if scope else {}), **fields}
        return self.client.json("POST", path, json=body, replay_safe=False)

    def update_object(
        self, object_type: str, object_id: int | str, fields: Mapping[str, Any], project_id: str | int | None = None
    ) -> dict[str, Any]:
        path, _ = self._collection(object_type, project_id)
        return self.client.json("PATCH", f"{path}/{object_id}", json=dict(fields))

    # -- list attributes ---------------------------------------------------------------------------
    def get_list_attribute(self, list_attribute_id: int | str) -> dict[str, Any]:
        return self.client.json("GET", f"/list_attributes/{list_attribute_id}")

    def list_upload(self, list_content: str) -> bytes:
        """The body of a ``list_content`` write, as it goes on the wire (its size is what the 5 MB limit caps)."""
        return json.dumps({"list_content": list_content}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def write_list_content(self, list_attribute_id: int | str, upload: bytes) -> dict[str, Any]:
        """Replace the whole list: ``PATCH /list_attributes/<id>`` with a body from ``list_upload``."""
        if len(upload) >= MAX_UPLOAD_BYTES:
            raise ValueError(f"A list_content upload must stay under {MAX_UPLOAD_BYTES} bytes, got {len(upload)}.")
        return self.client.json(
            "PATCH",
            f"/list_attributes/{list_attribute_id}",
            content=upload,
            headers={"Content-Type": "application/json"},
        )

    # -- connection test and error advice ------------------------------------------------------------
    def _check_connection(self) -> str:
        if self.settings.project_id:  # type: ignore[attr-defined]
            project = self.get_project()
            return f"Connected to Optimizely project {project.get('name')!r} ({project.get('id')})."
        self.client.json("GET", "/projects", params={"per_page": 1})
        return "Connected to Optimizely (no default project_id set)."

    def _advice(self, error: ApiError) -> str | None:
        if error.status == 401:
            return (
                "Optimizely refused the personal access token (HTTP 401): it is wrong, expired or revoked. Generate "
                f"one in Profile > API Access and put it in the password field of connection {self.conn_id!r}; SDK "
                "keys and datafile access tokens do not work with the REST API."
            )
        if error.status == 403:
            return (
                "Optimizely token has no access here (HTTP 403): generate a personal access token with write "
                f"permission on this project (Profile > API Access) and put it in connection {self.conn_id!r}."
            )
        if error.status == 429:
            return (
                "Optimizely kept answering 429 (rate limit) after retries: something else is using this token's "
                "limit (2 requests/s, 120/min) at the same time. Give each token one sync at a time (see the "
                "README's connection pools), or schedule the syncs apart."
            )
        project = _PROJECT.fullmatch(error.path)
        if error.status == 404 and project:
            return (
                f"Optimizely project {project.group(1)!r} was not found: use the numeric project id (Settings > "
                "Project, or the number after /projects/ in the project's URL), not its name; check the task's "
                f"project_id or the 'project_id' extra of connection {self.conn_id!r}."
            )
        listed = _LIST_ATTRIBUTE.fullmatch(error.path)
        if error.status == 404 and listed:
            return list_attribute_missing(listed.group(1), None)
        return super()._advice(error)


def check_project_id(value: Any) -> str:
    """A project id is a number: a name (the most common mistake) is refused before any request."""
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigurationError(
            f"project_id must be the numeric Optimizely project id (Settings > Project, or the number after "
            f"/projects/ in the project's URL), not its name; got {value!r}."
        )
    return text


def list_attribute_missing(list_attribute_id: Any, project_id: Any) -> str:
    where = f" in project {project_id}" if project_id is not None else ""
    return (
        f"Optimizely list attribute {list_attribute_id} does not exist{where}: list attributes must be created in "
        "Optimizely before syncing (Audiences > Attributes > Create New Attribute > List Attribute); copy its "
        "numeric id into the task's list_attribute_id."
    )
