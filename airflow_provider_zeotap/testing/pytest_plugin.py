"""pytest fixtures that serve the emulated vendor APIs, one fresh emulator per test.

Opt-in: installing the provider does not register them (there is no ``pytest11`` entry point, so nobody's
test run changes by installing it). Load them in your top-level ``conftest.py``::

    pytest_plugins = ["airflow_provider_zeotap.testing.pytest_plugin"]

The module imports nothing but pytest at module level; an emulator (with the web stack) loads only when a
test asks for its fixture. Each fixture binds a free loopback port, so tests can run in
parallel; a test that needs other keys or TLS builds its own emulator (``with PersonyzeEmulator(...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_provider_zeotap.testing.optimizely import OptimizelyEmulator
    from airflow_provider_zeotap.testing.permutive import PermutiveEmulator
    from airflow_provider_zeotap.testing.personyze import PersonyzeEmulator
    from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator


@pytest.fixture
def personyze_emulator() -> Iterator[PersonyzeEmulator]:
    """A running Personyze emulator with the default key, stopped after the test."""
    from airflow_provider_zeotap.testing.personyze import PersonyzeEmulator

    with PersonyzeEmulator() as emulator:
        yield emulator


@pytest.fixture
def permutive_emulator() -> Iterator[PermutiveEmulator]:
    """A running Permutive emulator with the default write and read-only keys, stopped after the test."""
    from airflow_provider_zeotap.testing.permutive import PermutiveEmulator

    with PermutiveEmulator() as emulator:
        yield emulator


@pytest.fixture
def optimizely_emulator() -> Iterator[OptimizelyEmulator]:
    """A running Optimizely emulator (2/s and 120/min enforced), stopped after the test."""
    from airflow_provider_zeotap.testing.optimizely import OptimizelyEmulator

    with OptimizelyEmulator() as emulator:
        yield emulator


@pytest.fixture
def zeotap_emulator() -> Iterator[ZeotapEmulator]:
    """A running Zeotap Profile API emulator with the default key and organisation, stopped after the test."""
    from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator

    with ZeotapEmulator() as emulator:
        yield emulator
