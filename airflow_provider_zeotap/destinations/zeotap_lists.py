"""Fetch or delete Zeotap profiles by a list of ids, outside the sync engine (no diff, no baseline).

What the fetch and deletion operators run: the ids arrive in chunks, calls start as ids arrive (5 ids a
fetch, 400 a deletion) and at most ``window`` calls are outstanding, so a list of millions of ids streams
through in bounded memory while the hook's pacer keeps the rate and the in-flight cap. A call that fails
after its retries stops the run with its error: an unanswered id is never counted as found or deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_zeotap.destinations.zeotap import DeletionList
from airflow_provider_zeotap.errors import ZeotapProviderError
from airflow_provider_zeotap.hooks.zeotap import MAX_DELETE_IDS, MAX_FETCH_IDS, ZeotapProfileHook

#: Calls outstanding at once (each waits in the pacer until its start time); bounds memory, not the rate.
WINDOW = 400


@dataclass
class ListCounts:
    """What a run by id list did; ``empty_ids`` were left out before any call, and counted, never dropped silently."""

    ids: int = 0
    empty_ids: int = 0
    found: int = 0
    not_found: int = 0
    deleted: int = 0
    requests: int = 0


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


async def _run_windowed(
    calls: Iterable[Callable[[], Awaitable[None]]], window: int
) -> None:
    """Start each call as the iterable yields it, at most ``window`` outstanding; the first error stops all."""
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    failure: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slots.release()
        if not task.cancelled() and task.exception() is not None and not failure:
            failure.append(task.exception())  # type: ignore[arg-type]

    try:
        for call in calls:
            await slots.acquire()
            if failure:
                break
            task = asyncio.ensure_future(call())
            tasks.add(task)
            task.add_done_callback(finished)
        while tasks and not failure:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    if failure:
        raise failure[0]


def _chunked(batches: Iterable[list[Any]], size: int, counts: ListCounts) -> Iterable[list[str]]:
    """Ids in calls of ``size``, across the source's chunks; empty ids counted and left out."""
    pending: list[str] = []
    for batch in batches:
        for value in batch:
            if _present(value):
                counts.ids += 1
                pending.append(str(value))
            else:
                counts.empty_ids += 1
            if len(pending) == size:
                yield pending
                pending = []
    if pending:
        yield pending


async def fetch_by_ids(
    hook: ZeotapProfileHook,
    id_type: str,
    batches: Iterable[list[Any]],
    write: Callable[[list[dict[str, Any]]], None],
    *,
    region: str | None = None,
    org_id: int | str | None = None,
    window: int = WINDOW,
) -> ListCounts:
    """Fetch the profiles of every id, 5 a call; ``write`` gets each answer's profiles as it arrives."""
    counts = ListCounts()

    def call(chunk: list[str]) -> Callable[[], Awaitable[None]]:
        async def fetch() -> None:
            profiles = await hook.afetch_profiles(id_type, chunk, region=region, org_id=org_id)
            counts.requests += 1
            found = {str(profile.get("ids", {}).get(id_type)) for profile in profiles}
            counts.found += sum(1 for value in chunk if value in found)
            counts.not_found += sum(1 for value in chunk if value not in found)
            write(profiles)

        return fetch

    try:
        await _run_windowed((call(chunk) for chunk in _chunked(batches, MAX_FETCH_IDS, counts)), window)
    finally:
        await hook.aclose()
    return counts


async def delete_by_ids(
    hook: ZeotapProfileHook,
    id_type: str,
    batches: Iterable[list[Any]],
    deletions: DeletionList,
    *,
    region: str | None = None,
    org_id: int | str | None = None,
    window: int = 8,
) -> ListCounts:
    """Delete the profiles of every id, 400 a call; ``deletions`` lists each id as deleted or not found."""
    counts = ListCounts()

    def call(chunk: list[str]) -> Callable[[], Awaitable[None]]:
        async def delete() -> None:
            answer = await hook.adelete_profiles(id_type, chunk, region=region, org_id=org_id)
            counts.requests += answer.requests
            deletions.record(answer)
            unanswered = set(chunk) - set(answer.deleted) - set(answer.not_found)
            if unanswered:  # a deletion request must be confirmed, not assumed
                raise ZeotapProviderError(
                    f"Zeotap's answer to a deletion of {len(chunk)} ids lists {len(unanswered)} of them neither as "
                    f"deleted nor as not found (e.g. {sorted(unanswered)[0]!r}); run the deletion again for them."
                )

        return delete

    try:
        await _run_windowed((call(chunk) for chunk in _chunked(batches, MAX_DELETE_IDS, counts)), window)
    finally:
        await hook.aclose()
    counts.deleted, counts.not_found = deletions.deleted, deletions.not_found
    return counts
