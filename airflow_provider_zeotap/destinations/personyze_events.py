"""Personyze events: product and article interactions, appended through ``POST /rest/do``.

Events are append-only: each new row becomes one interaction (insert mode); changed and removed rows are
committed as seen. An interaction sent twice is counted twice, so:

* product interactions that may already have been sent (a resume after a kill: the runner passes rows this
  sync recorded as attempted with ``ours=True``; a lost answer; the halves of a refused batch) are first
  looked up through Personyze's index ``[product_internal_id, user_id, transaction_time]``, and only the
  missing ones are sent. A ``do`` request is never replayed blindly (``replay_safe=False``);
* article interactions have no REST object to read back: a resume may repeat one batch.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import asyncio
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from airflow_provider_zeotap.destinations.base import asend_each, outcomes_for_error
from airflow_provider_zeotap.destinations.personyze_do import (
    DO_BATCH_SIZE,
    DO_BATCHES_IN_FLIGHT,
    DO_MAX_BATCH_SIZE,
    refused_reason,
)
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.http import ApiError, BadRequestError
from airflow_provider_zeotap.sync.destination import BatchRefused, Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.modes import RECORD_MODES, Operation

#: Row field -> ``do`` key type, in the order a row's user is taken from.
USER_KEYS = {"user_id": "user_id", "user_internal_id": "internal_id", "user_email": "email"}
#: Interaction status -> the ``do`` command that logs it. ``delivered`` has none: it goes through
#: ``POST /rest/products_interactions``.
PRODUCT_STATUSES = {"viewed": "Product viewed", "extra": "Product added to cart", "favorite": "Product liked",
                    "goal": "Product purchased", "delivered": None}
STATUS_MEANINGS = "viewed, extra (added to cart), favorite (liked), goal (purchased), delivered (recommendation shown)"
ARTICLE_STATUSES = ("viewed", "liked", "commented", "unliked", "goal")
INSERT_ONLY = MappingProxyType({"insert": RECORD_MODES["insert"]})
_DIGITS = re.compile(r"-?\d+")


def unix_seconds(value: Any) -> int:
    """A timestamp as unix seconds: numbers as they are, ISO 8601 text (what the field mapping makes of
    warehouse timestamps and dates) by its offset, naive as UTC, a date at midnight UTC. Personyze keeps whole
    seconds, so a fraction of a second is dropped (floored)."""
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        return math.floor(value)
    text = str(value).strip()
    if _DIGITS.fullmatch(text):
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a timestamp: {value!r} (give unix seconds or ISO 8601)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return math.floor(parsed.timestamp())


def user_key(row: OutboundRow) -> tuple[str, Any] | None:
    """The row's user as a ``do`` key: the first of user_id, user_internal_id, user_email that has a value."""
    for field, key_type in USER_KEYS.items():
        value = row.payload.get(field)
        if value not in (None, ""):
            return key_type, value
    return None


class _Interactions(Destination):
    """What product and article interactions share: insert only, a user key per row, a batch per ``do``."""

    item_field: ClassVar[str]
    statuses: ClassVar[Sequence[str]]

    def __init__(self, hook: PersonyzeHook, *, max_in_flight: int = 4) -> None:
        self.hook = hook
        self.max_in_flight = max_in_flight

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.get_account()

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        key = user_key(row)
        if key is None:
            return "no user: map user_email, user_internal_id or user_id, and give it a value"
        if key[0] == "user_id" and not _DIGITS.fullmatch(str(key[1]).strip()):
            return f"user_id must be Personyze's numeric user id, got {key[1]!r} (use user_internal_id for yours)"
        if row.payload.get(self.item_field) in (None, ""):
            return f"no {self.item_field}"
        if row.payload.get("status") not in self.statuses:
            return f"status {row.payload.get('status')!r} is not one of {self._status_help()}"
        return self._validate_more(row)

    def _validate_more(self, row: OutboundRow) -> str | None:
        return None

    def _status_help(self) -> str:
        return ", ".join(self.statuses)

    def close(self) -> None:
        self.hook.close()

    async def aclose(self) -> None:
        await self.hook.aclose()


