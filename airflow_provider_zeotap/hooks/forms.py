"""The four connection forms as plain data: the one source for the provider info and the hooks.

Airflow 3 renders a connection form from the provider info (``conn-fields`` and ``ui-field-behaviour``)
without importing the hook, so this module imports nothing from Airflow or the HTTP stack. The hooks
read their default host and password label from here too, so the form and the code never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Built-in fields no form uses: the host field holds the whole base URL (port included), and no API
#: here takes a user name (Personyze's is always ``api``).
HIDDEN_FIELDS = ("schema", "login", "port")

#: Extras every connection type accepts (``http/settings.py`` validates them).
COMMON_FIELDS: dict[str, dict[str, Any]] = {
    "timeout": {
        "label": "Timeout (s)",
        "description": "Connect/read/write timeout of one request. Default 30.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "max_attempts": {
        "label": "Max attempts",
        "description": "Attempts per request, the first included, for retryable errors (5xx, 429, timeouts). "
        "Default 5.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "max_retry_seconds": {
        "label": "Max retry time (s)",
        "description": "Upper bound on the total time spent retrying one request. Default 300.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "backoff_initial": {
        "label": "First backoff (s)",
        "description": "Wait before the first retry; doubles each time. Default 0.5.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "backoff_max": {
        "label": "Longest backoff (s)",
        "description": "Cap on one wait between retries. Default 30.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "rate_per_second": {
        "label": "Requests per second",
        "description": "Pacing: stay under this rate. Empty means the vendor's documented limit.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "rate_per_minute": {
        "label": "Requests per minute",
        "description": "Pacing: stay under this rate. Empty means the vendor's documented limit.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "max_in_flight": {
        "label": "Max requests in flight",
        "description": "Cap on concurrent requests to this API.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "verify": {
        "label": "CA bundle (path)",
        "description": "Path of a PEM bundle to trust a private CA. TLS verification cannot be turned off.",
        "schema": {"type": ["string", "null"]},
    },
}


@dataclass(frozen=True)
class ConnectionForm:
    """One connection type as the UI shows it."""

    conn_type: str
    hook_class_name: str
    hook_name: str
    #: The password field's label, which is also how errors name the secret.
    secret_label: str
    #: The vendor's production base URL (without the API prefix); the host field's placeholder.
    default_host: str
    extra_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Placeholders of extras (unprefixed names; Airflow adds the ``extra__<type>__`` prefix).
    extra_placeholders: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return {**self.extra_fields, **COMMON_FIELDS}

    def ui_field_behaviour(self) -> dict[str, Any]:
        """The shape of ``BaseHook.get_ui_field_behaviour()``."""
        return {
            "hidden_fields": list(HIDDEN_FIELDS),
            "relabeling": {"host": "Base URL", "password": self.secret_label},
            "placeholders": {"host": self.default_host, **self.extra_placeholders},
        }

    def provider_info(self) -> dict[str, Any]:
        """The shape of one ``connection-types`` entry of ``get_provider_info()``."""
        behaviour = self.ui_field_behaviour()
        return {
            "connection-type": self.conn_type,
            "hook-class-name": self.hook_class_name,
            "hook-name": self.hook_name,
            "ui-field-behaviour": {
                "hidden-fields": behaviour["hidden_fields"],
                "relabeling": behaviour["relabeling"],
                "placeholders": behaviour["placeholders"],
            },
            "conn-fields": self.fields,
        }


PERSONYZE = ConnectionForm(
    conn_type="personyze",
    hook_class_name="airflow_provider_zeotap.hooks.personyze.PersonyzeHook",
    hook_name="Personyze",
    secret_label="API key",
    default_host="https://app.personyze.com",
)

OPTIMIZELY = ConnectionForm(
    conn_type="optimizely",
    hook_class_name="airflow_provider_zeotap.hooks.optimizely.OptimizelyHook",
    hook_name="Optimizely",
    secret_label="Personal access token",
    default_host="https://api.optimizely.com",
    extra_fields={
        "project_id": {
            "label": "Project ID",
            "description": "Default numeric project id, used when a task names none.",
            "schema": {"type": ["string", "null"]},
        },
        "web_experimentation": {
            "label": "Web Experimentation token",
            "description": "The token is for Web Experimentation: pace at 100 requests/min instead of 120 (the 2/s stays).",
            "schema": {"type": ["boolean", "null"]},
        },
    },
    extra_placeholders={"project_id": "12345678"},
)

PERMUTIVE = ConnectionForm(
    conn_type="permutive",
    hook_class_name="airflow_provider_zeotap.hooks.permutive.PermutiveHook",
    hook_name="Permutive",
    secret_label="Private API key",
    default_host="https://api.permutive.app",
)

ZEOTAP = ConnectionForm(
    conn_type="zeotap",
    hook_class_name="airflow_provider_zeotap.hooks.zeotap.ZeotapProfileHook",
    hook_name="Zeotap Profile API",
    secret_label="API key",
    default_host="https://api.zeotap.com",
    extra_fields={
        "org_id": {
            "label": "Organisation ID",
            "description": "Numeric Zeotap organisation id sent as orgId.",
            "schema": {"type": ["string", "null"]},
        },
        "region": {
            "label": "Region",
            "description": "Data region, e.g. EU, UK, US.",
            "schema": {"type": ["string", "null"]},
        },
        "scopes": {
            "label": "Scopes",
            "description": "Comma-separated scopes sent with each request.",
            "schema": {"type": ["string", "null"]},
        },
        "client_cert": {
            "label": "Client certificate (PEM)",
            "description": "For mTLS (https://mtls-api.zeotap.com): the certificate chain, PEM text.",
            "schema": {"type": ["string", "null"], "format": "multiline"},
        },
        "client_private_key": {
            "label": "Client private key (PEM)",
            "description": "For mTLS: the private key, PEM text. Masked like the API key.",
            "schema": {"type": ["string", "null"], "format": "password"},
        },
    },
    extra_placeholders={"org_id": "1234", "region": "EU", "scopes": "profile.read,profile.write,profile.delete"},
)

FORMS: dict[str, ConnectionForm] = {form.conn_type: form for form in (PERSONYZE, OPTIMIZELY, PERMUTIVE, ZEOTAP)}
