"""The shared HTTP core over real sockets against the emulators: retries, 429s, bounds, pacing, TLS, secrets."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest
import respx

from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.http import (
    ApiClient,
    ApiError,
    BadRequestError,
    InsecureURLError,
    Limits,
    Pacer,
    RetryPolicy,
    ServerError,
    TlsError,
)
from tests.integration.conftest import connection_env
from tests.support.reliability import reliability_case

FAST = RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05)


def personyze_client(emulator, *, retry=FAST, limits=Limits(), key=None) -> ApiClient:
    key = key or emulator.api_key
    return ApiClient(
        vendor="Personyze",
        base_url=f"{emulator.url}/rest",
        auth=httpx.BasicAuth("api", key),
        secrets=[key],
        retry=retry,
        pacer=Pacer(limits),
    )


def api_requests(emulator, path: str) -> list:
    return [r for r in emulator.requests if r.path.startswith(path)]


def test_503_is_retried_until_it_succeeds(personyze_emulator):
    personyze_emulator.set_faults(error_rate=0.6, error_status=503, seed=11)
    client = personyze_client(personyze_emulator, retry=RetryPolicy(max_attempts=20, backoff_initial=0.01, backoff_max=0.02))
    for _ in range(5):
        assert client.json("GET", "/account")["id"] == 1
    statuses = [r.status for r in api_requests(personyze_emulator, "/rest/account")]
    assert statuses.count(200) == 5 and statuses.count(503) >= 1


@reliability_case("fault", "HTTP core", "429 with Retry-After",
                  "the retry waits Retry-After and does not use up an attempt")
def test_429_waits_for_retry_after_without_using_up_an_attempt(personyze_emulator):
    """The 429 comes from an injected fault, not a rate window, so nothing but Retry-After makes the wait:
    ignore it and the retry goes out after the 10 ms backoff."""
    personyze_emulator.set_faults(error_rate=1.0, error_status=429, retry_after=2)
    client = personyze_client(  # no retries at all, except after a 429; backoff 10 ms
        personyze_emulator, retry=RetryPolicy(max_attempts=1, backoff_initial=0.01, backoff_max=0.01,
                                              max_retry_seconds=30))
    caller = threading.Thread(target=client.json, args=("GET", "/account"))
    caller.start()
    deadline = time.monotonic() + 10
    while not api_requests(personyze_emulator, "/rest/account") and time.monotonic() < deadline:
        time.sleep(0.01)
    personyze_emulator.set_faults()  # the fault is lifted once the first 429 went out: the retry gets through
    caller.join(timeout=10)
    answered = api_requests(personyze_emulator, "/rest/account")
    assert [r.status for r in answered] == [429, 200]
    assert answered[1].started_at - answered[0].finished_at >= 1.5  # Retry-After: 2


@reliability_case("fault", "HTTP core", "a redirect (3xx) to another host",
                  "not followed: the request fails with the 3xx and the other host never sees it or the key")
def test_a_redirect_is_not_followed_so_the_key_stays_with_the_api(personyze_emulator):
    """A 3xx to another origin (a moved API, a hostile proxy) would carry ``X-API-Key``/``apikey`` headers
    along; httpx only strips ``Authorization``. The client stops at the 3xx instead."""
    import http.server

    target = f"{personyze_emulator.url}/rest/account"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ApiClient(vendor="Permutive", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                           headers={"X-API-Key": personyze_emulator.api_key}, retry=FAST)
        with pytest.raises(ApiError) as caught:
            client.json("GET", "/account")
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.status == 302
    assert personyze_emulator.requests == []  # the redirect's target never saw the request, nor the key


def test_400_is_not_retried(personyze_emulator):
    client = personyze_client(personyze_emulator)
    with pytest.raises(BadRequestError) as caught:
        client.json("GET", "/user_lists/999")
    assert len(api_requests(personyze_emulator, "/rest/user_lists")) == 1
    error = caught.value
    assert error.status == 400 and not error.retryable and "Row not found" in str(error)
    assert error.vendor == "Personyze" and error.method == "GET" and error.path == "/user_lists/999"


def test_gives_up_after_the_configured_attempts_with_a_clear_error(personyze_emulator):
    personyze_emulator.set_faults(error_rate=1.0, error_status=503)
    client = personyze_client(personyze_emulator, retry=RetryPolicy(max_attempts=3, backoff_initial=0.01))
    with pytest.raises(ServerError, match=r"HTTP 503.*gave up after 3 attempts") as caught:
        client.json("GET", "/account")
    assert caught.value.retryable
    assert len(api_requests(personyze_emulator, "/rest/account")) == 3


def test_gives_up_when_the_time_bound_would_be_exceeded(personyze_emulator):
    personyze_emulator.set_faults(error_rate=1.0, error_status=503, retry_after=30)
    client = personyze_client(personyze_emulator, retry=RetryPolicy(max_attempts=10, max_retry_seconds=2))
    started = time.monotonic()
    with pytest.raises(ServerError):
        client.json("GET", "/account")
    assert time.monotonic() - started < 2
    assert len(api_requests(personyze_emulator, "/rest/account")) == 1


def test_pacing_holds_the_configured_rate_without_a_single_429(optimizely_emulator):
    project = optimizely_emulator.create_project("Paced")
    # The server counts arrivals. On a busy 2-core machine a thread that wakes late lands next to the one after
    # it, so the server admits 5/s while the client paces 4/s (starts 0.275 s apart): six arrivals in one second
    # then take a late wake-up of over 0.35 s, where pacing at the server's own rate failed on 0.1 s.
    optimizely_emulator.set_faults(rate_per_second=5, rate_per_minute=1000)
    client = ApiClient(
        vendor="Optimizely",
        base_url=f"{optimizely_emulator.url}/v2",
        headers={"Authorization": f"Bearer {optimizely_emulator.token}"},
        retry=RetryPolicy(max_attempts=1),
        pacer=Pacer(Limits(rate_per_second=4, max_in_flight=3)),
    )
    errors: list[Exception] = []

    def worker() -> None:
        for _ in range(4):
            try:
                client.json("GET", f"/projects/{project}")
            except Exception as exc:  # collected for the assertion below
                errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    statuses = [r.status for r in api_requests(optimizely_emulator, "/v2/projects")]
    assert errors == [] and statuses == [200] * 16
    assert elapsed >= 15 / 4  # 16 starts spaced at 1/4 s (plus margin)
    assert optimizely_emulator.max_in_flight_seen() <= 3


def test_in_flight_cap_holds_under_concurrency(personyze_emulator):
    personyze_emulator.set_faults(latency_ms=80)
    client = personyze_client(personyze_emulator, limits=Limits(max_in_flight=2))
    threads = [threading.Thread(target=lambda: client.json("GET", "/account")) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(api_requests(personyze_emulator, "/rest/account")) == 8
    assert personyze_emulator.max_in_flight_seen() == 2


def test_dropped_connections_are_retried(personyze_emulator):
    personyze_emulator.set_faults(drop_rate=0.5, seed=1)
    client = personyze_client(personyze_emulator, retry=RetryPolicy(max_attempts=20, backoff_initial=0.01, backoff_max=0.02))
    for _ in range(4):
        assert client.json("GET", "/account")["id"] == 1
    assert any(r.fault == "dropped" for r in personyze_emulator.requests)


def test_plain_http_to_a_non_loopback_host_is_refused_before_any_request(monkeypatch):
    with pytest.raises(InsecureURLError, match="Use https://"):
        ApiClient(vendor="Personyze", base_url="http://app.personyze.com/rest")
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env("personyze", "http://10.20.30.40", "k3y-value"))
    with respx.mock(assert_all_called=False) as router:
        ok, message = PersonyzeHook().test_connection()
        assert router.calls.call_count == 0
    assert not ok and "Refusing plain http to '10.20.30.40'" in message


def test_the_secret_never_reaches_logs_or_error_text(personyze_emulator, monkeypatch, caplog):
    secret = "sup3r-s3cret-personyze-key"
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env("personyze", personyze_emulator.url, secret,
                                                                          max_attempts=2, backoff_initial=0.01))
    caplog.set_level(logging.DEBUG)
    hook = PersonyzeHook()
    ok, message = hook.test_connection()
    assert not ok and "refused the API key" in message
    personyze_emulator.set_faults(error_rate=1.0, error_status=503)
    with pytest.raises(ServerError) as caught:
        hook.get_account()
    texts = [message, str(caught.value), repr(caught.value), caught.value.body_excerpt, caplog.text]
    assert all(secret not in text for text in texts)


def test_a_body_that_echoes_the_secret_is_redacted():
    secret = "echoed-secret-token-123"
    with respx.mock(base_url="https://api.optimizely.com/v2") as router:
        router.get("/projects/1").mock(return_value=httpx.Response(403, json={"code": "FORBIDDEN",
                                                                              "message": f"token {secret} lacks access"}))
        client = ApiClient(vendor="Optimizely", base_url="https://api.optimizely.com/v2",
                           headers={"Authorization": f"Bearer {secret}"}, secrets=[secret])
        with pytest.raises(Exception) as caught:
            client.json("GET", "/projects/1")
    assert secret not in str(caught.value) and secret not in caught.value.body_excerpt
    assert "token *** lacks access" in str(caught.value)


@pytest.fixture
def mtls_material(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("airflow-worker@example.com")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "server_chain", "server_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_and_cert_chain_pem.write_to_path(paths["server_chain"])
    server.private_key_pem.write_to_path(paths["server_key"])
    return {
        **paths,
        "client_cert": "".join(blob.bytes().decode() for blob in client.cert_chain_pems),
        "client_key": client.private_key_pem.bytes().decode(),
    }


def test_mtls_handshake_with_a_client_certificate(mtls_material, monkeypatch):
    from airflow_provider_zeotap.testing import ZeotapEmulator

    emulator = ZeotapEmulator(
        ssl_certfile=mtls_material["server_chain"],
        ssl_keyfile=mtls_material["server_key"],
        ssl_ca_certs=mtls_material["ca"],
        require_client_cert=True,
    )
    with emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        extras = {"org_id": str(emulator.org_id), "region": emulator.region, "verify": mtls_material["ca"],
                  "max_attempts": 1}
        monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env(
            "zeotap", emulator.url, emulator.api_key, client_cert=mtls_material["client_cert"],
            client_private_key=mtls_material["client_key"], **extras))
        ok, message = ZeotapProfileHook().test_connection()
        assert ok, message

        monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", connection_env("zeotap", emulator.url, emulator.api_key, **extras))
        ok, message = ZeotapProfileHook().test_connection()
        assert not ok and "no response" in message
        assert mtls_material["client_key"].splitlines()[1] not in message


def test_optimizely_connection_test_names_the_problem(optimizely_emulator, monkeypatch):
    project = optimizely_emulator.create_project("Web")
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", connection_env(
        "optimizely", optimizely_emulator.url, optimizely_emulator.token, project_id=str(project)))
    ok, message = OptimizelyHook().test_connection()
    assert ok and "'Web'" in message
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", connection_env(
        "optimizely", optimizely_emulator.url, optimizely_emulator.token, project_id="999999"))
    ok, message = OptimizelyHook().test_connection()
    assert not ok and "project '999999' was not found" in message


def test_async_client_respects_the_in_flight_cap_and_retries(zeotap_emulator):
    import asyncio

    zeotap_emulator.set_faults(latency_ms=30, error_rate=0.2, error_status=503, seed=2, rate_per_second=None,
                               rate_per_minute=None)
    client = ApiClient(
        vendor="Zeotap",
        base_url=f"{zeotap_emulator.url}/cdp/v1",
        headers={"apikey": zeotap_emulator.api_key, "scopes": "profile.read"},
        retry=RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.05),
        pacer=Pacer(Limits(max_in_flight=5)),
    )
    body = {"orgId": zeotap_emulator.org_id, "regions": [zeotap_emulator.region], "search": {"user_id": ["x"]}}

    async def many():
        try:
            return await asyncio.gather(*(client.ajson("POST", "/users/_search", json=body) for _ in range(40)))
        finally:
            await client.aclose()

    results = asyncio.run(many())
    assert results == [[]] * 40
    statuses = [r.status for r in zeotap_emulator.requests]
    assert statuses.count(200) == 40 and 503 in statuses
    assert zeotap_emulator.max_in_flight_seen() == 5


def test_personyze_too_many_simultaneous_requests_is_retried(personyze_emulator, monkeypatch):
    """Two hooks (two workers) POST users at once; Personyze refuses the one that waited over 1 s."""
    monkeypatch.setenv("AIRFLOW_CONN_PERSONYZE_DEFAULT", connection_env(
        "personyze", personyze_emulator.url, personyze_emulator.api_key, backoff_initial=0.2, backoff_max=0.5))
    personyze_emulator.users_post_latency_ms = 1200
    hooks = [PersonyzeHook(), PersonyzeHook()]
    ids: list[int] = []
    threads = [threading.Thread(target=lambda h=h, i=i: ids.append(h.create_user({"email": f"w{i}@example.com"})))
               for i, h in enumerate(hooks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [r for r in personyze_emulator.requests if r.status == 400]
    assert len(ids) == 2 and refused, "the emulator did not refuse the waiting POST"
    assert {u["email"] for u in personyze_emulator.users.values()} == {"w0@example.com", "w1@example.com"}


def test_the_async_client_serves_each_event_loop_of_its_own(personyze_emulator):
    """A client kept from an earlier ``asyncio.run`` would fail with "Event loop is closed"."""
    import asyncio

    client = personyze_client(personyze_emulator)

    async def read() -> int:
        try:
            return (await client.ajson("GET", "/account"))["id"]
        finally:
            await client.aclose()

    assert [asyncio.run(read()) for _ in range(3)] == [1, 1, 1]

    async def unclosed() -> int:
        return (await client.ajson("GET", "/account"))["id"]

    assert asyncio.run(unclosed()) == 1
    assert asyncio.run(unclosed()) == 1  # a new loop gets a new client even when the last was never closed


def test_https_to_a_plain_http_server_is_a_tls_error_with_the_fix_and_is_not_retried(personyze_emulator):
    client = ApiClient(vendor="Personyze", base_url=f"https://127.0.0.1:{personyze_emulator.port}/rest",
                       retry=RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.01))
    with pytest.raises(TlsError) as caught:
        client.json("GET", "/account")
    error = caught.value
    assert error.attempts == 1 and not error.retryable
    assert error.advice.startswith(f"TLS handshake with https://127.0.0.1:{personyze_emulator.port}/rest failed: the "
                                   "server does not speak TLS on this port")
    assert (error.vendor, error.method, error.path) == ("Personyze", "GET", "/account")
