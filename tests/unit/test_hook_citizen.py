"""Hooks as Airflow builds them, their forms, and the small pieces behind errors that say what to fix."""

from __future__ import annotations

import ssl
import warnings

import httpx
import pytest

from airflow_provider_zeotap.get_provider_info import get_provider_info
from airflow_provider_zeotap.hooks.base import ConnectionSettings
from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook, ZeotapSettings
from airflow_provider_zeotap.http import ApiError
from airflow_provider_zeotap.http.client import _tls_cause
from airflow_provider_zeotap.http.settings import unknown_extras

HOOKS = [PersonyzeHook, OptimizelyHook, PermutiveHook, ZeotapProfileHook]


@pytest.mark.parametrize("hook_class", HOOKS)
def test_a_hook_takes_its_conn_name_attr_keyword_and_a_positional_id(hook_class):
    assert hook_class(**{hook_class.conn_name_attr: "by_keyword"}).conn_id == "by_keyword"
    assert hook_class("positional").conn_id == "positional"
    assert hook_class(conn_id="plain").conn_id == "plain"
    assert hook_class().conn_id == hook_class.default_conn_name
    with pytest.raises(TypeError, match="two connection ids"):
        hook_class("a", **{hook_class.conn_name_attr: "b"})


@pytest.mark.parametrize("hook_class", HOOKS)
def test_the_hook_form_and_the_provider_info_are_the_same_form(hook_class):
    info = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}[hook_class.conn_type]
    behaviour = hook_class.get_ui_field_behaviour()
    assert info["hook-class-name"] == f"{hook_class.__module__}.{hook_class.__name__}"
    assert info["ui-field-behaviour"] == {
        "hidden-fields": behaviour["hidden_fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port"}
    assert behaviour["placeholders"]["host"] == hook_class.form().default_host.rstrip("/")
    assert hook_class.form().default_host.startswith("https://")
    assert {"max_attempts", "timeout", "verify"} <= set(info["conn-fields"])
    # every field of the form is an extra the settings accept (no field that is silently ignored)
    settings_model = hook_class.settings_model
    assert set(info["conn-fields"]) <= set(settings_model.model_fields)


def test_password_labels_say_which_secret():
    labels = {h.conn_type: h.get_ui_field_behaviour()["relabeling"]["password"] for h in HOOKS}
    assert labels == {"personyze": "API key", "optimizely": "Personal access token",
                      "permutive": "Private API key", "zeotap": "API key"}


def test_the_mtls_key_field_has_a_name_airflow_masks():
    from airflow.sdk._shared.secrets_masker.secrets_masker import should_hide_value_for_key

    fields = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}["zeotap"]["conn-fields"]
    assert "client_key" not in fields and fields["client_private_key"]["schema"]["format"] == "password"
    assert should_hide_value_for_key("client_private_key")
    assert not should_hide_value_for_key("client_key")  # why it was renamed


def test_the_old_client_key_extra_is_still_read_with_a_deprecation_warning(monkeypatch):
    from airflow.exceptions import AirflowProviderDeprecationWarning

    monkeypatch.setenv("AIRFLOW_CONN_ZEOTAP_DEFAULT", '{"conn_type": "zeotap", "password": "k", '
                                                      '"extra": {"client_key": "PEM-KEY", "org_id": "1"}}')
    hook = ZeotapProfileHook()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = hook.settings
    assert settings.client_private_key == "PEM-KEY"
    assert any(issubclass(w.category, AirflowProviderDeprecationWarning) and "client_private_key" in str(w.message)
               for w in caught)
    assert any("'client_key' is deprecated" in note for note in hook.notes)


def test_unknown_extras_name_the_closest_known_one():
    notes = unknown_extras(ZeotapSettings, {"max_atempts": 3, "regoin": "EU", "timeout": 5, "zzz": 1}, conn_id="c")
    assert notes[0].endswith("unknown extra 'max_atempts', which is ignored: did you mean 'max_attempts'?")
    assert notes[1].endswith("did you mean 'region'?")
    assert "known extras: " in notes[2] and "client_private_key" in notes[2]
    assert len(notes) == 3 and unknown_extras(ConnectionSettings, {"verify": "/ca.pem"}, conn_id="c") == []


def _wrapped(cause: BaseException) -> httpx.ConnectError:
    """What httpx raises: ConnectError from httpcore's ConnectError from the ssl error."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise httpx.ConnectError("handshake") from inner
    except httpx.ConnectError as outer:
        return outer


def test_only_handshake_errors_count_as_tls_failures():
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert _tls_cause(_wrapped(verify)) is verify
    assert _tls_cause(_wrapped(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))) is not None
    assert _tls_cause(_wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))) is None  # a drop
    assert _tls_cause(_wrapped(ConnectionRefusedError(111, "refused"))) is None


def test_an_api_error_names_the_url_and_leads_with_the_advice():
    error = ApiError("Please, log in", vendor="Personyze", method="GET", path="/account", status=401,
                     base_url="https://app.personyze.com/rest")
    assert str(error) == "Personyze GET https://app.personyze.com/rest/account failed (HTTP 401): Please, log in"
    error.advice = "Fix the key."
    assert str(error).startswith("Fix the key. (Personyze GET https://app.personyze.com/rest/account failed")


def test_permutive_advice_tells_a_missing_import_from_a_missing_segment():
    hook = PermutiveHook("p")
    read = ApiError("nope", vendor="Permutive", method="GET", path="/imports/abc-1", status=404)
    batch = ApiError("nope", vendor="Permutive", method="PATCH", path="/imports/abc-1/segments", status=404)
    assert "Permutive import abc-1 does not exist" in hook._advice(read)
    assert hook._advice(batch) is None  # a batch's 404 is about a segment code; the sync settles it


def test_an_unexpected_personyze_answer_names_the_url_too():
    from airflow_provider_zeotap.hooks.personyze import _number

    response = httpx.Response(200, text="<html>", request=httpx.Request("POST", "https://pz.example/rest/users"))
    with pytest.raises(ApiError) as caught:
        _number(response, "user_id", "https://pz.example/rest")
    assert str(caught.value).startswith("Personyze POST https://pz.example/rest/users failed (HTTP 200)")
