"""Profiles written as they arrive: Parquet (row groups of 10,000) or JSON lines, never held whole in memory.

Parquet has one column per top-level field of a profile. ``ucid`` and ``region`` are text; everything else
(``ids``, ``profile``, ``consent``, ``mkt_preferences``, ``created_ts``, ``updated_ts``) is stored as the JSON text
of what the API answered: the sections are schemaless, and the timestamps' format is not documented, so no
value is converted on the way (parse them with ``json_extract`` / ``from_json`` in the reader). JSON lines keep
each profile exactly as the API answered.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_zeotap.errors import ConfigurationError

FORMATS = ("parquet", "jsonl")
JSON_FIELDS = ("ids", "profile", "consent", "mkt_preferences", "created_ts", "updated_ts")
SCHEMA = pa.schema([("ucid", pa.string()), ("region", pa.string()), *((name, pa.string()) for name in JSON_FIELDS)])
ROW_GROUP = 10_000


def output_format(output_uri: str, given: str | None) -> str:
    """``given``, else told by the URI's suffix (``.parquet``, ``.jsonl``)."""
    name = str(output_uri).lower()
    kind = (given or ("jsonl" if name.endswith((".jsonl", ".ndjson")) else "parquet" if name.endswith(".parquet")
                      else "")).lower()
    if kind not in FORMATS:
        raise ConfigurationError(
            f"output_format must be one of {FORMATS} (or end output_uri with .parquet or .jsonl), got {given!r} "
            f"for {output_uri!r}."
        )
    return kind


class ProfileWriter:
    """Append profiles to a local file in one of ``FORMATS``; ``close`` finishes it."""

    def __init__(self, path: str, kind: str) -> None:
        self.kind = kind
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        if kind == "jsonl":
            self._lines = open(path, "w", encoding="utf-8")
        else:
            self._parquet = pq.ParquetWriter(path, SCHEMA)

    def write(self, profiles: list[dict[str, Any]]) -> None:
        self.rows += len(profiles)
        if self.kind == "jsonl":
            for profile in profiles:
                self._lines.write(json.dumps(profile, ensure_ascii=False, sort_keys=True) + "\n")
            return
        self._buffer.extend(profiles)
        if len(self._buffer) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        rows = [
            {
                "ucid": _text(profile.get("ucid")),
                "region": _text(profile.get("region")),
                **{name: None if profile.get(name) is None
                   else json.dumps(profile[name], ensure_ascii=False, sort_keys=True) for name in JSON_FIELDS},
            }
            for profile in self._buffer
        ]
        self._parquet.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
        self._buffer = []

    def close(self) -> None:
        if self.kind == "jsonl":
            self._lines.close()
        else:
            self._flush()
            self._parquet.close()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)

