"""Retry and pacing settings: vendor defaults, overridable per connection (extras)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airflow_provider_zeotap.http.errors import ConfigurationError


class RetryPolicy(BaseModel):
    """How hard one request is retried. Both bounds hold: attempts and total time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Attempts per request, the first included. A 429 answer does not use one up.
    max_attempts: int = Field(default=5, ge=1, le=50)
    #: Total time one request may spend waiting for retries (Retry-After waits included).
    max_retry_seconds: float = Field(default=300.0, ge=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)


class Limits(BaseModel):
    """Pacing: the rate we stay under and the cap on requests in flight, per API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_second: float | None = Field(default=None, gt=0)
    rate_per_minute: float | None = Field(default=None, gt=0)
    max_in_flight: int | None = Field(default=None, ge=1)
    #: How far under the tighter rate request starts are spaced (0.1: 10% under). Starts are spaced evenly
    #: and never early, so a small margin still keeps every sliding window under its limit; a vendor whose
    #: throughput is its rate limit may choose a smaller one than the default.
    pacing_margin: float = Field(default=0.1, ge=0, lt=1)
    #: Count requests in sliding windows instead of spacing starts evenly under the tighter rate: at most
    #: ``rate_per_second`` in any second and ``rate_per_minute`` in any minute, each window measured from when
    #: the earlier request was answered (so no network delay can squeeze two windows' requests into one). For
    #: APIs whose limit is low enough that a 10% margin costs real time (Optimizely's 2/s).
    sliding_windows: bool = False


class HttpSettings(BaseModel):
    """What a connection's extras may say about the transport."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    timeout: float = Field(default=30.0, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=50)
    max_retry_seconds: float | None = Field(default=None, ge=0)
    backoff_initial: float | None = Field(default=None, gt=0)
    backoff_max: float | None = Field(default=None, gt=0)
    rate_per_second: float | None = Field(default=None, gt=0)
    rate_per_minute: float | None = Field(default=None, gt=0)
    max_in_flight: int | None = Field(default=None, ge=1)
    verify: bool | str = True

    def retry_policy(self) -> RetryPolicy:
        overrides = {
            k: v
            for k in ("max_attempts", "max_retry_seconds", "backoff_initial", "backoff_max")
            if (v := getattr(self, k)) is not None
        }
        return RetryPolicy(**overrides)

    def limits(self, defaults: Limits) -> Limits:
        overrides = {
            k: v for k in ("rate_per_second", "rate_per_minute", "max_in_flight") if (v := getattr(self, k)) is not None
        }
        return defaults.model_copy(update=overrides)


def normalize_extras(extras: dict[str, Any], conn_type: str) -> dict[str, Any]:
    """Accept both plain keys and the UI's ``extra__<conn_type>__<field>`` keys; drop empty values."""
    prefix = f"extra__{conn_type}__"
    out: dict[str, Any] = {}
    for key, value in extras.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if value is None or value == "":
            continue
        out[name] = value
    return out


def parse_settings(model: type[BaseModel], extras: dict[str, Any], *, conn_id: str) -> Any:
    """Validate extras into ``model``, turning pydantic's error into one that names field and fix."""
    try:
        return model.model_validate(extras)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'extra'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(
            f"Connection {conn_id!r} has invalid extras ({problems}). Fix them in the connection's extra JSON."
        ) from None


def unknown_extras(model: type[BaseModel], extras: dict[str, Any], *, conn_id: str) -> list[str]:
    """One warning per extra the model does not know, naming the closest known name.

    Unknown extras are ignored, not refused (Airflow and other tools may store their own keys), but a
    misspelt ``max_atempts`` silently keeping the default is worse than a line in the log.
    """
    known = sorted(model.model_fields)
    notes = []
    for name in extras:
        if name in model.model_fields:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known extras: {', '.join(known)}."
        notes.append(f"Connection {conn_id!r} has an unknown extra {name!r}, which is ignored: {hint}")
    return notes
