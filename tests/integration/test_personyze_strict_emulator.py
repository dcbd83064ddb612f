"""The Personyze users adapter against the emulator held to the documented API: one ``POST /rest/users`` in
flight, ``400 Too many simultaneous requests``, and throttling with 503 and no Retry-After. Over real sockets,
through the hook and adapter a sync task uses (the Airflow runs of this path are in test_personyze_sync)."""

from __future__ import annotations

import pytest

from airflow_provider_zeotap.destinations.personyze import PersonyzeUsers
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.models import Change, Outcome
from airflow_provider_zeotap.sync.modes import Operation
from airflow_provider_zeotap.testing.personyze import TOO_MANY_SIMULTANEOUS
from tests.integration.conftest import FAST_RETRIES, connection_env

pytestmark = pytest.mark.integration


def test_per_row_users_meet_the_one_post_in_flight_busy_answers_and_a_503_throttle(personyze_emulator, monkeypatch):
    """Each POST takes 100 ms in the one slot; 40% are refused busy; more than 4 a second would be 503.

    The adapter sends one POST at a time (no natural busy refusal), retries the injected busy answers, and
    paces to the connection's ``rate_per_second`` so the throttle never answers.
    """
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env(
        "personyze", personyze_emulator.url, personyze_emulator.api_key, **FAST_RETRIES, rate_per_second=4))
    personyze_emulator.set_faults(latency_ms=100, error_rate=0.4, error_status=400, seed=4, rate_per_second=4,
                                  error_message=TOO_MANY_SIMULTANEOUS, method="POST", path="/rest/users")
    rows = [OutboundRow(n, Change.ADDED, {"id": n}, {"email": f"user{n}@example.com"}) for n in range(1, 6)]

    outcomes = PersonyzeUsers(PersonyzeHook()).send(Operation.UPSERT, rows)

    assert [(o.row_id, o.outcome) for o in outcomes] == [(n, Outcome.SUCCEEDED) for n in range(1, 6)]
    assert sorted(u["email"] for u in personyze_emulator.users.values()) == [row.payload["email"] for row in rows]
    posts = [r for r in personyze_emulator.requests if r.method == "POST"]
    busy = [r for r in posts if r.status == 400]
    assert busy and all(r.fault == "error" for r in busy)  # injected only: none waited past its second
    assert not [r for r in posts if r.status == 503]  # paced under the throttle, never bounced off it
    assert len(posts) == 5 + len(busy)
    assert personyze_emulator.max_in_flight_seen("POST", "/rest/users") == 1
