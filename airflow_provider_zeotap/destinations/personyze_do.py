"""Personyze users through ``POST /rest/do``: one request carries a batch of ``"User profile"`` commands.

``POST /rest/users`` takes one user per request, one request in flight per account; ``do`` takes a batch of
commands, creates a user who does not exist and updates several at once. So it is the upsert path. It cannot
be create-only or update-only, so insert and update modes keep ``POST``/``PUT /rest/users``.

A refused request names no row (the API aborts at the first bad command; those before it may have been
applied): the adapter raises ``BatchRefused`` and the runner halves the batch until the bad command stands
alone. Resending the applied part is harmless: a profile update is idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Literal

from airflow_provider_zeotap.destinations.base import outcomes_for_error
from airflow_provider_zeotap.destinations.personyze import (
    USER_FIELDS,
    _cleared,
    _email,
    _email_problem,
    _identity,
    _nested_problem,
)
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.http import ApiError, BadRequestError
from airflow_provider_zeotap.sync.destination import BatchRefused, Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.modes import RECORD_MODES, Operation

UserKey = Literal["email", "internal_id"]
#: 100 commands: a request of a few tens of KB, and one bad command costs about 14 extra requests to isolate
#: (halving). Personyze documents no cap on commands per request, so the maximum stays modest too.
DO_BATCH_SIZE = 100
DO_MAX_BATCH_SIZE = 1000
#: A few ``do`` requests in flight, as many as the hook lets run at once per account (its ``max_in_flight``).
DO_BATCHES_IN_FLIGHT = 4
_COMMAND_PREFIX = re.compile(r"^Command \d+: ")


def refused_reason(error: ApiError) -> str:
    """The API's words for a refused ``do`` request, without the position of the command in it."""
    return "Personyze refused the command: " + _COMMAND_PREFIX.sub("", error.message)


class PersonyzeUsersDo(Destination):
    """Upsert profiles as ``[key_type, key, "User profile", field, value, ...]`` commands, a batch per request."""

    capabilities = Capabilities(
        name="Personyze users",  # the same object as the per-row path: switching paths needs no rebind
        mode_argument="sync_mode",
        modes=MappingProxyType({"upsert": RECORD_MODES["upsert"]}),
        batch_size=DO_BATCH_SIZE,
        max_batch_size=DO_MAX_BATCH_SIZE,
        required_fields=("email",),
        default_fields=USER_FIELDS,
        accepts_any_field=True,
        clears_with="empty string",
        batches_in_flight=DO_BATCHES_IN_FLIGHT,
    )

    def __init__(self, hook: PersonyzeHook, *, user_key: UserKey = "email", normalize_email: bool = False) -> None:
        self.hook = hook
        self.user_key = user_key
        self.normalize_email = normalize_email
        if user_key == "internal_id":
            self.capabilities = replace(type(self).capabilities, required_fields=("internal_id",))

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.get_account()

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        if self.user_key == "internal_id" and str(row.payload.get("internal_id") or "").strip() == "":
            return "no internal_id: users are keyed by internal_id here (the diff's primary key maps to it)"
        if self.user_key == "email" or row.payload.get("email") not in (None, ""):
            if problem := _email_problem(row, self.normalize_email):
                return problem
        return _nested_problem(row)

    def identity(self, row: OutboundRow) -> str | None:
        if self.user_key == "internal_id":
            value = row.payload.get("internal_id")
            return None if value in (None, "") else str(value)
        return _identity(row, self.normalize_email)

    def target(self) -> dict[str, Any]:
        return {"object": "users"}

    def command(self, row: OutboundRow) -> list[Any]:
        """``[key_type, key, "User profile", field, value, ...]``; a cleared field is sent as ``""``.

        The key field is among the pairs too, so a row that maps only its key still makes a valid command.
        """
        fields = _cleared(dict(row.payload))
        if "email" in fields and fields["email"] != "":
            fields["email"] = _email(row, self.normalize_email)
        key = fields[self.user_key] if self.user_key == "internal_id" else _email(row, self.normalize_email)
        pairs = [item for name, value in fields.items() for item in (name, value)]
        return [self.user_key, key, "User profile", *pairs]

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        try:
            await self.hook.run_commands([self.command(row) for row in rows])
        except BadRequestError as error:
            raise BatchRefused(refused_reason(error), permanent=True) from None
        except ApiError as error:
            return outcomes_for_error(rows, error)
        return [RowOutcome.ok(row) for row in rows]

    def close(self) -> None:
        self.hook.close()

    async def aclose(self) -> None:
        await self.hook.aclose()
