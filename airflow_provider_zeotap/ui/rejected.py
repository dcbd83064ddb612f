"""The rejected rows of one run, paged and searchable, read from its rejected-rows file.

The file is JSON lines (key columns, then change, operation, outcome and reason; see
``sync/commit.py:write_rejected_rows``) and may hold millions of lines, so it is streamed, never loaded.
Its location comes from XCom, which tasks write, so the API server reads only the one file name the engine
gives a run's report under the configured ``state_uri``: never another path a task might name.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

from airflow_provider_zeotap.sync.commit import REPORT_FIELDS
from airflow_provider_zeotap.sync.storage import PLAN_ID_PATTERN, SyncStorage, is_local, local_path, unsafe_uri_reason
from airflow_provider_zeotap.ui.models import RejectedRow

FILE_NAME = "rejected_rows.jsonl"
MAX_PAGE_SIZE = 500


class RejectedRowsUnavailable(Exception):
    """The run's rejected rows cannot be shown; the message says why and what to do."""


def expected_uri(state_uri: str, sync_id: str, plan_id: str) -> str:
    """Where the engine writes a run's rejected-rows file (``DeliveryRunner._result``)."""
    return SyncStorage(state_uri, sync_id).plan_uri(plan_id, FILE_NAME)


def check_location(uri: str, *, state_uri: str, sync_id: str, plan_id: str) -> None:
    """Refuse any file but the run's own report under the configured state location."""
    if not PLAN_ID_PATTERN.fullmatch(plan_id) or unsafe_uri_reason(uri):
        raise RejectedRowsUnavailable(f"The result names {uri!r} as its rejected-rows file, which is not one the engine writes.")
    expected = expected_uri(state_uri, sync_id, plan_id)
    if uri.rstrip("/") != expected:
        raise RejectedRowsUnavailable(
            f"The rejected-rows file {uri} is not under the API server's state location {state_uri} (expected "
            f"{expected}). Set [zeotap_sync] state_uri on the API server to the one the tasks use."
        )


def read_page(uri: str, *, search: str = "", page: int = 1, page_size: int = 50) -> tuple[int, list[RejectedRow]]:
    """The ``page``-th ``page_size`` rows matching ``search`` (case-insensitive, any field), and how many match."""
    needle = search.strip().casefold()
    start = (page - 1) * page_size
    total = 0
    rows: list[RejectedRow] = []
    for record in _records(uri):
        if needle and needle not in _haystack(record):
            continue
        if start <= total < start + page_size:
            rows.append(_row(record))
        total += 1
    return total, rows


def _records(uri: str) -> Iterator[dict[str, Any]]:
    try:
        handle = _open(uri)
    except FileNotFoundError:
        raise RejectedRowsUnavailable(
            f"The rejected-rows file {uri} is no longer there: a sync keeps the files of its 5 newest plans, and "
            "prunes older ones at each commit."
        ) from None
    except OSError as error:
        raise RejectedRowsUnavailable(f"The rejected-rows file {uri} cannot be read here: {error}") from None
    with handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def _open(uri: str) -> io.TextIOBase:
    if is_local(uri):
        return open(local_path(uri), encoding="utf-8")
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri)
    if not path.exists():
        raise FileNotFoundError(uri)
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8")


def _haystack(record: dict[str, Any]) -> str:
    return " ".join(str(value) for value in record.values()).casefold()


def _row(record: dict[str, Any]) -> RejectedRow:
    return RejectedRow(
        key={name: value for name, value in record.items() if name not in REPORT_FIELDS},
        **{name: None if record.get(name) is None else str(record.get(name)) for name in REPORT_FIELDS},
    )
