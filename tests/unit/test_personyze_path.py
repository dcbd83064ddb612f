import pytest

from airflow_provider_zeotap.hooks.personyze import PersonyzeHook, build_path


def test_values_are_percent_encoded_so_they_cannot_change_the_query():
    path = build_path("users", where={"email": "a&b=c/d%e|f g@x.com"})
    assert path == "/users/where/email=a%26b%3Dc%2Fd%25e%7Cf%20g%40x.com"


def test_all_modifiers_in_order():
    path = build_path(
        "user_list_users",
        where=[("user_list_id", "=", 17), ("user_id", ">", 5)],
        columns=["user_id", "user_list_id"],
        order_by="user_id",
        limit=1000,
        offset=10,
    )
    assert path == "/user_list_users/where/user_list_id=17&user_id>5/columns/user_id,user_list_id/order_by/user_id/limit/10,1000"


def test_in_list_encodes_each_item_and_keeps_the_commas():
    assert build_path("users", where=[("email", ":", ["a,b@x.com", "c@x.com"])]) == "/users/where/email:a%2Cb%40x.com,c%40x.com"


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="Unknown Personyze where operator"):
        build_path("users", where=[("email", "~", "x")])


def test_emails_are_hidden_in_logged_paths_but_ids_stay():
    hook = PersonyzeHook("unused")
    assert hook._describe_path("/users/where/email=bob%40x.com") == "/users/where/email=<email>"
    assert hook._describe_path("/user_list_users/where/user_list_id=17&user_id=5") == (
        "/user_list_users/where/user_list_id=17&user_id=5"
    )
