"""Optimizely audiences, custom events and attributes: each row becomes one object of the project.

upsert reads the project's objects of that type once per run (every page) and updates an object whose key
(an audience: its name) is already there, instead of creating a duplicate. insert only creates: a key that
already exists is rejected for that row with Optimizely's message, and the other rows are created. insert
also reads the project's objects once, before its first create.

A create is never replayed blindly after an answer that may have been lost once it landed (a dropped
connection, a timeout, a 500): an audience's name is not unique, so a replay would make a second audience.
The project's objects are read again instead: the key is there now (and was not before the create), so the
create landed; or it is not, and the row fails, to be sent again on the next run.

Rows are checked before sending where the public docs give a rule (an attribute key: at most 64 characters
of ``[a-zA-Z0-9_\\- .]``; audience conditions: condition JSON), so a bad row costs no request at 2 requests/s.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.destinations.base import send_each
from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook, check_project_id
from airflow_provider_zeotap.http import ApiError
from airflow_provider_zeotap.sync.destination import Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import Operation

log = logging.getLogger(__name__)

A, C = Change.ADDED, Change.CHANGED
O = Operation

#: What a sync sends when a row gives no audience conditions: everyone (as the seed documents).
EVERYONE = '["everyone"]'
ATTRIBUTE_KEY_MAX = 64
_ATTRIBUTE_KEY = re.compile(r"[a-zA-Z0-9_\- .]+")
_OPERATORS = ("and", "or", "not")

_MODES = MappingProxyType({"upsert": {A: O.UPSERT, C: O.UPSERT}, "insert": {A: O.CREATE}})


def _capabilities(name: str, key_field: str, fields: tuple[str, ...], *, key_required: bool) -> Capabilities:
    return Capabilities(
        name=name,
        mode_argument="sync_mode",
        modes=_MODES,
        # One request per row at 2/s: a batch of 50 is a checkpoint every ~25 s.
        batch_size=50,
        max_batch_size=1000,
        required_fields=(key_field,) if key_required else (),
        default_fields=fields,
        identity_fields=(key_field,),
        clears_with="empty string",
    )


#: object_type -> (capabilities, the field that identifies an object in its project).
OBJECT_TYPES: Mapping[str, tuple[Capabilities, str]] = MappingProxyType(
    {
        # An audience's name may come from the task's audience_name, so it is checked per row, not required.
        "audiences": (
            _capabilities("Optimizely audiences", "name", ("name", "description", "conditions"), key_required=False),
            "name",
        ),
        "custom_events": (
            _capabilities("Optimizely custom events", "key", ("key", "name", "description"), key_required=True),
            "key",
        ),
        "attributes": (
            _capabilities("Optimizely attributes", "key", ("key", "name", "description"), key_required=True),
            "key",
        ),
    }
)


def conditions_problem(value: Any) -> str | None:
    """Why ``conditions`` is not Optimizely audience condition JSON, or None.

    The docs show the form ``["and", {"type": "language", "value": "es"}]``: an operator ("and", "or",
    "not") and its operands, each a condition object with a ``type`` or a nested expression. The seed's
    default ``["everyone"]`` is taken as it is.
    """
    try:
        parsed = json.loads(value)
    except ValueError as error:
        return f"is not JSON ({error.msg} at character {error.pos})"
    if parsed == ["everyone"]:
        return None
    return _expression_problem(parsed)


def _expression_problem(node: Any) -> str | None:
    if not isinstance(node, list) or not node:
        return 'must be a JSON array such as ["and", {"type": "language", "value": "es"}]'
    operator, operands = node[0], node[1:]
    if operator not in _OPERATORS:
        return f'must start with "and", "or" or "not", not {json.dumps(operator)}'
    if operator == "not" and len(operands) != 1:
        return '"not" takes exactly one operand'
    if not operands:
        return f'"{operator}" has no operand'
    for operand in operands:
        if isinstance(operand, dict):
            if not isinstance(operand.get("type"), str) or not operand["type"]:
                return f'the condition {json.dumps(operand)} has no "type"'
        elif problem := _expression_problem(operand):
            return problem
    return None


def attribute_key_problem(key: str) -> str | None:
    if len(key) > ATTRIBUTE_KEY_MAX:
        return f"attribute key {key[:40]!r}… is {len(key)} characters long; Optimizely takes at most {ATTRIBUTE_KEY_MAX}"
    if not _ATTRIBUTE_KEY.fullmatch(key):
        bad = sorted({ch for ch in key if not _ATTRIBUTE_KEY.fullmatch(ch)})
        return (
            f"attribute key {key!r} has {', '.join(repr(ch) for ch in bad)}: Optimizely takes letters, digits, "
            "'_', '-', ' ' and '.'"
        )
    return None


class OptimizelyObjects(Destination):
    """Rows become audiences, custom events or attributes of one project (see the module docstring)."""

    def __init__(
        self,
        hook: OptimizelyHook,
        *,
        object_type: str,
        project_id: str | int,
        audience_name: str | None = None,
    ) -> None:
        if object_type not in OBJECT_TYPES:
            raise ValueError(f"object_type must be one of {sorted(OBJECT_TYPES)}, got {object_type!r}")
        self.hook = hook
        self.object_type = object_type
        self.capabilities, self.key_field = OBJECT_TYPES[object_type]  # type: ignore[misc]
        self.project_id = check_project_id(project_id)
        self.audience_name = audience_name
        #: identity -> object id of the project's objects, read once per run (upsert, or a refused insert),
        #: then kept current with this task's own creates.
        self._existing: dict[str, int] | None = None
        #: Identities the project held before this task's first create (insert): a key missing from it that
        #: the API then calls a duplicate was created by this task, whose answer was lost.
        self._before: frozenset[str] | None = None
        self._lock = threading.Lock()

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.get_project(self.project_id)  # a missing project fails before any write, with the fix

    def target(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "object_type": self.object_type}

    # -- rows ------------------------------------------------------------------------------------------
    def identity(self, row: OutboundRow) -> str | None:
        value = row.payload.get(self.key_field)
        if value in (None, "") and self.object_type == "audiences":
            value = self.audience_name
        return None if value in (None, "") else str(value)

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        key = self.identity(row)
        if key is None:
            if self.object_type == "audiences":
                return "no audience name: map a column to name, or pass audience_name= to the task"
            return f"{self.key_field} is empty: every {self.object_type[:-1].replace('_', ' ')} needs a key"
        if self.object_type == "attributes":
            return attribute_key_problem(key)
        if self.object_type == "audiences":
            conditions = row.payload.get("conditions")
            if conditions not in (None, ""):
                text = conditions if isinstance(conditions, str) else json.dumps(conditions)
                if problem := conditions_problem(text):
                    return (
                        f"conditions {problem}: it must be Optimizely audience condition JSON (see Optimizely's "
                        'audience conditions format); leave it empty for the default ["everyone"]'
                    )
        return None

    def _fields(self, row: OutboundRow, *, creating: bool) -> dict[str, Any]:
        """The object's fields as sent. A cleared text is ``""``; cleared conditions are everyone again."""
        payload = row.payload
        fields: dict[str, Any] = {}
        for name in ("name", "description"):
            if name in payload and not (name == self.key_field):
                fields[name] = "" if payload[name] is None else str(payload[name])
        if self.object_type == "audiences":
            fields["name"] = self.identity(row)
            conditions = payload.get("conditions")
            if conditions not in (None, ""):
                fields["conditions"] = conditions if isinstance(conditions, str) else json.dumps(conditions)
            elif creating or "conditions" in payload:
                fields["conditions"] = EVERYONE
        elif creating:
            fields["key"] = self.identity(row)
        return fields

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        if operation is O.UPSERT:
            self._read_existing()
        elif self._before is None:
            self._before = frozenset(self._read_existing())
        return send_each(rows, lambda row: self._send_one(operation, row), max_in_flight=self._in_flight)

    @property
    def _in_flight(self) -> int:
        return self.hook.limits.max_in_flight or 1

    def _send_one(self, operation: Operation, row: OutboundRow) -> RowOutcome:
        key = str(self.identity(row))
        # Read again if another row's lost answer made the read stale: an upsert must never create what is there.
        object_id = self._read_existing().get(key) if operation is O.UPSERT else None
        if object_id is not None:
            fields = self._fields(row, creating=False)
            if fields:  # a row that carries nothing but its key has nothing to update
                self.hook.update_object(self.object_type, object_id, fields, self.project_id)
            return RowOutcome.ok(row)
        try:
            created = self.hook.create_object(self.object_type, self._fields(row, creating=True), self.project_id)
        except FatalError:
            raise
        except ApiError as error:
            if error.may_have_landed:
                return self._unanswered_create(row, key, error)
            if error.retryable or error.status not in (400, 409):
                raise
            return self._refused_create(row, key, error)
        with self._lock:
            if self._existing is not None:
                self._existing[key] = int(created["id"])
        return RowOutcome.ok(row)

    def _unanswered_create(self, row: OutboundRow, key: str, error: ApiError) -> RowOutcome:
        """A create whose answer was lost after it may have landed: the project's objects tell (read again)."""
        with self._lock:
            self._existing = None
        if key in self._read_existing() and (self._before is None or key not in self._before):
            log.info("%s: the create of %r had no answer (%s) but landed; it is not sent again",
                     self.capabilities.name, key, error)
            return RowOutcome.ok(row)
        return RowOutcome.failed(row, f"the create had no answer and did not land ({error}); sent again next run")

    def _refused_create(self, row: OutboundRow, key: str, error: ApiError) -> RowOutcome:
        """A create the API refused: already there (this sync's own earlier send, or someone else's), or bad data.

        The HTTP core retries a create whose answer was lost; when that create had landed, the retry is refused
        as a duplicate. A key the project did not hold before this task's first create is then this task's own.
        """
        if key not in self._read_existing():
            with self._lock:
                self._existing = None  # read again: the create may have landed after the last read
        exists = key in self._read_existing()
        created_here = self._before is not None and key not in self._before
        if exists and (row.ours or created_here):
            return RowOutcome.ok(row)  # a send of this sync landed (its answer was lost)
        refused = f"Optimizely refused the create (HTTP {error.status} {error.error_type or ''}): {error.message}"
        if exists:
            what = "audience name" if self.object_type == "audiences" else f"{self.object_type[:-1].replace('_', ' ')} key"
            return RowOutcome.rejected(
                row,
                f"{what} {key!r} already exists in project {self.project_id} ({refused}); keys are unique in a project: "
                "use sync_mode='upsert' to update it, or give the row another key",
            )
        return RowOutcome.rejected(row, refused, permanent=True)

    def _read_existing(self) -> dict[str, int]:
        """The project's objects of this type by identity: every page, once per run."""
        with self._lock:
            if self._existing is None:
                self._existing = {
                    str(obj[self.key_field]): int(obj["id"])
                    for obj in self.hook.iter_objects(self.object_type, self.project_id)
                    if obj.get(self.key_field) not in (None, "")
                }
            return self._existing

    def close(self) -> None:
        self.hook.close()
