"""HTTP clients bound to the emulator fixtures (which come from the package's pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_zeotap.testing import (
    OptimizelyEmulator,
    PermutiveEmulator,
    PersonyzeEmulator,
    ZeotapEmulator,
)


@pytest.fixture
def personyze(personyze_emulator: PersonyzeEmulator) -> Iterator[httpx.Client]:
    auth = ("api", personyze_emulator.api_key)
    with httpx.Client(base_url=personyze_emulator.api_url, auth=auth, timeout=5) as client:
        yield client


@pytest.fixture
def permutive(permutive_emulator: PermutiveEmulator) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": permutive_emulator.write_key}
    with httpx.Client(base_url=permutive_emulator.api_url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def optimizely(optimizely_emulator: OptimizelyEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {optimizely_emulator.token}"}
    with httpx.Client(base_url=optimizely_emulator.api_url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def zeotap(zeotap_emulator: ZeotapEmulator) -> Iterator[httpx.Client]:
    headers = {"apikey": zeotap_emulator.api_key, "scopes": "profile.read,profile.write,profile.delete"}
    with httpx.Client(base_url=zeotap_emulator.api_url, headers=headers, timeout=5) as client:
        yield client
