"""The provider as Airflow and its users meet it: the Test button, masked secrets, errors that say what to fix.

Everything here goes over real sockets to the emulators, through Airflow's own Connection model, CLI and
REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.http import AuthenticationError, TlsError
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

BAD_KEY = "wrong-key-0f9e8d7c"


def _personyze(emulator: Any) -> tuple[str, dict[str, Any]]:
    return emulator.api_key, {}


def _permutive(emulator: Any) -> tuple[str, dict[str, Any]]:
    emulator.create_import("Web visitors")
    return emulator.write_key, {}


def _optimizely(emulator: Any) -> tuple[str, dict[str, Any]]:
    return emulator.token, {"project_id": str(emulator.create_project("Web"))}


def _zeotap(emulator: Any) -> tuple[str, dict[str, Any]]:
    return emulator.api_key, {"org_id": str(emulator.org_id), "region": emulator.region}


#: conn_type -> (seed the emulator, hook class, what success says, what a bad key says)
TYPES: dict[str, tuple[Callable[[Any], tuple[str, dict[str, Any]]], type, str, str]] = {
    "personyze": (_personyze, PersonyzeHook, "the key can read user lists", "Personyze refused the API key (HTTP 401)"),
    "permutive": (_permutive, PermutiveHook, "and write to them (checked with an empty batch",
                  "Permutive refused the API key (InvalidAPIKey)"),
    "optimizely": (_optimizely, OptimizelyHook, "Connected to Optimizely project 'Web'",
                   "Optimizely refused the personal access token (HTTP 401)"),
    "zeotap": (_zeotap, ZeotapProfileHook, "Connected to the Zeotap Profile API for organisation",
               "Zeotap refused the API key (HTTP 401)"),
}


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)


@pytest.mark.parametrize("conn_type", sorted(TYPES))
def test_the_test_button_path_builds_the_hook_and_tests_it(conn_type, request, monkeypatch, airflow_db):
    """What the UI's Test button runs: Connection.get_hook() (keyword <conn_name_attr>), then test_connection()."""
    from airflow.models.connection import Connection

    seed, hook_class, success, refused = TYPES[conn_type]
    emulator = request.getfixturevalue(f"{conn_type}_emulator")
    password, extras = seed(emulator)
    conn_id = f"{conn_type}_button_test"
    set_connection(monkeypatch, conn_id, connection_env(conn_type, emulator.url, password, **extras))

    connection = Connection.get_connection_from_secrets(conn_id)
    hook = connection.get_hook()
    assert type(hook) is hook_class and hook.conn_id == conn_id
    ok, message = connection.test_connection()
    assert ok, message
    assert success in message

    set_connection(monkeypatch, conn_id, connection_env(conn_type, emulator.url, BAD_KEY, **extras))
    ok, message = Connection.get_connection_from_secrets(conn_id).test_connection()
    assert not ok
    assert refused in message and f"connection {conn_id!r}" in message
    assert emulator.url in message  # the base URL that was called
    assert BAD_KEY not in message


def test_permutive_connection_test_checks_write_access_or_says_it_could_not(permutive_emulator, monkeypatch):
    emulator = permutive_emulator
    set_connection(monkeypatch, "permutive_default", connection_env("permutive", emulator.url, emulator.write_key))
    ok, message = PermutiveHook().test_connection()
    assert ok and "there are none, so write access could not be checked" in message

    import_id = emulator.create_import("Web visitors")
    set_connection(monkeypatch, "permutive_default", connection_env("permutive", emulator.url, emulator.read_only_key))
    ok, message = PermutiveHook().test_connection()
    assert not ok, "a read-only key must not pass the connection test: every sync writes"
    assert "This Permutive key is read-only (InsufficientAPIKey)" in message
    patches = [r for r in emulator.requests if r.method == "PATCH"]
    assert [(r.path, r.status, r.json) for r in patches] == [
        (f"/audience-api/v1/imports/{import_id}/segments", 403, {"operations": []})
    ]


def test_personyze_connection_test_reads_the_user_lists(personyze_emulator, monkeypatch):
    emulator = personyze_emulator
    set_connection(monkeypatch, "personyze_default", connection_env("personyze", emulator.url, emulator.api_key))
    ok, message = PersonyzeHook().test_connection()
    assert ok, message
    assert [r.path for r in emulator.requests if r.method == "GET"] == ["/rest/account", "/rest/user_lists/limit/1"]


