"""Zeotap profiles: one upsert request per row, gathered within a batch; deletions 400 ids a call.

The API takes one id per write, so a sync is as fast as its concurrency and pacing: ``asend`` starts every
row of a batch at once, up to the hook's ``max_in_flight`` of them build their requests, and the hook's pacer
lets those out just under the published limit (10,000 a minute, at most 200 in flight). The runner keeps
``batches_in_flight`` batches going, so requests flow across batch boundaries; a batch is the checkpoint
unit, not the concurrency unit.

A row's key column is its id (of the task's ``id_type``); its mapped fields are ``section.name`` targets,
``profile`` when no section is named (``first_name`` is ``profile.first_name``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import IO, Any

from airflow_provider_zeotap.destinations.base import email_problem, outcome_for_error, outcomes_for_error
from airflow_provider_zeotap.errors import ConfigurationError, FatalError
from airflow_provider_zeotap.hooks.zeotap import MAX_DELETE_IDS, NO_IDENTIFIER, SECTIONS, DeletedProfiles, ZeotapProfileHook
from airflow_provider_zeotap.http import ApiError, BadRequestError
from airflow_provider_zeotap.sync.destination import (
    BatchRefused,
    Capabilities,
    DeliveryStopped,
    Destination,
    OutboundRow,
    RowOutcome,
)
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import RECORD_MODES, Operation

#: upsert and mirror are the sync operator's modes; delete (added rows are deletion requests) is the
#: deletion operator's, when it is given a plan.
MODES = MappingProxyType({
    "upsert": RECORD_MODES["upsert"],
    "mirror": RECORD_MODES["mirror"],
    "delete": MappingProxyType({Change.ADDED: Operation.DELETE}),
})
SYNC_MODES = ("upsert", "mirror")
#: Rows per upsert batch: the checkpoint unit. At 10,000 requests a minute a batch of 500 is 3 s of requests,
#: so a killed task re-sends seconds of work, and two batches in flight keep the pacer fed.
UPSERT_BATCH = 500


def check_field_mapping(field_mapping: Mapping[str, str] | None) -> None:
    """Targets are ``name`` (profile), ``profile.name``, ``consent.name`` or ``mkt_preferences.name``."""
    if field_mapping is None or not isinstance(field_mapping, Mapping):
        return
    seen: dict[tuple[str, str], str] = {}
    for target in field_mapping:
        section, name = split_target(target)
        if (section, name) in seen:
            raise ConfigurationError(
                f"field_mapping targets {seen[(section, name)]!r} and {target!r} both mean {section}.{name}; keep one."
            )
        seen[(section, name)] = target


def split_target(target: str) -> tuple[str, str]:
    """``"consent.gdpr"`` -> ``("consent", "gdpr")``; a name without a section is a profile field."""
    section, dot, name = str(target).partition(".")
    if not dot:
        return "profile", section
    if section not in SECTIONS or not name:
        raise ConfigurationError(
            f"field_mapping target {target!r} names no Zeotap section: write 'profile.<name>', 'consent.<name>' or "
            "'mkt_preferences.<name>' (a name without a dot goes to profile)."
        )
    return section, name


def sections_of(payload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A row's mapped fields as the upsert's sections. A None value is a clear and is sent as JSON null."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for target, value in payload.items():
        section, name = split_target(target)
        sections[section][name] = value
    return sections


class DeletionList:
    """The ids a deletion run sent, one JSON line each: ``{"id", "result": "deleted" | "not_found"}``."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.deleted = 0
        self.not_found = 0

    def record(self, answer: DeletedProfiles) -> None:
        for value in answer.deleted:
            self.handle.write(json.dumps({"id": value, "result": "deleted"}) + "\n")
        for value in answer.not_found:
            self.handle.write(json.dumps({"id": value, "result": "not_found"}) + "\n")
        self.deleted += len(answer.deleted)
        self.not_found += len(answer.not_found)


