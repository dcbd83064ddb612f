"""One exception hierarchy for all four APIs.

Every API error names the vendor, method, URL (base URL and path) and status, carries an excerpt of the
body, says whether a retry could help and, when the hook knows the likely cause, what to fix (``advice``,
set by the hook's error translation, so a connection test and a sync say the same thing). None of them
may contain the secret: text is passed through ``redact``
before it is stored, and the request's auth headers are never part of the message.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from airflow_provider_zeotap.errors import ConfigurationError, FatalError, ZeotapProviderError

BODY_EXCERPT_CHARS = 500
REDACTED = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret in ``text`` (an API that echoes the key must not leak it)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


class InsecureURLError(ConfigurationError):
    """Plain http to a host that is not loopback."""


class ApiError(ZeotapProviderError):
    """An API call failed. ``retryable`` says whether sending it again could help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        vendor: str,
        method: str,
        path: str,
        status: int | None = None,
        body_excerpt: str = "",
        error_type: str | None = None,
        retry_after: float | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
        base_url: str = "",
        advice: str | None = None,
    ) -> None:
        self.message = message
        #: The API's base URL without credentials: which server answered is half of most diagnoses.
        self.base_url = base_url
        #: What to fix, in the user's terms; leads the message when set.
        self.advice = advice
        self.vendor = vendor
        self.method = method
        self.path = path
        self.status = status
        self.body_excerpt = body_excerpt
        self.error_type = error_type
        self.retry_after = retry_after
        self.request = request
        self.response = response
        self.attempts = 1
        self.elapsed = 0.0
        super().__init__(message)

    @property
    def may_have_landed(self) -> bool:
        """The request may have been applied although no success came back (a timeout or a dropped answer
        after it was sent, a 500/502/504). Retrying such a request can apply it twice."""
        return False

    def gave_up(self, attempts: int, elapsed: float) -> ApiError:
        """Record how long retrying went on, so the final message says why the task stopped."""
        self.attempts = attempts
        self.elapsed = elapsed
        return self

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        text = f"{self.vendor} {self.method} {self.base_url}{self.path} failed ({status}): {self.message}"
        if self.attempts > 1:
            text += f" [gave up after {self.attempts} attempts in {self.elapsed:.1f} s]"
        return f"{self.advice} ({text})" if self.advice else text


class ApiConnectionError(ApiError):
    """No usable answer: connect error, timeout, dropped connection."""

    retryable = True
    #: False when the request never left (no connection could be made); set by the client.
    sent: bool = True

    @property
    def may_have_landed(self) -> bool:
        return self.sent


class TlsError(ApiConnectionError):
    """The TLS handshake failed (plain http behind an https URL, an untrusted certificate, a missing client
    certificate). The same handshake fails the same way again, so it is not retried."""

    retryable = False


class BadRequestError(ApiError):
    """400: the request (or one row in it) is not acceptable. Sending it again changes nothing."""


class AuthenticationError(ApiError, FatalError):
    """401: the key or token is wrong or revoked."""


class PermissionDeniedError(ApiError, FatalError):
    """403: the key is valid but may not do this (read-only key, wrong project)."""


class NotFoundError(ApiError):
    """404: the object does not exist."""


class ConflictError(ApiError):
    """409: the object already exists."""


class RateLimitedError(ApiError):
    """429: too many requests. Retried after ``retry_after`` without using up an attempt."""

    retryable = True


class ThrottledError(ApiError):
    """A 4xx that the vendor documents as "too busy, try again" (Personyze's one-insert-at-a-time rule)."""

    retryable = True


class ServerError(ApiError):
    """500/502/503/504: the vendor's side. Retried with backoff."""

    retryable = True

    @property
    def may_have_landed(self) -> bool:
        return self.status != 503  # 503: unavailable, nothing done; a 500 or a gateway error may come after the write


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitedError,
}
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def error_class_for(status: int) -> type[ApiError]:
    if status in RETRYABLE_STATUSES and status != 429:
        return ServerError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError
