"""Optimizely REST API v2 emulator, under ``/v2``: projects, audiences, custom events, attributes, list attributes.

Reproduced from the public documentation (see ``docs/wire/optimizely.md``):

* ``Authorization: Bearer <personal access token>``; a bad or missing token is 401. ``read_only_token``
  reads but is 403 on every write, standing in for a token without write permission on the project.
* Errors are JSON ``{"code": str, "message": str, "messages": {}, "uuid": str}``; ``code`` is the status's
  name (``NOT_FOUND``, ``TOO_MANY_REQUESTS``...).
* The documented limits, 2 requests/s and 120/min, are enforced by default (429 with Retry-After): lift
  them with ``set_faults(rate_per_second=None, rate_per_minute=None)``.
* Lists page with ``page`` (from 1) and ``per_page`` (default 25, at most 100) and answer a JSON array.
* Audiences (``/audiences?project_id=``), custom events (``/projects/<id>/custom_events``), attributes
  (``/attributes?project_id=``) and list attributes (``/list_attributes?project_id=``): list, get, create
  (POST), update (PATCH). Bodies are checked by ``optimizely_rules``; an unknown field is 400.
* A custom event's or an attribute's ``key`` is unique in its project: a second one is 400 (the public docs
  say a duplicate fails, not how; the emulator answers 400 BAD_REQUEST, "... key '<key>' is already in use in
  this project").
* A list attribute's ``list_content`` is a comma-separated string of ids; a PATCH that carries it replaces
  the whole list. A request body of 5 MB or more (``MAX_UPLOAD_BYTES``) is 400, naming its size.

For tests: ``change_list_after_get`` changes a list attribute's content right after the Nth read of it is
answered (once, or ``times`` times in a row), as another writer would between a client's read and its write.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.responses import JSONResponse, Response
from typing_extensions import Unpack

from airflow_provider_zeotap.testing.faults import FaultConfig
from airflow_provider_zeotap.testing.optimizely_rules import (
    LIST_ATTRIBUTE_NAME,
    LIST_TYPES,
    attribute_key_error,
    conditions_error,
)
from airflow_provider_zeotap.testing.server import ApiError, Emulator, ServerOptions

DEFAULT_TOKEN = "optimizely-test-token"
DEFAULT_READ_ONLY_TOKEN = "optimizely-read-only-token"
FIRST_PROJECT_ID = 20_000_001
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
FIRST_OBJECT_ID = 30_000_001
#: A list attribute upload (the request body) must stay under this size.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024

#: Object type -> (fields a POST may carry, required ones, the field unique in a project or None).
_OBJECTS: dict[str, tuple[frozenset[str], frozenset[str], str | None]] = {
    "audiences": (
        frozenset({"project_id", "name", "description", "conditions", "archived", "segmentation"}),
        frozenset({"project_id", "name"}),
        None,
    ),
    "custom_events": (frozenset({"key", "name", "description", "event_type", "category"}), frozenset({"key"}), "key"),
    "attributes": (
        frozenset({"project_id", "key", "name", "description", "archived", "condition_type"}),
        frozenset({"project_id", "key"}),
        "key",
    ),
    "list_attributes": (
        frozenset({"project_id", "name", "key_field", "list_type", "description", "list_content"}),
        frozenset({"project_id", "name", "key_field", "list_type"}),
        None,
    ),
}
#: Fields a PATCH may change, per object type.
_UPDATABLE = {
    "audiences": frozenset({"name", "description", "conditions", "archived", "segmentation"}),
    "custom_events": frozenset({"name", "description", "category", "archived"}),
    "attributes": frozenset({"name", "description", "archived", "condition_type"}),
    "list_attributes": frozenset({"name", "description", "key_field", "list_content"}),
}


@dataclass
class _ListChange:
    """A change another writer makes to a list right after the ``after_gets``-th read of it is answered."""

    after_gets: int
    add: Sequence[str]
    remove: Sequence[str]
    times: int
    gets: int = 0
    fired: int = 0


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

    def create_object(self, object_type: str, project_id: int, **fields: Any) -> dict[str, Any]:
        """Seed an audience, custom event, attribute or list attribute without the API's checks."""
        with self._lock:
            return dict(self._insert(object_type, {"project_id": project_id, **fields}))

    def create_list_attribute(self, project_id: int, name: str, ids: Sequence[str] = (), **fields: Any) -> int:
        """Seed a list attribute holding ``ids``; return its id."""
        fields = {"key_field": "user_id", "list_type": "query_parameters", **fields}
        return int(self.create_object("list_attributes", project_id, name=name, list_content=",".join(ids), **fields)["id"])

    def objects(self, object_type: str, project_id: int | None = None) -> list[dict[str, Any]]:
        """Copies of the objects of a type (of one project), in creation order."""
        with self._lock:
            rows = self._objects[object_type].values()
            return [dict(row) for row in rows if project_id is None or row["project_id"] == project_id]

    def list_members(self, list_attribute_id: int) -> list[str]:
        """The ids in a list attribute's ``list_content``, in order."""
        with self._lock:
            return _ids(self._objects["list_attributes"][list_attribute_id].get("list_content") or "")

    def change_list_after_get(
        self,
        list_attribute_id: int,
        *,
        after_gets: int = 1,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        times: int = 1,
    ) -> None:
        """Right after the ``after_gets``-th ``GET /list_attributes/<id>`` from now is answered, add and remove
        ids, as another writer would; ``times`` > 1 repeats it after each following read. ``{n}`` in an id
        added becomes the repetition's number, so each one is a real change."""
        with self._lock:
            self._list_changes[list_attribute_id] = _ListChange(after_gets, list(add), list(remove), times)

    # -- frame hooks -----------------------------------------------------------------------------------

    def _clear_state(self) -> None:
        self._projects: dict[int, dict[str, Any]] = {}
        self._next_project_id = FIRST_PROJECT_ID
        self._objects: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in _OBJECTS}
        self._object_ids = itertools.count(FIRST_OBJECT_ID)
        self._list_changes: dict[int, _ListChange] = {}

    def state(self) -> dict[str, Any]:
        return {"projects": list(self._projects.values()), **{k: list(v.values()) for k, v in self._objects.items()}}

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
        project_id = self.create_project("Example project")
        list_attribute_id = self.create_list_attribute(project_id, "example_list")
        return {"project_id": str(project_id), "list_attribute_id": str(list_attribute_id)}

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

        self._add_object_routes(router, "audiences", "/audiences", scoped_by_query=True)
        self._add_object_routes(router, "custom_events", "/projects/{project_id}/custom_events", scoped_by_query=False)
        self._add_object_routes(router, "attributes", "/attributes", scoped_by_query=True)
        self._add_object_routes(router, "list_attributes", "/list_attributes", scoped_by_query=True)

    def _add_object_routes(self, router: APIRouter, object_type: str, path: str, *, scoped_by_query: bool) -> None:
        """List, create, get and update for one object type; under the project's path or scoped by a query."""

        async def list_objects(request: Request) -> list[dict[str, Any]]:
            params = request.query_params
            first, count = _page_window(params.get("page", "1"), params.get("per_page", str(DEFAULT_PER_PAGE)))
            project_id = self._scope(request, scoped_by_query)
            with self._lock:
                self._project(project_id)
                rows = [r for r in self._objects[object_type].values() if r["project_id"] == int(project_id)]
                return [dict(row) for row in rows[first : first + count]]

        async def create(request: Request) -> Response:
            body = await self.read_json(request)
            if not isinstance(body, dict):
                raise ApiError(400, "The request body must be a JSON object")
            if not scoped_by_query:
                body = {**body, "project_id": int(self._scope(request, False))}
            with self._lock:
                row = self._create(object_type, body)
            return JSONResponse(row, status_code=201)

        async def get(request: Request, object_id: str) -> dict[str, Any]:
            with self._lock:
                row = dict(self._object(object_type, object_id, request, scoped_by_query))
                if object_type == "list_attributes":
                    self._after_list_get(row["id"])
                return row

        async def update(request: Request, object_id: str) -> dict[str, Any]:
            raw = await request.body()
            if object_type == "list_attributes" and len(raw) >= MAX_UPLOAD_BYTES:
                raise ApiError(
                    400, f"The upload is {len(raw)} bytes; list_content uploads must be under 5 MB ({MAX_UPLOAD_BYTES} bytes)"
                )
            body = await self.read_json(request)
            if not isinstance(body, dict):
                raise ApiError(400, "The request body must be a JSON object")
            with self._lock:
                row = self._object(object_type, object_id, request, scoped_by_query)
                self._check_fields(object_type, body, _UPDATABLE[object_type], frozenset())
                row.update(body, last_modified=_now())
                return dict(row)

        router.add_api_route(path, list_objects, methods=["GET"])
        router.add_api_route(path, create, methods=["POST"])
        router.add_api_route(path + "/{object_id}", get, methods=["GET"])
        router.add_api_route(path + "/{object_id}", update, methods=["PATCH"])

    def _add_admin_routes(self, router: APIRouter) -> None:
        @router.post("/projects", status_code=201)
        async def seed_project(name: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
            """201 and the new project, as the API answers a create."""
            project_id = self.create_project(name)
            return self.projects[project_id]

        @router.post("/list_attributes/{list_attribute_id}/change_after_get", status_code=204)
        async def change_after_get(list_attribute_id: int, change: Annotated[dict[str, Any], Body()]) -> None:
            self.change_list_after_get(list_attribute_id, **change)

    # -- state -------------------------------------------------------------------------------------------

    def _project(self, project_id: str) -> dict[str, Any]:
        project = self._projects.get(int(project_id)) if str(project_id).isdigit() else None
        if project is None:
            raise ApiError(404, f"Project {project_id} not found")
        return project

    @staticmethod
    def _scope(request: Request, scoped_by_query: bool) -> str:
        """The project a request is about: ``?project_id=`` or the ``/projects/<id>/`` path part."""
        if not scoped_by_query:
            return str(request.path_params["project_id"])
        project_id = request.query_params.get("project_id")
        if not project_id:
            raise ApiError(400, "project_id is required")
        return project_id

    def _object(self, object_type: str, object_id: str, request: Request, scoped_by_query: bool) -> dict[str, Any]:
        row = self._objects[object_type].get(int(object_id)) if object_id.isdigit() else None
        if not scoped_by_query and row is not None and row["project_id"] != int(self._scope(request, False)):
            row = None
        if row is None:
            raise ApiError(404, f"{_singular(object_type)} {object_id} not found")
        return row

    def _check_fields(
        self, object_type: str, body: dict[str, Any], allowed: frozenset[str], required: frozenset[str]
    ) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, f"Unknown field(s) for {_singular(object_type)}: {', '.join(unknown)}")
        missing = sorted(f for f in required if body.get(f) in (None, ""))
        if missing:
            raise ApiError(400, f"Missing required field(s): {', '.join(missing)}")
        for field, check in _CHECKS.get(object_type, {}).items():
            if field in body and (problem := check(body[field])):
                raise ApiError(400, problem)

    def _create(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        allowed, required, unique = _OBJECTS[object_type]
        self._check_fields(object_type, body, allowed | {"project_id"}, required)
        self._project(str(body["project_id"]))
        if unique is not None:
            taken = any(
                r["project_id"] == int(body["project_id"]) and r.get(unique) == body[unique]
                for r in self._objects[object_type].values()
            )
            if taken:
                raise ApiError(400, f"{_singular(object_type).capitalize()} {unique} '{body[unique]}' is already in use in this project")
        return dict(self._insert(object_type, body))

    def _insert(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        row = {"id": next(self._object_ids), **body, "project_id": int(body["project_id"]), "created": now, "last_modified": now}
        if object_type == "custom_events":
            row.setdefault("name", row["key"])
            row.setdefault("event_type", "custom")
        if object_type == "audiences":
            row.setdefault("conditions", '["everyone"]')
        self._objects[object_type][row["id"]] = row
        return row

    def _after_list_get(self, list_attribute_id: int) -> None:
        """Apply a pending ``change_list_after_get`` once its read has been answered (called with the lock held)."""
        change = self._list_changes.get(list_attribute_id)
        if change is None:
            return
        change.gets += 1
        if change.gets < change.after_gets:
            return
        change.fired += 1
        row = self._objects["list_attributes"][list_attribute_id]
        ids = [i for i in _ids(row.get("list_content") or "") if i not in set(change.remove)]
        ids += [i.replace("{n}", str(change.fired)) for i in change.add if i.replace("{n}", str(change.fired)) not in ids]
        row["list_content"] = ",".join(ids)
        if change.fired >= change.times:
            del self._list_changes[list_attribute_id]


def _ids(list_content: str) -> list[str]:
    return [i for i in list_content.split(",") if i != ""] if list_content else []


def _list_content_error(value: Any) -> str | None:
    return None if isinstance(value, str) else "list_content must be a string of comma-separated ids"


def _list_name_error(value: Any) -> str | None:
    return None if isinstance(value, str) and LIST_ATTRIBUTE_NAME.match(value) else "name may only contain letters, digits, '-' and '_'"


def _list_type_error(value: Any) -> str | None:
    return None if value in LIST_TYPES else f"list_type must be one of {', '.join(sorted(LIST_TYPES))}"


def _string_error(field: str) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, str) else f"{field} must be a string"


_CHECKS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "audiences": {"conditions": conditions_error, "name": _string_error("name"), "description": _string_error("description")},
    "custom_events": {"key": _string_error("key"), "name": _string_error("name"), "description": _string_error("description")},
    "attributes": {"key": attribute_key_error, "name": _string_error("name"), "description": _string_error("description")},
    "list_attributes": {"list_content": _list_content_error, "name": _list_name_error, "list_type": _list_type_error},
}


def _singular(object_type: str) -> str:
    return {"audiences": "audience", "custom_events": "event", "attributes": "attribute",
            "list_attributes": "list attribute"}[object_type]


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
