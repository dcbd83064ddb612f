"""Small pieces of the Optimizely destination: the window pacer's rule, the row checks, the limits a connection gets."""

from __future__ import annotations

import json

import pytest

from airflow_provider_zeotap.destinations.optimizely_objects import attribute_key_problem, conditions_problem
from airflow_provider_zeotap.http.pacing import Pacer, _Window, _WindowGate
from airflow_provider_zeotap.http.settings import Limits
from airflow_provider_zeotap.testing.optimizely_rules import attribute_key_error, conditions_error


def gate(now: float = 0.0) -> _WindowGate:
    return _WindowGate([_Window(2, 1.0), _Window(120, 60.0)], now)


def test_the_window_gate_counts_from_answers_not_from_starts():
    g = gate(now=-5.0)  # made long ago: its first second is over
    first, _ = g.try_start(0.0, 0.0)
    second, _ = g.try_start(0.0, 0.0)
    assert first is not None and second is not None
    # A third request waits for the first one's answer, then one full second after it.
    blocked, wait = g.try_start(0.1, 0.0)
    assert blocked is None and 0 < wait < 0.1
    first.answered = 0.4
    blocked, wait = g.try_start(0.5, 0.0)
    assert blocked is None and wait == pytest.approx(0.9)
    third, _ = g.try_start(1.4, 0.0)
    assert third is not None


def test_a_new_gate_counts_its_first_second_as_full_and_pauses_hold_it():
    g = gate(now=10.0)
    blocked, wait = g.try_start(10.2, 0.0)
    assert blocked is None and wait == pytest.approx(0.8)
    assert g.try_start(11.0, 0.0)[0] is not None
    blocked, wait = g.try_start(11.0, 13.0)  # Retry-After said: not before 13
    assert blocked is None and wait == pytest.approx(2.0)


def test_the_longer_window_holds_a_request_the_shorter_one_lets_through():
    g = _WindowGate([_Window(2, 1.0), _Window(4, 60.0)], now=-100.0)
    for at in (0.0, 0.0, 1.0, 1.0):
        started, _ = g.try_start(at, 0.0)
        assert started is not None
        started.answered = at
    blocked, wait = g.try_start(2.0, 0.0)  # free in the per-second window, the fifth in a minute
    assert blocked is None and wait == pytest.approx(58.0)
    assert g.try_start(60.0, 0.0)[0] is not None


def test_spacing_stays_the_default_and_sliding_windows_is_opt_in():
    assert Pacer(Limits(rate_per_second=2, rate_per_minute=120))._gate is None
    assert Pacer(Limits(rate_per_second=2, rate_per_minute=120, sliding_windows=True))._gate is not None


CONDITIONS = [
    '["and", {"type": "language", "value": "es"}]',
    '["or", ["and", {"type": "cookies", "name": "a"}], ["not", {"type": "query", "value": "x"}]]',
    '["everyone"]',
    '["and"]',
    '["not", {"type": "a"}, {"type": "b"}]',
    '["xor", {"type": "a"}]',
    '["and", {"value": "es"}]',
    '{"type": "language"}',
    "[]",
    "not json",
    '["and", "language"]',
]


@pytest.mark.parametrize("conditions", CONDITIONS)
def test_the_client_and_the_emulator_read_conditions_alike(conditions):
    assert (conditions_problem(conditions) is None) == (conditions_error(conditions) is None)


@pytest.mark.parametrize("key", ["plan", "Plan tier-2.x", "x" * 64, "x" * 65, "bad/key", "é", "a,b"])
def test_the_client_and_the_emulator_read_attribute_keys_alike(key):
    assert (attribute_key_problem(key) is None) == (attribute_key_error(key) is None)


def test_the_valid_examples_are_valid():
    assert conditions_problem(CONDITIONS[0]) is None and conditions_problem(CONDITIONS[1]) is None
    assert "not JSON" in conditions_problem("not json")
    assert json.loads(CONDITIONS[2]) == ["everyone"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, (2, 120)),
        ({"web_experimentation": True}, (2, 100)),
        ({"web_experimentation": True, "rate_per_minute": 50}, (2, 50)),
        ({"rate_per_second": 1}, (1, 120)),
    ],
)
def test_the_connection_decides_the_limits(monkeypatch, extra, expected):
    from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
        json.dumps({"conn_type": "optimizely", "host": "https://api.optimizely.com", "password": "t0ken", "extra": extra}),
    )
    limits = OptimizelyHook().limits
    assert (limits.rate_per_second, limits.rate_per_minute) == expected
    assert limits.sliding_windows and limits.max_in_flight == 2
