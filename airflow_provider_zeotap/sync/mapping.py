"""Field mapping: ``{destination_field: source_column}``, checked before anything is sent."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Mapping, Sequence
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
        foreign = [name for name in mapping if name not in default_fields]
        if foreign:
            raise ConfigurationError(
                f"{destination} has no field(s) {foreign}; its fields are {list(default_fields)}. "
                "Fix the destination-field names (the keys) in field_mapping."
            )
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


def apply_mapping(mapping: Mapping[str, str], row: Mapping[str, Any], *, send_nulls: bool) -> dict[str, Any]:
    """One source row as the destination's fields, values made JSON-safe."""
    payload: dict[str, Any] = {}
    for dest, src in mapping.items():
        value = to_json_value(row.get(src))
        if value is None and not send_nulls:
            continue
        payload[dest] = value
    return payload


def to_json_value(value: Any) -> Any:
    """Warehouse types (dates, decimals, bytes, NaN) as values a JSON API accepts."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
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
