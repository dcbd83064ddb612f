"""Zeotap Profile API: API key and scopes headers, optional mTLS, 5 ids a read, 1 a write, 400 a delete.

The wire (see ``docs/wire/zeotap.md`` for the public sources):

* ``POST /users/_search`` ``{"orgId", "regions": [...], "search": {"<id_type>": [ids]}}``: at most 5 ids a call;
* ``POST /users`` ``{"orgId", "region", "ids": {"<id_type>": "<id>"}, "upsert": {"profile", "consent",
  "mkt_preferences"}}``: one id a call;
* ``POST /users/_delete`` ``{"orgId", "region", "ids": {"<id_type>": [ids]}, "sendEmailNotification"}``: one id
  type, at most 400 ids a call; the answer lists ``deletedProfiles`` and ``profilesNotFound``.

Every method has a sync and an async form (``a``-prefixed) over the same request builders, both paced by the
hook's one ``Pacer``: 10,000 requests a minute (2% under) and at most 200 in flight, overridable with the
connection extras ``rate_per_minute`` and ``max_in_flight``. ``orgId`` comes from the ``org_id`` extra or
per call; a call without one, or with an empty id, is refused before it is sent (the API would answer 400
and still count it against the organisation's quota).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.hooks.base import ApiHook, ConnectionSettings
from airflow_provider_zeotap.http import ApiError, BadRequestError, ConfigurationError, Limits

DEFAULT_SCOPES = "profile.read,profile.write,profile.delete"
#: The production host for clients that present a certificate (mTLS).
MTLS_HOST = "https://mtls-api.zeotap.com"
MAX_FETCH_IDS = 5
MAX_DELETE_IDS = 400
SECTIONS = ("profile", "consent", "mkt_preferences")
#: The API's documented 400 texts.
NO_ORG_ID = "Request failed as no Org ID was found in request"
NO_IDENTIFIER = "Search failed as no Identifier found in the request"


class ZeotapSettings(ConnectionSettings):
    org_id: str | None = None
    region: str | None = None
    scopes: str = DEFAULT_SCOPES


class DeletedProfiles(BaseModel):
    """What ``POST /users/_delete`` answered, over every call of one ``delete_profiles``."""

    deleted: list[str] = []
    not_found: list[str] = []
    ucids: list[str] = []
    requests: int = 0

    def merge(self, other: DeletedProfiles) -> DeletedProfiles:
        return DeletedProfiles(
            deleted=self.deleted + other.deleted,
            not_found=self.not_found + other.not_found,
            ucids=self.ucids + other.ucids,
            requests=self.requests + other.requests,
        )


class ZeotapRequestRefused(BadRequestError, FatalError):
    """A 400 about the organisation or the scopes: every other request would meet it too, so it stops a sync."""


class ZeotapProfileHook(ApiHook):
    """The Zeotap Profile API of one organisation (connection type ``zeotap``).

    The password field holds the API key; extras ``org_id``, ``region``, ``scopes`` and, for mTLS,
    ``client_cert`` + ``client_private_key``. With a certificate and no host, the mTLS host is used.
    """

    conn_name_attr = "zeotap_conn_id"
    default_conn_name = "zeotap_default"
    conn_type = "zeotap"
    hook_name = "Zeotap Profile API"

    vendor = "Zeotap"
    path_prefix = "/cdp/v1"
    # 2% under the published 10,000/min (the core's default margin is 10%): the Profile API is the one
    # whose whole throughput is its rate limit, and starts spaced evenly, never early, put at most 9,805 in
    # any sliding minute (see docs/wire/zeotap.md).
    default_limits = Limits(rate_per_minute=10_000, max_in_flight=200, pacing_margin=0.02)
    settings_model = ZeotapSettings
    list_paths = ("/users/_search",)

    @property
    def zeotap_settings(self) -> ZeotapSettings:
        return self.settings  # type: ignore[return-value]

    @property
    def default_host(self) -> str:
        """The mTLS host when the connection carries a client certificate, else the HTTPS host."""
        return MTLS_HOST if self.zeotap_settings.client_cert else self.form().default_host

    def _headers(self, secret: str) -> dict[str, str]:
        return {"apikey": secret, "scopes": self.zeotap_settings.scopes, "Content-Type": "application/json"}

    # -- organisation and region -----------------------------------------------------------------------
    def org_id(self, given: int | str | None = None) -> int:
        """``given``, else the connection's ``org_id`` extra; refused before any call when neither is set."""
        value = given if given not in (None, "") else self.zeotap_settings.org_id
        if value in (None, ""):
            raise ConfigurationError(
                f"No Org ID for Zeotap, so the API would answer 400 {NO_ORG_ID!r}: set the 'org_id' extra of "
                f"connection {self.conn_id!r} to your numeric Zeotap organisation id (or pass org_id to the task)."
            )
        if not str(value).strip().isdigit():
            raise ConfigurationError(
                f"Zeotap org_id must be the numeric organisation id, got {value!r} (connection {self.conn_id!r})."
            )
        return int(str(value).strip())

    def region(self, given: str | None = None) -> str:
        """``given``, else the connection's ``region`` extra."""
        value = (given or self.zeotap_settings.region or "").strip()
        if not value:
            raise ConfigurationError(
                f"No region for Zeotap: set the 'region' extra of connection {self.conn_id!r} (e.g. EU, UK, US), "
                "or pass region to the task."
            )
        return value

    def org_and_region(self) -> tuple[int, str]:
        return self.org_id(), self.region()

    # -- request bodies (one builder per endpoint, shared by the sync and async forms) ------------------
    def _search_body(self, id_type: str, ids: Sequence[str], region: str | None, org_id: int | str | None) -> dict:
        return {"orgId": self.org_id(org_id), "regions": [self.region(region)], "search": {id_type: list(ids)}}

    def _upsert_body(
        self,
        id_type: str,
        id: str,
        sections: Mapping[str, Mapping[str, Any] | None],
        region: str | None,
        org_id: int | str | None,
    ) -> dict:
        _check_id_type(id_type)
        _check_ids([id])
        upsert = {name: dict(values) for name, values in sections.items() if values}
        return {"orgId": self.org_id(org_id), "region": self.region(region), "ids": {id_type: str(id)},
                "upsert": upsert}

    def _delete_body(self, id_type: str, ids: Sequence[str], region: str | None, org_id: int | str | None) -> dict:
        return {"orgId": self.org_id(org_id), "region": self.region(region), "ids": {id_type: list(ids)},
                "sendEmailNotification": False}

    # -- fetch -----------------------------------------------------------------------------------------
    def fetch_profiles(
        self, id_type: str, ids: Sequence[str], *, region: str | None = None, org_id: int | str | None = None
    ) -> list[dict[str, Any]]:
        """The profiles of ``ids`` (of one id type), 5 ids a call; no call at all for no ids."""
        profiles: list[dict[str, Any]] = []
        for chunk in _chunks(_checked(id_type, ids), MAX_FETCH_IDS):
            body = self._search_body(id_type, chunk, region, org_id)
            profiles += self._call(lambda: self.client.json("POST", "/users/_search", json=body)) or []
        return profiles

    async def afetch_profiles(
        self, id_type: str, ids: Sequence[str], *, region: str | None = None, org_id: int | str | None = None
    ) -> list[dict[str, Any]]:
        """``fetch_profiles``, the calls of 5 ids gathered (the pacer bounds them)."""
        bodies = [self._search_body(id_type, chunk, region, org_id)
                  for chunk in _chunks(_checked(id_type, ids), MAX_FETCH_IDS)]
        answers = await asyncio.gather(*(self._acall(self.client.ajson("POST", "/users/_search", json=body))
                                         for body in bodies))
        return [profile for answer in answers for profile in answer or []]

    # -- write -----------------------------------------------------------------------------------------
    def upsert_profile(
        self,
        id_type: str,
        id: str,
        *,
        profile: Mapping[str, Any] | None = None,
        consent: Mapping[str, Any] | None = None,
        mkt_preferences: Mapping[str, Any] | None = None,
        region: str | None = None,
        org_id: int | str | None = None,
    ) -> list[dict[str, Any]]:
        """Create or update the profile of one id; the fields given are set, the others kept."""
        sections = {"profile": profile, "consent": consent, "mkt_preferences": mkt_preferences}
        body = self._upsert_body(id_type, id, sections, region, org_id)
        return self._call(lambda: self.client.json("POST", "/users", json=body)) or []

    async def aupsert_profile(
        self,
        id_type: str,
        id: str,
        *,
        profile: Mapping[str, Any] | None = None,
        consent: Mapping[str, Any] | None = None,
        mkt_preferences: Mapping[str, Any] | None = None,
        region: str | None = None,
        org_id: int | str | None = None,
    ) -> list[dict[str, Any]]:
        sections = {"profile": profile, "consent": consent, "mkt_preferences": mkt_preferences}
        body = self._upsert_body(id_type, id, sections, region, org_id)
        return await self._acall(self.client.ajson("POST", "/users", json=body)) or []

    # -- delete ----------------------------------------------------------------------------------------
    def delete_profiles(
        self, id_type: str, ids: Sequence[str], *, region: str | None = None, org_id: int | str | None = None
    ) -> DeletedProfiles:
        """Delete the profiles of ``ids``, 400 a call; the answer's deleted and not-found ids."""
        result = DeletedProfiles()
        for chunk in _chunks(_checked(id_type, ids), MAX_DELETE_IDS):
            body = self._delete_body(id_type, chunk, region, org_id)
            result = result.merge(_deleted(self._call(lambda: self.client.json("POST", "/users/_delete", json=body))))
        return result

    async def adelete_profiles(
        self, id_type: str, ids: Sequence[str], *, region: str | None = None, org_id: int | str | None = None
    ) -> DeletedProfiles:
        bodies = [self._delete_body(id_type, chunk, region, org_id)
                  for chunk in _chunks(_checked(id_type, ids), MAX_DELETE_IDS)]
        answers = await asyncio.gather(*(self._acall(self.client.ajson("POST", "/users/_delete", json=body))
                                         for body in bodies))
        result = DeletedProfiles()
        for answer in answers:
            result = result.merge(_deleted(answer))
        return result

    # -- errors ----------------------------------------------------------------------------------------
    def _call(self, send: Any) -> Any:
        try:
            return send()
        except BadRequestError as error:
            raise _fatal_if_not_about_the_row(error) from None

    async def _acall(self, pending: Any) -> Any:
        try:
            return await pending
        except BadRequestError as error:
            raise _fatal_if_not_about_the_row(error) from None

    def _check_connection(self) -> str:
        org, region = self.org_and_region()
        self.fetch_profiles("user_id", ["airflow-connection-test"])
        return f"Connected to the Zeotap Profile API for organisation {org} in region {region}."

    def _advice(self, error: ApiError) -> str | None:
        scopes = self.zeotap_settings.scopes
        if error.status == 403:
            return (
                f"Zeotap refused this key for the scopes {scopes!r} or the organisation (HTTP 403): "
                "ask your Customer Success Manager to enable them, set the 'scopes' extra to the ones the key has, "
                f"and check the 'org_id' extra of connection {self.conn_id!r}."
            )
        if error.status == 400 and NO_ORG_ID in error.message:
            return f"Zeotap found no Org ID in the request: set the 'org_id' extra of connection {self.conn_id!r}."
        if error.status == 400 and "scope" in error.message.lower():
            return (
                f"Zeotap refused the scopes header {scopes!r}: set the 'scopes' extra of connection {self.conn_id!r} "
                f"to the comma-separated scopes the key has ({DEFAULT_SCOPES})."
            )
        if error.status == 429:
            return (
                "Zeotap answered 429 (more than 10,000 requests a minute or 200 at once for this organisation): "
                "another client shares the organisation's quota. Lower the connection extras 'rate_per_minute' or "
                "'max_in_flight', or run one sync per organisation at a time (connection pools)."
            )
        return super()._advice(error)


