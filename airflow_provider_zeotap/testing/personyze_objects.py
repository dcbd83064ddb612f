"""Personyze's catalogs, product interactions and ``POST /rest/do``, as the emulator serves them.

Reproduced from the public documentation:

* ``products`` and ``articles`` are keyed by ``internal_id`` (the SKU, the slug). ``POST`` patches the row
  whose ``internal_id`` matches (an upsert) and answers its id; columns are dynamic. ``is_in_stock`` /
  ``is_published`` are ``'yes'``/``'no'`` enums, not booleans. The inputs ``image_1``..``image_3`` are stored as
  ``image_big_url``, ``image_medium_url``, ``image_small_url``.
* ``products_interactions``: ``POST`` one interaction; the user is ``user_id``, ``user_internal_id`` or
  ``user_email`` (a stub user is created for an unknown email or internal_id); ``status`` is one of
  ``viewed``, ``delivered``, ``extra``, ``favorite``, ``goal``; ``quantity`` defaults to 1; ``transaction_time``
  is unix seconds. Reads must filter (or order) on an indexed column: ``user_id``, ``product_internal_id``
  (leading column of ``[product_internal_id, user_id, transaction_time]``), ``status`` or ``time``.
* ``POST /rest/do`` takes a JSON array of ``[key_type, key, command, args...]``; commands are case-insensitive
  and applied in order; the first bad one aborts the request with a 400 (those before it stay applied). A
  success answers nothing (an empty 200).

Choices where the documentation is silent (each is the strict reading):

* A catalog ``POST`` without ``internal_id`` is refused; an enum value other than ``yes``, ``no`` or ``""`` (a
  clear) is refused; ``is_in_stock: true`` is refused too (the API wants the words).
* A ``do`` error body is plain text ``Command <n>: <what>`` (n from 1). A value must be a string, a number, a
  boolean or null, and a text value longer than 65,535 bytes is refused ``Data too long for column '<c>'``
  (MySQL's TEXT limit). A ``user_id`` key must name an existing user (``Row not found``).
* ``Product removed from cart`` / ``Product unliked`` delete that user's ``extra`` / ``favorite`` rows for the
  product. Article commands are kept in a log the emulator exposes to tests: the API has no object to read
  them back.
* An interaction may name a product that is not in the catalog (the tracker logs views before a feed import).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

KEY_TYPES = ("user_id", "internal_id", "email")
#: ``do`` product commands and the interaction status each one logs (None: removes that status).
PRODUCT_COMMANDS: dict[str, tuple[str, bool]] = {
    "product viewed": ("viewed", True),
    "product added to cart": ("extra", True),
    "product liked": ("favorite", True),
    "product purchased": ("goal", True),
    "product removed from cart": ("extra", False),
    "product unliked": ("favorite", False),
}
PRODUCT_OPTIONS = ("quantity", "amount", "action_id", "transaction_time")
ARTICLE_COMMANDS = ("article viewed", "article liked", "article commented", "article unliked", "article goal")
USER_PROFILE = "user profile"
INTERACTION_STATUSES = ("viewed", "delivered", "extra", "favorite", "goal")
INTERACTION_INDEXED = frozenset({"user_id", "product_internal_id", "status", "time"})
CATALOG_ENUMS = {"products": "is_in_stock", "articles": "is_published"}
IMAGE_INPUTS = {"image_1": "image_big_url", "image_2": "image_medium_url", "image_3": "image_small_url"}
MAX_TEXT_BYTES = 65_535
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ObjectError(ValueError):
    """A refused write; the message is the plain-text body of the 400 answer."""


def catalog_fields(object_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A catalog row's columns as stored: image inputs renamed, the yes/no enum checked."""
    stored: dict[str, Any] = {}
    for column, value in fields.items():
        if not isinstance(column, str) or not _COLUMN.fullmatch(column):
            raise ObjectError(f"Invalid column name: {column}")
        stored[IMAGE_INPUTS.get(column, column)] = value
    enum = CATALOG_ENUMS[object_name]
    if enum in stored and stored[enum] not in ("yes", "no", ""):
        raise ObjectError(f"Invalid value for {enum}: {stored[enum]!r}; expected 'yes' or 'no'")
    return stored


def interaction_row(fields: dict[str, Any], user_id: int) -> dict[str, Any]:
    """A ``products_interactions`` row from a POST body (the user already resolved)."""
    product = fields.get("product_internal_id")
    if product in (None, ""):
        raise ObjectError("Field product_internal_id is required")
    status = fields.get("status")
    if status not in INTERACTION_STATUSES:
        raise ObjectError(f"Invalid status: {status!r}; expected one of {', '.join(INTERACTION_STATUSES)}")
    row = {"user_id": user_id, "product_internal_id": str(product), "status": status, "quantity": 1,
           "action_id": None, "transaction_time": None, "amount": None}
    for option in PRODUCT_OPTIONS:
        if fields.get(option) is not None:
            row[option] = _option_value(option, fields[option])
    row["time"] = int(time.time())
    return row


