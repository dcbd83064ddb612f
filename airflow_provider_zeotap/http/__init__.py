"""The one HTTP core the four vendor hooks share: URLs, transport security, pacing, retries, errors."""

from airflow_provider_zeotap.http.client import ApiClient
from airflow_provider_zeotap.http.errors import (
    ApiConnectionError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InsecureURLError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ThrottledError,
    TlsError,
    ZeotapProviderError,
)
from airflow_provider_zeotap.http.pacing import Pacer
from airflow_provider_zeotap.http.settings import Limits, RetryPolicy

__all__ = [
    "ApiClient",
    "ApiConnectionError",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "InsecureURLError",
    "Limits",
    "NotFoundError",
    "Pacer",
    "PermissionDeniedError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "ThrottledError",
    "TlsError",
    "ZeotapProviderError",
]
