"""Personyze emulator over real sockets: auth, path syntax, users, lists, members and the POST throttle."""

from __future__ import annotations

import asyncio
import time

import httpx

from airflow_provider_zeotap.testing import PersonyzeEmulator


def test_basic_auth(personyze_emulator: PersonyzeEmulator, personyze: httpx.Client) -> None:
    assert personyze.get("/account").json() == {"id": 1, "name": "Emulated account"}
    for auth in [None, ("api", "wrong-key"), ("someone", personyze_emulator.api_key)]:
        response = httpx.get(f"{personyze_emulator.api_url}/account", auth=auth)
        assert (response.status_code, response.text) == (401, "Please, log in")
        assert response.headers["content-type"].startswith("text/plain")


def test_post_user_answers_a_bare_number_and_merges_on_email(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    first = personyze.post("/users", json={"email": "alice@example.com", "first_name": "Alice"})
    assert first.headers["content-type"] == "application/json"
    user_id = int(first.text)
    again = personyze.post("/users", json={"email": "alice@example.com", "last_name": "Smith"})
    assert int(again.text) == user_id
    assert personyze_emulator.users[user_id] | {"data_last_modified": 0} == {
        "user_id": user_id,
        "email": "alice@example.com",
        "first_name": "Alice",
        "last_name": "Smith",
        "data_last_modified": 0,
    }
    other_case = int(personyze.post("/users", json={"email": "Alice@example.com"}).text)
    assert other_case != user_id  # email matching is case-sensitive
    by_internal_id = personyze.post("/users", json={"internal_id": "acct-1", "email": "new@example.com"})
    assert int(personyze.post("/users", json={"internal_id": "acct-1"}).text) == int(by_internal_id.text)


def test_post_user_without_identifier_is_refused(personyze: httpx.Client) -> None:
    response = personyze.post("/users", json={"first_name": "Nobody"})
    assert response.status_code == 400
    assert personyze.post("/users", content=b"{not json").status_code == 400


def test_percent_encoded_values_in_where(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    tricky = personyze_emulator.create_user(email="a&b=c@x.com", first_name="Tricky")
    personyze_emulator.create_user(email="a", first_name="Plain")
    rows = personyze.get("/users/where/email=a%26b%3Dc%40x.com/columns/user_id,first_name").json()
    assert rows == [{"user_id": tricky, "first_name": "Tricky"}]
    unencoded = personyze.get("/users/where/email=a&b=c@x.com")  # parsed as two conditions
    assert unencoded.json() == []
    assert personyze.get("/users/where/email=a=b").status_code == 400


def test_whole_table_reads_need_an_indexed_order(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    ids = [personyze_emulator.create_user(email=f"u{n}@x.com") for n in range(3)]
    refused = personyze.get("/users")
    assert (refused.status_code, refused.text) == (400, "Cannot do this operation on whole table")
    assert personyze.get("/users/order_by/first_name").status_code == 400
    rows = personyze.get("/users/order_by_desc/user_id/limit/0,2/columns/user_id").json()
    assert rows == [{"user_id": ids[2]}, {"user_id": ids[1]}]


def test_read_window_over_1000_is_refused(personyze: httpx.Client) -> None:
    response = personyze.get("/user_list_users/where/user_list_id=1/limit/950,51")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert personyze.get("/user_list_users/where/user_list_id=1/limit/950,50").json() == []


def test_get_by_id(personyze_emulator: PersonyzeEmulator, personyze: httpx.Client) -> None:
    user_id = personyze_emulator.create_user(email="x@x.com")
    assert personyze.get(f"/users/{user_id}").json()["email"] == "x@x.com"
    missing = personyze.get("/users/1")
    assert (missing.status_code, missing.text) == (400, "Row not found")


def test_put_and_delete_answer_rows_affected(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    user_id = personyze_emulator.create_user(email="a+b@x.com", first_name="A")
    assert personyze.put("/users/where/email=a%2Bb%40x.com", json={"first_name": "B"}).json() == 1
    assert personyze_emulator.users[user_id]["first_name"] == "B"
    assert personyze.put("/users/where/email=nobody%40x.com", json={"first_name": "C"}).json() == 0
    whole = personyze.put("/users", json={"first_name": "everyone"})
    assert (whole.status_code, whole.text) == (400, "Cannot do this operation on whole table")
    assert personyze.delete("/users").status_code == 400
    assert personyze.delete("/users/where/email=a%2Bb%40x.com").json() == 1
    assert personyze.delete("/users/where/email=a%2Bb%40x.com").json() == 0
    assert personyze_emulator.users == {}


def test_one_users_post_in_flight(personyze_emulator: PersonyzeEmulator) -> None:
    """Each POST holds the slot 0.6 s: the second waits 0.6 s and passes, the third would wait 1.2 s."""
    personyze_emulator.users_post_latency_ms = 600

    async def post_three() -> list[httpx.Response]:
        auth = ("api", personyze_emulator.api_key)
        async with httpx.AsyncClient(base_url=personyze_emulator.api_url, auth=auth, timeout=5) as client:
            posts = (client.post("/users", json={"email": f"u{n}@x.com"}) for n in range(3))
            return await asyncio.gather(*posts)

    started = time.monotonic()
    responses = asyncio.run(post_three())
    assert time.monotonic() - started >= 1.2
    outcomes = sorted((response.status_code, response.text) for response in responses)
    assert outcomes[2] == (400, "Too many simultaneous requests")
    assert [status for status, _ in outcomes[:2]] == [200, 200]
    assert len(personyze_emulator.users) == 2
    served = sorted(r.finished_at - r.started_at for r in personyze_emulator.requests if r.status == 200)  # type: ignore[operator]
    assert served[0] < 0.9 and served[1] >= 1.1  # the second POST waited for the first


def test_user_lists(personyze_emulator: PersonyzeEmulator, personyze: httpx.Client) -> None:
    list_id = int(personyze.post("/user_lists", json={"name": "VIPs"}).text)
    assert personyze.get(f"/user_lists/{list_id}").json() == {"id": list_id, "name": "VIPs"}
    assert personyze.get("/user_lists").json() == [{"id": list_id, "name": "VIPs"}]
    assert personyze.put(f"/user_lists/{list_id}", json={"name": "VIP customers"}).json() == 1
    assert personyze_emulator.lists[list_id]["name"] == "VIP customers"
    assert personyze.get("/user_lists/999").text == "Row not found"
    personyze.post("/user_list_users", json={"user_list_id": list_id, "user_email": "a@x.com"})
    assert personyze.delete(f"/user_lists/{list_id}").json() == 1
    assert personyze_emulator.list_member_ids(list_id) == set()  # memberships cascade
    assert personyze.get(f"/user_list_users/where/user_list_id={list_id}").json() == []


def test_members_resolve_keys_and_create_stub_users(
    personyze_emulator: PersonyzeEmulator, personyze: httpx.Client
) -> None:
    list_id = personyze_emulator.create_list("L")
    known = personyze_emulator.create_user(email="known@x.com", first_name="K")
    by_email = personyze.post("/user_list_users", json={"user_list_id": list_id, "user_email": "known@x.com"})
    assert int(by_email.text) == known
    stub = int(
        personyze.post("/user_list_users", json={"user_list_id": list_id, "user_email": "new@x.com"}).text
    )
    assert personyze_emulator.users[stub] | {"data_last_modified": 0} == {
        "user_id": stub,
        "email": "new@x.com",
        "data_last_modified": 0,
    }
    by_internal = personyze.post(
        "/user_list_users", json={"user_list_id": str(list_id), "user_internal_id": "i-9"}
    )
    by_id = personyze.post("/user_list_users", json={"user_list_id": list_id, "user_id": known})
    assert int(by_id.text) == known  # re-adding a member is a no-op that answers its user_id
    assert personyze_emulator.list_member_ids(list_id) == {known, stub, int(by_internal.text)}
    assert personyze_emulator.list_member_emails(list_id) == {"known@x.com", "new@x.com"}
    unknown_list = personyze.post("/user_list_users", json={"user_list_id": 999, "user_email": "a@x.com"})
    assert (unknown_list.status_code, unknown_list.text) == (400, "Row not found")
    assert personyze.post("/user_list_users", json={"user_list_id": list_id}).status_code == 400


def test_list_members_page_and_delete(personyze_emulator: PersonyzeEmulator, personyze: httpx.Client) -> None:
    list_id = personyze_emulator.create_list("L")
    users = [personyze_emulator.create_user(email=f"m{n}@x.com") for n in range(5)]
    for user_id in users:
        personyze_emulator.add_to_list(list_id, user_id)
    page = personyze.get(f"/user_list_users/where/user_list_id={list_id}/limit/2,2").json()
    assert page == [
        {"user_list_id": list_id, "user_id": users[2]},
        {"user_list_id": list_id, "user_id": users[3]},
    ]
    remove = f"/user_list_users/where/user_list_id={list_id}&user_id={users[0]}"
    assert personyze.delete(remove).json() == 1
    assert personyze.delete(remove).json() == 0  # not a member any more
    assert personyze_emulator.list_member_ids(list_id) == set(users[1:])
    assert users[0] in personyze_emulator.users  # the user stays


def test_admin_seed_and_state(personyze_emulator: PersonyzeEmulator) -> None:
    admin = f"{personyze_emulator.url}/_emulator"
    list_id = httpx.post(f"{admin}/lists", json={"name": "Seeded"}).json()["id"]
    user_id = httpx.post(f"{admin}/users", json={"email": "s@x.com"}).json()["user_id"]
    personyze_emulator.add_to_list(list_id, user_id)
    state = httpx.get(f"{admin}/state").json()
    assert state["user_lists"] == [{"id": list_id, "name": "Seeded"}]
    assert state["user_list_users"] == [{"user_list_id": list_id, "user_id": user_id}]
    assert [user["email"] for user in state["users"]] == ["s@x.com"]
