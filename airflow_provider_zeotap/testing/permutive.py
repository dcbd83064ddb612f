"""Permutive Taxonomy API emulator: imports and their segments, under ``/audience-api/v1``.

Reproduced from the public documentation:

* The private API key goes in ``X-API-Key``. An unknown key is 401 InvalidAPIKey; the read-only key gets
  403 InsufficientAPIKey on any write.
* ``GET /imports/<id>/segments`` pages with ``pagination_token``; the last page has no ``next_token``.
* ``PATCH /imports/<id>/segments`` takes at most 5,000 Create/Update/Delete operations, applies them in no
  guaranteed order (here: shuffled, by a generator seeded with ``seed``) and answers
  ``{"items": [segment, ...]}`` with the created and updated segments. Validation: see ``permutive_batch``.
* A body that is not JSON, or not an object, is 400 text/plain ``Invalid value for: body``.

Every other error has one JSON shape, ``{"error": "<Type>", "message": "<human text>"}``, with the types
InvalidAPIKey (401), InsufficientAPIKey (403), DoesNotExist (404), AlreadyExists (409), ValidationError (400)
and, for injected faults, the status's reason without spaces (TooManyRequests, ServiceUnavailable...).

Choices where the documentation is silent: ``GET /imports`` pages like the segments; single-segment
``POST`` answers 201 with the segment, ``GET`` and ``DELETE /imports/<id>/segments/<segment>`` accept the
segment's id or its code, and ``DELETE`` answers 204. Ids are UUIDs drawn from the seeded generator.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import random
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import Field
from starlette.responses import JSONResponse, PlainTextResponse, Response
from typing_extensions import Unpack

from airflow_provider_zeotap.testing.permutive_batch import (
    BatchRefused,
    Operation,
    check_operations,
    parse_operations,
    parse_segment,
)
from airflow_provider_zeotap.testing.server import ApiError, Emulator, EmulatorSettings, ServerOptions

DEFAULT_WRITE_KEY = "5f0c1a9e-2b7d-4e36-9a41-8c3d2e1f0a57"
DEFAULT_READ_ONLY_KEY = "b2e4d6f8-0a1c-4e3b-8d5f-7a9c1e3b5d70"
DEFAULT_PAGE_SIZE = 100
INVALID_BODY = "Invalid value for: body"

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TYPE_BY_STATUS = {
    400: "ValidationError",
    401: "InvalidAPIKey",
    403: "InsufficientAPIKey",
    404: "DoesNotExist",
    409: "AlreadyExists",
}
#: ``kind`` of the one error that is not JSON: a body the API cannot decode.
_PLAIN_TEXT = "text/plain"
_TOKEN = re.compile(r"offset:(\d+)")


class PermutiveSettings(EmulatorSettings):
    page_size: int = Field(DEFAULT_PAGE_SIZE, ge=1, description="elements per page of a list")


class PermutiveEmulator(Emulator):
    """Permutive's Taxonomy API under ``/audience-api/v1``; see the module documentation."""

    name = "permutive"
    settings_model = PermutiveSettings
    api_prefix = "/audience-api/v1"

    def __init__(
        self,
        *,
        write_key: str = DEFAULT_WRITE_KEY,
        read_only_key: str = DEFAULT_READ_ONLY_KEY,
        page_size: int = DEFAULT_PAGE_SIZE,
        seed: int = 0,
        **server_options: Unpack[ServerOptions],
    ) -> None:
        self.write_key = write_key
        self.read_only_key = read_only_key
        #: Elements per page of a list; settable while running.
        self.page_size = page_size
        self.seed = seed
        super().__init__(**server_options)

    # -- seed and inspect ------------------------------------------------------------------------------

    def create_import(self, name: str, code: str | None = None) -> str:
        """Create an import; return its id (a UUID string)."""
        with self._lock:
            import_id = self._new_id()
            now = _now()
            self._imports[import_id] = {
                "id": import_id,
                "name": name,
                "code": code or re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"),
                "source": "emulator",
                "created_at": now,
                "updated_at": now,
            }
            self._segments[import_id] = {}
            return import_id

    def create_segment(
        self, import_id: str, code: str, name: str, description: str | None = None
    ) -> dict[str, Any]:
        """Add a segment without the API's validation (a test may seed what the API would refuse)."""
        with self._lock:
            changes = {"name": name, "description": description}
            return dict(self._create(import_id, self._segments[import_id], code, changes))

    @property
    def imports(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {import_id: dict(row) for import_id, row in self._imports.items()}

    def segments(self, import_id: str) -> dict[str, dict[str, Any]]:
        """code -> segment (copies) of one import."""
        with self._lock:
            return {code: dict(segment) for code, segment in self._segments[import_id].items()}

    # -- frame hooks -----------------------------------------------------------------------------------

    def _clear_state(self) -> None:
        self._imports: dict[str, dict[str, Any]] = {}
        self._segments: dict[str, dict[str, dict[str, Any]]] = {}
        self._rng = random.Random(self.seed)

    def state(self) -> dict[str, Any]:
        return {
            "imports": [
                {**row, "segments": list(self._segments[import_id].values())}
                for import_id, row in self._imports.items()
            ]
        }

    def credentials(self) -> dict[str, str]:
        return {"write_key": self.write_key, "read_only_key": self.read_only_key}

    def _connection_fields(self) -> dict[str, Any]:
        return {"password": self.write_key}

    def seed_example(self) -> dict[str, str]:
        return {"import_id": self.create_import("Example import")}

    def authenticate(self, request: Request) -> None:
        key = request.headers.get("x-api-key")
        if key == self.write_key:
            return
        if key is None or key != self.read_only_key:
            raise ApiError(401, "The API key is missing or invalid", kind="InvalidAPIKey")
        if request.method in _WRITE_METHODS:
            raise ApiError(403, "The API key is read-only", kind="InsufficientAPIKey")

    def error_response(self, status: int, message: str, kind: str | None = None) -> Response:
        if kind == _PLAIN_TEXT:
            return PlainTextResponse(message, status_code=status)
        return JSONResponse({"error": kind or _error_type(status), "message": message}, status_code=status)

    def _malformed_body(self) -> ApiError:
        return ApiError(400, INVALID_BODY, kind=_PLAIN_TEXT)

    def _add_api_routes(self, router: APIRouter) -> None:
        @router.get("/imports")
        async def list_imports(pagination_token: str | None = None) -> dict[str, Any]:
            with self._lock:
                return self._page(list(self._imports.values()), pagination_token)

        @router.get("/imports/{import_id}")
        async def get_import(import_id: str) -> dict[str, Any]:
            with self._lock:
                self._import_segments(import_id)
                return dict(self._imports[import_id])

        @router.get("/imports/{import_id}/segments")
        async def list_segments(import_id: str, pagination_token: str | None = None) -> dict[str, Any]:
            with self._lock:
                return self._page(list(self._import_segments(import_id).values()), pagination_token)

        @router.patch("/imports/{import_id}/segments")
        async def batch(import_id: str, request: Request) -> dict[str, Any]:
            operations = await self._operations(request)
            with self._lock:
                segments = self._import_segments(import_id)
                with _as_api_error():
                    parsed = parse_operations(operations)
                    check_operations(parsed, segments.keys())
                self._rng.shuffle(parsed)
                applied = [self._apply(import_id, segments, operation) for operation in parsed]
            return {"items": [dict(segment) for segment in applied if segment is not None]}

        @router.post("/imports/{import_id}/segments", status_code=201)
        async def create_segment(import_id: str, request: Request) -> dict[str, Any]:
            data = await self.read_json(request)
            with self._lock:
                segments = self._import_segments(import_id)
                operation = parse_segment(data)
                if operation is None:
                    raise ApiError(400, "The segment is invalid", kind="ValidationError")
                with _as_api_error():
                    check_operations([operation], segments.keys())
                return dict(self._create(import_id, segments, operation.code, operation.changes))

        @router.get("/imports/{import_id}/segments/{segment}")
        async def get_segment(import_id: str, segment: str) -> dict[str, Any]:
            with self._lock:
                return dict(self._import_segments(import_id)[self._segment_code(import_id, segment)])

        @router.delete("/imports/{import_id}/segments/{segment}", status_code=204)
        async def delete_segment(import_id: str, segment: str) -> None:
            with self._lock:
                del self._import_segments(import_id)[self._segment_code(import_id, segment)]

    def _add_admin_routes(self, router: APIRouter) -> None:
        @router.post("/imports")
        async def seed_import(
            name: Annotated[str, Body(embed=True)], code: Annotated[str | None, Body(embed=True)] = None
        ) -> dict[str, Any]:
            import_id = self.create_import(name, code)
            return self.imports[import_id]

    # -- the API ---------------------------------------------------------------------------------------

    async def _operations(self, request: Request) -> list[Any]:
        body = await self.read_json(request)
        operations = body.get("operations") if isinstance(body, dict) else None
        if not isinstance(operations, list):
            raise self._malformed_body()
        return operations

    def _import_segments(self, import_id: str) -> dict[str, dict[str, Any]]:
        segments = self._segments.get(import_id)
        if segments is None:
            raise ApiError(404, f"Import {import_id} does not exist", kind="DoesNotExist")
        return segments

    def _segment_code(self, import_id: str, id_or_code: str) -> str:
        segments = self._segments[import_id]
        if id_or_code in segments:
            return id_or_code
        code = next((code for code, segment in segments.items() if segment["id"] == id_or_code), None)
        if code is None:
            raise ApiError(404, f"Segment {id_or_code} does not exist", kind="DoesNotExist")
        return code

    def _apply(
        self, import_id: str, segments: dict[str, dict[str, Any]], operation: Operation
    ) -> dict[str, Any] | None:
        """Apply one validated operation; return the created or updated segment (None for a delete)."""
        if operation.kind == "Create":
            return self._create(import_id, segments, operation.code, operation.changes)
        if operation.kind == "Delete":
            del segments[operation.code]
            return None
        segment = segments[operation.code]
        segment.update(operation.changes, updated_at=_now())
        return segment

    def _create(
        self, import_id: str, segments: dict[str, dict[str, Any]], code: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        now = _now()
        segments[code] = {
            "id": self._new_id(),
            "code": code,
            "name": fields["name"],
            "description": fields.get("description"),
            "import_id": import_id,
            "created_at": now,
            "updated_at": now,
        }
        return segments[code]

    def _page(self, elements: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
        offset = 0 if token is None else _token_offset(token)
        end = offset + self.page_size
        pagination: dict[str, Any] = {"total_count": len(elements)}
        if end < len(elements):
            pagination["next_token"] = base64.urlsafe_b64encode(f"offset:{end}".encode()).decode()
        return {"elements": [dict(element) for element in elements[offset:end]], "pagination": pagination}

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


@contextlib.contextmanager
def _as_api_error() -> Iterator[None]:
    """Turn a :class:`BatchRefused` into the vendor-shaped :class:`ApiError`."""
    try:
        yield
    except BatchRefused as exc:
        raise ApiError(exc.status, exc.message, kind=exc.kind) from None


def _token_offset(token: str) -> int:
    try:
        match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token.encode()).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match is None:
        raise ApiError(400, "Invalid pagination_token", kind="ValidationError")
    return int(match.group(1))


def _error_type(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "Error"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
