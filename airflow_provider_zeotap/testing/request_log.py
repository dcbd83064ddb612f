"""The record of every API request an emulator saw, so a test can assert on what the client sent and when.

Secrets never enter the log: the headers that carry credentials are left out, so a log can be printed in a
failing test's output or served over the admin endpoint without leaking a key.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote

#: Headers that carry credentials for one of the emulated APIs (or for any HTTP API).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "apikey", "cookie"})


@dataclass(frozen=True)
class RecordedRequest:
    """One API request as the emulator received it, and how it was answered.

    ``started_at`` and ``finished_at`` are ``time.monotonic()`` readings taken when the request arrived and
    when its answer was handed to the server; ``finished_at`` and ``status`` are None while it is in flight.
    ``fault`` names the injected fault that shaped the answer ("error", "rate_limited", "dropped"), if any.
    """

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    started_at: float
    finished_at: float | None = None
    status: int | None = None
    fault: str | None = None

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any], body: bytes, started_at: float) -> RecordedRequest:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        headers: dict[str, str] = {}
        for name_bytes, value_bytes in scope["headers"]:
            name = name_bytes.decode("latin-1").lower()
            if name not in CREDENTIAL_HEADERS:
                value = value_bytes.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return cls(
            method=scope["method"],
            path=unquote(raw_path.decode("latin-1")),
            raw_path=raw_path.decode("latin-1"),
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)),
            headers=headers,
            json=_json_or_none(body),
            started_at=started_at,
        )


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class RequestLog:
    """Thread-safe, append-only (until cleared) log of :class:`RecordedRequest`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, RecordedRequest] = {}
        self._ids = itertools.count()

    def begin(self, request: RecordedRequest) -> int:
        """Log an arriving request; the returned ticket finishes it."""
        with self._lock:
            ticket = next(self._ids)
            self._entries[ticket] = request
            return ticket

    def finish(self, ticket: int, *, finished_at: float, status: int | None, fault: str | None) -> None:
        """Record how a request ended; only the first call counts."""
        with self._lock:
            entry = self._entries.get(ticket)  # None: cleared meanwhile
            if entry is not None and entry.finished_at is None:
                self._entries[ticket] = replace(entry, finished_at=finished_at, status=status, fault=fault)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def max_in_flight(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """The most matching requests that were ever open at once (a still-open request counts as open)."""
        chosen = [
            entry
            for entry in self.snapshot()
            if (method is None or entry.method == method.upper())
            and (path_prefix is None or entry.path.startswith(path_prefix))
        ]
        return max_overlap((entry.started_at, entry.finished_at) for entry in chosen)


def max_overlap(intervals: Iterable[tuple[float, float | None]]) -> int:
    """Most intervals open at one instant; one ending as another starts do not overlap."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((float("inf") if end is None else end, -1))
    events.sort()  # at equal times, -1 (an end) sorts before +1 (a start)
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak
