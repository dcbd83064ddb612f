"""Zeotap Profile API: API key header, optional mTLS, one id per write, 10,000 requests/min.

The destination arrives in a later issue; this hook carries the connection (org, region, mTLS), the
limits (10,000/min, at most 200 in flight) and the connection test.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_zeotap.hooks.base import ApiHook, ConnectionSettings
from airflow_provider_zeotap.http import ApiError, ConfigurationError, Limits

DEFAULT_SCOPES = "profile.read,profile.write,profile.delete"


class ZeotapSettings(ConnectionSettings):
    org_id: str | None = None
    region: str | None = None
    scopes: str = DEFAULT_SCOPES


class ZeotapProfileHook(ApiHook):
    conn_name_attr = "zeotap_conn_id"
    default_conn_name = "zeotap_default"
    conn_type = "zeotap"
    hook_name = "Zeotap Profile API"

    vendor = "Zeotap"
    path_prefix = "/cdp/v1"
    default_limits = Limits(rate_per_minute=10_000, max_in_flight=200)
    settings_model = ZeotapSettings
    list_paths = ("/users/_search",)

    def _headers(self, secret: str) -> dict[str, str]:
        return {"apikey": secret, "scopes": self.settings.scopes, "Content-Type": "application/json"}  # type: ignore[attr-defined]

    def org_and_region(self) -> tuple[int, str]:
        settings: ZeotapSettings = self.settings  # type: ignore[assignment]
        if not settings.org_id or not str(settings.org_id).isdigit():
            raise ConfigurationError(
                f"Connection {self.conn_id!r} needs a numeric 'org_id' extra (your Zeotap organisation id)."
            )
        if not settings.region:
            raise ConfigurationError(f"Connection {self.conn_id!r} needs a 'region' extra, e.g. EU, UK or US.")
        return int(settings.org_id), settings.region

    def search_profiles(self, id_type: str, ids: list[str]) -> list[dict[str, Any]]:
        """Fetch up to 5 profiles by one id type."""
        if not ids or len(ids) > 5:
            raise ValueError("search_profiles takes 1 to 5 ids per call (the API's limit).")
        org, region = self.org_and_region()
        body = {"orgId": org, "regions": [region], "search": {id_type: list(ids)}}
        return list(self.client.json("POST", "/users/_search", json=body) or [])

    def _check_connection(self) -> str:
        self.search_profiles("user_id", ["airflow-connection-test"])
        org, region = self.org_and_region()
        return f"Connected to the Zeotap Profile API for organisation {org} in region {region}."

    def _advice(self, error: ApiError) -> str | None:
        if error.status == 403:
            scopes = self.settings.scopes  # type: ignore[attr-defined]
            return (
                f"Zeotap refused this key for the scopes {scopes!r} or the organisation (HTTP 403): "
                "ask your Customer Success Manager to enable them, set the 'scopes' extra to the ones the key has, "
                f"and check the 'org_id' extra of connection {self.conn_id!r}."
            )
        return super()._advice(error)
