"""The shared frame through real emulators: life cycle, TLS, faults, rate limits, the log, admin."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import pytest
import trustme

from airflow_provider_zeotap.testing import (
    FaultConfig,
    OptimizelyEmulator,
    PermutiveEmulator,
    PersonyzeEmulator,
    ZeotapEmulator,
)
from airflow_provider_zeotap.testing.faults import FaultSettings, SlidingWindow
from airflow_provider_zeotap.testing.request_log import max_overlap

# -- life cycle --------------------------------------------------------------------------------------------


def test_starts_fast_and_stops_cleanly() -> None:
    emulator = PersonyzeEmulator()
    started = time.monotonic()
    with emulator:
        assert time.monotonic() - started < 0.5
        assert emulator.running
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        assert emulator.api_url == f"{emulator.url}/rest"
        port = emulator.port
    assert not emulator.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/_emulator/state")


def test_restart_keeps_port_and_state() -> None:
    emulator = PersonyzeEmulator().start()
    try:
        port, list_id = emulator.port, emulator.create_list("L")
        emulator.stop()
        emulator.start()
        assert emulator.port == port
        response = httpx.get(f"{emulator.api_url}/user_lists/{list_id}", auth=("api", emulator.api_key))
        assert response.json() == {"id": list_id, "name": "L"}
        emulator.users_post_latency_ms = 1  # the POST slot is rebuilt on the new event loop
        assert httpx.post(
            f"{emulator.api_url}/users", json={"email": "a"}, auth=("api", emulator.api_key)
        ).is_success
    finally:
        emulator.stop()


def test_given_port_and_busy_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with PersonyzeEmulator(port=free_port) as emulator:
        assert emulator.url.endswith(f":{free_port}")
        with pytest.raises(OSError):
            PersonyzeEmulator(port=free_port).start()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        PersonyzeEmulator(host=host)


# -- TLS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client@example.com")
    paths = {
        "ca": directory / "ca.pem",
        "server": directory / "server.pem",
        "client": directory / "client.pem",
    }
    ca.cert_pem.write_to_path(paths["ca"])
    server_cert.private_key_and_cert_chain_pem.write_to_path(paths["server"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    yield paths


def test_mutual_tls(tls: dict[str, Path]) -> None:
    emulator = ZeotapEmulator(ssl_certfile=tls["server"], ssl_ca_certs=tls["ca"], require_client_cert=True)
    with emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        body = {"orgId": emulator.org_id, "search": {"email": ["nobody@example.com"]}}
        headers = {"apikey": emulator.api_key, "scopes": "profile.read"}
        with_cert = ssl.create_default_context(cafile=str(tls["ca"]))
        with_cert.load_cert_chain(str(tls["client"]))
        response = httpx.post(
            f"{emulator.api_url}/users/_search", json=body, headers=headers, verify=with_cert
        )
        assert (response.status_code, response.json()) == (200, [])
        without_cert = ssl.create_default_context(cafile=str(tls["ca"]))
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.post(f"{emulator.api_url}/users/_search", json=body, headers=headers, verify=without_cert)


def test_tls_option_checks(tls: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="ssl_certfile"):
        PersonyzeEmulator(ssl_ca_certs=tls["ca"])
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        PersonyzeEmulator(ssl_certfile=tls["server"], require_client_cert=True)


# -- faults ----------------------------------------------------------------------------------------------


def statuses(client: httpx.Client, count: int, path: str = "/account") -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def test_error_rate_is_reproducible_with_a_seed(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(error_rate=0.5, seed=42)
    first = statuses(personyze, 30)
    personyze_emulator.set_faults(error_rate=0.5, seed=42)
    assert statuses(personyze, 30) == first
    assert set(first) == {200, 503} and 5 < first.count(503) < 25
    faulted = [entry.fault for entry in personyze_emulator.requests if entry.status == 503]
    assert faulted == ["error"] * (2 * first.count(503))


def test_injected_errors_carry_retry_after_in_the_vendor_shape(
    permutive_emulator: PermutiveEmulator, permutive: httpx.Client
) -> None:
    permutive_emulator.set_faults(error_rate=1.0, error_status=429, retry_after=7)
    response = permutive.get("/imports")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": "TooManyRequests", "message": "Too Many Requests"}


def test_dropped_connection_is_a_client_error_after_the_write_landed(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(drop_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        personyze.post("/users", json={"email": "landed@x.com"})
    assert [user["email"] for user in personyze_emulator.users.values()] == ["landed@x.com"]
    assert personyze_emulator.requests[-1].fault == "dropped"
    personyze_emulator.set_faults()
    assert personyze.get("/account").status_code == 200  # the client recovers on a new connection


def test_429s_mix_with_5xx_in_one_config_and_carry_their_own_retry_after(
    permutive_emulator: PermutiveEmulator, permutive: httpx.Client
) -> None:
    permutive_emulator.set_faults(error_rate=0.3, rate_limited_rate=0.4, rate_limited_retry_after=3, seed=5)
    first = statuses(permutive, 40, "/imports")
    assert {200, 503, 429} <= set(first)
    throttled = [r for r in permutive_emulator.requests if r.status == 429]
    assert {r.fault for r in throttled} == {"rate_limited"}
    permutive_emulator.set_faults(rate_limited_rate=1.0, rate_limited_retry_after=3)
    response = permutive.get("/imports")
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")
    permutive_emulator.set_faults(error_rate=0.3, rate_limited_rate=0.4, rate_limited_retry_after=3, seed=5)
    assert statuses(permutive, 40, "/imports") == first  # one seeded generator draws both


def test_latency_spikes_hit_the_fraction_drawn_and_add_their_own_delay() -> None:
    from airflow_provider_zeotap.testing.faults import FaultInjector

    injector = FaultInjector(FaultConfig(latency_ms=10, latency_spike_rate=0.25, latency_spike_ms=300, seed=9))
    delays = [injector.judge("/x", 0.0).delay for _ in range(400)]
    assert set(delays) == {0.01, 0.31}
    assert 60 < delays.count(0.31) < 140  # about a quarter
    off = FaultInjector(FaultConfig(latency_ms=10, latency_spike_ms=300, seed=9))
    assert {off.judge("/x", 0.0).delay for _ in range(50)} == {0.01}


def test_restart_cuts_open_connections_and_keeps_port_state_log_and_faults(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    list_id = personyze_emulator.create_list("Kept")
    personyze_emulator.set_faults(latency_ms=1)
    assert personyze.get("/account").status_code == 200  # a kept-alive connection is open now
    port = personyze_emulator.port
    personyze_emulator.restart()
    assert personyze_emulator.port == port and personyze_emulator.faults.latency_ms == 1
    assert len(personyze_emulator.requests) == 1
    assert personyze.get(f"/user_lists/{list_id}").json() == {"id": list_id, "name": "Kept"}


def test_rate_limit_per_second(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    """A vendor that throttles with 429 says when to come back (Personyze's 503: test_strictness)."""
    permutive_emulator.set_faults(rate_per_second=2)
    assert statuses(permutive, 3, "/imports") == [200, 200, 429]
    refused = permutive.get("/imports")
    assert (refused.status_code, refused.headers["retry-after"], refused.json()["message"]) == (
        429,
        "1",
        "Too Many Requests",
    )
    time.sleep(1.0)
    assert statuses(permutive, 2, "/imports") == [200, 200]


def test_rate_limit_per_minute(permutive_emulator: PermutiveEmulator, permutive: httpx.Client) -> None:
    permutive_emulator.set_faults(rate_per_minute=3)
    assert statuses(permutive, 4, "/imports") == [200, 200, 200, 429]
    assert 55 <= int(permutive.get("/imports").headers["retry-after"]) <= 60


def test_path_prefix_scopes_the_faults(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze_emulator.set_faults(error_rate=1.0, path_prefix="/rest/user_lists")
    assert statuses(personyze, 2) == [200, 200]
    assert statuses(personyze, 2, "/user_lists") == [503, 503]


def test_faults_never_touch_admin_endpoints(personyze_emulator: PersonyzeEmulator) -> None:
    personyze_emulator.set_faults(error_rate=1.0, drop_rate=1.0, latency_ms=1000, rate_per_second=1)
    for _ in range(3):
        assert httpx.get(f"{personyze_emulator.url}/_emulator/state", timeout=0.5).status_code == 200
    assert personyze_emulator.requests == []


def test_latency(personyze_emulator: PersonyzeEmulator, personyze: httpx.Client) -> None:
    personyze_emulator.set_faults(latency_ms=150, latency_jitter_ms=50, seed=1)
    started = time.monotonic()
    personyze.get("/account")
    assert 0.15 <= time.monotonic() - started < 0.5


def test_faults_over_http(optimizely_emulator: OptimizelyEmulator) -> None:
    admin = f"{optimizely_emulator.url}/_emulator"
    assert httpx.get(f"{admin}/faults").json()["rate_per_second"] == 2  # the vendor's documented limit
    answer = httpx.post(f"{admin}/faults", json={"error_rate": 0.25, "retry_after": 3})
    assert (
        answer.json() | {}
        == FaultConfig(error_rate=0.25, retry_after=3, rate_per_second=2, rate_per_minute=120).model_dump()
    )
    assert optimizely_emulator.faults.error_rate == 0.25
    assert httpx.post(f"{admin}/faults", json={"rate_per_second": None}).json()["rate_per_second"] is None
    assert httpx.post(f"{admin}/faults", json={"eror_rate": 1}).status_code == 400
    assert httpx.post(f"{admin}/faults", json={"error_rate": 2}).status_code == 400


def test_optimizely_enforces_its_documented_limit_by_default(
    optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client
) -> None:
    project_id = optimizely_emulator.create_project("P")
    assert statuses(optimizely, 3, f"/projects/{project_id}") == [200, 200, 429]
    refused = optimizely.get(f"/projects/{project_id}")
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "TOO_MANY_REQUESTS"
    optimizely_emulator.set_faults(rate_per_second=None, rate_per_minute=None)
    assert set(statuses(optimizely, 5, f"/projects/{project_id}")) == {200}


def test_fault_settings_match_fault_config() -> None:
    assert get_type_hints(FaultSettings).keys() == FaultConfig.model_fields.keys()


def test_sliding_window_fractional_rate() -> None:
    window = SlidingWindow(0.5, 1.0)  # one request per two seconds
    assert window.wait(0.0) == 0
    window.admit(0.0)
    assert window.wait(1.0) == pytest.approx(1.0)
    assert window.wait(2.0) == 0


# -- request log, reset, admin ---------------------------------------------------------------------------


def test_request_log_keeps_no_credentials(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    personyze.post("/users?dry=1", json={"email": "a@x.com"}, headers={"X-Trace": "t1"})
    personyze.get("/users/where/email=a%40x.com")
    post, get = personyze_emulator.requests
    assert (post.method, post.path, post.query, post.json, post.status) == (
        "POST",
        "/rest/users",
        {"dry": "1"},
        {"email": "a@x.com"},
        200,
    )
    assert post.headers["x-trace"] == "t1" and "authorization" not in post.headers
    assert (get.raw_path, get.path, get.json) == (
        "/rest/users/where/email=a%40x.com",
        "/rest/users/where/email=a@x.com",
        None,
    )
    assert get.started_at <= get.finished_at  # type: ignore[operator]
    served = httpx.get(f"{personyze_emulator.url}/_emulator/requests").json()
    assert [entry["method"] for entry in served] == ["POST", "GET"]
    assert "authorization" not in served[0]["headers"]
    assert httpx.delete(f"{personyze_emulator.url}/_emulator/requests").status_code == 204
    assert personyze_emulator.requests == []


def test_max_in_flight_seen(personyze_emulator: PersonyzeEmulator) -> None:
    personyze_emulator.set_faults(latency_ms=200)

    async def burst(count: int) -> None:
        auth = ("api", personyze_emulator.api_key)
        async with httpx.AsyncClient(base_url=personyze_emulator.api_url, auth=auth) as client:
            await asyncio.gather(*(client.get("/account") for _ in range(count)))
            await client.get("/user_lists")

    asyncio.run(burst(3))
    assert personyze_emulator.max_in_flight_seen() == 3
    assert personyze_emulator.max_in_flight_seen(path_prefix="/rest/user_lists") == 1
    assert personyze_emulator.max_in_flight_seen(method="POST") == 0


def test_max_overlap() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # back to back is not concurrent
    assert max_overlap([(0, 3), (1, 2), (1.5, None)]) == 3


def test_reset(optimizely_emulator: OptimizelyEmulator, optimizely: httpx.Client) -> None:
    project_id = optimizely_emulator.create_project("P")
    optimizely_emulator.set_faults(error_rate=1.0, rate_per_second=None)
    optimizely.get(f"/projects/{project_id}")
    assert httpx.post(f"{optimizely_emulator.url}/_emulator/reset").status_code == 204
    assert optimizely_emulator.projects == {}
    assert optimizely_emulator.requests == []
    assert optimizely_emulator.faults == OptimizelyEmulator.default_faults


def test_airflow_connection(personyze_emulator: PersonyzeEmulator) -> None:
    connection = {"conn_type": "personyze", "host": personyze_emulator.url, "password": "personyze-test-key"}
    (variable, value), *_ = personyze_emulator.airflow_env().items()
    assert (variable, json.loads(value)) == ("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection)
    assert list(personyze_emulator.airflow_env("my_conn")) == ["AIRFLOW_CONN_MY_CONN"]
