"""The Zeotap troubleshooting quotes (its docs page and its part of the troubleshooting index) are what the code says."""

from __future__ import annotations

import asyncio
import re

import pytest

from airflow_provider_zeotap.destinations.zeotap import ZeotapProfiles
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import Operation
from airflow_provider_zeotap.sync.summary import failed_rows_warning
from airflow_provider_zeotap.testing.zeotap import NO_ORG_ID, NO_SCOPES
from tests.integration.test_docs_messages import INDEX, as_pattern, quotes, section, use

pytestmark = pytest.mark.integration


def zeotap_quotes() -> list[str]:
    """Every ``*"..."*`` quote of the page's Troubleshooting section, wherever it sits in a bullet."""
    block = section("destinations/zeotap.md", "Troubleshooting")
    return re.findall(r'\*"(.+?)"\*', " ".join(block.split()))


def produced_messages(emulator, monkeypatch) -> list[str]:
    messages: list[str] = []

    def failure(call) -> str:
        with pytest.raises(Exception) as caught:
            call()
        return str(caught.value)

    extras = {"org_id": str(emulator.org_id), "region": emulator.region, "max_attempts": 1}
    use(monkeypatch, "zeotap", emulator.url, emulator.api_key, **extras)
    destination = ZeotapProfiles(ZeotapProfileHook(), id_type="user_id")
    row = OutboundRow(1, Change.ADDED, {"user_id": "u-1"}, {"first_name": "A"})
    messages.append(destination.validate(Operation.UPSERT, OutboundRow(2, Change.ADDED, {"user_id": ""}, {})) or "")
    emulator.set_faults(error_rate=1.0, error_status=400)

    async def send_one():
        try:
            return await destination.asend(Operation.UPSERT, [row])
        finally:
            await destination.aclose()

    messages += [outcome.reason or "" for outcome in asyncio.run(send_one())]
    emulator.set_faults()
    use(monkeypatch, "zeotap", emulator.url, emulator.api_key, region="EU")
    messages.append(failure(lambda: ZeotapProfileHook().upsert_profile("user_id", "u-1", profile={"a": 1})))
    use(monkeypatch, "zeotap", emulator.url, "a-wrong-key", **extras)
    messages.append(failure(lambda: ZeotapProfileHook().upsert_profile("user_id", "u-1", profile={"a": 1})))
    use(monkeypatch, "zeotap", emulator.url, emulator.api_key, scopes="profile.read", **extras)
    messages.append(failure(lambda: ZeotapProfileHook().upsert_profile("user_id", "u-1", profile={"a": 1})))
    use(monkeypatch, "zeotap", f"{emulator.url}/api", emulator.api_key, **extras)
    messages.append(failure(lambda: ZeotapProfileHook().fetch_profiles("user_id", ["u-1"])))
    emulator.set_faults(rate_per_minute=1)
    use(monkeypatch, "zeotap", emulator.url, emulator.api_key, **{**extras, "max_retry_seconds": 0.5})
    hook = ZeotapProfileHook()
    hook.fetch_profiles("user_id", ["u-1"])
    messages.append(failure(lambda: hook.fetch_profiles("user_id", ["u-2"])))
    use(monkeypatch, "zeotap", emulator.url, emulator.api_key, **extras)
    for answer in (NO_ORG_ID, NO_SCOPES):  # as the API words them, should a request reach it without either
        emulator.set_faults(error_rate=1.0, error_status=400, error_message=answer)
        messages.append(failure(lambda: ZeotapProfileHook().upsert_profile("user_id", "u-1", profile={"a": 1})))
    emulator.set_faults()
    messages.append(failed_rows_warning(3))
    return messages


def test_every_zeotap_troubleshooting_quote_is_produced(zeotap_emulator, monkeypatch):
    page = zeotap_quotes()
    index = quotes(INDEX, "Zeotap Profile API")
    assert len(page) >= 7, page  # guards the parser
    assert len(index) >= 7, index
    produced = produced_messages(zeotap_emulator, monkeypatch)
    missing = [quote for quote in page + index if not any(as_pattern(quote).search(message) for message in produced)]
    assert missing == [], f"not produced: {missing}; produced: {produced}"
