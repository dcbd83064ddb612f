"""Personyze's path syntax, parsed and evaluated: ``/rest/<object>[/<id>]/where/.../columns/.../limit/...``.

Grammar (after the ``/rest/`` prefix, on the raw, still percent-encoded path)::

    <object>[/<id>][/where/<expr>][/columns/<c1>,<c2>][/order_by/<c>|/order_by_desc/<c>][/limit/[<offset>,]<n>]

Modifiers come in any order, each at most once. ``<expr>`` is ``<cond>`` joined by ``&`` (AND) and ``|``
(OR, binding looser), without parentheses; ``<cond>`` is ``<column><op><value>`` with ``op`` one of ``=``,
``!=``, ``>``, ``>=``, ``<``, ``<=``, ``:`` (in a comma list) and ``!:`` (not in it).

Values are percent-decoded only after the expression has been split on ``|``, ``&``, the operator and (for
lists) ``,`` — so ``%26``, ``%3D`` or ``%2C`` inside a value stay literal characters, as the real API
requires clients to encode them. A raw ``=``, ``<`` or ``>`` inside a value is refused instead of guessed at:
it is the mark of a client that forgot to encode.

Evaluation follows SQL, which the real API sits on: a missing column is NULL and matches no condition, not
even ``!=``; a number compares as a number when the row holds a number, else values compare as
case-sensitive strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import eq, ge, gt, le, lt, ne
from typing import Any
from urllib.parse import unquote

#: Largest ``offset + n`` a read may ask for.
MAX_READ_WINDOW = 1000

_COLUMN = r"[A-Za-z_][A-Za-z0-9_]*"
_CONDITION = re.compile(rf"({_COLUMN})(!=|>=|<=|!:|=|>|<|:)(.*)", re.DOTALL)
_COLUMN_NAME = re.compile(_COLUMN)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_MODIFIERS = ("where", "columns", "order_by", "order_by_desc", "limit")
_LIST_OPERATORS = (":", "!:")
_COMPARISONS = {"=": eq, "!=": ne, ">": gt, ">=": ge, "<": lt, "<=": le}

Row = Mapping[str, Any]


class PathSyntaxError(ValueError):
    """The path does not parse; the message is the plain-text body of the 400 answer."""


@dataclass(frozen=True)
class Condition:
    column: str
    operator: str
    values: tuple[str, ...]  # one value, or the items of a ``:`` / ``!:`` list

    def matches(self, row: Row) -> bool:
        held = row.get(self.column)
        if held is None:
            return False
        if self.operator == ":":
            return any(_compare(held, "=", value) for value in self.values)
        if self.operator == "!:":
            return not any(_compare(held, "=", value) for value in self.values)
        return _compare(held, self.operator, self.values[0])


@dataclass(frozen=True)
class Where:
    """OR of ANDs of conditions."""

    alternatives: tuple[tuple[Condition, ...], ...]

    def matches(self, row: Row) -> bool:
        return any(all(condition.matches(row) for condition in group) for group in self.alternatives)


@dataclass(frozen=True)
class PathQuery:
    """One parsed path. ``select`` applies it to rows; the caller resolves ``row_id`` and the object."""

    object: str
    row_id: str | None = None
    where: Where | None = None
    columns: tuple[str, ...] | None = None
    order_by: str | None = None
    descending: bool = False
    offset: int = 0
    limit: int | None = None

    def select(self, rows: Iterable[Row]) -> list[dict[str, Any]]:
        """Filter, order, page and project ``rows``.

        Without an explicit limit at most :data:`MAX_READ_WINDOW` rows come back, like the largest limit
        allowed: a client that forgets to page sees a truncated answer, as it would from a capped API.
        """
        chosen = [row for row in rows if self.where is None or self.where.matches(row)]
        if self.order_by is not None:
            column = self.order_by
            chosen.sort(key=lambda row: _sort_key(row.get(column)), reverse=self.descending)
        window = chosen[self.offset : self.offset + (MAX_READ_WINDOW if self.limit is None else self.limit)]
        if self.columns is None:
            return [dict(row) for row in window]
        return [{column: row.get(column) for column in self.columns} for row in window]


def parse_path(path: str) -> PathQuery:
    """Parse the raw (percent-encoded) path after ``/rest/``."""
    segments = path.strip("/").split("/")
    if not segments or not segments[0]:
        raise PathSyntaxError("Object name is missing")
    fields: dict[str, Any] = {"object": _decode(segments[0])}
    rest = segments[1:]
    if rest and rest[0] not in _MODIFIERS:
        fields["row_id"] = _decode(rest.pop(0))
    seen: set[str] = set()
    while rest:
        keyword = rest.pop(0)
        if keyword not in _MODIFIERS:
            raise PathSyntaxError(f"Unknown path parameter: {_decode(keyword)}")
        if keyword in seen:
            raise PathSyntaxError(f"Path parameter given twice: {keyword}")
        if not rest or not rest[0]:
            raise PathSyntaxError(f"Path parameter {keyword} needs a value")
        seen.add(keyword)
        value = rest.pop(0)
        if keyword == "where":
            fields["where"] = parse_where(value)
        elif keyword == "columns":
            fields["columns"] = tuple(_column(name) for name in value.split(","))
        elif keyword == "limit":
            fields["offset"], fields["limit"] = _parse_limit(value)
        else:
            if "order_by" in fields:
                raise PathSyntaxError("Give order_by or order_by_desc, not both")
            fields["order_by"] = _column(value)
            fields["descending"] = keyword == "order_by_desc"
    return PathQuery(**fields)


def parse_where(expression: str) -> Where:
    """Parse a raw (percent-encoded) ``where`` expression."""
    return Where(
        tuple(tuple(_parse_condition(part) for part in group.split("&")) for group in expression.split("|"))
    )


def _parse_condition(text: str) -> Condition:
    match = _CONDITION.fullmatch(text)
    if match is None:
        raise PathSyntaxError(f"Cannot parse condition: {_decode_lenient(text)}")
    column, operator, raw_value = match.groups()
    for character in "=<>":
        if character in raw_value:
            raise PathSyntaxError(f"Unencoded '{character}' in the value of {column}: percent-encode values")
    raw_values = raw_value.split(",") if operator in _LIST_OPERATORS else [raw_value]
    return Condition(column, operator, tuple(_decode(value) for value in raw_values))


def _parse_limit(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) > 2 or not all(part.isdigit() for part in parts):
        raise PathSyntaxError(f"Invalid limit: {_decode_lenient(text)}")
    offset, count = (0, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    if offset + count > MAX_READ_WINDOW:
        raise PathSyntaxError(f"Limit too big: offset + count may not exceed {MAX_READ_WINDOW}")
    return offset, count


def _column(text: str) -> str:
    if _COLUMN_NAME.fullmatch(text) is None:
        raise PathSyntaxError(f"Invalid column name: {_decode_lenient(text)}")
    return text


def _decode(text: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise PathSyntaxError(f"Invalid percent-encoding in: {text}")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise PathSyntaxError(f"Invalid UTF-8 in: {text}") from None


def _decode_lenient(text: str) -> str:
    return unquote(text, errors="replace")


def _compare(held: Any, operator: str, value: str) -> bool:
    left: Any = str(held)
    right: Any = value
    if isinstance(held, (int, float)) and not isinstance(held, bool):
        try:
            left, right = held, float(value)
        except ValueError:
            pass
    return bool(_COMPARISONS[operator](left, right))


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before strings; NULLs last (first when descending), like a forgiving SQL sort."""
    if value is None:
        return (2, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))
