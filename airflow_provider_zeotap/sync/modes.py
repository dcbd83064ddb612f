"""Sync modes: which changes each mode sends, and as which operation. Shared by every destination.

A destination declares the modes it supports; it may map a mode to its own operations (Permutive sends
segment Creates and Updates), but the change kinds a mode acts on come from here unless it says so.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import Mapping

from airflow_provider_zeotap.sync.models import Change


class Operation(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    UPSERT = "upsert"
    DELETE = "delete"
    ADD = "add"
    REMOVE = "remove"

    @property
    def removes(self) -> bool:
        return self in (Operation.DELETE, Operation.REMOVE)


#: (change kind -> operation) for one mode. A change kind that is absent is not acted on.
OperationTable = Mapping[Change, Operation]

A, C, R = Change.ADDED, Change.CHANGED, Change.REMOVED
O = Operation

RECORD_MODES: Mapping[str, OperationTable] = MappingProxyType(
    {
        "upsert": {A: O.UPSERT, C: O.UPSERT},
        "insert": {A: O.CREATE},
        "update": {A: O.UPDATE, C: O.UPDATE},
        "mirror": {A: O.UPSERT, C: O.UPSERT, R: O.DELETE},
    }
)
AUDIENCE_MODES: Mapping[str, OperationTable] = MappingProxyType(
    {
        "add": {A: O.ADD, C: O.ADD},
        "remove": {A: O.REMOVE, C: O.REMOVE},
        "mirror": {A: O.ADD, C: O.ADD, R: O.REMOVE},
    }
)

#: Removals go first, so a key removed and re-added under another row lands in the right end state.
OPERATION_ORDER = (O.DELETE, O.REMOVE, O.CREATE, O.ADD, O.UPSERT, O.UPDATE)
