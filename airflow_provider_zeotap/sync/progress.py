"""Progress of a delivery: rows done of total, rate and time left, logged at a steady interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from airflow_provider_zeotap.sync.destination import RowOutcome
from airflow_provider_zeotap.sync.models import Outcome

log = logging.getLogger(__name__)


class Progress:
    """Rows done of total, rate and time left, logged every ``interval`` seconds by a ticker thread
    (so a slow batch still shows signs of life) and once at the end."""

    def __init__(self, name: str, total: int, interval: float) -> None:
        self.name = name
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self.done = 0
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="zeotap-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, outcomes: Sequence[RowOutcome]) -> None:
        for outcome in outcomes:
            self.counts[outcome.outcome] += 1
        self.done += len(outcomes)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.log()

    def log(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %d of %d rows (%.0f%%), %.1f rows/s, about %s left; %d rejected, %d failed so far",
            self.name,
            self.done,
            self.total,
            100.0 * self.done / self.total if self.total else 100.0,
            rate,
            _duration(left),
            self.counts[Outcome.REJECTED],
            self.counts[Outcome.FAILED],
        )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
