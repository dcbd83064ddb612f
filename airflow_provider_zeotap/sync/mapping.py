"""Field mapping: ``{destination_field: source_column}``, checked before anything is sent."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_zeotap.errors import ConfigurationError


def resolve_mapping(
    field_mapping: Mapping[str, str] | None,
    *,
    source_columns: Sequence[str],
    default_fields: Sequence[str],
    required_fields: Sequence[str],
    destination: str,
    accepts_any_field: bool = True,
) -> dict[str, str]:
    """The mapping to use: the user's, or each default field that the source has under the same name."""
    if field_mapping is None:
        mapping = {name: name for name in default_fields if name in source_columns}
    else:
        if not isinstance(field_mapping, Mapping):
            raise ConfigurationError(
                "field_mapping must be a dict {destination_field: source_column}, "
                f"got {type(field_mapping).__name__}."
            )
        mapping = dict(field_mapping)
    unknown = {dest: src for dest, src in mapping.items() if src not in source_columns}
    if unknown:
        raise ConfigurationError(
            "field_mapping names source columns that the plan does not have: "
            + ", ".join(f"{dest!r} <- {src!r}" for dest, src in unknown.items())
            + f". Source columns: {list(source_columns)}."
        )
    if not accepts_any_field:
        check_destination_fields(mapping, default_fields=default_fields, destination=destination)
    missing = [name for name in required_fields if name not in mapping]
    if missing:
        raise ConfigurationError(
            f"{destination} requires the field(s) {missing}, but nothing maps to them. Add e.g. "
            + ", ".join(f"{name!r}: '<source column>'" for name in missing)
            + f" to field_mapping. Source columns: {list(source_columns)}."
        )
    if not mapping:
        raise ConfigurationError(
            f"Nothing would be sent to {destination}: no source column matches its default fields "
            f"{list(default_fields)}. Pass field_mapping={{destination_field: source_column}}."
        )
    return mapping


def check_destination_fields(mapping: Mapping[str, str], *, default_fields: Sequence[str], destination: str) -> None:
    """A destination with a fixed set of fields refuses a mapping to any other: the value would be dropped.

    The operators call it when the DAG is parsed (the keys of a literal ``field_mapping`` are known then), and
    ``resolve_mapping`` again at run time for a templated one.
    """
    foreign = [name for name in mapping if name not in default_fields]
    if foreign:
        raise ConfigurationError(
            f"{destination} has no field(s) {foreign}; its fields are {list(default_fields)}. "
            "Fix the destination-field names (the keys) in field_mapping."
        )


class UnsendableValue(ValueError):
    """A value JSON cannot carry as it is; the row is rejected with this reason, never changed silently."""


@dataclass(frozen=True)
class MappedRow:
    """One source row as destination fields, or the reasons it cannot be sent as it is."""

    payload: dict[str, Any]
    problems: list[str]


def apply_mapping(
    mapping: Mapping[str, str],
    row: Mapping[str, Any],
    *,
    send_nulls: bool,
    delivered_fields: Collection[str] = (),
) -> MappedRow:
    """One source row as the destination's fields, values made JSON-safe.

    A null is left out (the destination keeps what it has) unless ``send_nulls``, or unless the field
    is in ``delivered_fields``: it had a value the destination acknowledged, so the null is a clear and
    must arrive as one (the adapter sends it the way its API clears a field).
    """
    payload: dict[str, Any] = {}
    problems: list[str] = []
    for dest, src in mapping.items():
        try:
            value = to_json_value(row.get(src))
        except UnsendableValue as problem:
            problems.append(f"field {dest!r} (from column {src!r}): {problem}")
            continue
        if value is None and not (send_nulls or dest in delivered_fields):
            continue
        payload[dest] = value
    return MappedRow(payload, problems)


def to_json_value(value: Any) -> Any:
    """Warehouse types as values a JSON API accepts; see docs/type-conversions.md.

    Raises ``UnsendableValue`` for what has no faithful JSON form (NaN, infinities, a decimal with more
    digits than a JSON number keeps): changing it quietly would deliver a value nobody wrote.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise UnsendableValue(
                f"{value} has no JSON form; replace it in the source (e.g. NULLIF / CASE WHEN ... THEN NULL)"
            )
        return value
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)


def _decimal(value: decimal.Decimal) -> int | float:
    """An integral decimal as an integer; another as the float with exactly its value, or refused."""
    if not value.is_finite():
        raise UnsendableValue(f"decimal {value} has no JSON form; replace it in the source")
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if decimal.Decimal(repr(as_float)) != value.normalize():
        raise UnsendableValue(
            f"decimal {value} has more digits than a JSON number keeps exactly; round it in the source "
            "(ROUND(x, n)) or send it as text (CAST(x AS VARCHAR))"
        )
    return as_float
