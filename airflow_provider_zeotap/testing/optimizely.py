"""Optimizely REST API v2 emulator, under ``/v2`` — so far the frame and projects.

Reproduced from the public documentation:

* ``Authorization: Bearer <personal access token>``; a bad or missing token is 401. ``read_only_token``
  reads but is 403 on every write, standing in for a token without write permission on the project.
* Errors are JSON ``{"code": str, "message": str, "messages": {}, "uuid": str}``; ``code`` is the status's
  name (``NOT_FOUND``, ``TOO_MANY_REQUESTS``...).
* The documented limits, 2 requests/s and 120/min, are enforced by default (429 with Retry-After): lift
  them with ``set_faults(rate_per_second=None, rate_per_minute=None)``.
* Lists page with ``page`` (from 1) and ``per_page`` (default 25, at most 100) and answer a JSON array.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.responses import JSONResponse, Response
from typing_extensions import Unpack

from airflow_provider_zeotap.testing.faults import FaultConfig
from airflow_provider_zeotap.testing.server import ApiError, Emulator, ServerOptions

DEFAULT_TOKEN = "optimizely-test-token"
DEFAULT_READ_ONLY_TOKEN = "optimizely-read-only-token"
FIRST_PROJECT_ID = 20_000_001
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100


class OptimizelyEmulator(Emulator):
    """Optimizely's REST API v2 under ``/v2``; see the module documentation."""

    name = "optimizely"
    api_prefix = "/v2"
    default_faults = FaultConfig(rate_per_second=2, rate_per_minute=120)

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        read_only_token: str = DEFAULT_READ_ONLY_TOKEN,
        **server_options: Unpack[ServerOptions],
    ) -> None:
        self.token = token
        self.read_only_token = read_only_token
        super().__init__(**server_options)

    # -- seed and inspect ------------------------------------------------------------------------------

    def create_project(self, name: str) -> int:
        with self._lock:
            project_id = self._next_project_id
            self._next_project_id += 1
            now = _now()
            self._projects[project_id] = {
                "id": project_id,
                "name": name,
                "description": "",
                "account_id": 1,
                "platform": "custom",
                "status": "active",
                "created": now,
                "last_modified": now,
            }
            return project_id

    @property
    def projects(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {project_id: dict(row) for project_id, row in self._projects.items()}

    # -- frame hooks -----------------------------------------------------------------------------------

    def _clear_state(self) -> None:
        self._projects: dict[int, dict[str, Any]] = {}
        self._next_project_id = FIRST_PROJECT_ID

    def state(self) -> dict[str, Any]:
        return {"projects": list(self._projects.values())}

    def credentials(self) -> dict[str, str]:
        return {"token": self.token, "read_only_token": self.read_only_token}

    def _connection_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"password": self.token}
        with self._lock:
            first_project = next(iter(self._projects), None)
        if first_project is not None:
            fields["extra"] = {"project_id": str(first_project)}
        return fields

    def seed_example(self) -> dict[str, str]:
        return {"project_id": str(self.create_project("Example project"))}

    def authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in (self.token, self.read_only_token):
            raise ApiError(401, "Authentication failed: the token is missing or invalid")
        if token == self.read_only_token and request.method not in ("GET", "HEAD"):
            raise ApiError(403, "The token does not have write access to this project")

    def error_response(self, status: int, message: str, kind: str | None = None) -> Response:
        body = {
            "code": kind or _status_name(status),
            "message": message,
            "messages": {},
            "uuid": str(uuid.uuid4()),
        }
        return JSONResponse(body, status_code=status)

    def _add_api_routes(self, router: APIRouter) -> None:
        @router.get("/projects")
        async def list_projects(
            page: str = "1", per_page: str = str(DEFAULT_PER_PAGE)
        ) -> list[dict[str, Any]]:
            first, count = _page_window(page, per_page)
            with self._lock:
                return [dict(row) for row in list(self._projects.values())[first : first + count]]

        @router.get("/projects/{project_id}")
        async def get_project(project_id: str) -> dict[str, Any]:
            with self._lock:
                return dict(self._project(project_id))

        @router.patch("/projects/{project_id}")
        async def update_project(project_id: str, request: Request) -> dict[str, Any]:
            changes = await self.read_json(request)
            if not isinstance(changes, dict) or not set(changes) <= {"name", "description", "status"}:
                raise ApiError(400, "Invalid project fields")
            with self._lock:
                project = self._project(project_id)
                project.update(changes, last_modified=_now())
                return dict(project)

    def _add_admin_routes(self, router: APIRouter) -> None:
        @router.post("/projects")
        async def seed_project(name: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
            return self.projects[self.create_project(name)]

    def _project(self, project_id: str) -> dict[str, Any]:
        project = self._projects.get(int(project_id)) if project_id.isdigit() else None
        if project is None:
            raise ApiError(404, f"Project {project_id} not found")
        return project


def _page_window(page: str, per_page: str) -> tuple[int, int]:
    """(first index, count) of a ``page``/``per_page`` request."""
    if not (page.isdigit() and per_page.isdigit()) or int(page) < 1 or not 1 <= int(per_page) <= MAX_PER_PAGE:
        raise ApiError(400, f"page must be >= 1 and per_page between 1 and {MAX_PER_PAGE}")
    return (int(page) - 1) * int(per_page), int(per_page)


def _status_name(status: int) -> str:
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