class PersonyzeProductInteractions(_Interactions):
    """Views, carts, likes and purchases: ``do``'s Product commands, looked up before any resend."""

    item_field = "product_internal_id"
    statuses = tuple(PRODUCT_STATUSES)
    capabilities = Capabilities(
        name="Personyze product interactions",
        mode_argument="sync_mode",
        modes=INSERT_ONLY,
        batch_size=DO_BATCH_SIZE,
        max_batch_size=DO_MAX_BATCH_SIZE,
        batches_in_flight=DO_BATCHES_IN_FLIGHT,
        required_fields=("product_internal_id", "status", "transaction_time"),
        default_fields=(*USER_KEYS, "product_internal_id", "status", "quantity", "amount", "action_id",
                        "transaction_time"),
    )

    def __init__(self, hook: PersonyzeHook, *, max_in_flight: int = 4) -> None:
        super().__init__(hook, max_in_flight=max_in_flight)
        #: Rows this process has put in a request: sending one again needs a look-up first.
        self._sent: set[int] = set()
        self._user_ids: dict[tuple[str, str], int] = {}

    def _status_help(self) -> str:
        return STATUS_MEANINGS

    def _validate_more(self, row: OutboundRow) -> str | None:
        try:
            unix_seconds(row.payload.get("transaction_time"))
        except ValueError as problem:
            return f"transaction_time: {problem}"
        for field in ("quantity", "action_id"):
            value = row.payload.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                return f"{field} must be a whole number, got {value!r}"
        amount = row.payload.get("amount")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, (int, float))):
            return f"amount must be a number, got {amount!r}"
        return None

    def identity(self, row: OutboundRow) -> str | None:
        """What tells one interaction from another once it is in Personyze: product, user and time."""
        key = user_key(row)
        try:
            when = unix_seconds(row.payload.get("transaction_time"))
        except ValueError:
            return None
        if key is None or row.payload.get("product_internal_id") in (None, ""):
            return None
        return json.dumps([str(row.payload["product_internal_id"]), key[0], str(key[1]), when])

    def target(self) -> dict[str, Any]:
        return {"object": "product_interactions"}

    def options(self, row: OutboundRow) -> dict[str, Any]:
        fields = {name: row.payload.get(name) for name in ("quantity", "amount", "action_id")}
        fields["transaction_time"] = unix_seconds(row.payload["transaction_time"])
        return {name: value for name, value in fields.items() if value is not None}

    def command(self, row: OutboundRow) -> list[Any]:
        key_type, key = user_key(row)  # type: ignore[misc]  # validated
        pairs = [item for name, value in self.options(row).items() for item in (name, value)]
        return [key_type, key, PRODUCT_STATUSES[row.payload["status"]], str(row.payload["product_internal_id"]), *pairs]

    async def asend(
        self, operation: Operation, rows: Sequence[OutboundRow], *, attempts_left: int = 3
    ) -> list[RowOutcome]:
        outcomes: list[RowOutcome] = []
        missing = list(rows)
        maybe_sent = [row for row in rows if row.ours or row.row_id in self._sent]
        if maybe_sent:
            landed = await self._landed(maybe_sent)
            outcomes = [RowOutcome.ok(row) for row in maybe_sent if row.row_id in landed]
            missing = [row for row in rows if row.row_id not in landed]
        self._sent.update(row.row_id for row in missing)
        by_command = [row for row in missing if PRODUCT_STATUSES[row.payload["status"]]]
        delivered = [row for row in missing if not PRODUCT_STATUSES[row.payload["status"]]]
        if delivered:
            outcomes += await asend_each(delivered, self._post_delivered, max_in_flight=self.max_in_flight)
        if not by_command:
            return outcomes
        try:
            await self.hook.run_commands([self.command(row) for row in by_command], replay_safe=False)
        except BadRequestError as error:
            # Some command is bad; those before it may have landed. The runner halves the batch, and each half
            # is looked up before it goes out again (its rows are in ``_sent``).
            raise BatchRefused(refused_reason(error), permanent=True) from None
        except ApiError as error:
            if error.may_have_landed and error.retryable and attempts_left > 1:
                # The answer was lost, not necessarily the write: give a slow server a moment to finish it, then
                # look the rows up (they are in ``_sent``) and send only what is missing.
                await asyncio.sleep(self.hook.client.retry.backoff_initial * (4 - attempts_left))
                return outcomes + await self.asend(operation, by_command, attempts_left=attempts_left - 1)
            return outcomes + outcomes_for_error(by_command, error)
        return outcomes + [RowOutcome.ok(row) for row in by_command]

    async def _post_delivered(self, row: OutboundRow) -> RowOutcome:
        key_type, key = user_key(row)  # type: ignore[misc]
        field = {"user_id": "user_id", "internal_id": "user_internal_id", "email": "user_email"}[key_type]
        product = str(row.payload["product_internal_id"])
        await self.hook.create_interaction(
            {field: key, "product_internal_id": product, "status": "delivered", **self.options(row)}
        )
        return RowOutcome.ok(row)

    async def _landed(self, rows: Sequence[OutboundRow]) -> set[int]:
        """Row ids of the interactions already in Personyze, by ``[product_internal_id, user_id, transaction_time]``."""
        gate = asyncio.Semaphore(max(1, self.max_in_flight))

        async def look_up(row: OutboundRow) -> bool:
            key_type, key = user_key(row)  # type: ignore[misc]
            async with gate:
                user_id = self._user_ids.get((key_type, str(key)))
                if user_id is None:
                    user_id = await self.hook.find_user_id_by(key_type, key)
                    if user_id is None:
                        return False  # no such user yet: nothing of theirs can have landed
                    self._user_ids[(key_type, str(key))] = user_id
                return await self.hook.interaction_exists(
                    str(row.payload["product_internal_id"]), user_id, self.options(row)["transaction_time"]
                )

        found = await asyncio.gather(*(look_up(row) for row in rows))
        return {row.row_id for row, hit in zip(rows, found) if hit}


class PersonyzeArticleInteractions(_Interactions):
    """``Article viewed|liked|commented|unliked|goal`` commands. Nothing reads them back, so a resume may
    repeat the one batch that was in flight."""

    item_field = "article_internal_id"
    statuses = ARTICLE_STATUSES
    capabilities = Capabilities(
        name="Personyze article interactions",
        mode_argument="sync_mode",
        modes=INSERT_ONLY,
        batch_size=DO_BATCH_SIZE,
        max_batch_size=DO_MAX_BATCH_SIZE,
        batches_in_flight=DO_BATCHES_IN_FLIGHT,
        required_fields=("article_internal_id", "status"),
        default_fields=(*USER_KEYS, "article_internal_id", "status"),
    )

    def target(self) -> dict[str, Any]:
        return {"object": "article_interactions"}

    def command(self, row: OutboundRow) -> list[Any]:
        key_type, key = user_key(row)  # type: ignore[misc]
        return [key_type, key, f"Article {row.payload['status']}", str(row.payload["article_internal_id"])]

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        try:
            await self.hook.run_commands([self.command(row) for row in rows])
        except BadRequestError as error:
            raise BatchRefused(refused_reason(error), permanent=True) from None
        except ApiError as error:
            return outcomes_for_error(rows, error)
        return [RowOutcome.ok(row) for row in rows]
