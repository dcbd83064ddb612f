"""Pacing: stay under an API's documented limits instead of bouncing off them with 429s.

By default request starts are spaced evenly (a margin under the tighter of the per-second and
per-minute rates: ``Limits.pacing_margin``, 10% unless the vendor's hook says otherwise), which keeps
every sliding window under its limit. With ``Limits.sliding_windows`` the windows are counted instead: a request starts once, in each window, the request ``count`` places before
it was *answered* at least the window's length ago. The server saw that earlier request before it
answered, and sees the new one after it starts, so the server's own window never holds more than
``count`` requests, whatever the network delays; and no margin is lost (2/s sustains about 1.99/s where
spacing sustains 1.82/s). A new pacer counts its shortest window as full, so a task that follows another
on the same key at once starts one window later instead of meeting a 429. A cap on requests in flight
is a semaphore.
One ``Pacer`` serves threads and coroutines alike: the spacing is reserved under a lock, and only the
waiting differs. The in-flight cap is one semaphore for threads and one per event loop, so a hook
should use one style per run (the sync engine does).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from airflow_provider_zeotap.http.settings import Limits

#: How often a request waiting for an earlier one's answer looks again (sliding windows only).
_ANSWER_POLL_SECONDS = 0.005


class _Window:
    """At most ``count`` requests in any ``seconds``; a rate below one (0.5/s) is one request per 1/rate s."""

    def __init__(self, rate: float, unit: float) -> None:
        self.count = max(1, math.floor(rate))
        self.seconds = unit * self.count / rate


class _Started:
    """One request let through by the window gate; ``answered`` is set when it ends."""

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered: float | None = None


class _WindowGate:
    """The sliding-window rule (see the module docstring); called under the pacer's lock."""

    def __init__(self, windows: list[_Window], now: float) -> None:
        self.windows = windows
        self._recent: deque[_Started] = deque(maxlen=max(w.count for w in windows))
        # The shortest window counts as full when the pacer is made: a task that follows another on the same
        # key at once (the previous one's last requests still in the server's window) waits one window instead
        # of meeting a 429. Tasks one after another then never exceed the per-second rate together.
        for _ in range(min(windows, key=lambda w: w.seconds).count):
            phantom = _Started()
            phantom.answered = now
            self._recent.append(phantom)

    def try_start(self, now: float, paused_until: float) -> tuple[_Started | None, float]:
        """Start a request now, or say how long to wait before asking again."""
        earliest = paused_until
        for window in self.windows:
            if len(self._recent) >= window.count:
                earlier = self._recent[-window.count]
                if earlier.answered is None:
                    return None, _ANSWER_POLL_SECONDS  # its window starts when it is answered
                earliest = max(earliest, earlier.answered + window.seconds)
        if earliest > now:
            return None, earliest - now
        started = _Started()
        self._recent.append(started)
        return started, 0.0


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
        windows = [
            _Window(rate, unit)
            for rate, unit in ((limits.rate_per_second, 1.0), (limits.rate_per_minute, 60.0))
            if rate
        ]
        self._gate = _WindowGate(windows, time.monotonic()) if limits.sliding_windows and windows else None
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

    def _try_start(self) -> tuple[_Started | None, float]:
        """Sliding windows: let a request start now, or say how long to wait before asking again."""
        assert self._gate is not None
        with self._lock:
            return self._gate.try_start(time.monotonic(), self._paused_until)

    @staticmethod
    def _answered(started: _Started | None) -> None:
        if started is not None:
            started.answered = time.monotonic()

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self._threads is not None:
            self._threads.acquire()
        started: _Started | None = None
        try:
            if self._gate is None:
                wait = self.reserve()
                if wait > 0:
                    time.sleep(wait)
            else:
                while (attempt := self._try_start())[0] is None:
                    time.sleep(attempt[1])
                started = attempt[0]
            yield
        finally:
            self._answered(started)
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
        started: _Started | None = None
        try:
            if self._gate is None:
                if self.interval or self._paused_until:
                    async with self._async_turns():
                        wait = self.reserve()
                        if wait > 0:
                            await asyncio.sleep(wait)
            else:
                while (attempt := self._try_start())[0] is None:
                    await asyncio.sleep(attempt[1])
                started = attempt[0]
            yield
        finally:
            self._answered(started)
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
