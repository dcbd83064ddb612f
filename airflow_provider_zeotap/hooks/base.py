"""What the four vendor hooks have in common: connection parsing, the shared ApiClient, test_connection.

A vendor hook declares its wire (default host, path prefix, documented limits, auth, error body) as
class attributes and a few small methods; everything that talks HTTP lives in ``http/``.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any, ClassVar

import httpx
from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk.bases.hook import BaseHook

from airflow_provider_zeotap.hooks.forms import FORMS, ConnectionForm
from airflow_provider_zeotap.http import ApiClient, ApiError, ConfigurationError, Limits, Pacer
from airflow_provider_zeotap.http.client import default_error_parser
from airflow_provider_zeotap.http.errors import ApiConnectionError, TlsError
from airflow_provider_zeotap.http.settings import HttpSettings, normalize_extras, parse_settings, unknown_extras
from airflow_provider_zeotap.http.tls import build_ssl_context
from airflow_provider_zeotap.http.urls import display_url, resolve_base_url

#: The mTLS key's old extra name. Airflow masks extras by name (``private_key`` is a sensitive word,
#: ``client_key`` is not), so the old name showed the key in the UI, the API and the CLI.
DEPRECATED_KEY_EXTRA = "client_key"
KEY_EXTRA = "client_private_key"


class ConnectionSettings(HttpSettings):
    """Extras every vendor accepts. Vendors add their own fields by subclassing."""

    client_cert: str | None = None
    client_private_key: str | None = None
    #: Deprecated spelling of ``client_private_key``, still read (with a warning).
    client_key: str | None = None


class ApiHook(BaseHook):
    """Base of the four vendor hooks. Subclasses set the class attributes below."""

    conn_name_attr: ClassVar[str]
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]

    vendor: ClassVar[str]
    path_prefix: ClassVar[str]
    #: The API's documented limits; a connection's extras may override them.
    default_limits: ClassVar[Limits] = Limits()
    settings_model: ClassVar[type[ConnectionSettings]] = ConnectionSettings
    #: Text in a 4xx body that the vendor documents as "busy, try again": retried like a 503.
    throttle_markers: ClassVar[tuple[str, ...]] = ()
    #: Collection paths (``GET /imports``): a 404 there means the base URL is wrong, not a missing object.
    list_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, conn_id: str | None = None, **kwargs: Any) -> None:
        # Airflow builds hooks as ``Hook(<conn_name_attr>=conn_id)`` (Connection.get_hook, the UI's Test
        # button); DAG code tends to pass the id positionally. Both name the same connection.
        named = kwargs.pop(self.conn_name_attr, None)
        if conn_id and named and conn_id != named:
            raise TypeError(
                f"{type(self).__name__} got two connection ids: {conn_id!r} and {self.conn_name_attr}={named!r}"
            )
        super().__init__(**kwargs)
        self.conn_id = conn_id or named or self.default_conn_name
        self._client: ApiClient | None = None
        #: Warnings about the connection (unknown or deprecated extras), repeated by test_connection().
        self.notes: list[str] = []

    # -- the connection form -------------------------------------------------------------------------
    @classmethod
    def form(cls) -> ConnectionForm:
        return FORMS[cls.conn_type]

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields. Airflow 3 reads the same data from the provider info."""
        return cls.form().ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extras as form fields, for Airflow UIs that still ask the hook (needs wtforms and FAB).

        Airflow 3 renders ``conn-fields`` from the provider info instead and never calls this.
        """
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField

        widgets: dict[str, Any] = {}
        for name, spec in cls.form().fields.items():
            schema = spec.get("schema", {})
            label, description = lazy_gettext(spec.get("label", name)), spec.get("description")
            if schema.get("format") == "password":
                widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget(), description=description)
            elif "integer" in schema.get("type", []):
                widgets[name] = IntegerField(label, widget=BS3TextFieldWidget(), description=description)
            else:
                widgets[name] = StringField(label, widget=BS3TextFieldWidget(), description=description)
        return widgets

    @property
    def default_host(self) -> str:
        return self.form().default_host

    @property
    def secret_label(self) -> str:
        """The secret as a sentence names it: the form's label, lower-cased unless it starts with an acronym."""
        label = self.form().secret_label
        return label if label[:2].isupper() else label[0].lower() + label[1:]

    # -- connection --------------------------------------------------------------------------------
    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.conn_id)

    @cached_property
    def settings(self) -> ConnectionSettings:
        extras = normalize_extras(self.connection.extra_dejson or {}, self.conn_type)
        for note in unknown_extras(self.settings_model, extras, conn_id=self.conn_id):
            self._note(note)
        if extras.get(DEPRECATED_KEY_EXTRA):
            old = extras.pop(DEPRECATED_KEY_EXTRA)
            extras.setdefault(KEY_EXTRA, old)
            _mask(str(old))
            note = (
                f"Connection {self.conn_id!r}: the extra {DEPRECATED_KEY_EXTRA!r} is deprecated because Airflow "
                f"does not mask it in the UI, API or CLI; rename it to {KEY_EXTRA!r}."
            )
            warnings.warn(note, AirflowProviderDeprecationWarning, stacklevel=2)
            self._note(note)
        return parse_settings(self.settings_model, extras, conn_id=self.conn_id)

    def _note(self, note: str) -> None:
        self.log.warning("%s", note)
        self.notes.append(note)

    @cached_property
    def base_url(self) -> str:
        try:
            return resolve_base_url(
                self.connection.host,
                default=self.default_host,
                prefix=self.path_prefix,
                port=self.connection.port,
                conn_type=self.conn_type,
            )
        except ConfigurationError as error:
            raise type(error)(f"Connection {self.conn_id!r}: {error}") from None

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
            if settings.client_private_key:
                _mask(settings.client_private_key)
            wire_forms = self._secret_wire_forms(secret)
            for form in wire_forms:
                _mask(form)
            self._client = ApiClient(
                vendor=self.vendor,
                base_url=self.base_url,
                auth=self._auth(secret),
                headers=self._headers(secret),
                secrets=[secret, *wire_forms, settings.client_private_key or ""],
                timeout=settings.timeout,
                retry=settings.retry_policy(),
                pacer=Pacer(self.limits),
                lanes=self._lanes(),
                verify=build_ssl_context(
                    verify=settings.verify, client_cert=settings.client_cert, client_key=settings.client_private_key
                ),
                error_parser=self._parse_error,
                describe_path=self._describe_path,
                throttle_markers=self.throttle_markers,
                advise=self._advice,
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

    def _secret_wire_forms(self, secret: str) -> list[str]:
        """The secret as it travels when it is not sent as is (Basic auth's base64): an error body that echoes
        the request quotes these, so they are redacted and masked like the secret itself."""
        return []

    def _lanes(self) -> dict[str, Pacer]:
        """Extra pacers for endpoints with limits of their own (Personyze: one users POST in flight)."""
        return {}

    def _parse_error(self, response: httpx.Response) -> tuple[str | None, str]:
        return default_error_parser(response)

    def _describe_path(self, path: str) -> str:
        """The path as it may appear in logs and errors."""
        return path

    def _check_connection(self) -> str:
        """Check what a sync needs (the key works, the objects it reads are readable); say what was confirmed."""
        raise NotImplementedError

    # -- error translation: one place, used by test_connection() and by every sync ---------------------
    def _advice(self, error: ApiError) -> str | None:
        """What the user should fix for this error, or None. The client attaches it to the error itself,
        so the connection test and a failing sync show the same words."""
        if error.status == 401:
            return (
                f"{self.vendor} refused the {self.secret_label} (HTTP 401): it is wrong or revoked. "
                f"Check the password field of connection {self.conn_id!r}."
            )
        if isinstance(error, ApiConnectionError) and not isinstance(error, TlsError):  # TLS errors carry their own
            return (
                f"Could not reach {self.vendor} at {display_url(self.base_url)}: check the host field of connection "
                f"{self.conn_id!r} (empty means {self.default_host}) and that this worker can reach it (DNS, proxy, "
                "firewall)."
            )
        if error.status == 404 and self._is_list_path(error.path):
            return self._wrong_base_url()
        return None

    def _is_list_path(self, path: str) -> bool:
        return path.split("?")[0].rstrip("/") in self.list_paths

    def _wrong_base_url(self) -> str:
        return (
            f"{self.vendor} answered HTTP 404 for a list at {display_url(self.base_url)}: the base URL is probably "
            f"wrong. Set the host field of connection {self.conn_id!r} to {self.default_host} (the API prefix "
            f"{self.path_prefix} is added) or to the full base URL {self.default_host}{self.path_prefix}."
        )

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test (the UI's Test button): the checks a sync needs, and what is wrong."""
        try:
            message = self._check_connection()
        except (ApiError, ConfigurationError) as error:
            return False, " ".join([str(error), *self.notes])
        finally:
            self.close()
        return True, " ".join([message, *self.notes])


def _mask(secret: str) -> None:
    """Register a secret with Airflow's log masker (a no-op outside Airflow's logging)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - always present on Airflow 3
        return
    mask_secret(secret)
