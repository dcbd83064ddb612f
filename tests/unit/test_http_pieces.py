"""Small pieces of the HTTP core, tested alone."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import respx

from airflow_provider_zeotap.hooks.permutive import _elements, _next_token
from airflow_provider_zeotap.http import ApiClient, ApiError, RetryPolicy
from airflow_provider_zeotap.http.client import parse_retry_after
from airflow_provider_zeotap.http.errors import ApiConnectionError, ConfigurationError, redact
from airflow_provider_zeotap.http.pacing import Pacer
from airflow_provider_zeotap.http.settings import Limits
from airflow_provider_zeotap.http.tls import build_ssl_context
from tests.support.reliability import reliability_case


def test_retry_after_in_seconds_or_as_an_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= parse_retry_after(in_ten) <= 10.5
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.fixture
def frozen_clock(monkeypatch):
    """The pacer's clock, stopped: what it reserves is then exact, however loaded the machine is."""
    import airflow_provider_zeotap.http.pacing as pacing

    now = [1000.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])
    return now


def test_pacer_spacing_keeps_every_window_under_both_rates(frozen_clock):
    pacer = Pacer(Limits(rate_per_second=10, rate_per_minute=120))
    assert pacer.interval == pytest.approx(0.5 * 1.1)  # the per-minute rate is the tighter one
    waits = [pacer.reserve() for _ in range(4)]
    assert waits == pytest.approx([0, 0.55, 1.10, 1.65])


def test_pause_holds_every_caller(frozen_clock):
    pacer = Pacer()
    pacer.pause(0.3)
    assert [pacer.reserve(), pacer.reserve()] == pytest.approx([0.3, 0.3])
    frozen_clock[0] += 0.3
    assert pacer.reserve() == 0


def test_redact_replaces_every_occurrence_of_every_secret():
    text = "apikey=sk-live-1234 (echoed: sk-live-1234); token tok-9999 and sk-live-1234"
    assert redact(text, ["sk-live-1234", "tok-9999"]) == "apikey=*** (echoed: ***); token *** and ***"


@pytest.mark.parametrize(
    "page",
    [
        {"elements": [{"code": "a"}], "pagination": {"next_token": "t2"}},
        {"elements": [{"code": "a"}], "pagination": {"nextToken": "t2"}},
        {"items": [{"code": "a"}], "next_page_token": "t2"},
    ],
)
def test_permutive_paging_accepts_both_spellings(page):
    assert _elements(page) == [{"code": "a"}]
    assert _next_token(page) == "t2"


def test_permutive_paging_ends_without_a_token():
    assert _next_token({"elements": [], "pagination": {"total_count": 3}}) is None


def test_tls_verification_cannot_be_turned_off():
    with pytest.raises(ConfigurationError, match="cannot be turned off"):
        build_ssl_context(verify=False)
    with pytest.raises(ConfigurationError, match="needs both 'client_cert' and 'client_private_key'"):
        build_ssl_context(client_cert="-----BEGIN CERTIFICATE-----\n")


async def _gather(client: ApiClient, n: int):
    import asyncio

    return await asyncio.gather(*(client.ajson("GET", f"/items/{i}") for i in range(n)))


def test_async_requests_share_the_retry_rules():
    import asyncio

    with respx.mock(base_url="https://api.example.com/v1") as router:
        route = router.get(path__regex=r"/items/\d+").mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json={"ok": 1}), httpx.Response(200, json={"ok": 2})]
        )
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.02))
        results = asyncio.run(_gather(client, 2))
    assert sorted(r["ok"] for r in results) == [1, 2] and route.call_count == 3


