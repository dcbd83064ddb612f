"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point.

Connection forms are declared here (``conn-fields`` and ``ui-field-behaviour``) so the UI can render them
without importing the hooks.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_zeotap import __version__

_RETRY_AND_PACING_FIELDS: dict[str, dict[str, Any]] = {
    "max_attempts": {
        "label": "Max attempts",
        "description": "Attempts per request, the first included, for retryable errors (5xx, 429, timeouts).",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "max_retry_seconds": {
        "label": "Max retry time (s)",
        "description": "Upper bound on the total time spent retrying one request.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "timeout": {
        "label": "Timeout (s)",
        "description": "Connect/read/write timeout of one request.",
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
}


def _connection(
    conn_type: str,
    hook: str,
    name: str,
    *,
    secret_label: str,
    host_placeholder: str,
    extra_fields: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "connection-type": conn_type,
        "hook-class-name": f"airflow_provider_zeotap.hooks.{hook}",
        "hook-name": name,
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": secret_label},
            "placeholders": {"host": host_placeholder},
        },
        "conn-fields": {**(extra_fields or {}), **_RETRY_AND_PACING_FIELDS},
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-zeotap",
        "name": "Zeotap reverse ETL",
        "description": "Sync warehouse data into Personyze, Optimizely, Permutive and the Zeotap Profile API.",
        "versions": [__version__],
        "connection-types": [
            _connection(
                "personyze",
                "personyze.PersonyzeHook",
                "Personyze",
                secret_label="API key",
                host_placeholder="https://app.personyze.com",
            ),
            _connection(
                "optimizely",
                "optimizely.OptimizelyHook",
                "Optimizely",
                secret_label="Personal access token",
                host_placeholder="https://api.optimizely.com",
                extra_fields={
                    "project_id": {
                        "label": "Project ID",
                        "description": "Default numeric project id, used when a task names none.",
                        "schema": {"type": ["string", "null"]},
                    }
                },
            ),
            _connection(
                "permutive",
                "permutive.PermutiveHook",
                "Permutive",
                secret_label="Private API key",
                host_placeholder="https://api.permutive.app",
            ),
            _connection(
                "zeotap",
                "zeotap.ZeotapProfileHook",
                "Zeotap Profile API",
                secret_label="API key",
                host_placeholder="https://api.zeotap.com",
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
                    "client_cert": {
                        "label": "Client certificate (PEM)",
                        "description": "For mTLS (https://mtls-api.zeotap.com): the certificate chain, PEM text.",
                        "schema": {"type": ["string", "null"], "format": "multiline"},
                    },
                    "client_key": {
                        "label": "Client key (PEM)",
                        "description": "For mTLS: the private key, PEM text. Kept secret like the API key.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                },
            ),
        ],
        "operators": [
            {
                "integration-name": "Zeotap reverse ETL",
                "python-modules": [
                    "airflow_provider_zeotap.operators.diff",
                    "airflow_provider_zeotap.operators.personyze",
                    "airflow_provider_zeotap.operators.permutive",
                ],
            }
        ],
        "config": {
            "zeotap_sync": {
                "description": "Defaults of the Zeotap reverse ETL provider.",
                "options": {
                    "state_uri": {
                        "description": "Where snapshots, changes and rejected rows are written "
                        "(any ObjectStoragePath URI). Default: file://$AIRFLOW_HOME/zeotap_sync_state",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://my-bucket/zeotap-sync",
                        "default": "",
                    },
                    "connection_pools": {
                        "description": "Put every sync task without a pool of its own into the Airflow pool "
                        "zeotap_sync__<conn_id> of the connection it writes through, so that the scheduler runs "
                        "the tasks of one API key or organisation one at a time (each task paces itself to the "
                        "API's whole limit). Create each pool first, e.g. "
                        "airflow pools set zeotap_sync__personyze_default 1 \"Personyze API\": a task in a pool "
                        "that does not exist is never scheduled.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                },
            }
        },
    }
