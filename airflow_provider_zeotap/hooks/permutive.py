"""Permutive Taxonomy API: segments inside an import, changed in batches of up to 5,000 operations.

The batch endpoint is atomic per request and documents no per-operation errors; callers that need
the good rows to land split a refused batch (the sync engine does). Order inside a batch is not
guaranteed, so one batch never holds two operations on one code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
import re
from urllib.parse import quote, unquote

import httpx

from airflow_provider_zeotap.hooks.base import ApiHook
from airflow_provider_zeotap.http import ApiError, ConfigurationError, Limits

MAX_BATCH_OPERATIONS = 5000
_NEXT_TOKEN_KEYS = ("next_token", "nextToken", "next_page_token", "nextPageToken")
_PAGE_KEYS = ("pagination", "page", "paging")
_ELEMENT_KEYS = ("elements", "items", "data")
_IMPORT_READ = re.compile(r"/imports/([^/]+)(?:/segments)?/?")


class PermutiveHook(ApiHook):
    """Talks to Permutive's Taxonomy API with the private key from a ``permutive`` connection."""

    conn_name_attr = "permutive_conn_id"
    default_conn_name = "permutive_default"
    conn_type = "permutive"
    hook_name = "Permutive"

    vendor = "Permutive"
    path_prefix = "/audience-api/v1"
    #: Limits are not published: batches go one after another and 429s are honoured.
    default_limits = Limits(max_in_flight=1)
    list_paths = ("/imports",)

    def _headers(self, secret: str) -> dict[str, str]:
        return {"X-API-Key": secret}

    def _parse_error(self, response: httpx.Response) -> tuple[str | None, str]:
        error_type, message = super()._parse_error(response)
        if response.status_code == 400 and "text/plain" in response.headers.get("content-type", ""):
            error_type = error_type or "ValidationError"
        return error_type, message

    # -- imports and segments ----------------------------------------------------------------------
    def list_imports(self) -> list[dict[str, Any]]:
        return list(_elements(self.client.json("GET", "/imports")))

    def get_import(self, import_id: str) -> dict[str, Any]:
        return self.client.json("GET", f"/imports/{quote(str(import_id), safe='')}")

    def iter_segments(self, import_id: str) -> Iterator[dict[str, Any]]:
        """Every segment of an import, following ``next_token`` (either spelling) until it is absent."""
        token: str | None = None
        seen: set[str] = set()
        while True:
            params = {"pagination_token": token} if token else None
            page = self.client.json("GET", f"/imports/{quote(str(import_id), safe='')}/segments", params=params)
            yield from _elements(page)
            token = _next_token(page)
            if not token or token in seen:
                return
            seen.add(token)

    def batch_segments(self, import_id: str, operations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One ``PATCH /imports/<id>/segments``: all operations land, or none (the API is atomic)."""
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"A Permutive batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}.")
        body = {"operations": [dict(op) for op in operations]}
        answer = self.client.json("PATCH", f"/imports/{quote(str(import_id), safe='')}/segments", json=body)
        return list(_elements(answer))

    def create_segment(self, import_id: str, *, code: str, name: str, description: str | None = None) -> dict[str, Any]:
        data = {"code": code, "name": name, **({"description": description} if description else {})}
        return self.batch_segments(import_id, [{"operation": "Create", "data": data}])[0]

    def delete_segment(self, import_id: str, code: str) -> None:
        self.batch_segments(import_id, [{"operation": "Delete", "code": code}])

    def require_write_access(self, import_id: str) -> dict[str, Any]:
        """Check, before any write, that the import exists and the key may write to it.

        The API has no "who am I"; an empty batch is a write that changes nothing, so a read-only key is
        refused (403) while nothing is touched. An API that is down or busy (5xx, 429, no connection) is not a
        configuration problem: its error is raised as it is, so the run's record and Airflow's retries treat it
        as the outage it is.
        """
        try:
            found = self.get_import(import_id)
            self.batch_segments(import_id, [])
        except ApiError as error:
            if error.retryable:
                raise
            raise ConfigurationError(str(error)) from None
        return found

    def _check_connection(self) -> str:
        """Read the imports, then prove write access with the empty batch on the first one.

        Write access belongs to the key, not to an import, so any import shows it; without one there is
        nothing to write to and the result says so instead of passing a read-only key as fit for syncs.
        """
        imports = self.list_imports()
        if not imports:
            return (
                "Connected to Permutive; the key can read imports, but there are none, so write access could "
                "not be checked (a sync checks it before its first write)."
            )
        first = imports[0]
        self.require_write_access(str(first.get("id")))
        return (
            f"Connected to Permutive; the key can read {len(imports)} import(s) and write to them (checked with "
            f"an empty batch on import {first.get('name')!r}, which changes nothing)."
        )

    def _advice(self, error: ApiError) -> str | None:
        if error.status == 401 or error.error_type == "InvalidAPIKey":
            return (
                "Permutive refused the API key (InvalidAPIKey): use a private API key (a UUID from Settings > Keys, "
                f"key type Private), not a public one, in the password field of connection {self.conn_id!r}."
            )
        if error.status == 403 or error.error_type == "InsufficientAPIKey":
            return (
                "This Permutive key is read-only (InsufficientAPIKey): ask Permutive Technical Services for write "
                f"access to the Taxonomy API, or use a key that has it, in connection {self.conn_id!r}."
            )
        import_id = _import_of(error)
        if error.status == 404 and import_id:
            return (
                f"Permutive import {import_id} does not exist (or this key cannot see it): copy the full import "
                "UUID, dashes included, from Audience Platform > Imports."
            )
        return super()._advice(error)


def _import_of(error: ApiError) -> str | None:
    """The import a read was about: ``GET /imports/<id>`` or ``GET /imports/<id>/segments``.

    A 404 to a batch (PATCH) is about a segment code and is settled by the sync, so it gets no advice.
    """
    match = _IMPORT_READ.fullmatch(error.path.split("?")[0])
    return unquote(match.group(1)) if error.method == "GET" and match else None


def _elements(page: Any) -> list[dict[str, Any]]:
    if isinstance(page, list):
        return page
    if isinstance(page, dict):
        for key in _ELEMENT_KEYS:
            if isinstance(page.get(key), list):
                return page[key]
    return []


def _next_token(page: Any) -> str | None:
    if not isinstance(page, dict):
        return None
    holders = [page] + [page[k] for k in _PAGE_KEYS if isinstance(page.get(k), dict)]
    for holder in holders:
        for key in _NEXT_TOKEN_KEYS:
            if holder.get(key):
                return str(holder[key])
    return None
