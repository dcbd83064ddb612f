"""Personyze REST API: Basic auth ``api`` + key, path-syntax queries, one row per request.

Wire facts (see the project's API notes): GET returns a JSON array (an object for ``/<object>/<id>``),
POST returns the new id as a bare number, PUT and DELETE return the number of rows affected, and 400
bodies are plain text. ``POST /rest/users`` is serialized per account: one in flight, and a request
that waited over 1 s is refused with ``400 Too many simultaneous requests``, which is retried.

``POST /rest/do`` takes a JSON array of commands (``[key_type, key, command, args...]``), answers nothing
on success and aborts at the first bad command (those before it may have been applied). Catalogs
(``products``, ``articles``) are keyed by ``internal_id``; ``products_interactions`` is read through its
index ``[product_internal_id, user_id, transaction_time]``. See ``docs/wire/personyze.md``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from airflow_provider_zeotap.hooks.base import ApiHook
from airflow_provider_zeotap.http import ApiError, BadRequestError, ConfigurationError, Limits, Pacer

#: Personyze's Basic auth user name; the key is the password.
BASIC_USER = "api"
#: (column, operator, value) — operators as the API spells them.
Condition = tuple[str, str, Any]
OPERATORS = frozenset({"=", "!=", ">", ">=", "<", "<=", ":", "!:"})
USERS_POST_LANE = "users_post"
ROW_NOT_FOUND = "Row not found"
#: A read returns at most this many rows: offset + limit may not pass it.
MAX_READ_WINDOW = 1000
_EMAIL_IN_PATH = re.compile(r"[^/&|=:<>!,]*(?:%40|@)[^/&|,]*")


def basic_credentials(user: str, password: str) -> str:
    """The base64 part of an ``Authorization: Basic`` header, as httpx builds it."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def encode_value(value: Any) -> str:
    """Percent-encode one value: ``/ = & % |`` and spaces inside a value would change the query."""
    if isinstance(value, bool):
        value = int(value)
    return quote(str(value), safe="")


