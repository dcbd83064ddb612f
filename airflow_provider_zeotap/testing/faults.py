"""Fault injection: the knobs a test turns to make an emulated API slow, flaky or strict.

A :class:`FaultConfig` describes the faults; a :class:`FaultInjector` turns it into a :class:`Verdict` for
each API request. Every random draw comes from one ``random.Random`` seeded by the config, so a test that
sets ``seed`` sees the same faults on every run (as long as it sends the same requests in the same order).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["error", "rate_limited", "dropped"]
#: When an injected fault strikes: ``before`` the emulated API sees the request (nothing changes), or ``after``
#: it applied the request (the write landed, only the answer is lost or replaced).
When = Literal["before", "after"]


class FaultConfig(BaseModel):
    """What goes wrong, and how often. The defaults are a healthy API with no limits.

    This model is the one definition of the knobs: ``Emulator.set_faults(**knobs)``, ``POST /_emulator/faults``
    and the command line's ``--<knob>`` options all validate through it, and the knob tables in the docs are
    generated from its field descriptions.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[
        float,
        Field(
            title="delay before every answer", ge=0,
            description="Delay (ms) added before every answer.",
        ),
    ] = 0

    latency_jitter_ms: Annotated[
        float,
        Field(
            title="random extra delay", ge=0,
            description="Extra delay (ms), uniform in [0, jitter], drawn per request.",
        ),
    ] = 0

    latency_spike_rate: Annotated[
        float,
        Field(
            title="fraction of latency spikes", ge=0, le=1,
            description="Fraction of requests delayed by a further `latency_spike_ms`.",
        ),
    ] = 0

    latency_spike_ms: Annotated[
        float,
        Field(title="a spike's extra delay", ge=0, description="The extra delay (ms) of a latency spike."),
    ] = 300

    error_rate: Annotated[
        float,
        Field(
            title="fraction answered with an injected error", ge=0, le=1,
            description="Fraction of requests answered with `error_status`.",
        ),
    ] = 0

    error_status: Annotated[
        int,
        Field(
            title="its status", ge=400, le=599,
            description="Status of injected errors (429 for an injected rate limit).",
        ),
    ] = 503

    error_message: Annotated[
        str | None,
        Field(
            title="its text",
            description=(
                "Text of injected errors, in the vendor's error shape; none: the status's reason phrase (e.g. "
                "`Too many simultaneous requests` with status 400 for Personyze's busy answer)."
            ),
        ),
    ] = None

    error_when: Annotated[
        When,
        Field(
            title="`before` or `after` the write",
            description=(
                "`before`: an injected error is answered before the API sees the request (nothing changes); "
                "`after`: the API applies the request first, then its answer is replaced by the error."
            ),
        ),
    ] = "before"

    retry_after: Annotated[
        int | None,
        Field(
            title="its `Retry-After`", ge=0,
            description="`Retry-After` (seconds) sent with injected errors; none: no header.",
        ),
    ] = None

    rate_limited_rate: Annotated[
        float,
        Field(
            title="fraction answered 429", ge=0, le=1,
            description=(
                "Fraction of requests answered 429 with `rate_limited_retry_after`, drawn after `error_rate`, so "
                "one config mixes injected 5xx and 429s."
            ),
        ),
    ] = 0

    rate_limited_retry_after: Annotated[
        int,
        Field(title="their `Retry-After`", ge=0, description="`Retry-After` (seconds) of the injected 429s."),
    ] = 1

    drop_rate: Annotated[
        float,
        Field(
            title="fraction of connections cut", ge=0, le=1,
            description="Fraction of requests whose connection is cut (see `drop_when`).",
        ),
    ] = 0

    drop_first: Annotated[
        int,
        Field(
            title="cut the first N", ge=0,
            description="The first N requests after this setting have their connection cut (no randomness).",
        ),
    ] = 0

    drop_when: Annotated[
        When,
        Field(
            title="`after` or `before` the write",
            description=(
                "`after`: the API applies the request, then the answer is cut (half its body, or nothing for an "
                "empty answer such as a 204); `before`: the connection closes before the API sees the request."
            ),
        ),
    ] = "after"

    rate_per_second: Annotated[
        float | None,
        Field(
            title="rate limit (vendor's throttle answer)", gt=0,
            description="Requests admitted per second (sliding window); more get the vendor's throttle answer.",
        ),
    ] = None

    rate_per_minute: Annotated[
        float | None,
        Field(
            title="rate limit (vendor's throttle answer)", gt=0,
            description="Requests admitted per minute (sliding window); more get the vendor's throttle answer.",
        ),
    ] = None

    max_in_flight: Annotated[
        int | None,
        Field(
            title="cap on requests open at once", ge=1,
            description="Requests admitted at once (arrival to answer); one more gets the throttle answer.",
        ),
    ] = None

    seed: Annotated[
        int | None,
        Field(
            title="seed of the random draws",
            description="Seed of the random draws; none: from the OS.",
        ),
    ] = None

    path_prefix: Annotated[
        str | None,
        Field(
            title="aim: paths under it",
            description="Only requests whose path starts with it are affected (e.g. `/rest/users`).",
        ),
    ] = None

    path: Annotated[
        str | None,
        Field(
            title="aim: this exact path",
            description="Only requests to exactly this path are affected (e.g. `/cdp/v1/users`).",
        ),
    ] = None

    method: Annotated[
        str | None,
        Field(
            title="aim: this method",
            description="Only requests of this method are affected (e.g. `POST`).",
        ),
    ] = None

    body_contains: Annotated[
        str | None,
        Field(
            title="aim: bodies holding this text",
            description="Only requests whose body holds this text are affected.",
        ),
    ] = None

    echo_request: Annotated[
        bool,
        Field(
            title="echo the request in error answers",
            description=(
                "Error answers (4xx/5xx, injected or not) echo the request's headers and body in their body, as "
                "some gateways do: a client that does not redact what it quotes leaks its key."
            ),
        ),
    ] = False

    def applies_to(self, path: str, method: str | None = None, body: bytes = b"") -> bool:
        if self.method is not None and method is not None and method.upper() != self.method.upper():
            return False
        if self.body_contains is not None and self.body_contains.encode() not in body:
            return False
        if self.path is not None and path.rstrip("/") != self.path.rstrip("/"):
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