class SignallingPacer(Pacer):
    """A real pacer that also says when it was paused, so a test starts its second caller after the pause."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.paused = threading.Event()

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.paused.set()


def _other_caller_wait(first_answers: list[httpx.Response], retry: RetryPolicy) -> float:
    """``/busy`` gets ``first_answers`` in turn on one thread; once its bad answer came back, how long does
    ``/other`` on another thread wait before it is sent?"""
    import threading

    pacer = SignallingPacer()
    with respx.mock(base_url="https://api.example.com/v1") as router:
        router.get("/busy").mock(side_effect=first_answers)
        other = router.get("/other").mock(return_value=httpx.Response(200, json={}))
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1", retry=retry, pacer=pacer)
        first = threading.Thread(target=client.json, args=("GET", "/busy"))
        first.start()
        # Not an assertion: with the pause gone the wait times out and /other goes out at once.
        pacer.paused.wait(timeout=1.0)
        started = time.monotonic()
        client.json("GET", "/other")
        waited = time.monotonic() - started
        first.join()
    assert other.call_count == 1
    return waited


def test_a_503_slows_every_caller_of_the_api_not_just_its_own_request():
    waited = _other_caller_wait([httpx.Response(503), httpx.Response(200, json={})],
                                RetryPolicy(backoff_initial=1.2, backoff_max=1.2))
    assert waited >= 0.3  # the 503's backoff (0.6 to 1.2 s) holds the other caller too


@reliability_case("fault", "HTTP core", "429 with Retry-After while other requests are in flight",
                  "every caller of that API waits Retry-After, not only the refused request")
def test_a_429_with_retry_after_holds_every_caller_of_the_api():
    waited = _other_caller_wait([httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json={})],
                                RetryPolicy(backoff_initial=0.01, backoff_max=0.01))
    assert waited >= 1.0  # Retry-After: 2 holds the other caller too (its own backoff would be 10 ms)


@pytest.mark.parametrize(
    ("failure", "replay_safe", "calls"),
    [
        (httpx.ReadTimeout("answer lost"), True, 3),  # retried until it goes through
        (httpx.ReadTimeout("answer lost"), False, 1),  # may have landed: raised for the caller to look up
        (httpx.Response(502), False, 1),
        (httpx.ConnectError("refused"), False, 3),  # never left: safe to send again
        (httpx.Response(503), False, 3),  # unavailable: nothing was done
    ],
)
def test_a_request_that_must_not_land_twice_is_not_replayed_after_it_may_have_landed(failure, replay_safe, calls):
    client = ApiClient(vendor="Test", base_url="https://api.test",
                       retry=RetryPolicy(max_attempts=3, backoff_initial=0.001, backoff_max=0.001))
    with respx.mock:
        route = respx.post("https://api.test/do")
        effects = [failure, failure, httpx.Response(200)]
        route.side_effect = effects
        if calls == 1:
            with pytest.raises(Exception) as raised:
                client.request("POST", "/do", json=[], replay_safe=replay_safe)
            assert raised.value.may_have_landed and raised.value.retryable
        else:
            assert client.request("POST", "/do", json=[], replay_safe=replay_safe).status_code == 200
        assert route.call_count == calls


def _transport_failure(exc: Exception, *, secrets=(), retries: int = 2):
    client = ApiClient(vendor="Example", base_url="https://user:pw@api.example.com/v1", secrets=list(secrets),
                       describe_path=lambda path: path.replace("jo@x.com", "<email>"),
                       retry=RetryPolicy(max_attempts=retries, backoff_initial=0.001, backoff_max=0.001))
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with respx.mock:
        route = respx.get("https://api.example.com/v1/users/jo@x.com").mock(side_effect=fail)
        with pytest.raises(ApiConnectionError) as raised:
            client.request("GET", "/users/jo@x.com")
    return raised.value, route.call_count


def test_a_dropped_connection_says_what_failed_where_and_may_have_landed():
    error, calls = _transport_failure(httpx.ReadError("peer closed connection, key sk-123456 echoed"),
                                      secrets=["sk-123456"])
    assert type(error) is ApiConnectionError and calls == 2  # retried, then raised
    assert error.message == "ReadError: peer closed connection, key *** echoed"
    assert (error.vendor, error.method, error.path, error.base_url) == (
        "Example", "GET", "/users/<email>", "https://api.example.com/v1")
    assert error.sent and error.may_have_landed and error.advice is None
    assert 0 <= error.elapsed < 60  # how long retrying went on, in seconds
    assert str(error) == ("Example GET https://api.example.com/v1/users/<email> failed (no response): ReadError: "
                          "peer closed connection, key *** echoed [gave up after 2 attempts in "
                          f"{error.elapsed:.1f} s]")


def test_a_connection_never_made_was_not_sent_and_an_error_without_text_is_named_by_its_type():
    error, _ = _transport_failure(httpx.ConnectError(""))
    assert error.message == "ConnectError" and not error.sent and not error.may_have_landed


def test_async_requests_retry_a_lost_answer_by_default_and_give_up_with_the_count():
    import asyncio

    async def go(client: ApiClient):
        first = await client.arequest("GET", "/lost")
        with pytest.raises(ApiError) as raised:
            await client.arequest("GET", "/down")
        with pytest.raises(ApiConnectionError) as refused:
            await client.arequest("POST", "/closed")
        await client.aclose()
        return first, raised.value, refused.value

    with respx.mock(base_url="https://api.example.com/v1") as router:
        lost = router.get("/lost").mock(side_effect=[httpx.ReadTimeout("answer lost"), httpx.Response(200, json={})])
        router.get("/down").mock(return_value=httpx.Response(503))
        router.post("/closed").mock(side_effect=httpx.ConnectError("refused"))
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           retry=RetryPolicy(max_attempts=3, backoff_initial=0.001, backoff_max=0.001))
        first, down, refused = asyncio.run(go(client))
    assert first.status_code == 200 and lost.call_count == 2  # replay_safe unless said otherwise
    assert (down.status, down.method, down.path, down.attempts) == (503, "GET", "/down", 3)
    assert "gave up after 3 attempts" in str(down)
    assert (refused.method, refused.path, refused.message, refused.sent) == ("POST", "/closed", "ConnectError: refused",
                                                                           False)


def test_an_async_lane_holds_its_own_limit_and_aclose_closes_the_loops_client():
    import asyncio

    open_now, most = 0, 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.05)
        open_now -= 1
        return httpx.Response(200, json={})

    async def go(client: ApiClient, lane: str | None) -> bool:
        await asyncio.gather(*(client.arequest("POST", "/users", lane=lane) for _ in range(3)))
        used = client.aclient
        await client.aclose()
        return used.is_closed

    with respx.mock(base_url="https://api.example.com/v1") as router:
        router.post("/users").mock(side_effect=slow)
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           lanes={"one_at_a_time": Pacer(Limits(max_in_flight=1))})
        assert asyncio.run(go(client, "one_at_a_time")) is True
        laned, most = most, 0
        asyncio.run(go(client, None))
    assert (laned, most) == (1, 3)


def test_the_tls_cause_is_found_through_causes_and_contexts_and_a_cycle_ends_the_search():
    import ssl

    from airflow_provider_zeotap.http.client import _tls_cause

    handshake = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    outer, inner = httpx.ConnectError("outer"), OSError("inner")
    outer.__context__, inner.__context__ = inner, handshake
    assert _tls_cause(outer) is handshake
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first  # a cycle, no TLS error in it
    assert _tls_cause(first) is None


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "may_have_landed"),
    [(400, "BadRequestError", False, False), (401, "AuthenticationError", False, False),
     (403, "PermissionDeniedError", False, False), (404, "NotFoundError", False, False),
     (409, "ConflictError", False, False), (418, "ApiError", False, False), (429, "RateLimitedError", True, False),
     (500, "ServerError", True, True), (501, "ServerError", True, True), (502, "ServerError", True, True),
     (503, "ServerError", True, False), (504, "ServerError", True, True)],
)
def test_each_status_maps_to_its_error_and_says_whether_a_retry_can_help_or_a_write_may_have_landed(
    status, kind, retryable, may_have_landed
):
    from airflow_provider_zeotap.errors import FatalError
    from airflow_provider_zeotap.http.errors import error_class_for

    error = error_class_for(status)("m", vendor="V", method="GET", path="/p", status=status)
    assert (type(error).__name__, error.retryable, error.may_have_landed) == (kind, retryable, may_have_landed)
    assert isinstance(error, FatalError) is (status in (401, 403))  # a wrong key stops the whole delivery


def test_an_error_reads_as_one_sentence_with_the_advice_first():
    from airflow_provider_zeotap.http.errors import ServerError

    error = ServerError("Service Unavailable", vendor="Personyze", method="POST", path="/do", status=503,
                        base_url="https://app.personyze.com/rest")
    assert str(error) == "Personyze POST https://app.personyze.com/rest/do failed (HTTP 503): Service Unavailable"
    error.gave_up(4, 12.345)
    assert (error.attempts, error.elapsed) == (4, 12.345)
    error.advice = "Personyze is down"
    assert str(error) == ("Personyze is down (Personyze POST https://app.personyze.com/rest/do failed (HTTP 503): "
                          "Service Unavailable [gave up after 4 attempts in 12.3 s])")


def test_redact_leaves_text_alone_for_empty_or_very_short_secrets():
    assert redact("a key abc and abcd", ["", "abc"]) == "a key abc and abcd"  # 3 characters would mangle text
    assert redact("a key abcd", ["abcd"]) == "a key ***"


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [(httpx.Response(400, json={"error": "invalid_id", "message": "no such id"}), ("invalid_id", "no such id")),
     (httpx.Response(400, json={"code": "BAD", "message": "wrong"}), ("BAD", "wrong")),
     (httpx.Response(400, json={"type": "Validation", "error": {"message": "nested"}}), ("Validation", "nested")),
     (httpx.Response(400, json={"detail": "x"}), (None, '{"detail":"x"}')),
     (httpx.Response(400, json=["a", "b"]), (None, '["a","b"]')),
     (httpx.Response(400, text=" Row not found \n"), (None, "Row not found")),
     (httpx.Response(502, text=""), (None, "Bad Gateway"))],
)
def test_error_bodies_become_a_type_and_a_message(answer, parsed):
    from airflow_provider_zeotap.http.client import default_error_parser

    assert default_error_parser(answer) == parsed


def test_a_refusal_is_classified_redacted_and_cut_to_size_and_the_advice_is_redacted_too():
    from airflow_provider_zeotap.http.errors import BODY_EXCERPT_CHARS, ThrottledError

    secret = "sk-live-123456"
    long_body = f"apikey {secret} " + "x" * 2000
    with respx.mock(base_url="https://api.example.com/v1") as router:
        router.get("/long").mock(return_value=httpx.Response(400, text=long_body))
        router.get("/busy").mock(return_value=httpx.Response(400, text="Too many simultaneous requests"))
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1", secrets=[secret],
                           retry=RetryPolicy(max_attempts=2, backoff_initial=0.001, backoff_max=0.001),
                           throttle_markers=["Too many simultaneous requests"],
                           advise=lambda error: f"check the key {secret}" if error.status == 400 else None)
        with pytest.raises(ApiError) as long:
            client.request("GET", "/long")
        with pytest.raises(ThrottledError) as busy:
            client.request("GET", "/busy")
    error = long.value
    assert error.message == f"apikey *** {'x' * (BODY_EXCERPT_CHARS - len('apikey *** '))}"
    assert error.body_excerpt == redact(long_body[:BODY_EXCERPT_CHARS], [secret])
    assert error.advice == "check the key ***" and secret not in str(error)
    assert error.attempts == 1 and busy.value.retryable and busy.value.attempts == 2  # the busy answer is retried


def test_close_closes_the_client_and_the_next_request_opens_a_new_one():
    client = ApiClient(vendor="Example", base_url="https://api.example.com/v1")
    used = client.client
    client.close()
    assert used.is_closed and client.client is not used and not client.client.is_closed


def test_an_async_request_that_must_not_land_twice_is_not_replayed_and_aclose_on_an_unused_loop_is_harmless():
    import asyncio

    async def go(client: ApiClient):
        await client.aclose()  # nothing was sent on this loop: nothing to close, no error
        with pytest.raises(ApiConnectionError) as raised:
            await client.arequest("POST", "/do", replay_safe=False)
        return raised.value

    with respx.mock(base_url="https://api.example.com/v1") as router:
        route = router.post("/do").mock(side_effect=[httpx.ReadTimeout("answer lost"), httpx.Response(200)])
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           retry=RetryPolicy(max_attempts=3, backoff_initial=0.001, backoff_max=0.001))
        error = asyncio.run(go(client))
    assert error.may_have_landed and route.call_count == 1


def test_a_retry_that_needs_no_wait_is_made_even_close_to_the_time_bound():
    with respx.mock(base_url="https://api.example.com/v1") as router:
        route = router.get("/now").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "0"}),
                                                     httpx.Response(200, json={"ok": True})])
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           retry=RetryPolicy(max_attempts=3, max_retry_seconds=0.5))
        assert client.json("GET", "/now") == {"ok": True}
    assert route.call_count == 2


def test_a_sync_lane_holds_its_own_limit_and_an_error_keeps_the_vendors_error_type():
    import threading

    open_now, most, guard = 0, 0, threading.Lock()

    def slow(request: httpx.Request) -> httpx.Response:
        nonlocal open_now, most
        with guard:
            open_now += 1
            most = max(most, open_now)
        time.sleep(0.2)
        with guard:
            open_now -= 1
        return httpx.Response(200, json={})

    def three_at_once(client: ApiClient, lane: str | None) -> int:
        nonlocal most
        most = 0
        threads = [threading.Thread(target=client.request, args=("POST", "/users"), kwargs={"lane": lane})
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return most

    with respx.mock(base_url="https://api.example.com/v1") as router:
        router.post("/users").mock(side_effect=slow)
        router.get("/typed").mock(return_value=httpx.Response(400, json={"code": "BAD_ID", "message": "no such id"}))
        client = ApiClient(vendor="Example", base_url="https://api.example.com/v1",
                           lanes={"one_at_a_time": Pacer(Limits(max_in_flight=1))})
        assert three_at_once(client, "one_at_a_time") == 1
        assert three_at_once(client, None) > 1  # the control: without the lane they overlap
        with pytest.raises(ApiError) as typed:
            client.request("GET", "/typed")
    assert (typed.value.error_type, typed.value.message) == ("BAD_ID", "no such id")
    # The error carries what was asked and answered, and where (the request and response, for diagnosis).
    assert (typed.value.request.url.path, typed.value.response.status_code) == ("/v1/typed", 400)
    assert typed.value.base_url == "https://api.example.com/v1"


def test_backoff_doubles_from_backoff_initial_up_to_backoff_max_with_jitter_in_its_upper_half(monkeypatch):
    """The wait before retry n is in [b/2, b] with b = backoff_initial * 2**(n-1), capped at backoff_max; every
    caller of the API waits it too (the pause)."""
    import airflow_provider_zeotap.http.client as client_module

    class Recording(Pacer):
        def __init__(self) -> None:
            super().__init__()
            self.pauses: list[float] = []

        def pause(self, seconds: float) -> None:
            super().pause(seconds)
            self.pauses.append(seconds)

    for draw, share in ((0.0, 0.5), (0.999999, 1.0)):  # the jitter's two ends: half the backoff, all of it
        monkeypatch.setattr(client_module.random, "random", lambda draw=draw: draw)
        pacer = Recording()
        with respx.mock(base_url="https://api.example.com/v1") as router:
            router.get("/busy").mock(side_effect=[httpx.Response(503)] * 4 + [httpx.Response(200, json={})])
            client = ApiClient(vendor="Example", base_url="https://api.example.com/v1", pacer=pacer,
                               retry=RetryPolicy(max_attempts=5, backoff_initial=0.004, backoff_max=0.02))
            client.json("GET", "/busy")
        assert pacer.pauses == pytest.approx([share * b for b in (0.004, 0.008, 0.016, 0.02)], rel=1e-3)