def build_path(
    obj: str,
    row_id: int | str | None = None,
    *,
    where: Mapping[str, Any] | Sequence[Condition] | None = None,
    columns: Sequence[str] | None = None,
    order_by: str | None = None,
    order_by_desc: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> str:
    """Build ``/<object>[/<id>]/where/.../columns/.../order_by/.../limit/<off>,<n>``.

    ``where`` is a mapping (column = value, all AND-ed) or a list of (column, operator, value); a list or
    tuple value with ``:``/``!:`` becomes a comma list, each item encoded on its own.
    """
    parts = [obj.strip("/")]
    if row_id is not None:
        parts.append(encode_value(row_id))
    if where:
        conditions = list(where.items()) if isinstance(where, Mapping) else list(where)
        parts += ["where", "&".join(_condition(c) for c in conditions)]
    if columns:
        parts += ["columns", ",".join(encode_value(c) for c in columns)]
    if order_by:
        parts += ["order_by", encode_value(order_by)]
    if order_by_desc:
        parts += ["order_by_desc", encode_value(order_by_desc)]
    if limit is not None:
        parts += ["limit", f"{int(offset)},{int(limit)}" if offset else str(int(limit))]
    return "/" + "/".join(parts)


def _condition(condition: tuple[Any, ...]) -> str:
    column, op, value = condition if len(condition) == 3 else (condition[0], "=", condition[1])
    if op not in OPERATORS:
        raise ValueError(f"Unknown Personyze where operator {op!r}; use one of {sorted(OPERATORS)}.")
    if isinstance(value, (list, tuple, set, frozenset)):
        rendered = ",".join(encode_value(v) for v in value)
    else:
        rendered = encode_value(value)
    return f"{encode_value(column)}{op}{rendered}"


def _number(response: httpx.Response, what: str, base_url: str) -> int:
    """Bare-number answers (``5712334``) arrive as JSON numbers or as text."""
    try:
        return int(response.text.strip().strip('"'))
    except ValueError:
        full, base_path = response.request.url.path, urlsplit(base_url).path
        path = full[len(base_path) :] if base_path and full.startswith(base_path) else full
        raise ApiError(
            f"expected a bare number ({what}) but got {response.text[:100]!r}",
            vendor="Personyze",
            method=response.request.method,
            path=_EMAIL_IN_PATH.sub("<email>", path),
            status=response.status_code,
            response=response,
            base_url=base_url,
        ) from None


class PersonyzeHook(ApiHook):
    """Talks to Personyze's REST API with the key from a ``personyze`` connection."""

    conn_name_attr = "personyze_conn_id"
    default_conn_name = "personyze_default"
    conn_type = "personyze"
    hook_name = "Personyze"

    vendor = "Personyze"
    path_prefix = "/rest"
    #: No published rate; 503 means "slow down". Keep a few calls in flight.
    default_limits = Limits(max_in_flight=4)
    throttle_markers = ("Too many simultaneous requests",)

    def _auth(self, secret: str) -> httpx.Auth:
        return httpx.BasicAuth(BASIC_USER, secret)

    def _secret_wire_forms(self, secret: str) -> list[str]:
        """``Authorization: Basic base64("api:<key>")`` is what goes out; ``base64("<key>:")`` is the form the
        vendor's curl examples use (key as user name, no password). Both spell the key."""
        return [basic_credentials(BASIC_USER, secret), basic_credentials(secret, "")]

    def _lanes(self) -> dict[str, Pacer]:
        return {USERS_POST_LANE: Pacer(Limits(max_in_flight=1))}

    def _describe_path(self, path: str) -> str:
        return _EMAIL_IN_PATH.sub("<email>", path)

    # -- account -----------------------------------------------------------------------------------
    def get_account(self) -> dict[str, Any]:
        return self.client.json("GET", "/account")

    def _check_connection(self) -> str:
        """A sync needs a working key and, for list syncs, readable user lists: check both."""
        account = self.get_account()
        name = account.get("name") or account.get("id") if isinstance(account, dict) else None
        self.client.json("GET", build_path("user_lists", limit=1))
        where = f"Connected to Personyze account {name!r}" if name else "Connected to Personyze"
        return f"{where}; the key can read user lists."

    # -- users -------------------------------------------------------------------------------------
    def find_users(self, where: Mapping[str, Any] | Sequence[Condition], *, columns: Sequence[str] | None = None,
                   limit: int = 10) -> list[dict[str, Any]]:
        rows = self.client.json("GET", build_path("users", where=where, columns=columns, limit=limit))
        return list(rows or [])

    def get_user_by_email(self, email: str) -> dict[str, Any] | None:
        rows = self.find_users({"email": email}, limit=1)
        return rows[0] if rows else None

    def find_user_id(self, email: str) -> int | None:
        rows = self.find_users({"email": email}, columns=["user_id"], limit=1)
        return int(rows[0]["user_id"]) if rows else None

    def create_user(self, fields: Mapping[str, Any]) -> int:
        """Create, or merge into the user whose email or internal_id matches. Returns the user_id."""
        response = self.client.request("POST", "/users", json=dict(fields), lane=USERS_POST_LANE)
        return _number(response, "user_id", self.client.display_url)

    def update_user_by_email(self, email: str, fields: Mapping[str, Any]) -> int:
        """Update the user with this email; returns rows affected (0: no such user)."""
        response = self.client.request("PUT", build_path("users", where={"email": email}), json=dict(fields))
        return _number(response, "rows affected", self.client.display_url)

    # -- user lists --------------------------------------------------------------------------------
    def list_user_lists(self) -> list[dict[str, Any]]:
        return list(self.client.json("GET", "/user_lists") or [])

    def get_user_list(self, list_id: int) -> dict[str, Any] | None:
        try:
            row = self.client.json("GET", build_path("user_lists", int(list_id)))
        except BadRequestError as error:
            if ROW_NOT_FOUND.lower() in error.message.lower():
                return None
            raise
        return row[0] if isinstance(row, list) and row else row or None

    def require_user_list(self, list_id: int) -> dict[str, Any]:
        """The list must exist before a sync writes to it; Personyze lists are not created by syncs."""
        row = self.get_user_list(list_id)
        if row is None:
            raise ConfigurationError(
                f"Personyze user list {list_id} does not exist: create the list in Personyze first, then use its "
                "numeric ID (not its name) as list_id. Known lists: "
                + ", ".join(f"{r.get('id')}={r.get('name')!r}" for r in self.list_user_lists()[:20])
            )
        return row

    def add_list_member(
        self, list_id: int, *, email: str | None = None, internal_id: str | None = None, user_id: int | None = None
    ) -> int:
        """Add a user to a list by email, internal id or user id (Personyze creates a stub user if needed)."""
        body: dict[str, Any] = {"user_list_id": int(list_id)}
        if email is not None:
            body["user_email"] = email
        elif internal_id is not None:
            body["user_internal_id"] = internal_id
        elif user_id is not None:
            body["user_id"] = int(user_id)
        else:
            raise ValueError("add_list_member needs email, internal_id or user_id")
        response = self.client.request("POST", "/user_list_users", json=body)
        return _number(response, "membership", self.client.display_url)

    def is_list_member(self, list_id: int, user_id: int) -> bool:
        path = build_path(
            "user_list_users", where=[("user_list_id", "=", int(list_id)), ("user_id", "=", int(user_id))], limit=1
        )
        return bool(self.client.json("GET", path))

    def list_member_emails(self, list_id: int) -> list[str]:
        """Every member's email, for a take-over; refused past the API's read window of 1000 rows.

        Reads page with ``limit/<offset>,<n>`` and offset + n may not pass 1000. Paging further needs a
        ``user_id>`` condition, and ``>`` does not survive an HTTP client's path encoding, so a bigger
        list is refused rather than read in part (a part would leave the rest of the list alone).
        """
        path = build_path(
            "user_list_users", where={"user_list_id": int(list_id)}, columns=["user_id"], order_by="user_id",
            limit=MAX_READ_WINDOW,
        )
        user_ids = [int(row["user_id"]) for row in self.client.json("GET", path) or []]
        if len(user_ids) >= MAX_READ_WINDOW:
            raise ConfigurationError(
                f"Personyze user list {list_id} has {MAX_READ_WINDOW} or more members, more than one read may return, "
                "so take_over_existing cannot list them all. Empty the list, or run without take_over_existing "
                "(mirror then removes only what this sync delivered)."
            )
        emails: list[str] = []
        for start in range(0, len(user_ids), 100):
            chunk = user_ids[start : start + 100]
            users = self.find_users([("user_id", ":", chunk)], columns=["user_id", "email"], limit=len(chunk))
            emails += [str(user["email"]) for user in users if user.get("email")]
        return emails

    def remove_list_member(self, list_id: int, user_id: int) -> int:
        """Remove one membership; returns rows affected (0: it was not there)."""
        path = build_path("user_list_users", where=[("user_list_id", "=", int(list_id)), ("user_id", "=", int(user_id))])
        return _number(self.client.request("DELETE", path), "rows affected", self.client.display_url)

    # -- do: batched profile updates and interactions (async: many requests in flight) ---------------
    async def run_commands(self, commands: Sequence[Sequence[Any]], *, replay_safe: bool = True) -> None:
        """``POST /rest/do``. A 400 means some command is bad: those before it may have been applied.

        ``replay_safe=False`` for commands that must not land twice (interactions): an answer lost after the
        request went out is then raised, not retried, so the caller can look up what landed first.
        """
        await self.client.arequest("POST", "/do", json=[list(c) for c in commands], replay_safe=replay_safe)

    # -- catalogs (products, articles) ---------------------------------------------------------------
    async def upsert_catalog_item(self, obj: str, fields: Mapping[str, Any]) -> int:
        """``POST /rest/<obj>``: creates, or patches the row with the same internal_id. Returns its id."""
        response = await self.client.arequest("POST", f"/{obj}", json=dict(fields))
        return _number(response, "id", self.client.display_url)

    async def update_catalog_item(self, obj: str, internal_id: str, fields: Mapping[str, Any]) -> int:
        """``PUT /rest/<obj>/where/internal_id=..``; returns rows affected (0: no such item)."""
        path = build_path(obj, where={"internal_id": internal_id})
        response = await self.client.arequest("PUT", path, json=dict(fields))
        return _number(response, "rows affected", self.client.display_url)

    async def delete_catalog_item(self, obj: str, internal_id: str) -> int:
        """``DELETE /rest/<obj>/where/internal_id=..``; returns rows affected (0: already gone)."""
        path = build_path(obj, where={"internal_id": internal_id})
        return _number(await self.client.arequest("DELETE", path), "rows affected", self.client.display_url)

    async def catalog_item_exists(self, obj: str, internal_id: str) -> bool:
        path = build_path(obj, where={"internal_id": internal_id}, columns=["id"], limit=1)
        return bool(await self.client.ajson("GET", path))

    def catalog_internal_ids(self, obj: str) -> list[str]:
        """Every internal_id of a catalog, for a take-over; refused past the API's read window of 1000 rows
        (``offset + limit`` may not pass it, and a partial list would leave the rest alone)."""
        path = build_path(obj, columns=["id", "internal_id"], order_by="id", limit=MAX_READ_WINDOW)
        rows = self.client.json("GET", path) or []
        if len(rows) >= MAX_READ_WINDOW:
            raise ConfigurationError(
                f"The Personyze {obj} catalog has {MAX_READ_WINDOW} or more items, more than one read may return, so "
                "take_over_existing cannot list them all. Run without take_over_existing (mirror then deletes only "
                "what this sync created)."
            )
        return [str(row["internal_id"]) for row in rows if row.get("internal_id") not in (None, "")]

    # -- product interactions ------------------------------------------------------------------------
    async def find_user_id_by(self, key_type: str, value: Any) -> int | None:
        """The user_id of the user whose ``email`` or ``internal_id`` is ``value`` (None: no such user)."""
        if key_type == "user_id":
            return int(value)
        path = build_path("users", where={key_type: value}, columns=["user_id"], limit=1)
        rows = await self.client.ajson("GET", path)
        return int(rows[0]["user_id"]) if rows else None

    async def interaction_exists(self, product_internal_id: str, user_id: int, transaction_time: int) -> bool:
        """Looked up through the index ``[product_internal_id, user_id, transaction_time]``."""
        where = [("product_internal_id", "=", product_internal_id), ("user_id", "=", int(user_id)),
                 ("transaction_time", "=", int(transaction_time))]
        path = build_path("products_interactions", where=where, columns=["user_id"], limit=1)
        return bool(await self.client.ajson("GET", path))

    async def create_interaction(self, fields: Mapping[str, Any]) -> int:
        """``POST /rest/products_interactions`` (never replayed: see ``run_commands``)."""
        response = await self.client.arequest("POST", "/products_interactions", json=dict(fields), replay_safe=False)
        return _number(response, "id", self.client.display_url)

    def _advice(self, error: ApiError) -> str | None:
        if error.status == 401:
            return (
                "Personyze refused the API key (HTTP 401): it is wrong or no longer active. Copy the REST API key "
                f"from Personyze Settings > API into the password field of connection {self.conn_id!r} (the user "
                "name is always 'api')."
            )
        if error.status == 404:
            # Personyze answers a missing row with 400 "Row not found": a 404 means no such object here,
            # which only happens when the base URL points somewhere else.
            return self._wrong_base_url()
        return super()._advice(error)
