"""Permutive: segments in an import, up to 5,000 operations per atomic batch request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.destinations.base import (
    FATAL_ERRORS,
    BatchRefused,
    Capabilities,
    Destination,
    OutboundRow,
    RowOutcome,
)
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
                "mirror": {A: O.UPSERT, C: O.UPSERT, R: O.DELETE},
            }
        ),
        batch_size=MAX_BATCH_OPERATIONS,
        max_batch_size=MAX_BATCH_OPERATIONS,
        default_fields=("segment_code", "segment_name", "description"),
        splits_refused_batches=True,
    )

    def __init__(self, hook: PermutiveHook, *, import_id: str, segment_name: str | None = None) -> None:
        self.hook = hook
        self.import_id = import_id
        self.segment_name = segment_name
        self._codes: dict[tuple[bool, str], int] = {}

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

    def _operation(self, operation: Operation, row: OutboundRow, *, fallback: bool = False) -> dict[str, Any]:
        code = self._code(row)
        if operation.removes:
            return {"operation": "Delete", "code": code}
        data: dict[str, Any] = {"name": self._name(row)}
        if row.payload.get("description") not in (None, ""):
            data["description"] = str(row.payload["description"])
        creates = operation is O.CREATE or (operation is O.UPSERT and (row.change is A) != fallback)
        if creates:
            return {"operation": "Create", "data": {"code": code, **data}}
        return {"operation": "Update", "code": code, "data": data}

    # -- sending -----------------------------------------------------------------------------------
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        try:
            self.hook.batch_segments(self.import_id, [self._operation(operation, row) for row in rows])
        except FATAL_ERRORS:
            raise
        except ApiError as error:
            if error.retryable:
                raise
            if len(rows) > 1:
                raise BatchRefused(_reason(error), permanent=_is_invalid_data(error)) from None
            return [self._single_refusal(operation, rows[0], error)]
        return [RowOutcome.ok(row) for row in rows]

    def _single_refusal(self, operation: Operation, row: OutboundRow, error: ApiError) -> RowOutcome:
        """One operation refused: some refusals mean the end state is already there, or call for the other verb."""
        if operation.removes and isinstance(error, NotFoundError):
            return RowOutcome.ok(row)  # a Delete of a code already gone is done
        if operation is O.UPSERT and isinstance(error, (ConflictError, NotFoundError)):
            try:
                self.hook.batch_segments(self.import_id, [self._operation(operation, row, fallback=True)])
            except FATAL_ERRORS:
                raise
            except ApiError as second:
                if second.retryable:
                    raise
                return RowOutcome.rejected(row, _reason(second))
            return RowOutcome.ok(row)
        if operation is O.CREATE and isinstance(error, ConflictError):
            return RowOutcome.rejected(
                row,
                f"segment code {self._code(row)!r} already exists in the import (AlreadyExists); add mode does not "
                "overwrite segments: use audience_mode='upsert' or 'mirror' to update it",
            )
        return RowOutcome.rejected(row, _reason(error), permanent=_is_invalid_data(error))

    def close(self) -> None:
        self.hook.close()


def _is_invalid_data(error: ApiError) -> bool:
    """A validation error is about the row's own data; a conflict or a missing code is about the import."""
    return error.status == 400


def _reason(error: ApiError) -> str:
    kind = f"{error.error_type}: " if error.error_type else ""
    return f"Permutive refused it (HTTP {error.status}) {kind}{error.message}"
