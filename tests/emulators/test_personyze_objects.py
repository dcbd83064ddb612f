"""Personyze emulator: ``/rest/do``, the product and article catalogs and ``products_interactions``."""

from __future__ import annotations

import httpx

from airflow_provider_zeotap.testing import PersonyzeEmulator


def test_do_applies_profile_commands_in_order_and_creates_missing_users(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    known = personyze_emulator.create_user(email="known@x.com", first_name="Old")
    answer = personyze.post("/do", json=[
        ["email", "known@x.com", "User profile", "first_name", "New", "plan", "vip"],
        ["email", "new@x.com", "USER PROFILE", "first_name", "Fresh"],  # command names are case-insensitive
        ["internal_id", "acct-1", "User profile", "plan", ""],
    ])
    assert (answer.status_code, answer.content) == (200, b"")
    users = {u.get("email") or u.get("internal_id"): u for u in personyze_emulator.users.values()}
    assert users["known@x.com"]["user_id"] == known
    assert (users["known@x.com"]["first_name"], users["known@x.com"]["plan"]) == ("New", "vip")
    assert users["new@x.com"]["first_name"] == "Fresh"
    assert users["acct-1"]["plan"] == ""


def test_do_aborts_at_the_first_bad_command_and_keeps_the_ones_before(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    answer = personyze.post("/do", json=[
        ["email", "a@x.com", "User profile", "bio", "short"],
        ["email", "b@x.com", "User profile", "bio", "x" * 70_000],
        ["email", "c@x.com", "User profile", "bio", "never applied"],
    ])
    assert (answer.status_code, answer.text) == (400, "Command 2: Data too long for column 'bio'")
    assert answer.headers["content-type"].startswith("text/plain")
    assert {u["email"] for u in personyze_emulator.users.values()} == {"a@x.com"}
    for bad, message in [
        (["mail", "a@x.com", "User profile", "f", "v"], "Unknown key type"),
        (["email", "", "User profile", "f", "v"], "key value is empty"),
        (["email", "a@x.com", "User profile", "f"], "field, value pairs"),
        (["email", "a@x.com", "User profile", "f", ["list"]], "expected a string or a number"),
        (["user_id", 1, "User profile", "f", "v"], "Row not found"),
        (["email", "a@x.com", "Product bought", "SKU"], "Unknown command"),
        (["email", "a@x.com", "Product viewed", "SKU", "colour", "red"], "Unknown option"),
        (["email", "a@x.com", "Product viewed", "SKU", "quantity", 1.5], "expected an integer"),
    ]:
        answer = personyze.post("/do", json=[bad])
        assert answer.status_code == 400 and message in answer.text, (bad, answer.text)


def test_do_product_and_article_commands_log_interactions(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    answer = personyze.post("/do", json=[
        ["email", "a@x.com", "Product purchased", "SKU-1", "quantity", 2, "amount", 259.98,
         "transaction_time", 1734000000],
        ["email", "a@x.com", "Product added to cart", "SKU-2"],
        ["email", "a@x.com", "Product removed from cart", "SKU-2"],
        ["email", "a@x.com", "Article liked", "how-to"],
    ])
    assert answer.status_code == 200, answer.text
    (user_id,) = personyze_emulator.users
    rows = personyze_emulator.interactions
    assert [(r["product_internal_id"], r["status"], r["quantity"], r["amount"], r["transaction_time"], r["user_id"])
            for r in rows] == [("SKU-1", "goal", 2, 259.98, 1734000000, user_id)]
    assert [(a["article_internal_id"], a["action"]) for a in personyze_emulator.article_interactions] == [
        ("how-to", "liked")
    ]


def test_interactions_are_read_through_an_index_only(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    posted = personyze.post("/products_interactions", json={
        "user_email": "a@x.com", "product_internal_id": "SKU-1", "status": "goal", "transaction_time": 1734000000,
    })
    assert posted.status_code == 200, posted.text
    (user_id,) = personyze_emulator.users
    found = personyze.get(f"/products_interactions/where/product_internal_id=SKU-1&user_id={user_id}"
                          "&transaction_time=1734000000/columns/user_id,quantity").json()
    assert found == [{"user_id": user_id, "quantity": 1}]
    for scan in ("/products_interactions", "/products_interactions/where/transaction_time=1734000000",
                 "/products_interactions/where/product_internal_id=SKU-1|quantity=1"):
        refused = personyze.get(scan)
        assert (refused.status_code, refused.text) == (400, "Cannot do this operation on whole table"), scan
    assert personyze.get("/products_interactions/order_by_desc/time/limit/5").status_code == 200
    bad = personyze.post("/products_interactions", json={"user_id": user_id, "product_internal_id": "S",
                                                         "status": "purchase"})
    assert bad.status_code == 400 and "Invalid status" in bad.text


def test_catalog_post_patches_on_duplicate_and_renames_image_inputs(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    first = int(personyze.post("/products", json={"internal_id": "SKU-1", "title": "Drill", "price": 129.99,
                                                  "is_in_stock": "yes", "image_1": "https://cdn/big.jpg"}).text)
    again = int(personyze.post("/products", json={"internal_id": "SKU-1", "price": 119.99}).text)
    assert again == first
    product = personyze_emulator.products["SKU-1"]
    assert (product["title"], product["price"], product["image_big_url"]) == ("Drill", 119.99, "https://cdn/big.jpg")
    assert "image_1" not in product
    assert personyze.put("/products/where/internal_id=SKU-1", json={"is_in_stock": "no"}).json() == 1
    assert personyze.put("/products/where/internal_id=SKU-9", json={"title": "x"}).json() == 0
    for body in ({"internal_id": "SKU-2", "is_in_stock": True}, {"title": "no id"}):
        assert personyze.post("/products", json=body).status_code == 400
    assert personyze.post("/articles", json={"internal_id": "a", "is_published": "maybe"}).status_code == 400
    assert int(personyze.post("/articles", json={"internal_id": "a", "is_published": "yes"}).text) > 0
    assert personyze.delete("/products/where/internal_id=SKU-1").json() == 1
    assert personyze.delete("/products/where/internal_id=SKU-1").json() == 0
    assert personyze_emulator.products == {} and set(personyze_emulator.articles) == {"a"}
