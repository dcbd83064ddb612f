"""Permutive: segments in an import, up to 5,000 operations per atomic batch request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from types import MappingProxyType
from typing import Any

from airflow_provider_zeotap.destinations.base import outcomes_for_error
from airflow_provider_zeotap.errors import ConfigurationError, FatalError
from airflow_provider_zeotap.sync.destination import (
    BatchRefused,
    Capabilities,
    DeliveryStopped,
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

# -- the segment rules ---------------------------------------------------------------------------------
# What the API takes for a segment's code and name. Permutive publishes no exact rule, and its batch
# endpoint refuses a whole batch with one error that names no operation, so each row is checked here,
# before sending: a bad row gets its own reason and costs no request. Where the public docs are silent the
# project reads the rules strictly: a code is 1-100 of A-Z a-z 0-9 _ . : -, a name 1-255 characters. One
# rule is the project's own, beyond the API's: a name of only whitespace is refused too (it would show as a
# blank segment). This is the client's one copy of the rules; the emulator (``testing/permutive_batch.py``)
# keeps its own, independent model of the API, and a unit test holds the two to the same verdicts.
MAX_CODE_LENGTH = 100
MAX_NAME_LENGTH = 255
CODE_CHARACTERS = "letters, digits, '_', '.', ':' and '-'"
_CODE_CHAR = re.compile(r"[A-Za-z0-9_.:-]")
#: At most this many distinct characters are named in a reason; the rest are counted.
_NAMED_CHARACTERS = 3
_SHOWN_CHARACTERS = 40
#: Generated codes keep to a subset of the rules: lowercase letters, digits and '_'.
_NOT_CODE_CHARS = re.compile(r"[^a-z0-9]+")


def code_problem(code: str) -> str | None:
    """Why the API would refuse this segment code, naming the rule it breaks; None when it is valid."""
    if code == "":
        return "segment_code is empty: map segment_code, or leave it blank and map segment_name to generate one"
    problems = []
    if len(code) > MAX_CODE_LENGTH:
        problems.append(f"is {len(code)} characters long; at most {MAX_CODE_LENGTH}")
    bad = list(dict.fromkeys(ch for ch in code if not _CODE_CHAR.fullmatch(ch)))
    if bad:
        named = [_describe_character(ch) for ch in bad[:_NAMED_CHARACTERS]]
        more = len(bad) - len(named)
        listed = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
        if more:
            listed += f" (and {more} more characters not allowed)"
        problems.append(f"has {listed}: codes are {CODE_CHARACTERS}")
    if not problems:
        return None
    return f"segment_code {_shown(code)} " + "; it also ".join(problems)


def name_problem(name: str | None) -> str | None:
    """Why the API would refuse (or the project refuses) this segment name; None when it is valid.

    A name of only whitespace would show as a blank segment in Permutive, which no one means: it is
    refused like an empty one.
    """
    if name is None or name == "":
        return ("segment_name is empty and the task has no segment_name default: every segment needs a name; "
                "fill it in the source, or pass segment_name= to the task")
    if not name.strip():
        return (f"segment_name {_shown(name)} is only whitespace: every segment needs a visible name; "
                "fill it in the source, or pass segment_name= to the task")
    if len(name) > MAX_NAME_LENGTH:
        return f"segment_name {_shown(name)} is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
    return None


def _describe_character(ch: str) -> str:
    if ch == " ":
        return "a space"
    if ch == "\t":
        return "a tab"
    if ch in "\r\n":
        return "a line break"
    if ch.isspace():
        return f"a whitespace character U+{ord(ch):04X}"
    if not ch.isprintable():
        return f"a control character U+{ord(ch):04X}"
    if not ch.isascii():
        kind = "letter" if ch.isalpha() else "character"
        return f"a non-ASCII {kind} {ch!r} (U+{ord(ch):04X})"
    return f"the character {ch!r}"


def _shown(value: str) -> str:
    """A value quoted for a reason, cut short: a 500-character code would drown the message."""
    return repr(value if len(value) <= _SHOWN_CHARACTERS else value[:_SHOWN_CHARACTERS] + "…")


def code_from_name(name: str) -> str:
    """A stable code for a segment name: the same name always gives the same code.

    A slug keeps it readable; a short hash of the exact name keeps two names that slug alike apart.
    """
    slug = _NOT_CODE_CHARS.sub("_", name.lower()).strip("_") or "segment"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{slug[: MAX_CODE_LENGTH - len(digest) - 1]}_{digest}"


class PermutiveSegments(Destination):
    """Rows become segments of one import; each batch is one atomic ``PATCH``.

    A batch refused because of the import's state (409 AlreadyExists, 404 DoesNotExist) is settled, not
    split: the import's segments are read, each row is decided against them, and what is left goes out
    again as one batch. That keeps a resumed run at about one request per batch, where halving a batch
    whose rows had all landed cost two requests per row. Only a batch refused for its rows' data
    reaches the engine's splitting.
    """

    capabilities = Capabilities(
        name="Permutive segments",
        mode_argument="audience_mode",
        modes=MappingProxyType(
            {
                "add": {A: O.CREATE},
                "upsert": {A: O.UPSERT, C: O.UPSERT},
                "remove": {A: O.DELETE, C: O.DELETE},
                # Mirror claims an existing code only when the row is ours, so it deletes only its own.
                "mirror": {A: O.CREATE, C: O.UPDATE, R: O.DELETE},
            }
        ),
        batch_size=MAX_BATCH_OPERATIONS,
        max_batch_size=MAX_BATCH_OPERATIONS,
        default_fields=("segment_code", "segment_name", "description"),
        identity_fields=("segment_code", "segment_name"),
        clears_with="empty string",
    )

    def __init__(self, hook: PermutiveHook, *, import_id: str, segment_name: str | None = None) -> None:
        self.hook = hook
        self.import_id = import_id
        self.segment_name = segment_name
        #: code -> {"name", "description"} as read from the import after a refusal, then kept current with
        #: this task's own accepted operations, so one read serves every later refused batch. None: not
        #: read yet, or found out of date.
        self._segments: dict[str, dict[str, str]] | None = None
        #: Codes the import held before this task first sent a Create that was not already its own. A
        #: later "already exists" for a code outside this set is this task's own send whose answer was
        #: lost (the HTTP retry met it); for a code inside it, the segment is someone else's.
        self._before: set[str] | None = None

    def prepare(self, *, dry_run: bool) -> None:
        if dry_run:
            self.hook.get_import(self.import_id)
        else:
            self.hook.require_write_access(self.import_id)

    def identity(self, row: OutboundRow) -> str | None:
        """The segment code, as sent: a blank code is generated from the name, so two names may meet."""
        return self._code(row)

    def target(self) -> dict[str, Any]:
        return {"import_id": self.import_id}

    def existing_records(self) -> Iterator[dict[str, Any]]:
        return (
            {"segment_code": segment["code"], "segment_name": segment.get("name")}
            for segment in self.hook.iter_segments(self.import_id)
        )

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

    def _description(self, row: OutboundRow) -> str | None:
        """The description to send: None when the row does not carry it (leave it as it is).

        A clear (None) is sent as "": the API's optional-string fields may read JSON null as "no change",
        and an empty string can mean only one thing.
        """
        if "description" not in row.payload:
            return None
        value = row.payload["description"]
        return "" if value is None else str(value)

    def _wanted(self, row: OutboundRow) -> dict[str, str]:
        """What this row says of its segment, in the shape it is compared with what the import holds.

        Only the fields the row carries: a description left out (not mapped, or a null not sent) says
        nothing, so an existing segment's description is not cleared on that account.
        """
        description = self._description(row)
        return {"name": self._name(row) or "", **({"description": description} if description is not None else {})}

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        """Check the code (every operation names one) and, unless the row is removed, the name it sends.

        Rows that break a rule are rejected here with the rule they break, instead of failing a batch
        that the engine must then halve down to them; only refusals these rules do not foresee reach the
        API and come back in its words.
        """
        code = self._code(row)
        if code is None:
            return "no segment_code, and no segment_name to generate one from: map segment_code or segment_name"
        problem = code_problem(code)
        if problem is None and not operation.removes:
            problem = name_problem(self._name(row))
        # Two rows with one code are caught by the engine's identity check (``identity`` is the code).
        return problem

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
        description = self._description(row)
        if verb == "Create":
            data = {"code": code, "name": self._name(row)}
            return {"operation": "Create", "data": {**data, **({"description": description} if description else {})}}
        data = {"name": self._name(row), **({"description": description} if description is not None else {})}
        return {"operation": "Update", "code": code, "data": data}

    # -- sending -----------------------------------------------------------------------------------
    def send(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        """One PATCH; if the import's state refused it, settle the rows against the import, send the rest.

        What was read of the import serves later refusals too. If the rest is refused again for the
        import's state, what was read is out of date (someone else changed the import): it is read afresh
        once and the rows settled again. So a batch costs at most three PATCHes and one read.
        """
        settled: list[RowOutcome] = []
        try:
            foreign, rows = self._foreign_creates(operation, rows)
        except ApiError as read_error:
            return outcomes_for_error(rows, read_error)
        settled += [RowOutcome.rejected(row, _conflict(str(self._code(row)))) for row in foreign]
        pending = [(row, self._operation(self._verb(operation, row), row)) for row in rows]
        try:
            error = self._patch(pending)
            read_afresh = False
            while error is not None and _about_the_import(error) and not read_afresh:
                try:
                    read_afresh = self._read_segments(error, [op for _, op in pending])
                except ApiError as read_error:
                    return settled + outcomes_for_error([row for row, _ in pending], read_error)
                done, pending = self._settle(operation, pending)
                settled += done
                error = self._patch(pending)
                if error is not None and _about_the_import(error):
                    self._segments = None  # the import changed since it was read
        except (FatalError, ConfigurationError) as stop:
            if settled:  # keep the answers already known, so those rows are committed
                raise DeliveryStopped(stop, settled) from None
            raise
        if error is None:
            return settled + [RowOutcome.ok(row) for row, _ in pending]
        return self._refused(settled, pending, error)

    def _foreign_creates(
        self, operation: Operation, rows: Sequence[OutboundRow]
    ) -> tuple[list[OutboundRow], list[OutboundRow]]:
        """Creates of codes that were in the import before this task's first send and are not ours; the rest.

        Read once, before the first Create that is not already the sync's own goes out: "already exists"
        can only be told apart from "my own send landed but its answer was lost" by knowing what was
        there before sending. Such rows are rejected without a request.
        """
        fresh = [row for row in rows if not row.ours and operation is not O.UPSERT and self._verb(operation, row) == "Create"]
        if not fresh:
            return [], list(rows)
        if self._before is None:
            # Read now, not reused from an earlier read: a segment made by hand since then must count as
            # someone else's. What is read also serves later refusals.
            self._segments = self._list_import()
            self._before = set(self._segments)
        foreign = {row.row_id for row in fresh if self._code(row) in self._before}
        return [row for row in rows if row.row_id in foreign], [row for row in rows if row.row_id not in foreign]

    def _patch(self, pending: Sequence[tuple[OutboundRow, dict[str, Any]]]) -> ApiError | None:
        """Send the operations as one batch; the refusal, or None once they landed (nothing to send: None)."""
        if not pending:
            return None
        operations = [op for _, op in pending]
        try:
            self.hook.batch_segments(self.import_id, operations)
        except FatalError:
            raise
        except ApiError as error:
            return error
        if self._segments is not None:
            for op in operations:
                _apply(self._segments, op)
        return None

    def _refused(
        self, settled: list[RowOutcome], pending: Sequence[tuple[OutboundRow, dict[str, Any]]], error: ApiError
    ) -> list[RowOutcome]:
        """Outcomes for the rows of a refused batch; several rows refused together go back for splitting."""
        rows = [row for row, _ in pending]
        if error.retryable:
            return settled + outcomes_for_error(rows, error)
        if len(rows) > 1:
            raise BatchRefused(_reason(error), permanent=_is_invalid_data(error))
        return settled + [RowOutcome.rejected(rows[0], _reason(error), permanent=_is_invalid_data(error))]

    def _read_segments(self, error: ApiError, operations: Sequence[dict[str, Any]]) -> bool:
        """Read the import's segments, unless what was read before explains the refusal; True if read now.

        A 409 is explained when a code the batch creates is known to exist; a 404 when a code it updates
        or deletes is known to be absent. Otherwise the import changed behind this task: read it again.
        """
        known = self._segments
        if known is not None:
            if isinstance(error, ConflictError) and any(_code_of(op) in known for op in operations if _creates(op)):
                return False
            if isinstance(error, NotFoundError) and any(
                _code_of(op) not in known for op in operations if not _creates(op)
            ):
                return False
        self._segments = self._list_import()
        return True

    def _list_import(self) -> dict[str, dict[str, str]]:
        try:
            segments = list(self.hook.iter_segments(self.import_id))
        except NotFoundError:
            raise ConfigurationError(
                f"Permutive import {self.import_id} disappeared during the sync; nothing more is sent."
            ) from None
        return {
            str(s["code"]): {"name": s.get("name") or "", "description": s.get("description") or ""}
            for s in segments
            if s.get("code") is not None
        }

    def _settle(
        self, operation: Operation, pending: Sequence[tuple[OutboundRow, dict[str, Any]]]
    ) -> tuple[list[RowOutcome], list[tuple[OutboundRow, dict[str, Any]]]]:
        """Decide each row against the segments read: done, rejected, or an operation to send again.

        Whether a segment that is already there is this sync's own comes from the row (``ours``: the sync
        recorded it), or from its absence before this task's first send (a lost answer), never from what
        the segment holds: a segment someone else made with the same name is still someone else's. Upsert
        claims existing codes by definition.
        """
        assert self._segments is not None
        known = self._segments
        settled: list[RowOutcome] = []
        again: list[tuple[OutboundRow, dict[str, Any]]] = []
        for row, op in pending:
            code = _code_of(op)
            found = known.get(code)
            verb = op["operation"]
            if verb == "Delete":
                if found is None:
                    settled.append(RowOutcome.ok(row))  # already gone
                else:
                    again.append((row, op))
            elif found is None:
                again.append((row, self._operation("Create", row)))  # never made, or vanished since
            elif verb == "Update":
                again.append((row, op))
            elif row.ours or operation is O.UPSERT or (self._before is not None and code not in self._before):
                changes = {k: v for k, v in self._wanted(row).items() if found.get(k, "") != v}
                if changes:  # ours, but not (or no longer) as this row says: bring it to the row's values
                    again.append((row, {"operation": "Update", "code": code, "data": changes}))
                else:
                    settled.append(RowOutcome.ok(row))  # an earlier send landed
            else:
                settled.append(RowOutcome.rejected(row, _conflict(code)))
        return settled, again

    def close(self) -> None:
        self.hook.close()


def _code_of(op: dict[str, Any]) -> str:
    return str(op["data"]["code"] if _creates(op) else op["code"])


def _creates(op: dict[str, Any]) -> bool:
    return op["operation"] == "Create"


def _apply(segments: dict[str, dict[str, str]], op: dict[str, Any]) -> None:
    """What an accepted operation did to the import, applied to what this task read of it."""
    code = _code_of(op)
    if op["operation"] == "Delete":
        segments.pop(code, None)
        return
    data = {k: str(op["data"][k]) for k in ("name", "description") if k in op["data"]}
    if _creates(op):
        segments[code] = {"name": "", "description": "", **data}
    else:
        segments.setdefault(code, {"name": "", "description": ""}).update(data)


def _conflict(code: str) -> str:
    return (
        f"segment code {code!r} already exists in the import and this sync did not create it (AlreadyExists); "
        "it is left alone: pass take_over_existing=True to claim it (the sync then updates it, and mirror may "
        "delete it; audience_mode='upsert' claims existing codes too), or give the row another code"
    )


def _about_the_import(error: ApiError) -> bool:
    """A conflict or a missing code is about what the import holds, which a read can settle."""
    return isinstance(error, (ConflictError, NotFoundError))


def _is_invalid_data(error: ApiError) -> bool:
    """A validation error is about the row's own data; a conflict or a missing code is about the import."""
    return error.status == 400


def _reason(error: ApiError) -> str:
    kind = f"{error.error_type}: " if error.error_type else ""
    return f"Permutive refused it (HTTP {error.status}) {kind}{error.message}"
