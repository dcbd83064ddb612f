"""Permutive: segments in an import, up to 5,000 operations per atomic batch request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.destinations.base import outcomes_for_error
from airflow_provider_zeotap.errors import ConfigurationError, FatalError
from airflow_provider_zeotap.sync.destination import BatchRefused, Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.hooks.permutive import MAX_BATCH_OPERATIONS, PermutiveHook
from airflow_provider_zeotap.http import ApiError, ConflictError, NotFoundError
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import Operation

A, C, R = Change.ADDED, Change.CHANGED, Change.REMOVED
O = Operation
#: Codes are generated within these rules (the strictest reading of what the API accepts).
MAX_CODE_LENGTH = 100
_NOT_CODE_CHARS = re.compile(r"[^a-z0-9]+")


def code_from_name(name: str) -> str:
    """A stable code for a segment name: the same name always gives the same code.

    A slug keeps it readable; a short hash of the exact name keeps two names that slug alike apart.
    """
    slug = _NOT_CODE_CHARS.sub("_", name.lower()).strip("_") or "segment"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{slug[: MAX_CODE_LENGTH - len(digest) - 1]}_{digest}"


class PermutiveSegments(Destination):
    capabilities = Capabilities(
        name="Permutive segments",
        mode_argument="audience_mode",
        modes=MappingProxyType(
            {
                "add": {A: O.CREATE},
                "upsert": {A: O.UPSERT, C: O.UPSERT},
                "remove": {A: O.DELETE, C: O.DELETE},
                # Mirror creates and never takes over a code someone else made, so it deletes only its own.
                "mirror": {A: O.CREATE, C: O.UPDATE, R: O.DELETE},
            }
        ),
        batch_size=MAX_BATCH_OPERATIONS,
        max_batch_size=MAX_BATCH_OPERATIONS,
        default_fields=("segment_code", "segment_name", "description"),
        identity_fields=("segment_code", "segment_name"),
    )

    def __init__(self, hook: PermutiveHook, *, import_id: str, segment_name: str | None = None) -> None:
        self.hook = hook
        self.import_id = import_id
        self.segment_name = segment_name
        self._codes: dict[tuple[bool, str], int] = {}
        self._existing: dict[str, dict[str, Any]] | None = None
        self._import_checked = False

    def prepare(self, *, dry_run: bool) -> None:
        if dry_run:
            self.hook.get_import(self.import_id)
        else:
            self.hook.require_write_access(self.import_id)

    # -- rows -> operations ------------------------------------------------------------------------
    def _name(self, row: OutboundRow) -> str | None:
        name = row.payload.get("segment_name") or self.segment_name
        return str(name) if name not in (None, "") else None

    def _code(self, row: OutboundRow) -> str | None:
        code = row.payload.get("segment_code")
        if code not in (None, ""):
            return str(code)
        name = self._name(row)
        return code_from_name(name) if name else None

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        code = self._code(row)
        if code is None:
            return "no segment_code, and no segment_name to generate one from: map segment_code or segment_name"
        if not operation.removes and self._name(row) is None:
            return "no segment_name: map segment_name or set the task's segment_name default"
        # Deletes run in batches of their own before creates, so one code may be deleted and re-created.
        first = self._codes.setdefault((operation.removes, code), row.row_id)
        if first != row.row_id:
            return f"segment_code {code!r} appears in more than one row of this sync; codes must be unique"
        return None

    def _verb(self, operation: Operation, row: OutboundRow) -> str:
        if operation.removes:
            return "Delete"
        if operation is O.UPSERT:
            return "Create" if row.change is A else "Update"
        return "Create" if operation is O.CREATE else "Update"

    def _operation(self, verb: str, row: OutboundRow) -> dict[str, Any]:
        code = self._code(row)
        if verb == "Delete":
            return {"operation": "Delete", "code": code}
        data: dict[str, Any] = {"name": self._name(row)}
        if row.payload.get("description") not in (None, ""):
            data["description"] = str(row.payload["description"])
        if verb == "Create":
            return {"operation": "Create", "data": {"code": code, **data}}
        return {"operation": "Update", "code": code, "data": data}

    # -- sending -----------------------------------------------------------------------------------
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        try:
            self.hook.batch_segments(self.import_id, [self._operation(self._verb(operation, row), row) for row in rows])
        except FatalError:
            raise
        except ApiError as error:
            if error.retryable:
                return outcomes_for_error(rows, error)
            if len(rows) > 1:
                raise BatchRefused(_reason(error), permanent=_is_invalid_data(error)) from None
            return [self._single_refusal(operation, rows[0], error)]
        return [RowOutcome.ok(row) for row in rows]

    def _single_refusal(self, operation: Operation, row: OutboundRow, error: ApiError) -> RowOutcome:
        """One operation refused: some refusals mean the end state is already there, or call for the other verb."""
        verb = self._verb(operation, row)
        if verb == "Delete" and isinstance(error, NotFoundError):
            self._require_import()
            return RowOutcome.ok(row)  # a Delete of a code already gone is done
        if verb == "Create" and isinstance(error, ConflictError) and self._already_there(row):
            return RowOutcome.ok(row)  # an earlier send landed though its answer was lost
        fallback = {("Create", ConflictError): "Update", ("Update", NotFoundError): "Create"}.get((verb, type(error)))
        if fallback and (operation is O.UPSERT or fallback == "Create"):
            try:
                self.hook.batch_segments(self.import_id, [self._operation(fallback, row)])
            except FatalError:
                raise
            except ApiError as second:
                if second.retryable:
                    return RowOutcome.failed(row, str(second))
                return RowOutcome.rejected(row, _reason(second), permanent=_is_invalid_data(second))
            return RowOutcome.ok(row)
        if verb == "Create" and isinstance(error, ConflictError):
            return RowOutcome.rejected(
                row,
                f"segment code {self._code(row)!r} already exists in the import and this sync did not create it "
                "(AlreadyExists); add and mirror never take over or delete a segment they did not create: use "
                "audience_mode='upsert' to take it over, or another code",
            )
        return RowOutcome.rejected(row, _reason(error), permanent=_is_invalid_data(error))

    def _already_there(self, row: OutboundRow) -> bool:
        """Whether the import holds this code with this row's name and description.

        A Create whose answer was lost (timeout, dropped connection) is sent again and meets its own
        segment; that is success, not a conflict. The import's segments are listed once and cached.
        """
        code = self._code(row)
        if self._existing is None or code not in self._existing:
            self._existing = {s.get("code"): s for s in self.hook.iter_segments(self.import_id)}
        found = self._existing.get(code)
        wanted = self._operation("Create", row)["data"]
        return found is not None and all(found.get(k) == v for k, v in wanted.items())

    def _require_import(self) -> None:
        """A 404 on a Delete means "gone" only while the import itself exists; check that once."""
        if not self._import_checked:
            try:
                self.hook.get_import(self.import_id)
            except NotFoundError:
                raise ConfigurationError(
                    f"Permutive import {self.import_id} disappeared during the sync; nothing more is sent."
                ) from None
            self._import_checked = True

    def close(self) -> None:
        self.hook.close()


def _is_invalid_data(error: ApiError) -> bool:
    """A validation error is about the row's own data; a conflict or a missing code is about the import."""
    return error.status == 400


def _reason(error: ApiError) -> str:
    kind = f"{error.error_type}: " if error.error_type else ""
    return f"Permutive refused it (HTTP {error.status}) {kind}{error.message}"
