"""One HTTP client for all four APIs: httpx underneath, tenacity for retries, a Pacer per API.

Sync and async share everything but the await: the request is built, paced, classified and retried
by the same functions, so a rule (say, "429 does not use up an attempt") is written once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import weakref
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from airflow_provider_zeotap.http.errors import (
    BODY_EXCERPT_CHARS,
    ApiConnectionError,
    ApiError,
    RateLimitedError,
    ServerError,
    ThrottledError,
    TlsError,
    error_class_for,
    redact,
)
from airflow_provider_zeotap.http.pacing import Pacer
from airflow_provider_zeotap.http.settings import RetryPolicy
from airflow_provider_zeotap.http.urls import check_transport, display_url

log = logging.getLogger(__name__)

#: Parses a vendor's error body into (error type, human message).
ErrorParser = Callable[[httpx.Response], tuple[str | None, str]]
#: Turns a final API error into what the user should fix (None: the error says it all).
Advisor = Callable[[ApiError], "str | None"]
#: SSL errors that mean "the connection dropped", not "the handshake cannot succeed": these stay retryable.
_TRANSIENT_SSL = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def default_error_parser(response: httpx.Response) -> tuple[str | None, str]:
    """JSON bodies with a ``message``/``error``/``code`` field, else the text itself."""
    text = response.text.strip()
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, text or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        error_type = error if isinstance(error, str) else body.get("code") or body.get("type")
        message = body.get("message") or (error.get("message") if isinstance(error, dict) else None)
        return (str(error_type) if error_type else None), str(message or text)
    return None, text


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _Budget:
    """Tenacity stop condition: bounded attempts (429s excluded) and bounded total time."""

    policy: RetryPolicy
    counted: int = 0
    started: float = field(default_factory=time.monotonic)

    def __call__(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, RateLimitedError):
            self.counted += 1
        if self.counted >= self.policy.max_attempts:
            return True
        next_wait = state.upcoming_sleep or 0.0
        return time.monotonic() - self.started + next_wait > self.policy.max_retry_seconds


class ApiClient:
    """A vendor's API: base URL, auth, pacing, retries and error mapping. Clients are created lazily."""

    def __init__(
        self,
        *,
        vendor: str,
        base_url: str,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        lanes: Mapping[str, Pacer] | None = None,
        verify: ssl.SSLContext | bool = True,
        error_parser: ErrorParser = default_error_parser,
        describe_path: Callable[[str], str] = lambda path: path,
        throttle_markers: Sequence[str] = (),
        advise: Advisor | None = None,
    ) -> None:
        check_transport(base_url)
        self.vendor = vendor
        self.base_url = base_url.rstrip("/")
        #: The base URL as errors show it (no user:password part).
        self.display_url = display_url(self.base_url)
        self._advise = advise
        self.retry = retry or RetryPolicy()
        self.pacer = pacer or Pacer()
        self.lanes = dict(lanes or {})
        self._auth = auth
        self._headers = dict(headers or {})
        self._secrets = [s for s in secrets if s]
        self._timeout = httpx.Timeout(timeout)
        self._verify = verify
        self._parse_error = error_parser
        self._describe_path = describe_path
        self._throttle_markers = tuple(throttle_markers)
        self._client: httpx.Client | None = None
        #: One async client per event loop: an ``httpx.AsyncClient`` belongs to the loop it first ran on, and
        #: a client kept across ``asyncio.run`` calls fails with "Event loop is closed" on the second one.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    # -- clients -----------------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "auth": self._auth,
            "headers": {"Accept": "application/json", "User-Agent": "airflow-provider-zeotap", **self._headers},
            "timeout": self._timeout,
            "verify": self._verify,
            "follow_redirects": False,
        }

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(**self._client_kwargs())
        return self._client

    @property
    def aclient(self) -> httpx.AsyncClient:
        """The async client of the running event loop (made on first use in that loop)."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(**self._client_kwargs())
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the running loop's async client; call it on the loop that used it, before that loop ends."""
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- requests ----------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, lane: str | None = None, replay_safe: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """Send with pacing and retries; return the 2xx response or raise an ``ApiError``.

        ``replay_safe=False``: the request must not be applied twice, so an error after which it may have
        landed (``ApiError.may_have_landed``) is raised at once instead of retried; the caller finds out
        what landed. Errors that mean "not done" (429, 503, connect failures) are still retried.
        """
        budget = _Budget(self.retry)
        try:
            for attempt in Retrying(**self._retry_kwargs(budget, replay_safe)):
                with attempt:
                    with self._lane(lane), self.pacer.slot():
                        return self._send_once(method, path, kwargs)
        except ApiError as error:
            raise self._final(error, attempt.retry_state.attempt_number, budget) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def arequest(
        self, method: str, path: str, *, lane: str | None = None, replay_safe: bool = True, **kwargs: Any
    ) -> httpx.Response:
        budget = _Budget(self.retry)
        try:
            async for attempt in AsyncRetrying(**self._retry_kwargs(budget, replay_safe)):
                with attempt:
                    async with self._alane(lane), self.pacer.aslot():
                        return await self._asend_once(method, path, kwargs)
        except ApiError as error:
            raise self._final(error, attempt.retry_state.attempt_number, budget) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _final(self, error: ApiError, attempts: int, budget: _Budget) -> ApiError:
        """The error the caller sees: how long retrying went on, and the hook's advice, said once."""
        error.gave_up(attempts, time.monotonic() - budget.started)
        if error.advice is None and self._advise is not None:
            advice = self._advise(error)
            error.advice = redact(advice, self._secrets) if advice else None
        return error

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _decode(self.request(method, path, **kwargs))

    async def ajson(self, method: str, path: str, **kwargs: Any) -> Any:
        return _decode(await self.arequest(method, path, **kwargs))

    def _lane(self, lane: str | None) -> AbstractContextManager[None]:
        return self.lanes[lane].slot() if lane else nullcontext()

    def _alane(self, lane: str | None) -> AbstractAsyncContextManager[None]:
        return self.lanes[lane].aslot() if lane else nullcontext()

    def _send_once(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise self._transport_error(method, path, exc) from None
        return self._check(method, path, response)

    async def _asend_once(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            response = await self.aclient.request(method, path, **kwargs)
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise self._transport_error(method, path, exc) from None
        return self._check(method, path, response)

    # -- classification ----------------------------------------------------------------------------
    def _check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        error_type, message = self._parse_error(response)
        excerpt = redact(response.text[:BODY_EXCERPT_CHARS], self._secrets)
        throttled = any(marker in response.text for marker in self._throttle_markers)
        error = (ThrottledError if throttled else error_class_for(response.status_code))(
            redact(message, self._secrets)[:BODY_EXCERPT_CHARS],
            vendor=self.vendor,
            method=method,
            path=self._describe_path(path),
            status=response.status_code,
            body_excerpt=excerpt,
            error_type=error_type,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            request=response.request,
            response=response,
            base_url=self.display_url,
        )
        if isinstance(error, RateLimitedError) and error.retry_after:
            # Everyone waits, but never longer than one request may spend retrying.
            self.pacer.pause(min(error.retry_after, self.retry.max_retry_seconds))
        raise error

    def _transport_error(self, method: str, path: str, exc: Exception) -> ApiConnectionError:
        kind = type(exc).__name__
        tls = _tls_cause(exc)
        error = (TlsError if tls is not None else ApiConnectionError)(
            redact(f"{kind}: {exc}" if str(exc) else kind, self._secrets),
            vendor=self.vendor,
            method=method,
            path=self._describe_path(path),
            base_url=self.display_url,
            advice=_tls_advice(tls, self.display_url) if tls is not None else None,
        )
        error.sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return error

    def _retry_kwargs(self, budget: _Budget, replay_safe: bool = True) -> dict[str, Any]:
        policy = self.retry

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, ApiError) and error.retry_after is not None:
                return error.retry_after
            backoff = min(policy.backoff_max, policy.backoff_initial * 2 ** (state.attempt_number - 1))
            delay = backoff / 2 + random.random() * backoff / 2
            if isinstance(error, (ServerError, ThrottledError, RateLimitedError)):
                # "Slow down" answers slow the whole API down, not just this request: the other
                # requests in flight wait too, so the caller backs off instead of piling on.
                self.pacer.pause(delay)
            return delay

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s; retrying in %.1f s (attempt %d of %d)",
                error,
                state.upcoming_sleep,
                budget.counted + 1,
                policy.max_attempts,
            )

        return {
            "stop": budget,
            "wait": wait,
            "retry": retry_if_exception(
                lambda e: isinstance(e, ApiError) and e.retryable and (replay_safe or not e.may_have_landed)
            ),
            "reraise": True,
            "before_sleep": before_sleep,
        }


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a transport error (httpx wraps it twice), unless it is a mere drop."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return None if isinstance(current, _TRANSIENT_SSL) else current
        current = current.__cause__ or current.__context__
    return None