def _fatal_if_not_about_the_row(error: BadRequestError) -> ApiError:
    """A 400 about the organisation or the scopes stops everything; any other 400 is about its request."""
    text = error.message.lower()
    if NO_ORG_ID.lower() in text or "org id" in text or "scope" in text:
        fatal = ZeotapRequestRefused.__new__(ZeotapRequestRefused)
        fatal.__dict__.update(error.__dict__)
        fatal.args = error.args
        return fatal
    return error


def _check_id_type(id_type: str) -> None:
    if not isinstance(id_type, str) or not id_type.strip():
        raise ConfigurationError(f"id_type must name a Zeotap id type (e.g. 'email', 'user_id'), got {id_type!r}.")


def _check_ids(ids: Sequence[Any]) -> None:
    """Refuse empty ids before any call: the API answers 400 and counts the call anyway."""
    empty = [position for position, value in enumerate(ids) if value is None or not str(value).strip()]
    if empty:
        raise ValueError(
            f"{len(empty)} of {len(ids)} ids are empty (first at position {empty[0]}); Zeotap would answer 400 "
            f"{NO_IDENTIFIER!r}. Leave empty ids out."
        )


def _checked(id_type: str, ids: Sequence[Any]) -> list[str]:
    _check_id_type(id_type)
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"ids must be a list of ids, not one string ({ids!r}); pass [{ids!r}].")
    _check_ids(ids)
    return [str(value) for value in ids]


def _chunks(values: Sequence[str], size: int) -> list[list[str]]:
    return [list(values[start : start + size]) for start in range(0, len(values), size)]


def _deleted(answer: Any) -> DeletedProfiles:
    answer = answer if isinstance(answer, dict) else {}
    return DeletedProfiles(
        deleted=[str(v) for v in answer.get("deletedProfiles") or []],
        not_found=[str(v) for v in answer.get("profilesNotFound") or []],
        ucids=[str(v) for v in answer.get("ucids") or []],
        requests=1,
    )