class FaultSettings(TypedDict, total=False):
    """Keyword arguments of ``Emulator.set_faults``: any subset of :class:`FaultConfig`'s fields."""

    latency_ms: float
    latency_jitter_ms: float
    latency_spike_rate: float
    latency_spike_ms: float
    error_rate: float
    error_status: int
    error_message: str | None
    error_when: When
    retry_after: int | None
    rate_limited_rate: float
    rate_limited_retry_after: int
    drop_rate: float
    drop_first: int
    drop_when: When
    rate_per_second: float | None
    rate_per_minute: float | None
    max_in_flight: int | None
    seed: int | None
    path_prefix: str | None
    path: str | None
    method: str | None
    body_contains: str | None
    echo_request: bool


@dataclass(frozen=True)
class Verdict:
    """What to do with one request: wait ``delay`` seconds, then answer normally, refuse, or cut it off."""

    delay: float = 0.0
    fault: FaultKind | None = None
    status: int | None = None  # the refusal status, for "error" and "rate_limited"
    retry_after: int | None = None
    message: str | None = None  # the refusal's text; None: the status's reason phrase
    #: "before": the fault replaces the API's handling; "after": the API handles the request, then the fault
    #: replaces or cuts its answer. Rate limits are always "before".
    when: When = "before"
    #: The request holds one of ``max_in_flight``'s slots: give it back with ``FaultInjector.release``.
    holds_slot: bool = False

    @property
    def refused(self) -> bool:
        """Answered with an error instead of the API's answer (before or after the API handled it)."""
        return self.status is not None

    @property
    def reaches_api(self) -> bool:
        """The emulated API sees the request (it may change state), whatever the client then receives."""
        return self.fault is None or self.when == "after"


HEALTHY = Verdict()