def _tls_advice(error: ssl.SSLError, url: str) -> str:
    """What a failed handshake most likely means, by the reason OpenSSL gives."""
    reason = str(getattr(error, "reason", None) or error).upper()
    if any(code in reason for code in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                       "HTTP_REQUEST", "UNKNOWN_PROTOCOL")):
        return (
            f"TLS handshake with {url} failed: the server does not speak TLS on this port (a plain http server "
            "behind an https:// URL?). Check the host and port; plain http:// is only allowed to loopback "
            "addresses. Not retried"
        )
    if "CERTIFICATE_VERIFY_FAILED" in reason or isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS handshake with {url} failed: the server's certificate is not trusted (wrong or missing CA, "
            "or a host name the certificate does not cover). For a private CA, set the connection extra "
            "'verify' to the path of its PEM bundle. Not retried"
        )
    if "CERTIFICATE_REQUIRED" in reason or "ALERT" in reason:
        return (
            f"TLS handshake with {url} failed: the server refused the session, most likely because it wants a "
            "client certificate: set the connection extras 'client_cert' and 'client_private_key' (mTLS). "
            "Not retried"
        )
    return (
        f"TLS handshake with {url} failed: check the URL, the CA (connection extra 'verify') and, for mTLS, "
        "'client_cert' and 'client_private_key'. Not retried"
    )


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
