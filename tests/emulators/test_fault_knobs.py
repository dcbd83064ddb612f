"""Every fault knob is set the same way from the three places: ``set_faults``, ``POST /_emulator/faults`` and
the command line. They all validate through ``FaultConfig`` (the one definition), so one example value per knob,
set from each place, must give the same knobs in force; and one knob set from each place must take effect.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from airflow_provider_zeotap.testing import FaultConfig, PermutiveEmulator, PersonyzeEmulator, ZeotapEmulator
from airflow_provider_zeotap.testing.__main__ import fault_knobs, parse_args

#: A value other than the default for every knob. A new knob must add one here (a test checks it).
EXAMPLES: dict[str, Any] = {
    "latency_ms": 5.0,
    "latency_jitter_ms": 2.0,
    "latency_spike_rate": 0.05,
    "latency_spike_ms": 250.0,
    "error_rate": 0.25,
    "error_status": 500,
    "error_message": "Too many simultaneous requests",
    "error_when": "after",
    "retry_after": 3,
    "rate_limited_rate": 0.02,
    "rate_limited_retry_after": 2,
    "drop_rate": 0.125,
    "drop_first": 2,
    "drop_when": "before",
    "rate_per_second": 7.0,
    "rate_per_minute": 90.0,
    "max_in_flight": 4,
    "seed": 11,
    "path_prefix": "/rest/user",
    "path": "/rest/users",
    "method": "POST",
    "body_contains": "vip",
    "echo_request": True,
}


def cli_options(knobs: dict[str, Any]) -> list[str]:
    return [part for name, value in knobs.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def start_cli(*options: str) -> tuple[subprocess.Popen[str], str]:
    """The command line serving Personyze on a free port with these options; returns it and its base URL."""
    command = [sys.executable, "-m", "airflow_provider_zeotap.testing", "--only", "personyze",
               "--personyze-port", "0", "--no-seed", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("personyze"), process.stderr.read() if process.stderr else first
    while not process.stdout.readline().startswith("Serving"):
        pass
    return process, first.split()[1]


def test_every_knob_has_an_example() -> None:
    assert list(EXAMPLES) == list(FaultConfig.model_fields)
    defaults = FaultConfig().model_dump()
    assert all(EXAMPLES[name] != defaults[name] for name in EXAMPLES)


def test_every_knob_is_the_same_from_set_faults_the_faults_endpoint_and_the_command_line(
    personyze_emulator: PersonyzeEmulator,
) -> None:
    expected = FaultConfig(**EXAMPLES).model_dump()
    assert personyze_emulator.set_faults(**EXAMPLES).model_dump() == expected
    personyze_emulator.reset()
    answer = httpx.post(f"{personyze_emulator.url}/_emulator/faults", json=EXAMPLES)
    assert answer.status_code == 200 and answer.json() == expected
    assert personyze_emulator.faults.model_dump() == expected
    personyze_emulator.reset()
    # What ``main`` does with the options: parse them, then set_faults (the process test below runs it whole).
    assert personyze_emulator.set_faults(**fault_knobs(parse_args(cli_options(EXAMPLES)))).model_dump() == expected


def test_a_knob_set_from_each_place_takes_effect(personyze_emulator: PersonyzeEmulator) -> None:
    knobs = {"error_rate": 1, "error_status": 418, "error_message": "teapot", "method": "GET"}
    auth = ("api", personyze_emulator.api_key)
    process, url = start_cli(*cli_options(knobs))
    try:
        assert httpx.get(f"{url}/_emulator/faults").json() == FaultConfig(**knobs).model_dump()
        answers = {"command line": httpx.get(f"{url}/rest/account", auth=auth)}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    httpx.post(f"{personyze_emulator.url}/_emulator/faults", json=knobs)
    answers["faults endpoint"] = httpx.get(f"{personyze_emulator.api_url}/account", auth=auth)
    personyze_emulator.reset()
    personyze_emulator.set_faults(**knobs)
    answers["set_faults"] = httpx.get(f"{personyze_emulator.api_url}/account", auth=auth)
    assert {place: (a.status_code, a.text) for place, a in answers.items()} == {
        place: (418, "teapot") for place in answers
    }
    assert httpx.post(f"{personyze_emulator.api_url}/users", json={"email": "a@x.com"}, auth=auth).status_code == 200


def test_none_switches_an_optional_knob_off_from_the_command_line() -> None:
    knobs = fault_knobs(parse_args(["--only", "zeotap", "--rate-per-minute", "none", "--max-in-flight", "50"]))
    assert knobs == {"rate_per_minute": None, "max_in_flight": "50"}
    config = FaultConfig.model_validate({**ZeotapEmulator.default_faults.model_dump(), **knobs})
    assert (config.rate_per_minute, config.max_in_flight) == (None, 50)


@pytest.mark.parametrize(
    ("options", "named"),
    [(["--eror-rate", "1"], "--eror-rate"), (["--error-rate", "2"], "--error-rate"),
     (["--drop-when", "during"], "--drop-when")],
)
def test_a_bad_knob_on_the_command_line_is_refused_naming_it(
    options: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--only", "personyze", *options])
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def _timed_user_post(api_url: str, auth: tuple[str, str]) -> float:
    started = time.monotonic()
    assert httpx.post(f"{api_url}/users", json={"email": "slow@x.com"}, auth=auth).status_code == 200
    return time.monotonic() - started


def test_an_emulators_own_setting_is_the_same_from_the_settings_endpoint_the_attribute_and_the_command_line(
    personyze_emulator: PersonyzeEmulator,
) -> None:
    auth = ("api", personyze_emulator.api_key)
    process, url = start_cli("--personyze-users-post-latency-ms", "400")
    try:
        assert httpx.get(f"{url}/_emulator/settings").json() == {"users_post_latency_ms": 400.0}
        took = {"command line": _timed_user_post(f"{url}/rest", auth)}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    try:
        answer = httpx.post(f"{personyze_emulator.url}/_emulator/settings", json={"users_post_latency_ms": 400})
        assert answer.json() == {"users_post_latency_ms": 400.0} and personyze_emulator.users_post_latency_ms == 400
        took["settings endpoint"] = _timed_user_post(personyze_emulator.api_url, auth)
        personyze_emulator.users_post_latency_ms = 0
        assert _timed_user_post(personyze_emulator.api_url, auth) < 0.4  # the attribute is the setting
    finally:
        personyze_emulator.users_post_latency_ms = 0
    assert all(seconds >= 0.4 for seconds in took.values()), took


@pytest.mark.parametrize(("values", "named"), [({"page_size": 0}, "page_size"), ({"pagesize": 2}, "pagesize")])
def test_a_bad_setting_is_refused_naming_it_and_nothing_changes(values: dict[str, Any], named: str) -> None:
    with PermutiveEmulator() as emulator:
        answer = httpx.post(f"{emulator.url}/_emulator/settings", json=values)
        assert answer.status_code == 400 and named in answer.text
        assert emulator.settings() == {"page_size": 100}
        assert emulator.apply_settings(page_size=2) == {"page_size": 2} and emulator.page_size == 2


def test_a_bad_setting_on_the_command_line_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--only", "permutive", "--permutive-page-size", "0"])
    assert exit_.value.code == 2 and "--permutive-page-size" in capsys.readouterr().err
