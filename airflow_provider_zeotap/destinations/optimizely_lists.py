"""Optimizely list attributes: the whole membership is read, changed and written back, once per batch.

The v2 API has no per-member call: ``list_content`` is one comma-separated string, and writing it replaces
the whole list. So a batch (by default the whole plan) is one read-change-write covering all its operations,
adds and removes together (``combined_operations``), and it is never split: halving a whole-list write only
multiplies writes, each of which costs half a second at 2 requests/s (``split_refused_batches=False``).

The API offers no precondition on a write, so a second read just before the write checks that nobody
changed the list since it was read; on a change the batch is applied again to what the list now holds, up
to ``MAX_REAPPLY`` times, and then the task stops without writing. What is left between that second read
and the write (one request, under a second) is a race the API gives no way to close.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.hooks.optimizely import (
    MAX_UPLOAD_BYTES,
    OptimizelyHook,
    check_project_id,
    list_attribute_missing,
)
from airflow_provider_zeotap.http import ConfigurationError, NotFoundError
from airflow_provider_zeotap.sync.destination import (
    BatchRefused,
    Capabilities,
    Destination,
    OutboundRow,
    RowOutcome,
)
from airflow_provider_zeotap.sync.modes import AUDIENCE_MODES, Operation

log = logging.getLogger(__name__)

#: How many times a batch is applied again to a list that changed between the read and the write.
MAX_REAPPLY = 3
#: The default batch is the whole plan: one write of the list per run. A 5 MB upload holds at most about
#: a million short ids, so no plan that fits the list is larger.
WHOLE_PLAN = 1_000_000


class ListChangedDuringSync(FatalError):
    """The list kept changing between this task's read and its write: nothing was written."""


