"""What the four vendor hooks have in common: connection parsing, the shared ApiClient, test_connection.

A vendor hook declares its wire (default host, path prefix, documented limits, auth, error body) as
class attributes and a few small methods; everything that talks HTTP lives in ``http/``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import httpx
from airflow.sdk.bases.hook import BaseHook

from airflow_provider_zeotap.http import ApiClient, ApiError, ConfigurationError, Limits, Pacer
from airflow_provider_zeotap.http.client import default_error_parser
from airflow_provider_zeotap.http.settings import HttpSettings, normalize_extras, parse_settings
from airflow_provider_zeotap.http.tls import build_ssl_context
from airflow_provider_zeotap.http.urls import resolve_base_url


class ConnectionSettings(HttpSettings):
    """Extras every vendor accepts. Vendors add their own fields by subclassing."""

    client_cert: str | None = None
    client_key: str | None = None


class ApiHook(BaseHook):
    """Base of the four vendor hooks. Subclasses set the class attributes below."""

    conn_name_attr: ClassVar[str]
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]

    vendor: ClassVar[str]
    default_host: ClassVar[str]
    path_prefix: ClassVar[str]
    #: The API's documented limits; a connection's extras may override them.
    default_limits: ClassVar[Limits] = Limits()
    settings_model: ClassVar[type[ConnectionSettings]] = ConnectionSettings
    secret_label: ClassVar[str] = "API key"
    #: Text in a 4xx body that the vendor documents as "busy, try again": retried like a 503.
    throttle_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id or self.default_conn_name
        self._client: ApiClient | None = None

    # -- connection --------------------------------------------------------------------------------
    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.conn_id)

    @cached_property
    def settings(self) -> ConnectionSettings:
        extras = normalize_extras(self.connection.extra_dejson or {}, self.conn_type)
        return parse_settings(self.settings_model, extras, conn_id=self.conn_id)

    @cached_property
    def base_url(self) -> str:
        return resolve_base_url(
            self.connection.host, default=self.default_host, prefix=self.path_prefix, port=self.connection.port
        )

    def _secret(self) -> str:
        secret = (self.connection.password or "").strip()
        if not secret:
            raise ConfigurationError(
                f"Connection {self.conn_id!r} has no {self.secret_label}: put it in the connection's password field."
            )
        _mask(secret)
        return secret

    @cached_property
    def limits(self) -> Limits:
        return self.settings.limits(self.default_limits)

    # -- client ------------------------------------------------------------------------------------
    def get_conn(self) -> ApiClient:
        """The hook's one ApiClient, built on first use and reused until ``close()``."""
        if self._client is None:
            secret = self._secret()
            settings = self.settings
            if settings.client_key:
                _mask(settings.client_key)
            self._client = ApiClient(
                vendor=self.vendor,
                base_url=self.base_url,
                auth=self._auth(secret),
                headers=self._headers(secret),
                secrets=[secret, settings.client_key or ""],
                timeout=settings.timeout,
                retry=settings.retry_policy(),
                pacer=Pacer(self.limits),
                lanes=self._lanes(),
                verify=build_ssl_context(
                    verify=settings.verify, client_cert=settings.client_cert, client_key=settings.client_key
                ),
                error_parser=self._parse_error,
                describe_path=self._describe_path,
                throttle_markers=self.throttle_markers,
            )
        return self._client

    @property
    def client(self) -> ApiClient:
        return self.get_conn()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def __enter__(self) -> ApiHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- vendor specifics (override) ---------------------------------------------------------------
    def _auth(self, secret: str) -> httpx.Auth | None:
        return None

    def _headers(self, secret: str) -> dict[str, str]:
        return {}

    def _lanes(self) -> dict[str, Pacer]:
        """Extra pacers for endpoints with limits of their own (Personyze: one users POST in flight)."""
        return {}

    def _parse_error(self, response: httpx.Response) -> tuple[str | None, str]:
        return default_error_parser(response)

    def _describe_path(self, path: str) -> str:
        """The path as it may appear in logs and errors."""
        return path

    def _check_connection(self) -> str:
        """Make one cheap real call; return what was confirmed."""
        raise NotImplementedError

    def _explain(self, error: ApiError) -> str:
        """Turn an API error into advice a user can act on."""
        if error.status == 401:
            return (
                f"{self.vendor} refused the {self.secret_label} (HTTP 401): it is wrong or revoked. "
                f"Check the password field of connection {self.conn_id!r}."
            )
        return str(error)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test: one cheap real call, and a message that says what is wrong."""
        try:
            return True, self._check_connection()
        except ApiError as error:
            return False, self._explain(error)
        except ConfigurationError as error:
            return False, str(error)
        finally:
            self.close()


def _mask(secret: str) -> None:
    """Register a secret with Airflow's log masker (a no-op outside Airflow's logging)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - always present on Airflow 3
        return
    mask_secret(secret)
