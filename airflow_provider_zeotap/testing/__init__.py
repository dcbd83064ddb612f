"""Local emulators of the four vendor APIs, for integration tests and offline DAG development.

Each emulator is a real HTTP server on a loopback port with in-memory state, the vendor's documented
authentication, limits and error shapes, and knobs for latency, injected errors and dropped connections::

    from airflow_provider_zeotap.testing import PersonyzeEmulator

    with PersonyzeEmulator() as personyze:
        list_id = personyze.create_list("VIPs")
        ...  # point a connection's host at personyze.url

pytest gets the fixtures ``personyze_emulator``, ``permutive_emulator``, ``optimizely_emulator`` and
``zeotap_emulator`` automatically; ``python -m airflow_provider_zeotap.testing`` serves all four by hand.

The names below are imported on first use, so that importing this package (which pytest does for every
run, through the plugin) does not import the web stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_zeotap.testing.faults import FaultConfig
    from airflow_provider_zeotap.testing.optimizely import OptimizelyEmulator
    from airflow_provider_zeotap.testing.permutive import PermutiveEmulator
    from airflow_provider_zeotap.testing.personyze import PersonyzeEmulator
    from airflow_provider_zeotap.testing.request_log import RecordedRequest
    from airflow_provider_zeotap.testing.server import ApiError, Emulator
    from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator

_EXPORTS = {
    "ApiError": "server",
    "Emulator": "server",
    "FaultConfig": "faults",
    "OptimizelyEmulator": "optimizely",
    "PermutiveEmulator": "permutive",
    "PersonyzeEmulator": "personyze",
    "RecordedRequest": "request_log",
    "ZeotapEmulator": "zeotap",
}

__all__ = [
    "ApiError",
    "Emulator",
    "FaultConfig",
    "OptimizelyEmulator",
    "PermutiveEmulator",
    "PersonyzeEmulator",
    "RecordedRequest",
    "ZeotapEmulator",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
