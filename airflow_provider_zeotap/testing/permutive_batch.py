"""Validation of a Permutive Taxonomy batch (``PATCH /imports/<id>/segments``), kept apart from HTTP.

The emulator applies a batch atomically: every operation is checked first, and if any is bad nothing is
applied and the request is refused with ONE error that does not say which operation was at fault — the real
API documents no per-operation error shape, so a client must not depend on one (it has to split a refused
batch to find the rows at fault). Checks, in this order:

1. Shape (400 ValidationError): at most :data:`MAX_OPERATIONS` operations; each is ``Create`` with ``data``
   holding ``name`` and ``code`` (``description`` optional), ``Update`` with ``code`` and a ``data`` object
   (``name`` and ``description`` optional), or ``Delete`` with ``code``; codes and names must be valid.
2. One operation per code (the API does not guarantee the order of a batch, so two operations on one code
   have no defined outcome): two Creates of one code are 409 AlreadyExists, any other repeat is 400.
3. Against the import (in the batch's order, first failure wins): Create of an existing code is 409
   AlreadyExists, Update or Delete of a missing code is 404 DoesNotExist.

Segment codes and names follow rules Permutive does not publish; these are the emulator's:
a code is 1-100 characters of ``A-Z a-z 0-9 _ . : -``; a name is 1-255 characters.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_OPERATIONS = 5000
MAX_NAME_LENGTH = 255
CODE_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,100}")

OperationKind = Literal["Create", "Update", "Delete"]


class BatchRefused(Exception):
    """The batch as a whole is refused with ``status`` and Permutive error type ``kind``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Operation:
    kind: OperationKind
    code: str
    changes: dict[str, Any] = field(default_factory=dict)  # name / description to set


def _invalid(message: str) -> BatchRefused:
    return BatchRefused(400, "ValidationError", message)


def parse_operations(operations: list[Any]) -> list[Operation]:
    """Check the shape of every operation (step 1); raise one 400 ValidationError for the batch."""
    if len(operations) > MAX_OPERATIONS:
        raise _invalid(f"A batch holds at most {MAX_OPERATIONS} operations, not {len(operations)}")
    parsed = [_parse_operation(raw) for raw in operations]
    if any(operation is None for operation in parsed):
        raise _invalid("The batch holds one or more invalid operations")
    return parsed  # type: ignore[return-value]


def check_operations(operations: list[Operation], existing_codes: Collection[str]) -> None:
    """Check the batch against itself and the import (steps 2 and 3)."""
    repeats = {code for code, count in Counter(op.code for op in operations).items() if count > 1}
    for operation in operations:
        if operation.code in repeats:
            if operation.kind == "Create" and all(
                other.kind == "Create" for other in operations if other.code == operation.code
            ):
                raise BatchRefused(409, "AlreadyExists", "The batch creates one or more segments twice")
            raise _invalid("The batch names one or more segment codes in more than one operation")
    for operation in operations:
        exists = operation.code in existing_codes
        if operation.kind == "Create" and exists:
            raise BatchRefused(409, "AlreadyExists", "One or more segments already exist")
        if operation.kind != "Create" and not exists:
            raise BatchRefused(404, "DoesNotExist", "One or more segments do not exist")


def parse_segment(data: Any) -> Operation | None:
    """A single segment to create (``POST /imports/<id>/segments``); None when invalid."""
    if not isinstance(data, dict) or not valid_code(data.get("code")) or not valid_name(data.get("name")):
        return None
    if not _valid_description(data.get("description")):
        return None
    return Operation("Create", data["code"], _changes(data))


def valid_code(code: Any) -> bool:
    return isinstance(code, str) and CODE_PATTERN.fullmatch(code) is not None


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH


def _valid_description(description: Any) -> bool:
    return description is None or isinstance(description, str)


def _changes(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data[key] for key in ("name", "description") if key in data}


def _parse_operation(raw: Any) -> Operation | None:
    if not isinstance(raw, dict):
        return None
    kind = raw.get("operation")
    if kind == "Create":
        return parse_segment(raw.get("data"))
    if not valid_code(raw.get("code")):
        return None
    if kind == "Delete":
        return Operation("Delete", raw["code"])
    if kind == "Update":
        data = raw.get("data")
        if not isinstance(data, dict) or not _valid_description(data.get("description")):
            return None
        if "name" in data and not valid_name(data["name"]):
            return None
        return Operation("Update", raw["code"], _changes(data))
    return None
