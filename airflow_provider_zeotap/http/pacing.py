"""Pacing: stay under an API's documented limits instead of bouncing off them with 429s.

Request starts are spaced evenly (a margin under the tighter of the per-second and per-minute rates:
``Limits.pacing_margin``, 10% unless the vendor's hook says otherwise), which keeps every sliding window under its limit. A cap on requests in flight is a semaphore.
One ``Pacer`` serves threads and coroutines alike: the spacing is reserved under a lock, and only the
waiting differs. The in-flight cap is one semaphore for threads and one per event loop, so a hook
should use one style per run (the sync engine does).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from airflow_provider_zeotap.http.settings import Limits


class Pacer:
    def __init__(self, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.limits = limits
        intervals = []
        if limits.rate_per_second:
            intervals.append(1.0 / limits.rate_per_second)
        if limits.rate_per_minute:
            intervals.append(60.0 / limits.rate_per_minute)
        self.interval = max(intervals) * (1 + limits.pacing_margin) if intervals else 0.0
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._paused_until = 0.0
        self._threads = threading.BoundedSemaphore(limits.max_in_flight) if limits.max_in_flight else None
        self._loop_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._loop_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def reserve(self) -> float:
        """Claim the next start time; return how long the caller must wait for it."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start, self._paused_until)
            self._next_start = start + self.interval
            return start - now

    def pause(self, seconds: float) -> None:
        """Hold every start for ``seconds`` (the API said Retry-After): one 429 slows all callers."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self._threads is not None:
            self._threads.acquire()
        try:
            wait = self.reserve()
            if wait > 0:
                time.sleep(wait)
            yield
        finally:
            if self._threads is not None:
                self._threads.release()

    @asynccontextmanager
    async def aslot(self) -> AsyncIterator[None]:
        """A start time and an in-flight place, for a coroutine.

        One coroutine of a loop waits for the next start at a time (``_turns``): were every holder of an
        in-flight place to reserve its start at once, up to ``max_in_flight`` starts would be booked ahead,
        and a loop that stalls (a batch being prepared, a busy machine) would send all that fell due in one
        burst. Waiting in turn, a late start books the next one an interval after itself.
        """
        semaphore = self._async_semaphore()
        if semaphore is not None:
            await semaphore.acquire()
        try:
            if self.interval or self._paused_until:
                async with self._async_turns():
                    wait = self.reserve()
                    if wait > 0:
                        await asyncio.sleep(wait)
            yield
        finally:
            if semaphore is not None:
                semaphore.release()

    def _async_turns(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._loop_turns:
                self._loop_turns[loop] = asyncio.Lock()
            return self._loop_turns[loop]

    def _async_semaphore(self) -> asyncio.Semaphore | None:
        if not self.limits.max_in_flight:
            return None
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._loop_semaphores:
                self._loop_semaphores[loop] = asyncio.Semaphore(self.limits.max_in_flight)
            return self._loop_semaphores[loop]
