"""Base URLs: accept what people write in a connection, refuse plain http beyond loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_zeotap.http.errors import ConfigurationError, InsecureURLError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(host: str | None, *, default: str, prefix: str, port: int | None = None) -> str:
    """Turn a connection's host field into the API base URL.

    Accepts ``host``, ``scheme://host[:port]`` and the full base URL that already ends with the API
    prefix (which is then not added twice). No scheme means https.
    """
    raw = (host or "").strip() or default
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    if not parts.hostname:
        raise ConfigurationError(f"Connection host {raw!r} has no host name; set it to e.g. {default!r}.")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if prefix and not path.endswith(prefix):
        path += prefix
    url = urlunsplit((parts.scheme.lower(), netloc, path, "", ""))
    check_transport(url)
    return url


def check_transport(url: str) -> None:
    """HTTPS only; plain http is allowed to loopback hosts (local emulators, tunnels) and nowhere else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    if scheme == "http":
        raise InsecureURLError(
            f"Refusing plain http to {parts.hostname!r}: API keys would travel unencrypted. "
            f"Use https://{parts.netloc}{parts.path} in the connection's host field "
            "(plain http is only allowed to loopback addresses such as 127.0.0.1)."
        )
    raise ConfigurationError(f"Unsupported URL scheme {scheme!r} in {url!r}; use https://.")
