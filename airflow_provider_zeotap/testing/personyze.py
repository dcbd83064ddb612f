"""Personyze REST API emulator: the account, users, user lists and list members, under ``/rest``.

Reproduced from the public documentation (path syntax: see ``personyze_path``):

* HTTP Basic auth, user ``api``, password the API key; anything else is 401 ``Please, log in`` (text/plain).
* Errors are 400 with a plain-text, human-readable body (``Row not found``, ``Cannot do this operation on
  whole table``...). GET answers a JSON array (an object for ``/rest/<object>/<id>``); POST, PUT and DELETE
  answer a bare number.
* ``POST /rest/users`` merges into the user whose email (case-sensitive) or internal_id matches, else creates
  one. It is serialized: one in flight; a request that waited over a second for it is refused
  ``400 Too many simultaneous requests``. Injected latency (``set_faults(latency_ms=...)``) is spent while
  holding that one slot, as the API's own work would be; ``users_post_latency_ms`` slows only this route.
* Throttling (the ``rate_per_*`` and ``max_in_flight`` knobs) answers ``503`` with no ``Retry-After``, as the
  API does: 503 means unavailable or throttled, and no Retry-After is documented.
* ``GET /rest/users`` without a ``where`` must ``order_by`` an indexed column; ``PUT`` and ``DELETE`` need a
  ``where`` (or a row id); ``offset + limit`` may not exceed 1000.
* ``POST /rest/user_list_users`` resolves ``user_email`` / ``user_internal_id`` to a user_id, creating a stub
  user holding only that identifier when none matches. Deleting a list or a user deletes its memberships.

Choices where the documentation is silent:

* PUT and DELETE answer the number of rows *matched*, so 0 always means "no such row".
* ``POST /rest/user_list_users`` answers the member's user_id, also when it already was a member (re-adding
  is a no-op, not an error). ``user_list_id`` and ``user_id`` may be JSON numbers or decimal strings.
* ``POST /rest/users`` with no identifier (email, internal_id or user_id) is refused rather than creating
  an unreachable user.
* Users get ``data_last_modified`` (Unix seconds) on every write; user ids start at 5,700,001 and list ids at
  1, so a client that mixes the two up fails loudly.

Catalogs (``products``, ``articles``), ``products_interactions`` and ``POST /rest/do``: see ``personyze_objects``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import Field
from starlette.responses import JSONResponse, PlainTextResponse, Response
from typing_extensions import Unpack

from airflow_provider_zeotap.testing.middleware import SerialLane
from airflow_provider_zeotap.testing.personyze_objects import (
    INTERACTION_INDEXED,
    DoInterpreter,
    ObjectError,
    catalog_fields,
    interaction_row,
)
from airflow_provider_zeotap.testing.personyze_path import PathQuery, PathSyntaxError, parse_path
from airflow_provider_zeotap.testing.server import ApiError, Emulator, EmulatorSettings, ServerOptions

DEFAULT_API_KEY = "personyze-test-key"
API_USER = "api"
#: Columns of ``users`` a whole-table read may order by.
INDEXED_USER_COLUMNS = frozenset(
    {"user_id", "email", "internal_id", "fb_id", "last_session_time", "data_last_modified"}
)
#: How long a ``POST /rest/users`` may wait for the one in flight before it is refused.
USERS_POST_MAX_WAIT_S = 1.0
FIRST_USER_ID = 5_700_001
ACCOUNT = {"id": 1, "name": "Emulated account"}

ROW_NOT_FOUND = "Row not found"
WHOLE_TABLE = "Cannot do this operation on whole table"
TOO_MANY_SIMULTANEOUS = "Too many simultaneous requests"
PLEASE_LOG_IN = "Please, log in"


@dataclass(frozen=True)
class _Table:
    """One object of the API as rows in a dict, and how the generic GET/PUT/DELETE may address it."""

    rows: dict[Any, dict[str, Any]]
    key: str | None  # the column ``/<object>/<id>`` addresses; None: rows have no single id
    member_column: str | None  # the ``user_list_users`` column that refers to this table's key
    updatable: bool
    scan_order_by: frozenset[str] | None = None  # a read without where must order by one of these
    stamped: bool = False  # writes set data_last_modified
    #: Every read must filter (in each OR branch) or order on one of these (``products_interactions``).
    indexed: frozenset[str] | None = None
    #: Catalog objects: the name ``catalog_fields`` knows them by (renamed inputs, yes/no enums).
    catalog: str | None = None


class PersonyzeSettings(EmulatorSettings):
    users_post_latency_ms: float = Field(
        0, ge=0, description="time each POST /rest/users holds the API's one in-flight slot (ms)"
    )


class PersonyzeEmulator(Emulator):
    """Personyze under ``/rest``; see the module documentation for what is reproduced."""

    name = "personyze"
    settings_model = PersonyzeSettings
    api_prefix = "/rest"
    throttle_status = 503
    throttle_retry_after = False

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        users_post_latency_ms: float = 0,
        **server_options: Unpack[ServerOptions],
    ) -> None:
        self.api_key = api_key
        #: Time each ``POST /rest/users`` holds the one-in-flight slot; settable while running.
        self.users_post_latency_ms = users_post_latency_ms
        self._users_post_lane = SerialLane(
            USERS_POST_MAX_WAIT_S, lambda: self.error_response(400, TOO_MANY_SIMULTANEOUS)
        )
        super().__init__(**server_options)

    # -- seed and inspect ------------------------------------------------------------------------------

    def create_list(self, name: str) -> int:
        with self._lock:
            list_id = self._next_list_id
            self._next_list_id += 1
            self._lists[list_id] = {"id": list_id, "name": name}
            return list_id

    def create_user(self, **fields: Any) -> int:
        """Insert a user as given, without merging (so a test can seed near-duplicates)."""
        with self._lock:
            return self._insert_user(fields)

    def add_to_list(self, list_id: int, user_id: int) -> None:
        with self._lock:
            if list_id not in self._lists or user_id not in self._users:
                raise KeyError((list_id, user_id))
            self._members[(list_id, user_id)] = {"user_list_id": list_id, "user_id": user_id}

    def create_product(self, **fields: Any) -> int:
        """Insert (or patch) a catalog product, as ``POST /rest/products`` would."""
        with self._lock:
            return self._post_catalog(self._tables["products"], fields)

    def create_article(self, **fields: Any) -> int:
        """Insert (or patch) a catalog article, as ``POST /rest/articles`` would."""
        with self._lock:
            return self._post_catalog(self._tables["articles"], fields)

    @property
    def products(self) -> dict[str, dict[str, Any]]:
        """internal_id -> product row (copies)."""
        with self._lock:
            return {row["internal_id"]: dict(row) for row in self._products.values()}

    @property
    def articles(self) -> dict[str, dict[str, Any]]:
        """internal_id -> article row (copies)."""
        with self._lock:
            return {row["internal_id"]: dict(row) for row in self._articles.values()}

    @property
    def interactions(self) -> list[dict[str, Any]]:
        """``products_interactions`` rows, oldest first (copies)."""
        with self._lock:
            return [dict(row) for row in self._interactions.values()]

    @property
    def article_interactions(self) -> list[dict[str, Any]]:
        """Article commands received through ``do`` (the API has no object to read them back)."""
        with self._lock:
            return [dict(row) for row in self._article_log]

    @property
    def users(self) -> dict[int, dict[str, Any]]:
        """user_id -> row (copies)."""
        with self._lock:
            return {user_id: dict(row) for user_id, row in self._users.items()}

    @property
    def lists(self) -> dict[int, dict[str, Any]]:
        """list id -> row (copies)."""
        with self._lock:
            return {list_id: dict(row) for list_id, row in self._lists.items()}

    def list_member_ids(self, list_id: int) -> set[int]:
        with self._lock:
            return {user_id for member_list, user_id in self._members if member_list == list_id}

    def list_member_emails(self, list_id: int) -> set[str]:
        """Emails of the list's members (members without an email are left out)."""
        with self._lock:
            emails = (self._users[user_id].get("email") for user_id in self.list_member_ids(list_id))
            return {email for email in emails if email}

    # -- frame hooks -----------------------------------------------------------------------------------

    def _clear_state(self) -> None:
        self._users: dict[int, dict[str, Any]] = {}
        self._lists: dict[int, dict[str, Any]] = {}
        self._members: dict[tuple[int, int], dict[str, Any]] = {}
        self._user_index: dict[tuple[str, Any], int] = {}
        self._products: dict[int, dict[str, Any]] = {}
        self._articles: dict[int, dict[str, Any]] = {}
        self._interactions: dict[int, dict[str, Any]] = {}
        self._article_log: list[dict[str, Any]] = []
        self._next_user_id = FIRST_USER_ID
        self._next_list_id = 1
        self._next_catalog_id = 51_001
        self._next_interaction_id = 1
        self._tables = {
            "users": _Table(
                self._users,
                key="user_id",
                member_column="user_id",
                updatable=True,
                scan_order_by=INDEXED_USER_COLUMNS,
                stamped=True,
            ),
            "user_lists": _Table(self._lists, key="id", member_column="user_list_id", updatable=True),
            "user_list_users": _Table(self._members, key=None, member_column=None, updatable=False),
            "products": _Table(self._products, key="id", member_column=None, updatable=True, stamped=True,
                               catalog="products"),
            "articles": _Table(self._articles, key="id", member_column=None, updatable=True, stamped=True,
                               catalog="articles"),
            "products_interactions": _Table(self._interactions, key=None, member_column=None, updatable=False,
                                            indexed=INTERACTION_INDEXED),
        }

    def state(self) -> dict[str, Any]:
        return {name: list(table.rows.values()) for name, table in self._tables.items()}

    def credentials(self) -> dict[str, str]:
        return {"login": API_USER, "api_key": self.api_key}

    def _connection_fields(self) -> dict[str, Any]:
        return {"password": self.api_key}

    def seed_example(self) -> dict[str, str]:
        return {"list_id": str(self.create_list("Example list"))}

    def _serial_lane(self, method: str, path: str) -> SerialLane | None:
        """``POST /rest/users`` is serialized per account (one in flight, 1 s of waiting at most)."""
        if method == "POST" and path.rstrip("/") == f"{self.api_prefix}/users":
            return self._users_post_lane
        return None

    def authenticate(self, request: Request) -> None:
        if _basic_credentials(request.headers.get("authorization")) != (API_USER, self.api_key):
            raise ApiError(401, PLEASE_LOG_IN, headers={"WWW-Authenticate": 'Basic realm="Personyze"'})

    def error_response(self, status: int, message: str, kind: str | None = None) -> Response:
        return PlainTextResponse(message, status_code=status)

    def _add_api_routes(self, router: APIRouter) -> None:
        @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
        async def dispatch(request: Request) -> Response:
            return await self._dispatch(request)

    def _add_admin_routes(self, router: APIRouter) -> None:
        @router.post("/lists")
        async def seed_list(name: Annotated[str, Body(embed=True)]) -> dict[str, int]:
            return {"id": self.create_list(name)}

        @router.post("/users")
        async def seed_user(fields: Annotated[dict[str, Any], Body()]) -> dict[str, int]:
            return {"user_id": self.create_user(**fields)}

    # -- the API ---------------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        # The raw path: values must be split before they are percent-decoded.
        raw_path = request.scope["raw_path"].decode("latin-1")
        try:
            query = parse_path(raw_path[len(self.api_prefix) :])
        except PathSyntaxError as exc:
            raise ApiError(400, str(exc)) from None
        method = request.method
        if query.object == "account" and method == "GET":
            return JSONResponse(ACCOUNT)
        if query.object == "do" and method == "POST" and query.row_id is None and query.where is None:
            self._do(await self.read_json(request))
            return Response(status_code=200)  # "a successful POST returns nothing"
        table = self._tables.get(query.object)
        if table is None:
            raise ApiError(404, f"Unknown object: {query.object}")
        if method == "GET":
            return JSONResponse(self._read(query, table))
        if method == "DELETE":
            return JSONResponse(self._delete(query, table))
        body = await self._json_object(request)
        if method == "PUT":
            return JSONResponse(self._update(query, table, body))
        if query.object == "users":
            return JSONResponse(await self._post_user(body))
        if query.object == "user_lists":
            return JSONResponse(self._post_list(body))
        if table.catalog is not None:
            with self._lock:
                return JSONResponse(self._post_catalog(table, body))
        if query.object == "products_interactions":
            return JSONResponse(self._post_interaction(body))
        return JSONResponse(self._post_member(body))

    async def _json_object(self, request: Request) -> dict[str, Any]:
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Expected a JSON object")
        return body

    def _read(self, query: PathQuery, table: _Table) -> Any:
        with self._lock:
            if query.row_id is not None:
                rows = query.select(self._rows_by_id(table, query.row_id))
                if not rows:
                    raise ApiError(400, ROW_NOT_FOUND)
                return rows[0]
            if (
                table.scan_order_by is not None
                and query.where is None
                and query.order_by not in table.scan_order_by
            ):
                raise ApiError(400, WHOLE_TABLE)
            if table.indexed is not None and not _uses_index(query, table.indexed):
                raise ApiError(400, WHOLE_TABLE)
            return query.select(table.rows.values())

    def _update(self, query: PathQuery, table: _Table, changes: dict[str, Any]) -> int:
        if not table.updatable:
            raise ApiError(400, f"Cannot update {query.object}")
        with self._lock:
            keys = self._matching_keys(query, table)
            if table.catalog is not None:
                changes = self._catalog_fields(table, changes)
            for key in keys:
                row = table.rows[key]
                row.update({column: value for column, value in changes.items() if column != table.key})
                if table.rows is self._users:
                    self._index_user(row)
                if table.stamped:
                    _touch(row)
            return len(keys)

    def _delete(self, query: PathQuery, table: _Table) -> int:
        with self._lock:
            keys = self._matching_keys(query, table)
            for key in keys:
                del table.rows[key]
            if table.member_column is not None:
                gone = set(keys)
                column = table.member_column
                for member in [pair for pair, row in self._members.items() if row[column] in gone]:
                    del self._members[member]
            return len(keys)

    def _matching_keys(self, query: PathQuery, table: _Table) -> list[Any]:
        """Keys of the rows a PUT or DELETE addresses, by id and/or where; never the whole table."""
        if query.row_id is None and query.where is None:
            raise ApiError(400, WHOLE_TABLE)
        if query.row_id is not None:
            candidates = [row[table.key] for row in self._rows_by_id(table, query.row_id)]  # type: ignore[index]
        else:
            candidates = list(table.rows)
        where = query.where
        return [key for key in candidates if where is None or where.matches(table.rows[key])]

    def _rows_by_id(self, table: _Table, row_id: str) -> list[dict[str, Any]]:
        if table.key is None:
            raise ApiError(400, f"Rows of this object have no single id; use where/{row_id}")
        row = table.rows.get(int(row_id)) if row_id.isdigit() else None
        return [] if row is None else [row]

    async def _post_user(self, fields: dict[str, Any]) -> int:
        # The one-in-flight lane is held around this by the frame (``_serial_lane``).
        if self.users_post_latency_ms:
            await asyncio.sleep(self.users_post_latency_ms / 1000)
        with self._lock:
            return self._upsert_user(fields)

    def _upsert_user(self, fields: dict[str, Any]) -> int:
        if fields.get("user_id") is not None:
            user_id = _as_int(fields["user_id"])
            row = None if user_id is None else self._users.get(user_id)
            if row is None:
                raise ApiError(400, ROW_NOT_FOUND)
        else:
            row = self._find_user("email", fields.get("email")) or self._find_user(
                "internal_id", fields.get("internal_id")
            )
            if row is None:
                if not (fields.get("email") or fields.get("internal_id")):
                    raise ApiError(400, "A user needs an identifier: email, internal_id or user_id")
                return self._insert_user(fields)
        row.update({column: value for column, value in fields.items() if column != "user_id"})
        self._index_user(row)
        _touch(row)
        return int(row["user_id"])

    def _catalog_fields(self, table: _Table, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            return catalog_fields(table.catalog or "", fields)
        except ObjectError as error:
            raise ApiError(400, str(error)) from None

    def _post_catalog(self, table: _Table, fields: dict[str, Any]) -> int:
        """Insert, or patch the row with the same internal_id ("patch on duplicate")."""
        fields = self._catalog_fields(table, fields)
        internal_id = fields.get("internal_id")
        if internal_id in (None, ""):
            raise ApiError(400, "Field internal_id is required")
        fields["internal_id"] = str(internal_id)
        row = next((r for r in table.rows.values() if r.get("internal_id") == fields["internal_id"]), None)
        if row is None:
            row_id = self._next_catalog_id
            self._next_catalog_id += 1
            row = table.rows[row_id] = {"id": row_id}
        row.update({column: value for column, value in fields.items() if column != "id"})
        _touch(row)
        return int(row["id"])

    def _post_interaction(self, fields: dict[str, Any]) -> int:
        given = [key for key in ("user_id", "user_email", "user_internal_id") if fields.get(key) not in (None, "")]
        if len(given) != 1:
            raise ApiError(400, "Give exactly one of user_id, user_email, user_internal_id")
        with self._lock:
            user_id = self._resolve_user(given[0], fields[given[0]])
            try:
                return self._log_interaction(interaction_row(fields, user_id))
            except ObjectError as error:
                raise ApiError(400, str(error)) from None

    def _log_interaction(self, row: dict[str, Any]) -> int:
        number = self._next_interaction_id
        self._next_interaction_id += 1
        self._interactions[number] = row
        return number

    def _do(self, commands: Any) -> None:
        """Apply the commands in order; the first bad one aborts (the ones before it stay applied)."""
        def resolve(key_type: str, key: Any) -> int:
            try:
                field = {"email": "user_email", "internal_id": "user_internal_id"}.get(key_type, key_type)
                return self._resolve_user(field, key)
            except ApiError as error:
                raise ObjectError(error.message) from None

        def update(user_id: int, fields: dict[str, Any]) -> None:
            _touch(self._users[user_id]).update(fields)
            self._index_user(self._users[user_id])

        def remove(user_id: int, sku: str, status: str) -> None:
            for number in [n for n, r in self._interactions.items()
                           if (r["user_id"], r["product_internal_id"], r["status"]) == (user_id, sku, status)]:
                del self._interactions[number]

        interpreter = DoInterpreter(resolve_user=resolve, update_user=update, log_interaction=self._log_interaction,
                                    remove_interactions=remove, log_article=self._article_log.append)
        with self._lock:
            try:
                interpreter.run(commands)
            except ObjectError as error:
                raise ApiError(400, str(error)) from None

    def _post_list(self, fields: dict[str, Any]) -> int:
        name = fields.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Field name is required")
        return self.create_list(name)

    def _post_member(self, fields: dict[str, Any]) -> int:
        list_id = _as_int(fields.get("user_list_id"))
        if list_id is None:
            raise ApiError(400, "Field user_list_id is required")
        given = [
            key for key in ("user_id", "user_email", "user_internal_id") if fields.get(key) not in (None, "")
        ]
        if len(given) != 1:
            raise ApiError(400, "Give exactly one of user_id, user_email, user_internal_id")
        with self._lock:
            if list_id not in self._lists:
                raise ApiError(400, ROW_NOT_FOUND)
            user_id = self._resolve_user(given[0], fields[given[0]])
            self._members.setdefault((list_id, user_id), {"user_list_id": list_id, "user_id": user_id})
            return user_id

    def _resolve_user(self, key: str, value: Any) -> int:
        """The user a membership names, creating a stub user for an unknown email or internal_id."""
        if key == "user_id":
            user_id = _as_int(value)
            if user_id is None or user_id not in self._users:
                raise ApiError(400, ROW_NOT_FOUND)
            return user_id
        column = "email" if key == "user_email" else "internal_id"
        row = self._find_user(column, value)
        return int(row["user_id"]) if row is not None else self._insert_user({column: value})

    def _find_user(self, column: str, value: Any) -> dict[str, Any] | None:
        """The first user whose ``column`` (email or internal_id) is ``value``.

        Looked up in an index every user write keeps (a scan per lookup made a 5,000-user batch quadratic); an
        entry whose user changed since is checked against the row, and the table is scanned then.
        """
        if value in (None, ""):
            return None
        user_id = self._user_index.get((column, value))
        row = None if user_id is None else self._users.get(user_id)
        if row is not None and row.get(column) == value:
            return row
        if user_id is None:
            return None
        row = next((row for row in self._users.values() if row.get(column) == value), None)
        self._user_index.pop((column, value), None)
        if row is not None:
            self._index_user(row)
        return row

    def _index_user(self, row: dict[str, Any]) -> None:
        for column in ("email", "internal_id"):
            if row.get(column) not in (None, ""):
                try:
                    self._user_index.setdefault((column, row[column]), row["user_id"])
                except TypeError:  # an unhashable value is never a key
                    pass

    def _insert_user(self, fields: dict[str, Any]) -> int:
        user_id = self._next_user_id
        self._next_user_id += 1
        row = {
            "user_id": user_id,
            **{column: value for column, value in fields.items() if column != "user_id"},
        }
        self._users[user_id] = _touch(row)
        self._index_user(row)
        return user_id


def _uses_index(query: PathQuery, indexed: frozenset[str]) -> bool:
    """A read that filters each OR branch on an indexed column, or orders by one, is not a table scan."""
    if query.order_by in indexed:
        return True
    if query.where is None:
        return False
    return all(any(c.column in indexed for c in group) for group in query.where.alternatives)


def _touch(row: dict[str, Any]) -> dict[str, Any]:
    row["data_last_modified"] = int(time.time())
    return row


def _as_int(value: Any) -> int | None:
    """A JSON number or decimal string as an int (the real API is lenient about it), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, separator, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if separator else None
