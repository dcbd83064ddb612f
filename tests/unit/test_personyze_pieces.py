"""Small pieces of the Personyze adapters: what a row becomes on the wire, and what is refused before it."""

from __future__ import annotations

import pytest

from airflow_provider_zeotap.destinations.personyze_catalog import PersonyzeProducts, alias_conflicts, yes_no
from airflow_provider_zeotap.destinations.personyze_do import PersonyzeUsersDo
from airflow_provider_zeotap.destinations.personyze_events import (
    PersonyzeArticleInteractions,
    PersonyzeProductInteractions,
    unix_seconds,
)
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import Operation


def row(**payload) -> OutboundRow:
    return OutboundRow(row_id=1, change=Change.ADDED, key={"id": 1}, payload=payload)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1734000000, 1734000000),
        ("1734000000", 1734000000),
        (1734000000.9, 1734000000),
        ("2026-01-01T10:00:00+00:00", 1767261600),
        ("2026-01-01T12:00:00+02:00", 1767261600),
        ("2026-01-01 10:00:00", 1767261600),  # naive: UTC
        ("2026-01-01T10:00:00.750000", 1767261600),  # Personyze keeps whole seconds
        ("2026-01-01", 1767225600),
    ],
)
def test_transaction_times_become_unix_seconds(value, seconds):
    assert unix_seconds(value) == seconds


@pytest.mark.parametrize("value", ["yesterday", True, None, ""])
def test_a_value_that_is_no_timestamp_is_refused(value):
    with pytest.raises(ValueError):
        unix_seconds(value)


def test_yes_no_enums_take_booleans_and_words_and_refuse_the_rest():
    assert [yes_no("is_in_stock", v) for v in (True, False, 1, 0, "1", " YES ", "false", None)] == [
        "yes", "no", "yes", "no", "yes", "yes", "no", ""]
    with pytest.raises(ValueError, match="is_in_stock must be a boolean .* got 'maybe'"):
        yes_no("is_in_stock", "maybe")
    with pytest.raises(ValueError):
        yes_no("is_in_stock", 2)
    assert alias_conflicts(["image_1", "image_big_url", "image_2"]) == ["image_1 and image_big_url"]


def test_a_profile_row_becomes_one_user_profile_command_with_clears_as_empty_values():
    destination = PersonyzeUsersDo(PersonyzeHook(), normalize_email=True)
    command = destination.command(row(email=" Jo@Ex.com ", first_name="Jo", plan=None))
    assert command == ["email", "jo@ex.com", "User profile", "email", "jo@ex.com", "first_name", "Jo", "plan", ""]
    keyed = PersonyzeUsersDo(PersonyzeHook(), user_key="internal_id")
    assert keyed.command(row(internal_id="c-1", plan="vip")) == ["internal_id", "c-1", "User profile",
                                                                 "internal_id", "c-1", "plan", "vip"]
    assert keyed.capabilities.required_fields == ("internal_id",)
    assert PersonyzeUsersDo.capabilities.required_fields == ("email",)  # the class's table is left as it is
    assert "no internal_id" in keyed.validate(Operation.UPSERT, row(email="a@b.co"))
    assert "not an email" in keyed.validate(Operation.UPSERT, row(internal_id="c-1", email="nope"))


def test_interaction_rows_become_product_commands_and_bad_ones_are_refused_before_sending():
    destination = PersonyzeProductInteractions(PersonyzeHook())
    purchase = row(user_internal_id="acct-9", user_email="ignored@x.com", product_internal_id="SKU-1", status="goal",
                   quantity=2, amount=259.98, transaction_time="2026-01-01T10:00:00+00:00")
    assert destination.command(purchase) == ["internal_id", "acct-9", "Product purchased", "SKU-1", "quantity", 2,
                                             "amount", 259.98, "transaction_time", 1767261600]
    assert destination.identity(purchase) == '["SKU-1", "internal_id", "acct-9", 1767261600]'
    assert destination.validate(Operation.CREATE, purchase) is None
    base = {"user_email": "a@x.com", "product_internal_id": "S", "status": "goal", "transaction_time": 1}
    for overrides, reason in [
        ({"user_email": None}, "no user"),
        ({"status": "purchase"}, "goal (purchased)"),
        ({"transaction_time": "soon"}, "transaction_time: not a timestamp"),
        ({"quantity": 1.5}, "quantity must be a whole number"),
        ({"amount": "12 EUR"}, "amount must be a number"),
        ({"user_email": None, "user_id": "abc"}, "numeric user id"),
    ]:
        assert reason in destination.validate(Operation.CREATE, row(**{**base, **overrides})), overrides
    articles = PersonyzeArticleInteractions(PersonyzeHook())
    assert articles.command(row(user_email="a@x.com", article_internal_id="how-to", status="liked")) == [
        "email", "a@x.com", "Article liked", "how-to"]
    assert "not one of viewed, liked" in articles.validate(Operation.CREATE, row(user_email="a@x.com",
                                                                                 article_internal_id="a", status="read"))


def test_catalog_rows_are_sent_with_enum_words_and_refused_when_two_fields_are_one_column():
    products = PersonyzeProducts(PersonyzeHook())
    assert products.wire_fields(row(internal_id=12, is_in_stock=True, title=None, image_1="u")) == {
        "internal_id": "12", "is_in_stock": "yes", "title": "", "image_1": "u"}
    assert "one Personyze column" in products.validate(Operation.UPSERT, row(internal_id="a", image_2="x",
                                                                             image_medium_url="y"))
    assert products.validate(Operation.DELETE, row(internal_id="a", is_in_stock="maybe")) is None