class SlidingWindow:
    """Admits at most ``rate`` requests per ``unit`` seconds, measured over a sliding window.

    A fractional rate below one (0.5/s) becomes one request per 1/rate seconds, so any positive rate is
    honoured without rounding it to zero.
    """

    def __init__(self, rate: float, unit: float) -> None:
        self.capacity = max(1, math.floor(rate))
        self.period = unit * self.capacity / rate
        self._admitted: deque[float] = deque()

    def wait(self, now: float) -> float:
        """Seconds until one more request fits (0 when it fits now)."""
        while self._admitted and self._admitted[0] <= now - self.period:
            self._admitted.popleft()
        if len(self._admitted) < self.capacity:
            return 0.0
        return self._admitted[0] + self.period - now

    def admit(self, now: float) -> None:
        self._admitted.append(now)


class FaultInjector:
    """Holds the active :class:`FaultConfig` and judges requests against it; safe to call from any thread."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.configure(config)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the config; the random generator and the rate windows start afresh."""
        windows = []
        if config.rate_per_second is not None:
            windows.append(SlidingWindow(config.rate_per_second, 1.0))
        if config.rate_per_minute is not None:
            windows.append(SlidingWindow(config.rate_per_minute, 60.0))
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)
            self._windows = windows
            #: ``drop_first`` counted down: exactly the answers a test means to lose, where a rate would
            #: lose some at random (and, with a rate of 1, the client's retries too).
            self._drops_left = config.drop_first
            #: Requests admitted under ``max_in_flight`` and not yet answered.
            self._in_flight = 0

    def judge(self, path: str, now: float, method: str | None = None, body: bytes = b"") -> Verdict:
        """Decide the fate of a request that arrived at ``now`` (monotonic seconds).

        Draws happen in a fixed order (jitter, spike, error, 429, drop) and only for knobs that are on, so the same
        config and the same request sequence give the same verdicts. Rate limits count admitted requests
        only: a client that backs off for Retry-After seconds gets through. Under ``max_in_flight`` an
        admitted request holds a slot until ``release``; one arriving while every slot is held is 429. ``drop_first`` draws nothing:
        the first admitted requests are cut off before any error is drawn.
        """
        with self._lock:
            config = self._config
            if not config.applies_to(path, method, body):
                return HEALTHY
            jitter = self._rng.uniform(0, config.latency_jitter_ms) if config.latency_jitter_ms else 0.0
            if config.latency_spike_rate and self._rng.random() < config.latency_spike_rate:
                jitter += config.latency_spike_ms
            delay = (config.latency_ms + jitter) / 1000
            wait = max((window.wait(now) for window in self._windows), default=0.0)
            if wait > 0:
                return Verdict(delay, "rate_limited", 429, retry_after=max(1, math.ceil(wait)))
            if config.max_in_flight is not None and self._in_flight >= config.max_in_flight:
                return Verdict(delay, "rate_limited", 429, retry_after=1)
            for window in self._windows:
                window.admit(now)
            verdict = self._draw(config, delay)
            if config.max_in_flight is None:
                return verdict
            self._in_flight += 1
            return dataclasses.replace(verdict, holds_slot=True)

    def release(self, verdict: Verdict) -> None:
        """The request that ``verdict`` admitted has been answered: its ``max_in_flight`` slot is free."""
        if verdict.holds_slot:
            with self._lock:
                self._in_flight = max(0, self._in_flight - 1)

    def _draw(self, config: FaultConfig, delay: float) -> Verdict:
        """The faults an admitted request meets (called with the lock held)."""
        if self._drops_left:
            self._drops_left -= 1
            return Verdict(delay, "dropped", when=config.drop_when)
        if config.error_rate and self._rng.random() < config.error_rate:
            return Verdict(delay, "error", config.error_status, retry_after=config.retry_after,
                           message=config.error_message, when=config.error_when)
        if config.rate_limited_rate and self._rng.random() < config.rate_limited_rate:
            return Verdict(delay, "rate_limited", 429, retry_after=config.rate_limited_retry_after)
        if config.drop_rate and self._rng.random() < config.drop_rate:
            return Verdict(delay, "dropped", when=config.drop_when)
        return Verdict(delay)