def test_a_bad_personyze_key_says_the_same_thing_in_a_sync_as_in_the_connection_test(personyze_emulator, monkeypatch):
    set_connection(monkeypatch, "personyze_default", connection_env("personyze", personyze_emulator.url, BAD_KEY))
    _, tested = PersonyzeHook().test_connection()
    with pytest.raises(AuthenticationError) as caught:
        PersonyzeHook().create_user({"email": "a@example.com"})  # what a users sync calls
    assert "Personyze refused the API key (HTTP 401)" in str(caught.value)
    assert tested.split(" (Personyze ")[0] == str(caught.value).split(" (Personyze ")[0]


@pytest.mark.parametrize(
    ("conn_type", "extras"),
    [("personyze", {}), ("permutive", {}), ("optimizely", {}), ("zeotap", {"org_id": "1", "region": "EU"})],
)
def test_a_wrong_path_in_the_host_says_the_base_url_is_wrong(conn_type, extras, request, monkeypatch):
    emulator = request.getfixturevalue(f"{conn_type}_emulator")
    seed, hook_class, _, _ = TYPES[conn_type]
    password, seeded = seed(emulator)
    seeded.pop("project_id", None)  # Optimizely: list projects, the call a wrong base URL breaks first
    set_connection(monkeypatch, f"{conn_type}_default",
                   connection_env(conn_type, f"{emulator.url}/api", password, **{**seeded, **extras}))
    ok, message = hook_class().test_connection()
    assert not ok
    assert "the base URL is probably wrong" in message
    assert f"{emulator.url}/api{hook_class.path_prefix}" in message  # the URL that was called
    assert password not in message


def test_uri_form_connections_follow_the_host_rule(personyze_emulator, monkeypatch, airflow_db):
    from airflow.models.connection import Connection

    emulator = personyze_emulator
    port = emulator.url.rsplit(":", 1)[1]
    set_connection(monkeypatch, "personyze_uri", f"personyze://api:{emulator.api_key}@127.0.0.1:{port}")
    ok, message = Connection.get_connection_from_secrets("personyze_uri").test_connection()
    assert ok, message  # loopback with an explicit port: plain http, as the emulator speaks

    set_connection(monkeypatch, "personyze_uri", f"personyze://api:{emulator.api_key}@app.personyze.com")
    ok, message = Connection.get_connection_from_secrets("personyze_uri").test_connection()
    assert not ok
    assert "Connection host 'app.personyze.com' has no scheme" in message
    assert "personyze://https://:<key>@app.personyze.com" in message
    assert emulator.api_key not in message

    # The form the message recommends comes through Airflow with the scheme in the host.
    set_connection(monkeypatch, "personyze_uri", f"personyze://https://:{emulator.api_key}@app.personyze.com")
    hook = Connection.get_connection_from_secrets("personyze_uri").get_hook()
    assert hook.base_url == "https://app.personyze.com/rest"


def test_https_to_a_plain_http_server_fails_once_and_says_why(personyze_emulator, monkeypatch):
    emulator = personyze_emulator
    https_url = emulator.url.replace("http://", "https://")
    set_connection(monkeypatch, "personyze_default", connection_env("personyze", https_url, emulator.api_key,
                                                                    max_attempts=5, backoff_initial=6))
    started = time.monotonic()
    with pytest.raises(TlsError) as caught:
        PersonyzeHook().get_account()
    error = caught.value
    # One retry would have waited at least 3 s (half the first backoff).
    assert time.monotonic() - started < 3, "a handshake that cannot succeed must not be retried"
    assert not error.retryable and error.attempts == 1
    assert "the server does not speak TLS on this port" in str(error) and https_url in str(error)
    ok, message = PersonyzeHook().test_connection()
    assert not ok and "the server does not speak TLS on this port" in message


