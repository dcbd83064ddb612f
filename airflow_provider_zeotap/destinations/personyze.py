"""Personyze: user profiles (one POST at a time) and user-list membership (one request per row)."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.destinations.base import email_problem, send_each
from airflow_provider_zeotap.sync.destination import Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.modes import AUDIENCE_MODES, RECORD_MODES, Operation

USER_FIELDS = ("email", "first_name", "last_name", "internal_id", "phone", "company")


def _email(row: OutboundRow, normalize: bool) -> str:
    value = str(row.payload.get("email") or "")
    return value.strip().lower() if normalize else value


def _identity(row: OutboundRow, normalize: bool) -> str | None:
    """The user an email names. Surrounding spaces never make two users, so they never make two identities."""
    email = _email(row, normalize).strip()
    return email or None


def _cleared(fields: dict[str, Any]) -> dict[str, Any]:
    """A field to clear is sent as an empty string: Personyze stores it as given, and a JSON null may be
    read as "not given"."""
    return {name: "" if value is None else value for name, value in fields.items()}


def _email_problem(row: OutboundRow, normalize: bool) -> str | None:
    email = _email(row, normalize)
    if not email:
        return "no email: Personyze identifies users by email; map a column to 'email'"
    return email_problem(email)


def _nested_problem(row: OutboundRow) -> str | None:
    """A profile field holds text or a number. An object or a list is refused by ``/rest/do`` (after a batch split
    to find it) and has no documented form in ``/rest/users``, so it is rejected with its field before sending."""
    for field, value in row.payload.items():
        if isinstance(value, (dict, list)):
            kind = "an object" if isinstance(value, dict) else "a list"
            return (
                f"field {field!r} holds a nested value ({kind}); Personyze profile fields hold text and numbers: "
                "flatten it in the source (one column per key) or cast it to JSON text"
            )
    return None


class PersonyzeUsers(Destination):
    """``POST /rest/users`` (create or merge on email/internal_id) and ``PUT .../where/email=``."""

    capabilities = Capabilities(
        name="Personyze users",
        mode_argument="sync_mode",
        modes=MappingProxyType({m: RECORD_MODES[m] for m in ("upsert", "insert", "update")}),
        batch_size=100,
        max_batch_size=1000,
        required_fields=("email",),
        default_fields=USER_FIELDS,
        accepts_any_field=True,  # profiles are schemaless: any mapped key/value is stored
        clears_with="empty string",
    )

    def __init__(self, hook: PersonyzeHook, *, normalize_email: bool = False) -> None:
        self.hook = hook
        self.normalize_email = normalize_email

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.get_account()

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        return _email_problem(row, self.normalize_email) or _nested_problem(row)

    def identity(self, row: OutboundRow) -> str | None:
        return _identity(row, self.normalize_email)

    def target(self) -> dict[str, Any]:
        return {"object": "users"}

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        # POST /rest/users is one-at-a-time per account; PUTs follow the same rhythm to stay gentle.
        return send_each(rows, lambda row: self._send_one(operation, row), max_in_flight=1)

    def _send_one(self, operation: Operation, row: OutboundRow) -> RowOutcome:
        email = _email(row, self.normalize_email)
        fields = _cleared({**row.payload, "email": email})
        if operation is Operation.UPDATE:
            fields.pop("email")
            if not fields:
                return RowOutcome.ok(row)
            if self.hook.update_user_by_email(email, fields) == 0:
                return RowOutcome.rejected(
                    row, f"no such user: {email} is not in Personyze (update mode never creates users; use upsert)"
                )
            return RowOutcome.ok(row)
        self.hook.create_user(fields)
        return RowOutcome.ok(row)

    def close(self) -> None:
        self.hook.close()


class PersonyzeListMembers(Destination):
    """``user_list_users``: add by email; remove resolves email -> user_id, then deletes the membership."""

    capabilities = Capabilities(
        name="Personyze user list",
        mode_argument="audience_mode",
        modes=AUDIENCE_MODES,
        batch_size=100,
        max_batch_size=1000,
        required_fields=("email",),
        default_fields=("email",),
        identity_fields=("email",),
    )

    def __init__(
        self,
        hook: PersonyzeHook,
        *,
        list_id: int,
        normalize_email: bool = False,
        max_in_flight: int = 4,
        leave_foreign_members: bool = False,
    ) -> None:
        self.hook = hook
        self.list_id = list_id
        self.normalize_email = normalize_email
        self.max_in_flight = max_in_flight
        self.leave_foreign_members = leave_foreign_members

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.require_user_list(self.list_id)

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        return _email_problem(row, self.normalize_email)

    def identity(self, row: OutboundRow) -> str | None:
        return _identity(row, self.normalize_email)

    def target(self) -> dict[str, Any]:
        return {"object": "user_list_members", "list_id": self.list_id}

    def existing_records(self) -> list[dict[str, Any]]:
        return [{"email": email} for email in self.hook.list_member_emails(self.list_id)]

    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        return send_each(rows, lambda row: self._send_one(operation, row), max_in_flight=self.max_in_flight)

    def _send_one(self, operation: Operation, row: OutboundRow) -> RowOutcome:
        email = _email(row, self.normalize_email)
        if operation is Operation.ADD:
            # Mirror only ever removes members it added. A member this sync never recorded as its own (not in
            # its baseline, not attempted by an earlier send) that is already on the list is someone else's.
            if self.leave_foreign_members and not row.ours and self._already_member(email):
                return RowOutcome.skipped(
                    row,
                    "already on the list, and this sync did not put it there: mirror leaves it alone and will never "
                    "remove it (take_over_existing=True claims such members)",
                )
            self.hook.add_list_member(self.list_id, email=email)  # adding a member already there changes nothing
            return RowOutcome.ok(row)
        user_id = self.hook.find_user_id(email)
        if user_id is not None:
            self.hook.remove_list_member(self.list_id, user_id)
        # No such user, or no such membership: the member is gone either way, which is what was asked.
        return RowOutcome.ok(row)

    def _already_member(self, email: str) -> bool:
        user_id = self.hook.find_user_id(email)
        return user_id is not None and self.hook.is_list_member(self.list_id, user_id)

    def close(self) -> None:
        self.hook.close()
