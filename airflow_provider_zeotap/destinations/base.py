"""Helpers the adapters share: per-row sending with a bounded pool (threads or one event loop), and API errors
as row outcomes.

The contract itself (``Destination``, ``Capabilities``, ``OutboundRow``, ``RowOutcome``) belongs to the
engine, in ``sync/destination.py``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from airflow_provider_zeotap.errors import FatalError
from airflow_provider_zeotap.http import ApiError
from airflow_provider_zeotap.sync.destination import DeliveryStopped, OutboundRow, RowOutcome


#: What every destination that takes an email accepts as one: one ``@``, no spaces, a dot in the domain. Not a
#: full RFC 5322 parse: it catches the values that are plainly not addresses (a name, a phone number, a missing
#: ``@``), which an API would otherwise store as an identifier nobody can reach.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def email_problem(value: str) -> str | None:
    """Why ``value`` is not an email address (the reason a row is rejected with), or None when it is one."""
    if not EMAIL.match(value):
        return f"not an email address: {value[:80]!r}"
    return None


def outcome_for_error(row: OutboundRow, error: Exception) -> RowOutcome:
    """A row whose request ended in ``error``: failed if a later run could succeed, else rejected."""
    if isinstance(error, FatalError):
        raise error
    if isinstance(error, ApiError) and error.retryable:
        return RowOutcome.failed(row, str(error))
    return RowOutcome.rejected(row, str(error))


def outcomes_for_error(rows: Sequence[OutboundRow], error: Exception) -> list[RowOutcome]:
    return [outcome_for_error(row, error) for row in rows]


def send_each(
    rows: Sequence[OutboundRow], send_one: Callable[[OutboundRow], RowOutcome], *, max_in_flight: int
) -> list[RowOutcome]:
    """Per-row APIs: one request per row, at most ``max_in_flight`` at once, an outcome for every row.

    A fatal error (bad key, no permission) stops the rows not yet started and raises ``DeliveryStopped``
    with the outcomes of those that were answered.
    """
    stop = threading.Event()

    def guarded(row: OutboundRow) -> RowOutcome | Exception | None:
        if stop.is_set():
            return None
        try:
            return send_one(row)
        except FatalError as error:
            stop.set()
            return error
        except ApiError as error:
            return outcome_for_error(row, error)

    if max_in_flight <= 1 or len(rows) <= 1:
        results = [guarded(row) for row in rows]
    else:
        with ThreadPoolExecutor(max_workers=min(max_in_flight, len(rows)), thread_name_prefix="zeotap-send") as pool:
            results = list(pool.map(guarded, rows))
    return _settled(results)


async def asend_each(
    rows: Sequence[OutboundRow], send_one: Callable[[OutboundRow], Awaitable[RowOutcome]], *, max_in_flight: int
) -> list[RowOutcome]:
    """``send_each`` on the runner's event loop: one request per row, at most ``max_in_flight`` at once.

    The same contract: an outcome for every row, and a fatal error stops the rows not yet started and raises
    ``DeliveryStopped`` with the outcomes of those that were answered.
    """
    gate = asyncio.Semaphore(max(1, max_in_flight))
    stop = asyncio.Event()

    async def guarded(row: OutboundRow) -> RowOutcome | Exception | None:
        async with gate:
            if stop.is_set():
                return None
            try:
                return await send_one(row)
            except FatalError as error:
                stop.set()
                return error
            except ApiError as error:
                return outcome_for_error(row, error)

    results = await asyncio.gather(*(guarded(row) for row in rows))
    return _settled(results)


def _settled(results: Sequence[RowOutcome | Exception | None]) -> list[RowOutcome]:
    """The answered rows' outcomes; with a fatal error among them, ``DeliveryStopped`` carrying those outcomes."""
    fatal = next((r for r in results if isinstance(r, Exception)), None)
    outcomes = [r for r in results if isinstance(r, RowOutcome)]
    if fatal is not None:
        raise DeliveryStopped(fatal, outcomes)
    return outcomes