class OptimizelyListAttribute(Destination):
    """Rows are the members (``user_id``) of one list attribute; see the module docstring."""

    capabilities = Capabilities(
        name="Optimizely list attribute",
        mode_argument="audience_mode",
        modes=MappingProxyType(dict(AUDIENCE_MODES)),
        batch_size=WHOLE_PLAN,
        max_batch_size=WHOLE_PLAN,
        required_fields=("user_id",),
        default_fields=("user_id",),
        identity_fields=("user_id",),
        split_refused_batches=False,
        combined_operations=True,
    )

    def __init__(
        self,
        hook: OptimizelyHook,
        *,
        project_id: str | int,
        list_attribute_id: str | int,
        leave_foreign_members: bool = False,
    ) -> None:
        self.hook = hook
        self.project_id = check_project_id(project_id)
        self.list_attribute_id = int(list_attribute_id)
        #: Add and mirror: a member that was in the list before this sync added it is someone else's; it is left
        #: alone (skipped), so a mirror can never remove it later. ``take_over_existing`` makes every row ours.
        self.leave_foreign_members = leave_foreign_members
        #: What the list held at this task's last read or write: the next batch's first read, so each batch
        #: costs one read (the check before its write) and one write.
        self._known: list[str] | None = None

    # -- checks before sending -------------------------------------------------------------------------
    def prepare(self, *, dry_run: bool) -> None:
        """The list attribute must exist, in this project; a missing project or list fails before any write."""
        try:
            attribute = self.hook.get_list_attribute(self.list_attribute_id)
        except NotFoundError:
            self.hook.get_project(self.project_id)  # a missing project says so, with its own advice
            raise ConfigurationError(list_attribute_missing(self.list_attribute_id, self.project_id)) from None
        owner = str(attribute.get("project_id"))
        if owner != self.project_id:
            raise ConfigurationError(
                f"Optimizely list attribute {self.list_attribute_id} belongs to project {owner}, not to project "
                f"{self.project_id}: check the task's project_id and list_attribute_id."
            )
        self._known = _ids(attribute.get("list_content"))

    def target(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "list_attribute_id": str(self.list_attribute_id)}

    def identity(self, row: OutboundRow) -> str | None:
        value = row.payload.get("user_id")
        return None if value is None else str(value)

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        value = self.identity(row)
        if value is None or not value.strip():
            return "user_id is empty: every member of a list attribute needs an id"
        if "," in value:
            return (
                f"user_id {value!r} contains a comma, which separates ids in Optimizely's list_content: it would "
                "become several members; fix the id in the source"
            )
        return None

    def existing_records(self) -> Iterable[dict[str, Any]]:
        """The ids in the list now, as records (``take_over_existing``): read once, shared with the first batch."""
        if self._known is None:
            self._known = self._read()
        return [{"user_id": member} for member in self._known]

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        return self.send_combined([(operation, rows)])

    def send_combined(self, parts: Sequence[tuple[Operation, Sequence[OutboundRow]]]) -> list[RowOutcome]:
        """Apply every operation of the batch to the list and write it once (or not at all: nothing changed)."""
        content = self._known if self._known is not None else self._read()
        self._known = None  # used once: a failure below must not leave a stale list for the next batch
        for attempt in range(MAX_REAPPLY + 1):
            new, outcomes = self._apply(content, parts)
            if new == content:
                self._known = content
                return outcomes
            upload = self.hook.list_upload(",".join(new))
            if len(upload) >= MAX_UPLOAD_BYTES:
                raise BatchRefused(
                    f"the new list_content would be {len(upload):,} bytes ({len(new):,} ids; the list holds "
                    f"{len(content):,} now), and Optimizely takes uploads under {MAX_UPLOAD_BYTES:,} bytes (5 MB): "
                    "nothing was written. Split the audience across several list attributes, or shorten the ids"
                )
            current = self._read()  # the API has no precondition: compare a second read just before the write
            if current == content:
                self.hook.write_list_content(self.list_attribute_id, upload)
                self._known = new
                return outcomes
            log.warning(
                "Optimizely list attribute %s changed since it was read (%d ids then, %d now); applying the batch "
                "to the new content (%d of %d)", self.list_attribute_id, len(content), len(current), attempt + 1,
                MAX_REAPPLY,
            )
            content = current
        raise ListChangedDuringSync(
            f"Optimizely list attribute {self.list_attribute_id} changed between every read and write "
            f"({MAX_REAPPLY + 1} tries): something else is writing it at the same time. Nothing was written; run "
            "the sync again when the other writer is done."
        )

    def _apply(
        self, content: list[str], parts: Sequence[tuple[Operation, Sequence[OutboundRow]]]
    ) -> tuple[list[str], list[RowOutcome]]:
        """The list after the batch (removals first, then additions, order kept), and each row's outcome."""
        held = set(content)
        gone = {self.identity(row) for operation, rows in parts if operation.removes for row in rows}
        new = [member for member in content if member not in gone]
        present = set(new)
        outcomes: list[RowOutcome] = []
        for operation, rows in parts:
            for row in rows:
                member = str(self.identity(row))
                if operation.removes:
                    outcomes.append(RowOutcome.ok(row))  # removed, or already gone
                elif self.leave_foreign_members and not row.ours and member in held and member not in gone:
                    outcomes.append(RowOutcome.skipped(row, _left_alone(member)))
                else:
                    if member not in present:
                        new.append(member)
                        present.add(member)
                    outcomes.append(RowOutcome.ok(row))
        return new, outcomes

    def _read(self) -> list[str]:
        try:
            return _ids(self.hook.get_list_attribute(self.list_attribute_id).get("list_content"))
        except NotFoundError:
            raise ConfigurationError(
                f"Optimizely list attribute {self.list_attribute_id} disappeared during the sync; nothing more is sent."
            ) from None

    def close(self) -> None:
        self.hook.close()


def _ids(list_content: Any) -> list[str]:
    return [member for member in str(list_content).split(",") if member != ""] if list_content else []


def _left_alone(member: str) -> str:
    return (
        f"user_id {member!r} is already in the list and this sync did not add it: left alone, so mirror will never "
        "remove it. Pass take_over_existing=True to make the list's current members the sync's own"
    )