class ZeotapProfiles(Destination):
    """Profiles of one id type: ``POST /users`` per row, ``POST /users/_delete`` per batch of up to 400."""

    capabilities = Capabilities(
        name="Zeotap profiles",
        mode_argument="sync_mode",
        modes=MODES,
        batch_size=UPSERT_BATCH,
        max_batch_size=5000,
        batch_sizes=MappingProxyType({Operation.UPSERT: UPSERT_BATCH, Operation.DELETE: MAX_DELETE_IDS}),
        max_batch_sizes=MappingProxyType({Operation.UPSERT: 5000, Operation.DELETE: MAX_DELETE_IDS}),
        batches_in_flight=2,
        accepts_any_field=True,  # profiles are schemaless: any trait, consent or preference name
        clears_with="null",
    )

    def __init__(
        self,
        hook: ZeotapProfileHook,
        *,
        id_type: str,
        region: str | None = None,
        org_id: int | str | None = None,
        leave_foreign_profiles: bool = False,
        deletions: DeletionList | None = None,
    ) -> None:
        if not isinstance(id_type, str) or not id_type.strip():
            raise ConfigurationError(f"id_type must name a Zeotap id type (e.g. 'email'), got {id_type!r}.")
        self.hook = hook
        self.id_type = id_type
        self.region = region
        self.org_id = org_id
        self.leave_foreign_profiles = leave_foreign_profiles
        self.deletions = deletions
        #: The fatal error that stopped the delivery: every row not yet answered, in any batch, is cancelled.
        self._fatal: BaseException | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        #: Rows past this gate have built their request and wait for the pacer; the rest wait here, costing
        #: nothing. Without it every row of a new batch builds its request at once (about 0.3 ms each), and the
        #: loop, busy for 150 to 230 ms, starts no request meanwhile: about 3% of the paced rate was lost so.
        self._admission: asyncio.Semaphore | None = None

    # -- before sending --------------------------------------------------------------------------------
    def prepare(self, *, dry_run: bool) -> None:
        """The organisation and region are known (no call: the API would count a call that proves nothing)."""
        self.hook.org_id(self.org_id)
        self.hook.region(self.region)

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        value = self._id(row)
        if value is None or not value.strip():
            return (f"empty id: the key column is the profile's {self.id_type}, and Zeotap answers an empty one with "
                    f"400 {NO_IDENTIFIER!r}; fill it in the source or leave the row out")
        if not operation.removes and self.id_type.strip().lower() == "email" and (problem := email_problem(value)):
            # Zeotap stores whatever string it is given as the id, so a non-address would become a profile
            # keyed by an email nobody has; it is refused here, with the row, instead.
            return f"{problem}: the key column holds the profiles' id_type 'email'; fix the value in the source"
        return None

    def identity(self, row: OutboundRow) -> str | None:
        return self._id(row)

    def target(self) -> dict[str, Any]:
        return {"object": "profiles", "id_type": self.id_type, "region": self.hook.region(self.region)}

    def _id(self, row: OutboundRow) -> str | None:
        if len(row.key) != 1:
            raise ConfigurationError(
                f"Zeotap profiles are keyed by one id of type {self.id_type!r}, so the diff's primary_key must be one "
                f"column (its value is the id); got {list(row.key)}."
            )
        (value,) = row.key.values()
        return None if value is None else str(value)

    # -- sending ---------------------------------------------------------------------------------------
    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        if self._fatal is not None:
            raise DeliveryStopped(self._fatal, [])
        if operation is Operation.DELETE:
            return await self._delete(rows)
        outcomes: list[RowOutcome] = []
        if self.leave_foreign_profiles:
            foreign = await self._foreign([row for row in rows if not row.ours])
            outcomes = [
                RowOutcome.skipped(
                    row,
                    "a profile with this id already exists in Zeotap and this sync did not create it: mirror leaves it "
                    "alone and will never delete it (sync_mode='upsert' updates such profiles and never deletes)",
                )
                for row in rows
                if self._id(row) in foreign
            ]
            skipped = {outcome.row_id for outcome in outcomes}
            rows = [row for row in rows if row.row_id not in skipped]
        if self._admission is None:
            self._admission = asyncio.Semaphore(self.hook.limits.max_in_flight or UPSERT_BATCH)
        tasks = [self._start(self._admitted(self._admission, row)) for row in rows]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        outcomes += [result for result in results if isinstance(result, RowOutcome)]
        if self._fatal is not None:
            raise DeliveryStopped(self._fatal, outcomes)
        unexpected = next((r for r in results if isinstance(r, BaseException)
                           and not isinstance(r, asyncio.CancelledError)), None)
        if unexpected is not None:
            raise DeliveryStopped(unexpected, outcomes)
        return outcomes

    def _start(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def _stop(self, error: BaseException) -> None:
        """A fatal answer: no row that has not been answered yet may start, in this batch or another."""
        if self._fatal is None:
            self._fatal = error
        for task in list(self._pending):
            if task is not asyncio.current_task():
                task.cancel()

    async def _admitted(self, admission: asyncio.Semaphore, row: OutboundRow) -> RowOutcome | None:
        async with admission:
            return await self._upsert(row)

    async def _upsert(self, row: OutboundRow) -> RowOutcome | None:
        if self._fatal is not None:
            return None
        try:
            await self.hook.aupsert_profile(
                self.id_type, self._id(row) or "", region=self.region, org_id=self.org_id, **sections_of(row.payload)
            )
        except FatalError as error:
            self._stop(error)
            return None
        except BadRequestError as error:  # about this row's own data: remembered until the row changes
            return self.answered(
                RowOutcome.rejected(row, f"Zeotap refused this profile (HTTP 400): {error.message}", permanent=True)
            )
        except ApiError as error:
            return self.answered(outcome_for_error(row, error))
        return self.answered(RowOutcome.ok(row))

    async def _foreign(self, rows: Sequence[OutboundRow]) -> set[str]:
        """Ids among ``rows`` whose profile already exists (5 ids a read, gathered)."""
        ids = [value for value in (self._id(row) for row in rows) if value and value.strip()]
        if not ids:
            return set()
        try:
            profiles = await self.hook.afetch_profiles(self.id_type, ids, region=self.region, org_id=self.org_id)
        except FatalError as error:
            self._stop(error)
            raise DeliveryStopped(error, []) from None
        return {str(profile.get("ids", {}).get(self.id_type)) for profile in profiles}

    async def _delete(self, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        ids = [self._id(row) or "" for row in rows]
        try:
            answer = await self.hook.adelete_profiles(self.id_type, ids, region=self.region, org_id=self.org_id)
        except FatalError:
            raise
        except BadRequestError as error:  # the call names no id: the runner halves the batch to find it
            raise BatchRefused(f"Zeotap refused the deletion (HTTP 400): {error.message}", permanent=True) from None
        except ApiError as error:
            return outcomes_for_error(rows, error)
        if self.deletions is not None:
            self.deletions.record(answer)
        gone = set(answer.deleted) | set(answer.not_found)  # not found: gone either way, which was asked
        return [
            RowOutcome.ok(row) if value in gone
            else RowOutcome.failed(row, "Zeotap's answer lists this id neither as deleted nor as not found")
            for row, value in zip(rows, ids)
        ]

    async def aclose(self) -> None:
        self._admission = None  # it belongs to this delivery's event loop
        await self.hook.aclose()

    def close(self) -> None:
        self.hook.close()
