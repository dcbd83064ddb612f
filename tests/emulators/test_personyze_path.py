"""Personyze path syntax: parsing and evaluation, without a server."""

from __future__ import annotations

import pytest

from airflow_provider_zeotap.testing.personyze_path import (
    Condition,
    PathQuery,
    PathSyntaxError,
    parse_path,
    parse_where,
)

ROWS = [
    {"user_id": 1, "email": "a@x.com", "score": 10, "tier": "gold"},
    {"user_id": 2, "email": "b@x.com", "score": 5, "tier": "silver"},
    {"user_id": 3, "email": "c@x.com", "score": 20},
]


def test_modifiers_in_any_order() -> None:
    query = parse_path("/users/limit/5,10/order_by_desc/score/columns/user_id,email/where/score>1")
    assert query == PathQuery(
        object="users",
        where=parse_where("score>1"),
        columns=("user_id", "email"),
        order_by="score",
        descending=True,
        offset=5,
        limit=10,
    )


def test_object_and_row_id() -> None:
    assert parse_path("user_lists/17") == PathQuery(object="user_lists", row_id="17")
    assert parse_path("users/") == PathQuery(object="users")


def test_percent_encoded_separators_stay_inside_the_value() -> None:
    where = parse_where("email=a%26b%3Dc%7Cd%40x.com&tier=gold")
    assert where.alternatives == (
        (Condition("email", "=", ("a&b=c|d@x.com",)), Condition("tier", "=", ("gold",))),
    )


def test_list_values_split_before_decoding() -> None:
    assert parse_where("tier:gold,a%2Cb").alternatives[0][0].values == ("gold", "a,b")


def test_and_binds_tighter_than_or() -> None:
    where = parse_where("score>15|tier=gold&score<5")
    assert [row["user_id"] for row in ROWS if where.matches(row)] == [3]
    assert [len(group) for group in where.alternatives] == [1, 2]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("email=b%40x.com", [2]),
        ("score!=10", [2, 3]),
        ("score>5", [1, 3]),
        ("score>=10", [1, 3]),
        ("score<10", [2]),
        ("score<=10", [1, 2]),
        ("user_id:1,3", [1, 3]),
        ("user_id!:1,3", [2]),
        ("tier!=gold", [2]),  # a missing column is NULL: it matches nothing, not even !=
        ("email=A%40x.com", []),  # case-sensitive
    ],
)
def test_operators(expression: str, expected: list[int]) -> None:
    where = parse_where(expression)
    assert [row["user_id"] for row in ROWS if where.matches(row)] == expected


def test_numbers_compare_as_numbers() -> None:
    assert parse_where("score>9").matches({"score": 10})  # as strings, "10" < "9"


def test_select_orders_pages_and_projects() -> None:
    query = parse_path("users/order_by_desc/score/limit/1,2/columns/user_id,tier")
    assert query.select(ROWS) == [{"user_id": 1, "tier": "gold"}, {"user_id": 2, "tier": "silver"}]


def test_select_without_limit_returns_at_most_1000_rows() -> None:
    assert len(parse_path("users").select({"user_id": n} for n in range(1500))) == 1000


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("users/limit/900,101", "Limit too big"),
        ("users/limit/1001", "Limit too big"),
        ("users/limit/x", "Invalid limit"),
        ("users/where/a=1/where/b=2", "given twice"),
        ("users/order_by/a/order_by_desc/b", "not both"),
        ("users/1/bogus/x", "Unknown path parameter"),
        ("users/where", "needs a value"),
        ("users/where/email=a=b", "Unencoded '='"),
        ("users/where/email", "Cannot parse condition"),
        ("users/where/a=1&", "Cannot parse condition"),
        ("users/where/email=%zz", "Invalid percent-encoding"),
        ("users/columns/a,b-c", "Invalid column name"),
        ("", "Object name is missing"),
    ],
)
def test_malformed_paths(path: str, message: str) -> None:
    with pytest.raises(PathSyntaxError, match=message):
        parse_path(path)