def _option_value(option: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ObjectError(f"Invalid value for {option}: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ObjectError(f"Invalid value for {option}: {value!r}") from None
    if option in ("quantity", "transaction_time", "action_id"):
        if number != int(number):
            raise ObjectError(f"Invalid value for {option}: {value!r}; expected an integer")
        return int(number)
    return number


class DoInterpreter:
    """Applies one ``do`` request's commands in order against the emulator's state (lock held by the caller).

    ``resolve_user(key_type, key)`` finds the user (creating a stub for an email or internal_id);
    ``log_interaction`` / ``remove_interactions`` / ``log_article`` change the interaction tables.
    """

    def __init__(
        self,
        *,
        resolve_user: Callable[[str, Any], int],
        update_user: Callable[[int, dict[str, Any]], None],
        log_interaction: Callable[[dict[str, Any]], None],
        remove_interactions: Callable[[int, str, str], None],
        log_article: Callable[[dict[str, Any]], None],
    ) -> None:
        self.resolve_user = resolve_user
        self.update_user = update_user
        self.log_interaction = log_interaction
        self.remove_interactions = remove_interactions
        self.log_article = log_article

    def run(self, commands: Any) -> None:
        if not isinstance(commands, list):
            raise ObjectError("Expected a JSON array of commands")
        for number, command in enumerate(commands, start=1):
            try:
                self._apply(command)
            except ObjectError as error:
                raise ObjectError(f"Command {number}: {error}") from None

    def _apply(self, command: Any) -> None:
        if not isinstance(command, list) or len(command) < 3:
            raise ObjectError("Expected [key_type, key, command, args...]")
        key_type, key, name, *args = command
        if key_type not in KEY_TYPES:
            raise ObjectError(f"Unknown key type: {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
        if key in (None, "") or isinstance(key, (list, dict, bool)):
            raise ObjectError("The key value is empty")
        if not isinstance(name, str):
            raise ObjectError("The command name must be a string")
        name = name.strip().lower()
        if name == USER_PROFILE:
            fields = _profile_fields(args)
            self.update_user(self.resolve_user(key_type, key), fields)
        elif name in PRODUCT_COMMANDS:
            status, adds = PRODUCT_COMMANDS[name]
            sku, options = _product_args(args)
            user_id = self.resolve_user(key_type, key)
            if adds:
                fields = {"product_internal_id": sku, "status": status, **options}
                self.log_interaction(interaction_row(fields, user_id))
            else:
                self.remove_interactions(user_id, sku, status)
        elif name in ARTICLE_COMMANDS:
            if len(args) != 1 or args[0] in (None, "") or not isinstance(args[0], (str, int)):
                raise ObjectError(f"{name.capitalize()} takes one argument, the article's internal_id")
            user_id = self.resolve_user(key_type, key)
            self.log_article({"user_id": user_id, "article_internal_id": str(args[0]),
                              "action": name.removeprefix("article "), "time": int(time.time())})
        else:
            raise ObjectError(f"Unknown command: {command[2]!r}")


def _profile_fields(args: list[Any]) -> dict[str, Any]:
    if not args or len(args) % 2:
        raise ObjectError("User profile takes field, value pairs")
    fields: dict[str, Any] = {}
    for column, value in zip(args[::2], args[1::2]):
        if not isinstance(column, str) or not _COLUMN.fullmatch(column) or column == "user_id":
            raise ObjectError(f"Invalid field name: {column!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ObjectError(f"Invalid value for field {column}: expected a string or a number")
        if isinstance(value, str) and len(value.encode("utf-8")) > MAX_TEXT_BYTES:
            raise ObjectError(f"Data too long for column '{column}'")
        fields[column] = value
    return fields


def _product_args(args: list[Any]) -> tuple[str, dict[str, Any]]:
    if not args or args[0] in (None, "") or not isinstance(args[0], (str, int)) or isinstance(args[0], bool):
        raise ObjectError("Product commands take the product's internal_id first")
    sku, rest = str(args[0]), args[1:]
    if len(rest) % 2:
        raise ObjectError("After the product's internal_id come option, value pairs")
    options: dict[str, Any] = {}
    for option, value in zip(rest[::2], rest[1::2]):
        if option not in PRODUCT_OPTIONS:
            raise ObjectError(f"Unknown option: {option!r}; expected one of {', '.join(PRODUCT_OPTIONS)}")
        options[option] = value
    return sku, options
