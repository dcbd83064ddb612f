"""Base URLs: accept what people write in a connection, refuse plain http beyond loopback and guess no scheme."""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_zeotap.http.errors import ConfigurationError, InsecureURLError

log = logging.getLogger(__name__)
#: Bare loopback hosts already announced as http, so the log says it once per process.
_ANNOUNCED: set[str] = set()
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(
    host: str | None, *, default: str, prefix: str, port: int | None = None, conn_type: str = "<conn_type>"
) -> str:
    """Turn a connection's host field into the API base URL.

    Accepts ``scheme://host[:port]`` and the full base URL that already ends with the API prefix (which is
    then not added twice). A host without a scheme is refused rather than guessed: guessing https sent
    users to ``[SSL: WRONG_VERSION_NUMBER]`` on a plain-http server, guessing http would send keys in
    clear. The one exception is loopback with an explicit port, which is how local emulators and
    URI-form connections (``personyze://api:key@127.0.0.1:8101``, whose host Airflow hands over without a
    scheme) are written: that is plain http, said once in the log.
    """
    raw = (host or "").strip() or default
    if "://" not in raw:
        raw = _with_scheme(raw, default=default, prefix=prefix, port=port, conn_type=conn_type)
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


def _with_scheme(raw: str, *, default: str, prefix: str, port: int | None, conn_type: str) -> str:
    parts = urlsplit("//" + raw)
    try:
        explicit_port = parts.port or port
    except ValueError:
        explicit_port = None
    if parts.hostname and is_loopback(parts.hostname) and explicit_port:
        if raw not in _ANNOUNCED:
            _ANNOUNCED.add(raw)
            log.info(
                "Connection host %r has no scheme; it is a loopback address with an explicit port, so plain "
                "http:// is used.",
                raw,
            )
        return "http://" + raw
    hostname = parts.hostname or raw
    raise ConfigurationError(
        f"Connection host {raw!r} has no scheme (https:// or http://). Accepted forms: {default} or the "
        f"full base URL {default}{prefix} in the host field; in URI form, put the scheme after the "
        f"connection type: {conn_type}://https://:<key>@{hostname}. Plain http:// only to loopback "
        "addresses (127.0.0.1, localhost, ::1); a bare loopback host:port is taken as http."
    )


def display_url(url: str) -> str:
    """The URL as it may appear in messages: without any user:password part."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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
