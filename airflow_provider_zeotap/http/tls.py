"""TLS for the API clients: verification always on (a private CA bundle may be named), optional mTLS.

Client certificates arrive as PEM text in a connection's extras (or as a file path). ``ssl`` can only
load them from files, so they are written to a private temporary directory, loaded, and removed at
once: the key lives on in memory only.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from airflow_provider_zeotap.http.errors import ConfigurationError

PEM_MARKER = "-----BEGIN"


def build_ssl_context(
    *, verify: bool | str = True, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    if verify is False:
        raise ConfigurationError(
            "TLS verification cannot be turned off. To trust a private CA, set the connection extra "
            "'verify' to the path of its PEM bundle."
        )
    cafile = verify if isinstance(verify, str) else None
    if cafile and not os.path.isfile(cafile):
        raise ConfigurationError(f"CA bundle {cafile!r} (connection extra 'verify') does not exist.")
    context = ssl.create_default_context(cafile=cafile)
    if client_cert or client_key:
        if not (client_cert and client_key):
            raise ConfigurationError(
                "mTLS needs both 'client_cert' and 'client_private_key' in the connection extras; only one is set."
            )
        _load_client_pair(context, client_cert, client_key)
    return context


def _load_client_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    with tempfile.TemporaryDirectory(prefix="zeotap-mtls-") as folder:
        cert_path = _as_file(cert, folder, "cert.pem")
        key_path = _as_file(key, folder, "key.pem")
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                "Could not load the mTLS client certificate and key from the connection extras "
                f"'client_cert'/'client_private_key' ({type(exc).__name__}): check that both are PEM and belong together."
            ) from None


def _as_file(value: str, folder: str, name: str) -> str:
    if PEM_MARKER not in value:
        if not os.path.isfile(value):
            raise ConfigurationError(f"{name.split('.')[0]} is neither PEM text nor an existing file path.")
        return value
    path = os.path.join(folder, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    return path