def test_an_untrusted_certificate_fails_once_and_names_the_verify_extra(tmp_path, monkeypatch):
    trustme = pytest.importorskip("trustme")
    from airflow_provider_zeotap.testing import PersonyzeEmulator

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    chain, key, ca_file = (str(tmp_path / n) for n in ("chain.pem", "key.pem", "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(chain)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    with PersonyzeEmulator(ssl_certfile=chain, ssl_keyfile=key) as emulator:
        set_connection(monkeypatch, "personyze_default", connection_env("personyze", emulator.url, emulator.api_key))
        with pytest.raises(TlsError) as caught:
            PersonyzeHook().get_account()
        assert caught.value.attempts == 1
        assert "the server's certificate is not trusted" in str(caught.value) and "'verify'" in str(caught.value)
        set_connection(monkeypatch, "personyze_default",
                       connection_env("personyze", emulator.url, emulator.api_key, verify=ca_file))
        assert PersonyzeHook().get_account()["id"] == 1


def test_a_misspelt_extra_is_a_warning_that_names_the_right_one(personyze_emulator, monkeypatch, capfd):
    set_connection(monkeypatch, "personyze_default", connection_env(
        "personyze", personyze_emulator.url, personyze_emulator.api_key, max_atempts=2))
    ok, message = PersonyzeHook().test_connection()
    note = "has an unknown extra 'max_atempts', which is ignored: did you mean 'max_attempts'?"
    assert ok and note in message
    logged = capfd.readouterr()
    assert note in logged.out + logged.err  # the hook's logger: the task log


def test_airflow_renders_the_forms_from_the_provider_info(airflow_db):
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    behaviours = manager.field_behaviours
    widgets = manager.connection_form_widgets
    for conn_type, hook_class in (("personyze", PersonyzeHook), ("optimizely", OptimizelyHook),
                                  ("permutive", PermutiveHook), ("zeotap", ZeotapProfileHook)):
        expected = hook_class.get_ui_field_behaviour()
        assert behaviours[conn_type]["hidden_fields"] == expected["hidden_fields"]
        assert behaviours[conn_type]["relabeling"] == expected["relabeling"]
        assert behaviours[conn_type]["placeholders"]["host"] == hook_class.form().default_host
        assert f"extra__{conn_type}__max_attempts" in widgets
    assert widgets["extra__zeotap__client_private_key"].is_sensitive
    assert behaviours["personyze"]["relabeling"]["password"] == "API key"
    assert behaviours["optimizely"]["relabeling"]["password"] == "Personal access token"
    assert behaviours["permutive"]["relabeling"]["password"] == "Private API key"


# -- secrets masked in the CLI and the REST API -----------------------------------------------------------

_API_SCRIPT = textwrap.dedent('''
    import json, sys
    from fastapi.testclient import TestClient
    from airflow.api_fastapi.app import create_app

    conn_id, test_body = sys.argv[1], json.loads(sys.argv[2])
    client = TestClient(create_app("core"))
    shown = client.get(f"/api/v2/connections/{conn_id}")
    tested = client.post("/api/v2/connections/test", json=test_body)
    print("RESULT " + json.dumps({"shown": [shown.status_code, shown.json()],
                                  "tested": [tested.status_code, tested.json()]}))
''')


def test_the_mtls_key_is_masked_by_the_cli_and_the_rest_api(airflow_db, personyze_emulator):
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQ-unique-" + uuid.uuid4().hex + "\n-----END PRIVATE KEY-----"
    conn_id = f"zeotap_masked_{uuid.uuid4().hex[:8]}"
    old_name_value = "old-name-" + uuid.uuid4().hex
    conn = {"conn_type": "zeotap", "host": "https://api.zeotap.com", "password": "api-key-" + uuid.uuid4().hex,
            "extra": {"org_id": "1", "region": "EU", "client_private_key": key, "client_key": old_name_value}}
    added = subprocess.run([sys.executable, "-m", "airflow", "connections", "add", conn_id, "--conn-json",
                            json.dumps(conn)], capture_output=True, text=True, env=os.environ.copy())
    assert added.returncode == 0, added.stderr[-2000:]
    assert "'client_private_key': '***'" in added.stdout and "MIIEvQ-unique" not in added.stdout
    # Why the old name had to go: Airflow masks extras by name, and 'client_key' is not a sensitive name.
    assert old_name_value in added.stdout

    # The REST API (Airflow 3's FastAPI app, simple auth manager with every user an admin), and its
    # connection test, which is what the UI's Test button posts.
    body = {"connection_id": "personyze_from_ui", "conn_type": "personyze", "host": personyze_emulator.url,
            "password": personyze_emulator.api_key}
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}
    api = subprocess.run([sys.executable, "-c", _API_SCRIPT, conn_id, json.dumps(body)], capture_output=True,
                         text=True, env=env, timeout=240)
    assert api.returncode == 0, api.stderr[-3000:]
    result = json.loads(next(line for line in api.stdout.splitlines() if line.startswith("RESULT "))[7:])
    status, shown = result["shown"]
    assert status == 200 and shown["password"] == "***"
    assert json.loads(shown["extra"])["client_private_key"] == "***"
    assert "MIIEvQ-unique" not in json.dumps(shown)
    status, tested = result["tested"]
    assert status == 200 and tested["status"] is True, tested
    assert "the key can read user lists" in tested["message"]
