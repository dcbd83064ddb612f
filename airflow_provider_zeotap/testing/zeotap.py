"""Zeotap Profile API emulator, under ``/cdp/v1`` — create/update, fetch and delete profiles.

Reproduced from the public documentation (docs.zeotap.com, Profile API reference and overview):

* ``apikey`` header; ``scopes`` header, comma-separated: ``_search`` needs ``profile.read``, ``POST /users``
  ``profile.write`` and ``_delete`` ``profile.delete``. A bad key is 401, a missing scope 403.
* ``Content-Type: application/json`` only (another type is 415).
* ``orgId`` is required (400 ``Request failed as no Org ID was found in request``); a missing or empty
  identifier is 400 ``Search failed as no Identifier found in the request``.
* ``POST /users`` upserts one identifier's profile and answers ``[profile]``: ``ids`` holds exactly one
  identifier whose value is one id (a list, even of one id, is refused); ``upsert`` holds only the sections
  ``profile``, ``consent`` and ``mkt_preferences``, each an object. ``POST /users/_search`` takes at most 5
  identifiers and answers the matching profiles; ``POST /users/_delete`` takes one identifier type with at most
  400 values and answers ``{"ucids", "deletedProfiles", "profilesNotFound"}``.
* The documented limits are enforced by default: 10,000 requests in a rolling minute and 200 requests in
  flight at once (429 with Retry-After). Latency is a fault knob: ``set_faults(latency_ms=50)``.
* Serving over mutual TLS is the frame's ``ssl_*`` / ``require_client_cert`` options.

Choices where the documentation is silent: errors are JSON ``{"code": <status>, "message": "<text>"}``; an
``orgId`` other than the key's organisation is 403; a request without a ``scopes`` header is 400 ``Request
failed as no scopes were found in request`` (a header naming other scopes is 403); a search that matches
nothing answers ``[]``; a field set to null is stored as null; ``created_ts``/``updated_ts`` are epoch
milliseconds; ucids are UUIDs from a generator seeded with 0.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from typing_extensions import Unpack

from airflow_provider_zeotap.testing.faults import FaultConfig
from airflow_provider_zeotap.testing.server import ApiError, Emulator, ServerOptions

DEFAULT_API_KEY = "zeotap-test-key"
DEFAULT_ORG_ID = 1577
DEFAULT_REGION = "EU"
MAX_SEARCH_IDS = 5
MAX_DELETE_IDS = 400
NO_IDENTIFIER = "Search failed as no Identifier found in the request"
NO_ORG_ID = "Request failed as no Org ID was found in request"
NO_SCOPES = "Request failed as no scopes were found in request"
ONE_ID_PER_WRITE = "Write accepts exactly one identifier with one id per call"
SECTIONS = ("profile", "consent", "mkt_preferences")

Handler = Callable[[dict[str, Any]], Any]


class ZeotapEmulator(Emulator):
    """Zeotap's Profile API under ``/cdp/v1``; see the module documentation."""

    name = "zeotap"
    api_prefix = "/cdp/v1"
    default_faults = FaultConfig(rate_per_minute=10_000, max_in_flight=200)

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        org_id: int = DEFAULT_ORG_ID,
        region: str = DEFAULT_REGION,
        **server_options: Unpack[ServerOptions],
    ) -> None:
        self.api_key = api_key
        self.org_id = org_id
        self.region = region
        super().__init__(**server_options)

    # -- seed and inspect ------------------------------------------------------------------------------

    def create_profile(self, id_type: str, value: str, *, region: str | None = None, **sections: Any) -> str:
        """Create or update the profile of one identifier (``profile=``, ``consent=``...); return its ucid."""
        with self._lock:
            return str(self._upsert(id_type, value, region or self.region, sections)["ucid"])

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """ucid -> profile (copies)."""
        with self._lock:
            return {ucid: _copy(profile) for ucid, profile in self._profiles.items()}

    # -- frame hooks -----------------------------------------------------------------------------------

    def _clear_state(self) -> None:
        self._profiles: dict[str, dict[str, Any]] = {}
        #: (id type, id) -> ucid: a write or a search finds its profile in constant time, so a benchmark of
        #: tens of thousands of profiles measures the client, not the emulator's scans.
        self._by_id: dict[tuple[str, str], str] = {}
        self._rng = random.Random(0)

    def state(self) -> dict[str, Any]:
        return {"profiles": list(self._profiles.values())}

    def credentials(self) -> dict[str, str]:
        return {"api_key": self.api_key, "org_id": str(self.org_id), "region": self.region}

    def _connection_fields(self) -> dict[str, Any]:
        return {"password": self.api_key, "extra": {"org_id": str(self.org_id), "region": self.region}}

    def authenticate(self, request: Request) -> None:
        if request.headers.get("apikey") != self.api_key:
            raise ApiError(401, "Invalid API key")

    def error_response(self, status: int, message: str, kind: str | None = None) -> Response:
        return JSONResponse({"code": status, "message": message}, status_code=status)

    def _add_api_routes(self, router: APIRouter) -> None:
        routes: dict[str, tuple[str, Handler]] = {
            "/users": ("profile.write", self._write),
            "/users/_search": ("profile.read", self._search),
            "/users/_delete": ("profile.delete", self._delete),
        }
        for path, (scope, handler) in routes.items():
            router.add_api_route(path, self._endpoint(scope, handler), methods=["POST"])

    def _endpoint(self, scope: str, handler: Handler) -> Callable[[Request], Coroutine[Any, Any, Any]]:
        """A route that checks the scope, the body and the organisation, then calls ``handler``."""

        async def endpoint(request: Request) -> Any:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                raise ApiError(415, f"Content-Type must be application/json, not {content_type or 'none'!r}")
            header = request.headers.get("scopes", "").strip()
            if not header:
                raise ApiError(400, NO_SCOPES)
            granted = {part.strip() for part in header.split(",")}
            if scope not in granted:
                raise ApiError(403, f"The request lacks the scope {scope}")
            body = await self.read_json(request)
            if not isinstance(body, dict):
                raise ApiError(400, "The body must be a JSON object")
            self._check_org(body.get("orgId"))
            with self._lock:
                return handler(body)

        return endpoint

    # -- the API ---------------------------------------------------------------------------------------

    def _check_org(self, org_id: Any) -> None:
        if org_id in (None, ""):
            raise ApiError(400, NO_ORG_ID)
        if str(org_id) != str(self.org_id):
            raise ApiError(403, f"The API key does not belong to organisation {org_id}")

    def _write(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids = body.get("ids")
        if not isinstance(ids, dict) or not ids:
            raise ApiError(400, NO_IDENTIFIER)
        if len(ids) != 1 or any(isinstance(value, (list, dict)) for value in ids.values()):
            raise ApiError(400, ONE_ID_PER_WRITE)
        if not all(_present(value) for value in ids.values()):
            raise ApiError(400, NO_IDENTIFIER)
        upsert = body.get("upsert") or {}
        unknown = sorted(set(upsert) - set(SECTIONS)) if isinstance(upsert, dict) else []
        if unknown:
            raise ApiError(400, f"Unknown section(s) {unknown} in upsert: use profile, consent, mkt_preferences")
        if not isinstance(upsert, dict) or not all(isinstance(upsert.get(key, {}), dict) for key in SECTIONS):
            raise ApiError(400, "upsert must map profile, consent and mkt_preferences to objects")
        ((id_type, value),) = ids.items()
        return [_copy(self._upsert(id_type, str(value), body.get("region") or self.region, upsert))]

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = _identifiers(body.get("search"), limit=MAX_SEARCH_IDS)
        regions = body.get("regions")
        if regions is not None and not (isinstance(regions, list) and all(isinstance(r, str) for r in regions)):
            raise ApiError(400, "regions must be a list of region names")
        found: dict[str, dict[str, Any]] = {}
        for id_type, values in wanted.items():
            for value in values:
                profile = self._find(id_type, value)
                if profile is not None and (not regions or profile["region"] in regions):
                    found[profile["ucid"]] = profile
        return [_copy(profile) for profile in found.values()]

    def _delete(self, body: dict[str, Any]) -> dict[str, list[str]]:
        wanted = _identifiers(body.get("ids"), limit=MAX_DELETE_IDS)
        if len(wanted) != 1:
            raise ApiError(400, "Delete accepts one identifier type per call")
        if not isinstance(body.get("sendEmailNotification", False), bool):
            raise ApiError(400, "sendEmailNotification must be true or false")
        ((id_type, values),) = wanted.items()
        answer: dict[str, list[str]] = {"ucids": [], "deletedProfiles": [], "profilesNotFound": []}
        for value in values:
            profile = self._find(id_type, value)
            if profile is None:
                answer["profilesNotFound"].append(value)
            else:
                del self._profiles[profile["ucid"]]
                for key in profile["ids"].items():
                    self._by_id.pop(key, None)
                answer["ucids"].append(profile["ucid"])
                answer["deletedProfiles"].append(value)
        return answer

    def _find(self, id_type: str, value: str) -> dict[str, Any] | None:
        ucid = self._by_id.get((id_type, value))
        return None if ucid is None else self._profiles.get(ucid)

    def _upsert(self, id_type: str, value: str, region: str, sections: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time() * 1000)
        profile = self._find(id_type, value)
        if profile is None:
            ucid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            profile = {"ucid": ucid, "region": region, "ids": {id_type: value}, "created_ts": now}
            profile.update({section: {} for section in SECTIONS})
            self._profiles[ucid] = profile
            self._by_id[(id_type, value)] = ucid
        for section in SECTIONS:
            profile[section].update(sections.get(section) or {})
        profile["updated_ts"] = now
        return profile


def _identifiers(given: Any, *, limit: int) -> dict[str, list[str]]:
    """``{"<id_type>": ["v1", ...]}`` with every value present and at most ``limit`` values in all."""
    if not isinstance(given, dict):
        raise ApiError(400, NO_IDENTIFIER)
    wanted: dict[str, list[str]] = {}
    for id_type, values in given.items():
        items = values if isinstance(values, list) else [values]
        if not all(_present(value) for value in items):
            raise ApiError(400, NO_IDENTIFIER)
        wanted[id_type] = [str(value) for value in items]
    count = sum(len(values) for values in wanted.values())
    if count == 0:
        raise ApiError(400, NO_IDENTIFIER)
    if count > limit:
        raise ApiError(400, f"At most {limit} identifiers per call, not {count}")
    return wanted


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def _copy(profile: dict[str, Any]) -> dict[str, Any]:
    return {key: dict(value) if isinstance(value, dict) else value for key, value in profile.items()}
