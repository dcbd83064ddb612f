import pytest

from airflow_provider_zeotap.http.errors import ConfigurationError, InsecureURLError
from airflow_provider_zeotap.http.urls import check_transport, is_loopback, resolve_base_url


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://app.personyze.com/rest"),
        ("", "https://app.personyze.com/rest"),
        ("https://app.personyze.com", "https://app.personyze.com/rest"),
        ("https://app.personyze.com/rest", "https://app.personyze.com/rest"),
        ("https://app.personyze.com/rest/", "https://app.personyze.com/rest"),
        ("http://127.0.0.1:8101", "http://127.0.0.1:8101/rest"),
        ("http://localhost:8101/rest", "http://localhost:8101/rest"),
        ("http://[::1]:9000", "http://[::1]:9000/rest"),
    ],
)
def test_base_url_accepts_what_people_write(host, expected):
    assert resolve_base_url(host, default="https://app.personyze.com", prefix="/rest") == expected


def test_port_field_is_used_when_host_has_none():
    assert resolve_base_url("https://127.0.0.1", default="x", prefix="/v2", port=8080) == "https://127.0.0.1:8080/v2"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [("127.0.0.1:8101", None, "http://127.0.0.1:8101/rest"), ("localhost", 9000, "http://localhost:9000/rest"),
     ("[::1]:8101", None, "http://[::1]:8101/rest")],
)
def test_a_bare_loopback_host_with_a_port_is_plain_http_and_said_once(host, port, expected, caplog, monkeypatch):
    from airflow_provider_zeotap.http import urls

    monkeypatch.setattr(urls, "_ANNOUNCED", set())
    caplog.set_level("INFO", logger="airflow_provider_zeotap.http.urls")
    for _ in range(2):
        assert resolve_base_url(host, default="https://app.personyze.com", prefix="/rest", port=port) == expected
    assert len([r for r in caplog.records if "plain http:// is used" in r.getMessage()]) == 1


@pytest.mark.parametrize(("host", "port"), [("app.personyze.com", None), ("app.personyze.com", 443),
                                            ("127.0.0.1", None), ("localhost", None), ("10.0.0.5:8101", None)])
def test_a_host_without_a_scheme_is_refused_with_the_accepted_forms(host, port):
    with pytest.raises(ConfigurationError) as caught:
        resolve_base_url(host, default="https://app.personyze.com", prefix="/rest", port=port, conn_type="personyze")
    message = str(caught.value)
    assert f"Connection host {host!r} has no scheme" in message
    assert "https://app.personyze.com/rest" in message and "personyze://https://:<key>@" in message


@pytest.mark.parametrize("url", ["http://api.example.com/v2", "http://10.0.0.5/rest", "http://192.168.1.2:80"])
def test_plain_http_beyond_loopback_is_refused_with_the_fix(url):
    with pytest.raises(InsecureURLError, match="Use https://"):
        check_transport(url)


def test_other_schemes_are_refused():
    with pytest.raises(ConfigurationError, match="Unsupported URL scheme"):
        check_transport("ftp://example.com")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True),
                                               ("::1", True), ("[::1]", True), ("128.0.0.1", False),
                                               ("example.com", False), ("10.0.0.1", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_the_refusals_give_the_whole_fix():
    with pytest.raises(ConfigurationError) as no_scheme:
        resolve_base_url("api.example.com:8443", default="https://api.example.com", prefix="/v1", conn_type="example")
    assert str(no_scheme.value) == (
        "Connection host 'api.example.com:8443' has no scheme (https:// or http://). Accepted forms: "
        "https://api.example.com or the full base URL https://api.example.com/v1 in the host field; in URI form, put "
        "the scheme after the connection type: example://https://:<key>@api.example.com. Plain http:// only to "
        "loopback addresses (127.0.0.1, localhost, ::1); a bare loopback host:port is taken as http.")
    with pytest.raises(InsecureURLError) as plain:
        check_transport("http://10.0.0.5:8080/rest")
    assert str(plain.value) == (
        "Refusing plain http to '10.0.0.5': API keys would travel unencrypted. Use https://10.0.0.5:8080/rest in the "
        "connection's host field (plain http is only allowed to loopback addresses such as 127.0.0.1).")
    with pytest.raises(ConfigurationError) as no_host:
        resolve_base_url("https://", default="https://api.example.com", prefix="/v1")
    assert str(no_host.value) == "Connection host 'https://' has no host name; set it to e.g. 'https://api.example.com'."
    with pytest.raises(ConfigurationError, match="Unsupported URL scheme 'ftp' in 'ftp://x/v1'; use https://."):
        resolve_base_url("ftp://x", default="https://api.example.com", prefix="/v1")


def test_urls_in_messages_lose_their_credentials_and_keep_the_rest():
    from airflow_provider_zeotap.http.urls import display_url

    assert display_url("https://user:p%40ss@api.example.com:8443/rest") == "https://api.example.com:8443/rest"
    assert display_url("http://127.0.0.1:8101/rest") == "http://127.0.0.1:8101/rest"


def test_a_scheme_is_case_insensitive_and_a_prefix_without_slashes_is_added_once():
    assert resolve_base_url("HTTPS://api.example.com/", default="x", prefix="v1/") == "https://api.example.com/v1"
    assert resolve_base_url("https://api.example.com/base", default="x", prefix="") == "https://api.example.com/base"
    check_transport("HTTP://127.0.0.1:1/x")
    assert is_loopback("LOCALHOST") and is_loopback("ip6-localhost") and not is_loopback("localhost.example.com")


def test_a_base_path_is_kept_and_the_prefix_added_after_it():
    assert resolve_base_url("https://proxy.example.com/vendors/BOX/", default="x", prefix="/rest") == (
        "https://proxy.example.com/vendors/BOX/rest")
    with pytest.raises(ConfigurationError, match=r"in URI form, put the scheme after the connection type: "
                                                 r"<conn_type>://https://:<key>@api\.example\.com"):
        resolve_base_url("api.example.com", default="https://api.example.com", prefix="/v1")


def test_a_prefix_of_only_a_slash_adds_nothing():
    assert resolve_base_url("https://api.example.com", default="x", prefix="/") == "https://api.example.com"


def test_only_brackets_are_taken_off_a_host_before_the_loopback_check():
    assert not is_loopback("XLOCALHOSTX") and not is_loopback("X127.0.0.1")
