"""The bad-input catalogue: garbage in the source, the settings or the connection, over the real operators.

Each case ends one of two ways, and the test asserts which:

* **refused before any write**: the task fails (or the DAG file fails to parse) with the provider's own error as
  the last line of the task log (not a driver's or a library's exception from deep inside), the message names
  the setting or field and the fix, and the emulators received no write;
* **rejected per row**: the rejected-rows file (or, for keys, the diff's invalid-rows file) holds the row with a
  specific reason, the other rows are delivered exactly, and the counts add up: nothing is dropped silently.

Values that are not errors (unicode, emoji, right-to-left text, long text, ids with URL separators, nested
values where the API takes JSON) are checked to arrive exactly as the source holds them.

The cases are declared with ``@reliability_case("bad input", ...)``; the README's table is generated from them.
To keep the suite's time budget, independent cases share a DAG as separate tasks, and the parse-time cases
share one DagBag parse.
"""

from __future__ import annotations

import json
import os
import re
import socket
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import FAST_RETRIES, connection_env
from tests.integration.test_docs_messages import as_pattern, quotes
from tests.support.reliability import reliability_case

pytestmark = pytest.mark.integration

WRITES = ("POST", "PUT", "PATCH", "DELETE")
HEADER = """
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator
from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator
"""
#: The last line of a traceback the provider raised on purpose: ``airflow_provider_zeotap.<module>.<Error>: text``.
PROVIDER_ERROR = re.compile(r"^airflow_provider_zeotap\.[\w.]+\.(\w+): (.*)$")
UNICODE_NAME = "Zoë 🎉 שלום עליכם مرحبا"
LONG_TEXT = "long " * 2000  # 10,000 characters: no documented limit, so it must arrive whole


def dag_source(dag_id: str, body: str) -> str:
    return HEADER + textwrap.dedent(f"""
        with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    """) + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"


def write_dag(dag_runner, dag_id: str, body: str) -> str:
    path = os.path.join(dag_runner.folder, f"{dag_id}.py")
    Path(path).write_text(dag_source(dag_id, body))
    return path


def rejected_rows(result: dict[str, Any]) -> dict[Any, str]:
    """The rejected-rows file as {key: reason} (the key is the row's primary-key value)."""
    uri = result["rejected_rows_uri"]
    assert uri, "no rejected-rows file"
    rows = [json.loads(line) for line in open(uri.removeprefix("file://"), encoding="utf-8")]
    assert all(row["outcome"] == "rejected" for row in rows)
    return {next(v for k, v in row.items() if k not in ("change", "operation", "outcome", "reason")): row["reason"]
            for row in rows}


def counts(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["succeeded"], result["rejected"], result["failed"]


def writes(emulator, *, ignore_empty_patch: bool = False) -> list[tuple[str, str]]:
    """Requests that change something (Permutive's write-access check is an empty PATCH, and writes nothing)."""
    def empty_patch(r) -> bool:
        return r.method == "PATCH" and not (r.json or {}).get("operations")

    return [
        (r.method, r.path) for r in emulator.requests
        if r.method in WRITES and not (ignore_empty_patch and empty_patch(r)) and not r.path.endswith("/_search")
    ]


def provider_errors(out: str) -> list[tuple[str, str]]:
    """(error class, message) of every provider error the task logs printed as a traceback's last line."""
    return [m.groups() for line in out.splitlines() if (m := PROVIDER_ERROR.match(line))]


def the_error(out: str, *fragments: str) -> tuple[str, str]:
    """The provider error line holding every fragment (the last, if several); fails when none does."""
    found = [(kind, text) for kind, text in provider_errors(out) if all(f in text for f in fragments)]
    assert found, f"no provider error line with {fragments}; provider errors: {provider_errors(out)}"
    return found[-1]


# -- refused when the DAG file is parsed ---------------------------------------------------------------------------

PARSE_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    # id: (the task(s) in the DAG file, the fragments the error must hold: the argument and the fix)
    "permutive-invalid-uuid": (
        'PermutiveSyncOperator(task_id="sync", plan={}, sync_id="s1", import_id="web-visitors",\n'
        '                      audience_mode="mirror")',
        ("import_id must be the UUID of a Permutive import", "Audience Platform > Imports", "'web-visitors'"),
    ),
    "permutive-unsupported-mode": (
        'PermutiveSyncOperator(task_id="sync", plan={}, sync_id="s2", audience_mode="insert",\n'
        '                      import_id="32f8e031-c532-41bb-b25e-65bdb677a96f")',
        ("audience_mode='insert'", "add", "mirror"),
    ),
    "personyze-unsupported-mode": (
        'PersonyzeSyncOperator(task_id="sync", plan={}, sync_id="s3", object_type="products", sync_mode="insert")',
        ("products cannot take sync_mode='insert'", "Use sync_mode='upsert'"),
    ),
    "zeotap-unsupported-mode": (
        'ZeotapProfileSyncOperator(task_id="sync", plan={}, sync_id="s4", id_type="email", sync_mode="delete")',
        ("Zeotap profiles take sync_mode 'upsert' or 'mirror', got 'delete'", "ZeotapProfileDeleteOperator"),
    ),
    "optimizely-unsupported-mode": (
        'OptimizelySyncOperator(task_id="sync", plan={}, sync_id="s5", object_type="custom_events",\n'
        '                       project_id=1, sync_mode="mirror")',
        ("sync_mode='mirror'", "upsert", "insert"),
    ),
    "personyze-conflicting-arguments": (
        'PersonyzeSyncOperator(task_id="sync", plan={}, sync_id="s6", object_type="users", sync_mode="upsert",\n'
        '                      list_id=12)',
        ("users take sync_mode, not audience_mode/list_id", "object_type='user_list_members'"),
    ),
    "optimizely-conflicting-arguments": (
        'OptimizelySyncOperator(task_id="sync", plan={}, sync_id="s7", object_type="list_attributes",\n'
        '                       project_id=1, list_attribute_id=2, audience_mode="add", sync_mode="upsert")',
        ("list_attributes take audience_mode (add, remove, mirror) and list_attribute_id, not sync_mode",),
    ),
    "diff-conflicting-arguments": (
        'SyncDiffOperator(task_id="diff", sync_id="s8", conn_id="warehouse", sql="SELECT 1 AS id",\n'
        '                 rows=[{"id": 1}], primary_key="id")',
        ("needs exactly one source: sql (+ conn_id), source_uri or rows", "['sql', 'rows']"),
    ),
    "permutive-unknown-field": (
        'PermutiveSyncOperator(task_id="sync", plan={}, sync_id="s9", audience_mode="mirror",\n'
        '                      import_id="32f8e031-c532-41bb-b25e-65bdb677a96f",\n'
        '                      field_mapping={"segment_code": "code", "title": "name"})',
        ("Permutive segments has no field(s) ['title']", "'segment_name'", "Fix the destination-field names"),
    ),
    "personyze-unknown-field": (
        'PersonyzeSyncOperator(task_id="sync", plan={}, sync_id="s10", object_type="user_list_members",\n'
        '                      audience_mode="add", list_id=12, field_mapping={"email": "email", "first_name": "n"})',
        ("Personyze user list has no field(s) ['first_name']; its fields are ['email']",
         "Fix the destination-field names"),
    ),
    "optimizely-unknown-field": (
        'OptimizelySyncOperator(task_id="sync", plan={}, sync_id="s11", object_type="list_attributes",\n'
        '                       project_id=1, list_attribute_id=2, audience_mode="add",\n'
        '                       field_mapping={"email": "email"})',
        ("has no field(s) ['email']", "['user_id']", "Fix the destination-field names"),
    ),
    "zeotap-unknown-field": (
        'ZeotapProfileSyncOperator(task_id="sync", plan={}, sync_id="s12", id_type="email",\n'
        '                          field_mapping={"segments.vip": "vip"})',
        ("field_mapping target 'segments.vip' names no Zeotap section", "'profile.<name>'"),
    ),
}


@pytest.fixture(scope="module")
def parsed(airflow_db, tmp_path_factory) -> dict[str, str]:
    """One DagBag parse of one DAG file per case: {case id: the import error Airflow recorded for its file}."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("bad_input_dags")
    paths = {}
    for case, (tasks, _) in PARSE_CASES.items():
        paths[case] = str(folder / f"{case.replace('-', '_')}.py")
        Path(paths[case]).write_text(dag_source(case.replace("-", "_"), tasks))
    bag = DagBag(dag_folder=str(folder))
    assert bag.dags == {}, f"DAG files that should not load did: {list(bag.dags)}"
    return {case: bag.import_errors.get(path, "") for case, path in paths.items()}


@reliability_case("bad input", "Permutive", "invalid UUID (`import_id`)",
                  "refused when the DAG is parsed: names `import_id` and where to copy it from",
                  param="permutive-invalid-uuid")
@reliability_case("bad input", "Permutive", "unsupported mode", "refused when the DAG is parsed: names the modes",
                  param="permutive-unsupported-mode")
@reliability_case("bad input", "Personyze", "unsupported mode", "refused when the DAG is parsed: names the mode to use",
                  param="personyze-unsupported-mode")
@reliability_case("bad input", "Zeotap", "unsupported mode", "refused when the DAG is parsed: names the modes",
                  param="zeotap-unsupported-mode")
@reliability_case("bad input", "Optimizely", "unsupported mode", "refused when the DAG is parsed: names the modes",
                  param="optimizely-unsupported-mode")
@reliability_case("bad input", "Personyze", "conflicting arguments (`list_id` for users)",
                  "refused when the DAG is parsed: names the object type to use",
                  param="personyze-conflicting-arguments")
@reliability_case("bad input", "Optimizely", "conflicting arguments (`sync_mode` for a list attribute)",
                  "refused when the DAG is parsed: names the arguments it takes",
                  param="optimizely-conflicting-arguments")
@reliability_case("bad input", "All", "conflicting arguments (two sources for one diff)",
                  "refused when the DAG is parsed: names the sources given", param="diff-conflicting-arguments")
@reliability_case("bad input", "Permutive", "a destination field that does not exist",
                  "refused when the DAG is parsed: names the field and the fields there are",
                  param="permutive-unknown-field")
@reliability_case("bad input", "Personyze", "a destination field that does not exist (list members)",
                  "refused when the DAG is parsed: names the field and the fields there are",
                  param="personyze-unknown-field")
@reliability_case("bad input", "Optimizely", "a destination field that does not exist (list attribute)",
                  "refused when the DAG is parsed: names the field and the fields there are",
                  param="optimizely-unknown-field")
@reliability_case("bad input", "Zeotap", "a destination field that does not exist (no such section)",
                  "refused when the DAG is parsed: names the target and how to write one",
                  param="zeotap-unknown-field")
@pytest.mark.parametrize("case", list(PARSE_CASES))
def test_a_bad_setting_fails_when_the_dag_is_parsed_naming_the_argument_and_the_fix(parsed, case):
    error = parsed[case]
    assert error, f"the DAG file of {case} parsed without error"
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith("airflow_provider_zeotap.errors.ConfigurationError: "), last_line
    for fragment in PARSE_CASES[case][1]:
        assert fragment in last_line, f"{fragment!r} not in {last_line!r}"


# -- rows: each bad one rejected with its reason, the others delivered exactly -------------------------------------

CUSTOMER_COLUMNS = ["customer_id", "email", "first_name", "note", "score"]


def customer(i: int | None, **overrides: Any) -> dict[str, Any]:
    return {"customer_id": i, "email": f"user{i}@example.com", "first_name": f"First{i}", "note": "n", "score": 1.5,
            **overrides}


def parquet_source(path: Path, rows: list[dict[str, Any]]) -> str:
    """A Parquet file (as a warehouse export would be): it carries NaN, infinities and nested values."""
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def invalid_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return pq.read_table(plan["invalid_uri"].removeprefix("file://")).to_pylist()


@reliability_case("bad input", "All", "null and duplicate keys",
                  "set aside by the diff with the reason per row (invalid-rows file), never sent; counts add up")
@reliability_case("bad input", "All", "NaN and ±inf",
                  "row rejected: names the field and says how to replace the value in the source")
@reliability_case("bad input", "Personyze", "missing required field (email)",
                  "row rejected: `missing required field(s) ['email']`, with the column it maps from")
@reliability_case("bad input", "Personyze", "malformed email", "row rejected: `not an email address`")
@reliability_case("bad input", "Personyze", "unicode, emoji and right-to-left text", "delivered exactly")
@reliability_case("bad input", "Personyze", "over-long field (10,000 characters; no documented limit)",
                  "delivered whole, never truncated")
@reliability_case("bad input", "Personyze", "nested values (an object, a list)",
                  "row rejected before sending: names the field and how to flatten it")
@reliability_case("bad input", "Personyze", "ids with `/ & = %` in a path",
                  "delivered to exactly that item (percent-encoded in the path)")
def test_personyze_rows_with_bad_values_are_rejected_one_by_one_and_the_rest_arrive_exactly(
    dag_runner, warehouse, personyze, tmp_path, capsys
):
    warehouse.replace("customers", [
        customer(1),
        customer(2, email=None),
        customer(3, email="user3.example.com"),
        customer(4, first_name=UNICODE_NAME),
        customer(5, score=float("inf")),
        customer(6, note=LONG_TEXT),
        customer(None, email="nokey@example.com"),
        customer(7, email="dup-a@example.com"),
        customer(7, email="dup-b@example.com"),
    ], CUSTOMER_COLUMNS)
    source = parquet_source(tmp_path / "people.parquet", [
        {"id": 1, "email": "nan@example.com", "score": float("nan"), "tags": None, "sizes": None},
        {"id": 2, "email": "neg@example.com", "score": float("-inf"), "tags": None, "sizes": None},
        {"id": 3, "email": "obj@example.com", "score": 1.0, "tags": {"tier": "gold"}, "sizes": None},
        {"id": 4, "email": "list@example.com", "score": 1.0, "tags": None, "sizes": [1, 2]},
        {"id": 5, "email": "ok@example.com", "score": 2.0, "tags": None, "sizes": None},
    ])
    skus = ["shoes/red", "salt&pepper", "a=b", "100%cotton", "plain"]
    for sku in skus:
        personyze.create_product(internal_id=sku, title="old")
    warehouse.replace("products", [{"sku": sku, "title": f"New {sku}"} for sku in skus], ["sku", "title"])

    run = dag_runner.run(write_dag(dag_runner, "bad_input_personyze_rows", f"""
        users = SyncDiffOperator(task_id="diff_users", sync_id="bad_personyze_users", conn_id="warehouse",
                                 sql="SELECT * FROM customers", primary_key="customer_id")
        PersonyzeSyncOperator(task_id="users", plan=users.output, object_type="users", sync_mode="upsert",
                              field_mapping={{"email": "email", "first_name": "first_name", "note": "note",
                                              "score": "score"}})
        people = SyncDiffOperator(task_id="diff_people", sync_id="bad_personyze_people", source_uri="{source}",
                                  primary_key="id")
        PersonyzeSyncOperator(task_id="people", plan=people.output, object_type="users", sync_mode="upsert",
                              field_mapping={{"email": "email", "score": "score", "tags": "tags", "sizes": "sizes"}})
        products = SyncDiffOperator(task_id="diff_products", sync_id="bad_personyze_products", conn_id="warehouse",
                                    sql="SELECT * FROM products", primary_key="sku")
        PersonyzeSyncOperator(task_id="products", plan=products.output, object_type="products", sync_mode="update",
                              field_mapping={{"internal_id": "sku", "title": "title"}})
    """))
    assert run.state == "success", run.task_states
    log = capsys.readouterr().out

    # Keys: the null key and both rows of the duplicated key are set aside by the diff, each with its reason,
    # and the sync task's log says so beside its summary.
    plan = run.result("diff_users")
    assert (f"3 source rows were set aside by the diff (null or duplicate primary key) and never sent; each is in "
            f"{plan['invalid_uri']} with its reason") in log
    assert plan["counts"]["invalid"] == 3 and plan["counts"]["added"] == 6 and plan["counts"]["total"] == 9
    invalid = invalid_rows(plan)
    assert sorted(row["email"] for row in invalid) == ["dup-a@example.com", "dup-b@example.com", "nokey@example.com"]
    reasons = {row["email"]: row["__reason"] for row in invalid}
    assert "null" in reasons["nokey@example.com"] and "duplicate" in reasons["dup-a@example.com"]

    users = run.result("users")
    assert counts(users) == (3, 3, 0)  # 3 + 3 = the 6 rows with a valid key: none dropped
    rejected = rejected_rows(users)
    assert rejected == {
        2: "missing required field(s) ['email'] (mapped from: email <- email)",
        3: "not an email address: 'user3.example.com'",
        5: "field 'score' (from column 'score'): inf has no JSON form; replace it in the source "
           "(e.g. NULLIF / CASE WHEN ... THEN NULL)",
    }
    held = {u["email"]: u for u in personyze.users.values()}
    # Exactly the rows that were not rejected, from both user syncs (ok@ is the Parquet source's good row).
    assert set(held) == {"user1@example.com", "user4@example.com", "user6@example.com", "ok@example.com"}
    assert held["user4@example.com"]["first_name"] == UNICODE_NAME
    assert held["user6@example.com"]["note"] == LONG_TEXT

    people = run.result("people")
    assert counts(people) == (1, 4, 0)
    reasons = rejected_rows(people)
    assert "nan has no JSON form" in reasons[1] and "-inf has no JSON form" in reasons[2]
    # Personyze fields hold text and numbers: a nested value is rejected with its field before sending.
    assert reasons[3] == ("field 'tags' holds a nested value (an object); Personyze profile fields hold text and "
                          "numbers: flatten it in the source (one column per key) or cast it to JSON text")
    assert reasons[4].startswith("field 'sizes' holds a nested value (a list)")
    assert [len(r.json) for r in personyze.requests if r.path == "/rest/do" and "ok@example.com" in str(r.json)] == [1]
    assert held["ok@example.com"]["score"] == 2.0

    products = run.result("products")
    assert counts(products) == (5, 0, 0)
    # Each separator went percent-encoded, so the path named exactly that item (a bare '/', '&', '=' or '%' would
    # have been read as path or where-clause syntax).
    puts = sorted(r.raw_path for r in personyze.requests if r.method == "PUT")
    assert puts == sorted(["/rest/products/where/internal_id=" + encoded for encoded in (
        "shoes%2Fred", "salt%26pepper", "a%3Db", "100%25cotton", "plain")])
    assert {sku: item["title"] for sku, item in personyze.products.items()} == {sku: f"New {sku}" for sku in skus}


@pytest.fixture
def optimizely(optimizely_emulator, monkeypatch):
    """The Optimizely emulator (2/s and 120/min enforced), as ``optimizely_default``."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPTIMIZELY_DEFAULT",
        connection_env("optimizely", optimizely_emulator.url, optimizely_emulator.token, **FAST_RETRIES),
    )
    return optimizely_emulator


@reliability_case("bad input", "Permutive", "over-long fields (code over 100, name over 255 characters)",
                  "row rejected before sending: names the field, its length and the limit")
@reliability_case("bad input", "Permutive", "unicode, emoji and right-to-left text", "delivered exactly")
@reliability_case("bad input", "Optimizely", "ids with `,` (list attribute)",
                  "row rejected: the comma would split the id into several members")
@reliability_case("bad input", "Optimizely", "over-long field (attribute key over 64 characters)",
                  "row rejected before sending: names the key, its length and the limit")
@reliability_case("bad input", "Optimizely", "unicode, emoji and right-to-left text", "delivered exactly")
@reliability_case("bad input", "Zeotap", "malformed email (id_type 'email')", "row rejected: `not an email address`")
@reliability_case("bad input", "Zeotap", "nested values", "delivered as the same JSON object (profiles are JSON)")
@reliability_case("bad input", "Zeotap", "unicode, emoji and right-to-left text; a 10,000-character value",
                  "delivered exactly, never truncated")
def test_permutive_optimizely_and_zeotap_rows_with_bad_values_are_rejected_one_by_one(
    dag_runner, warehouse, permutive, optimizely, zeotap, tmp_path
):
    import_id = permutive.create_import("Warehouse segments")
    warehouse.replace("segments", [
        {"code": "seg-1", "name": UNICODE_NAME},
        {"code": "c" * 101, "name": "Code too long"},
        {"code": "seg-3", "name": "n" * 256},
    ], ["code", "name"])
    project = optimizely.create_project("Web")
    list_id = optimizely.create_list_attribute(project, "vips")
    warehouse.replace("audience", [{"user_id": u} for u in ("u1", "u2,u3", "ü-🎉-שלום")], ["user_id"])
    warehouse.replace("attributes", [{"key": "k" * 65, "name": "Too long"}, {"key": "plan", "name": "خطة 🎉"}],
                      ["key", "name"])
    source = parquet_source(tmp_path / "profiles.parquet", [
        {"email": "a@example.com", "name": UNICODE_NAME, "tags": {"tier": "gold", "sizes": [1, 2]}, "bio": LONG_TEXT},
        {"email": "not-an-email", "name": "x", "tags": None, "bio": None},
        {"email": "b@example.com", "name": "b", "tags": None, "bio": None},
    ])

    run = dag_runner.run(write_dag(dag_runner, "bad_input_other_rows", f"""
        segments = SyncDiffOperator(task_id="diff_segments", sync_id="bad_permutive_rows", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
        PermutiveSyncOperator(task_id="permutive", plan=segments.output, import_id="{import_id}",
                              audience_mode="mirror", field_mapping={{"segment_code": "code", "segment_name": "name"}})
        members = SyncDiffOperator(task_id="diff_members", sync_id="bad_optimizely_list", conn_id="warehouse",
                                   sql="SELECT * FROM audience", primary_key="user_id")
        OptimizelySyncOperator(task_id="optimizely_list", plan=members.output, object_type="list_attributes",
                               project_id={project}, list_attribute_id={list_id}, audience_mode="add")
        attributes = SyncDiffOperator(task_id="diff_attributes", sync_id="bad_optimizely_attributes",
                                      conn_id="warehouse", sql="SELECT * FROM attributes", primary_key="key")
        OptimizelySyncOperator(task_id="optimizely_attributes", plan=attributes.output, object_type="attributes",
                               project_id={project}, sync_mode="upsert")
        profiles = SyncDiffOperator(task_id="diff_profiles", sync_id="bad_zeotap_rows", source_uri="{source}",
                                    primary_key="email")
        ZeotapProfileSyncOperator(task_id="zeotap", plan=profiles.output, id_type="email")
    """))
    assert run.state == "success", run.task_states

    segments = run.result("permutive")
    assert counts(segments) == (1, 2, 0)
    assert rejected_rows(segments) == {
        "c" * 101: f"segment_code '{'c' * 40}…' is 101 characters long; at most 100",
        "seg-3": f"segment_name '{'n' * 40}…' is 256 characters long; at most 255",
    }
    assert {code: s["name"] for code, s in permutive.segments(import_id).items()} == {"seg-1": UNICODE_NAME}
    sent = [r.json["operations"] for r in permutive.requests if r.method == "PATCH" and r.json["operations"]]
    assert [[op["data"]["code"] for op in ops] for ops in sent] == [["seg-1"]]  # the bad ones never left

    members = run.result("optimizely_list")
    assert counts(members) == (2, 1, 0)
    assert rejected_rows(members) == {
        "u2,u3": "user_id 'u2,u3' contains a comma, which separates ids in Optimizely's list_content: it would "
                 "become several members; fix the id in the source",
    }
    assert sorted(optimizely.list_members(list_id)) == sorted(["u1", "ü-🎉-שלום"])

    attributes = run.result("optimizely_attributes")
    assert counts(attributes) == (1, 1, 0)
    (reason,) = rejected_rows(attributes).values()
    assert reason.startswith("attribute key 'kkkk") and "is 65 characters long; Optimizely takes at most 64" in reason
    assert [(a["key"], a["name"]) for a in optimizely.objects("attributes", project)] == [("plan", "خطة 🎉")]
    assert not [r for r in optimizely.requests if "k" * 65 in json.dumps(r.json)]  # found before sending

    profiles = run.result("zeotap")
    assert counts(profiles) == (2, 1, 0)
    assert rejected_rows(profiles) == {
        "not-an-email": "not an email address: 'not-an-email': the key column holds the profiles' id_type 'email'; "
                        "fix the value in the source",
    }
    held = {p["ids"]["email"]: p["profile"] for p in zeotap.profiles.values()}
    assert held == {
        "a@example.com": {"name": UNICODE_NAME, "tags": {"tier": "gold", "sizes": [1, 2]}, "bio": LONG_TEXT},
        "b@example.com": {"name": "b"},
    }


# -- refused before any write, at run time -------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@reliability_case("bad input", "All", "an SQL error", "diff task fails: names `sql`, the database's words and the fix")
@reliability_case("bad input", "All", "a column in `field_mapping` that the source lacks",
                  "refused before any write: names the mapping entry and the source columns")
@reliability_case("bad input", "All", "a plan passed by hand", "refused before any read or write: says to pass the "
                  "diff task's output")
@reliability_case("bad input", "Personyze", "an unreachable host", "refused before any write: names the URL, "
                  "after the connection's retries")
@reliability_case("bad input", "Personyze", "401 (a wrong key)", "refused before any write: says where to copy the key")
@reliability_case("bad input", "Personyze", "a 404 list", "refused before any write: says to create the list first")
@reliability_case("bad input", "Permutive", "403 (a read-only key)",
                  "refused before any write: says to ask for write access")
@reliability_case("bad input", "Permutive", "a 404 import", "refused before any write: names the import")
@reliability_case("bad input", "Optimizely", "401 (a wrong token)",
                  "refused before any write: says where to make a token")
@reliability_case("bad input", "Optimizely", "a 404 list attribute",
                  "refused before any write: says to create it first")
@reliability_case("bad input", "Zeotap", "401 (a wrong key)",
                  "stops at the first call, refused, nothing written: says the key is wrong or revoked")
@reliability_case("bad input", "Zeotap", "403 (another organisation)",
                  "stops at the first call, refused, nothing written: names the scopes and `org_id`")
def test_a_bad_source_setting_or_connection_fails_the_task_before_any_write_with_the_providers_message(
    dag_runner, warehouse, personyze, permutive, optimizely, zeotap, monkeypatch, capsys, parsed
):
    slow = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 2}
    for conn_id, value in {
        "personyze_dead": connection_env("personyze", f"http://127.0.0.1:{closed_port()}", personyze.api_key, **slow),
        "personyze_wrong_key": connection_env("personyze", personyze.url, "wrong-key-1", **slow),
        "permutive_read_only": connection_env("permutive", permutive.url, permutive.read_only_key, **slow),
        "optimizely_wrong_token": connection_env("optimizely", optimizely.url, "wrong-token-1", **slow),
        "zeotap_wrong_key": connection_env("zeotap", zeotap.url, "wrong-key-2", org_id=str(zeotap.org_id),
                                           region=zeotap.region, **slow),
        "zeotap_other_org": connection_env("zeotap", zeotap.url, zeotap.api_key, org_id="999", region=zeotap.region,
                                           **slow),
    }.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
    import_id = permutive.create_import("Target")
    missing_import = "32f8e031-c532-41bb-b25e-65bdb677a96f"
    project = optimizely.create_project("Web")
    list_attribute = optimizely.create_list_attribute(project, "vips")
    warehouse.replace("people", [{"email": "a@example.com", "code": "seg-1", "name": "A"}], ["email", "code", "name"])

    def chain(name: str, sync: str) -> str:
        return f"""
        {name} = SyncDiffOperator(task_id="diff_{name}", sync_id="bad_{name}", conn_id="warehouse",
                                  sql="SELECT * FROM people", primary_key="email")
        {sync.format(plan=f"{name}.output")}
        """

    body = "\n".join([
        """
        SyncDiffOperator(task_id="diff_sql_error", sync_id="bad_sql_error", conn_id="warehouse",
                         sql="SELECT email FROM peple", primary_key="email")
        PersonyzeSyncOperator(task_id="plan_by_hand", sync_id="bad_plan_by_hand", object_type="users",
                              sync_mode="upsert",
                              plan={"sync_id": "bad_plan_by_hand", "changes_uri": "file:///etc/passwd"})
        """,
        chain("missing_column", 'PersonyzeSyncOperator(task_id="missing_column", plan={plan}, object_type="users", '
                                'sync_mode="upsert", field_mapping={{"email": "email", "plan": "plan_column"}})'),
        chain("unreachable", 'PersonyzeSyncOperator(task_id="unreachable", plan={plan}, object_type="users", '
                             'sync_mode="upsert", personyze_conn_id="personyze_dead")'),
        chain("personyze_401", 'PersonyzeSyncOperator(task_id="personyze_401", plan={plan}, object_type="users", '
                               'sync_mode="upsert", personyze_conn_id="personyze_wrong_key")'),
        chain("personyze_404", 'PersonyzeSyncOperator(task_id="personyze_404", plan={plan}, '
                               'object_type="user_list_members", audience_mode="add", list_id=424242)'),
        chain("permutive_403", 'PermutiveSyncOperator(task_id="permutive_403", plan={plan}, '
                               f'import_id="{import_id}", '
                               'audience_mode="add", permutive_conn_id="permutive_read_only", '
                               'field_mapping={{"segment_code": "code", "segment_name": "name"}})'),
        chain("permutive_404", f'PermutiveSyncOperator(task_id="permutive_404", plan={{plan}}, '
                               f'import_id="{missing_import}", audience_mode="add", '
                               'field_mapping={{"segment_code": "code", "segment_name": "name"}})'),
        chain("optimizely_401", 'OptimizelySyncOperator(task_id="optimizely_401", plan={plan}, '
                                f'project_id={project}, '
                                f'object_type="list_attributes", list_attribute_id={list_attribute}, '
                                'audience_mode="add", optimizely_conn_id="optimizely_wrong_token", '
                                'field_mapping={{"user_id": "email"}})'),
        chain("optimizely_404", 'OptimizelySyncOperator(task_id="optimizely_404", plan={plan}, '
                                f'project_id={project}, '
                                'object_type="list_attributes", list_attribute_id=999999, audience_mode="add", '
                                'field_mapping={{"user_id": "email"}})'),
        chain("zeotap_401", 'ZeotapProfileSyncOperator(task_id="zeotap_401", plan={plan}, id_type="email", '
                            'zeotap_conn_id="zeotap_wrong_key")'),
        chain("zeotap_403", 'ZeotapProfileSyncOperator(task_id="zeotap_403", plan={plan}, id_type="email", '
                            'zeotap_conn_id="zeotap_other_org")'),
    ])
    capsys.readouterr()
    run = dag_runner.run(write_dag(dag_runner, "bad_input_refusals", body))
    out = capsys.readouterr().out

    syncs = ["plan_by_hand", "missing_column", "unreachable", "personyze_401", "personyze_404", "permutive_403",
             "permutive_404", "optimizely_401", "optimizely_404", "zeotap_401", "zeotap_403"]
    assert {task: run.task_states[task] for task in ["diff_sql_error", *syncs]} == {
        task: "failed" for task in ["diff_sql_error", *syncs]}
    # No write reached any API (Permutive's write-access check is an empty batch, which writes nothing).
    assert writes(personyze) == [] and writes(optimizely) == []
    # Zeotap has no call that checks a key without counting against the quota, so the first write is the check:
    # refused (401, 403), it stops its task at once; one row was tried per task and nothing was written.
    assert sorted((r.method, r.path, r.status) for r in zeotap.requests) == [
        ("POST", "/cdp/v1/users", 401), ("POST", "/cdp/v1/users", 403)]
    assert zeotap.profiles == {}
    assert writes(permutive, ignore_empty_patch=True) == [] and permutive.segments(import_id) == {}
    for emulator in (personyze, permutive, optimizely, zeotap):
        assert not [r for r in emulator.requests if r.status is not None and r.status >= 500]

    # Each task log ends with the provider's own error (not a driver's or httpx's), naming the setting and the fix.
    kind, text = the_error(out, "Sync 'bad_sql_error': the source query (sql) failed")
    assert kind == "ConfigurationError"
    assert "OperationalError: no such table: peple" in text and "Fix the diff task's sql" in text
    expected = {
        "plan_by_hand": ("ConfigurationError", (
            "plan is not a valid plan (plan_id: Field required; primary_key: Field required;",
            "Pass the diff task's output (plan=diff.output), never a plan written by hand or edited.")),
        "missing_column": ("ConfigurationError", (
            "field_mapping names source columns that the plan does not have: 'plan' <- 'plan_column'",
            "Source columns: ['email', 'code', 'name']")),
        "unreachable": ("ApiConnectionError", (
            "Could not reach Personyze at http://127.0.0.1:", "check the host field of connection 'personyze_dead'",
            "Connection refused", "gave up after 2 attempts")),
        "personyze_401": ("AuthenticationError", ("Personyze refused the API key (HTTP 401)", "Settings > API")),
        "personyze_404": ("ConfigurationError", (
            "Personyze user list 424242 does not exist: create the list in Personyze first",)),
        "permutive_403": ("ConfigurationError", ("This Permutive key is read-only (InsufficientAPIKey)",
                                                    "ask Permutive Technical Services for write access")),
        "permutive_404": ("ConfigurationError", (f"Permutive import {missing_import} does not exist",)),
        "optimizely_401": ("AuthenticationError", ("Optimizely refused the personal access token (HTTP 401)",
                                                   "Profile > API Access")),
        "optimizely_404": ("ConfigurationError", (
            f"Optimizely list attribute 999999 does not exist in project {project}",
            "copy its numeric id into the task's list_attribute_id")),
        "zeotap_401": ("AuthenticationError", ("Zeotap refused the API key (HTTP 401): it is wrong or revoked.",)),
        "zeotap_403": ("PermissionDeniedError", ("Zeotap refused this key for the scopes", "org_id")),
    }
    for task, (error_class, fragments) in expected.items():
        assert the_error(out, *fragments)[0] == error_class, (task, provider_errors(out))
    assert len(provider_errors(out)) == len(expected) + 1  # one per failed task: no other error ended a task
    for secret in ("wrong-key-1", "wrong-key-2", "wrong-token-1", permutive.read_only_key, zeotap.api_key):
        assert secret not in out

    # The troubleshooting index quotes these messages (and the parse-time ones): each quote is one of them.
    produced = [text for _, text in provider_errors(out)]
    produced += [error.strip().splitlines()[-1] for error in parsed.values()]
    section = quotes("troubleshooting.md", "Bad input, any destination")
    assert len(section) >= 5
    assert [q for q in section if not any(as_pattern(q).search(m) for m in produced)] == []


# -- refused on a later run: what the committed state says about the new one --------------------------------------


@reliability_case("bad input", "All", "an empty source (after a commit, in a mirror)",
                  "refused before any write: names `allow_empty_source`")
@reliability_case("bad input", "All", "a changed `primary_key`",
                  "diff refused before any write: names both keys and says to use a new `sync_id`")
@reliability_case("bad input", "All", "a `sync_id` reused by another DAG",
                  "refused before any write: names both bindings and `rebind`")
def test_a_later_run_that_would_undo_the_committed_state_is_refused_before_any_write(
    dag_runner, warehouse, personyze, permutive, capsys
):
    import_id = permutive.create_import("Segments")
    list_id = personyze.create_list("VIPs")
    warehouse.replace("segments", [{"code": "seg-1", "name": "One"}, {"code": "seg-2", "name": "Two"}],
                      ["code", "name"])
    warehouse.replace("audience", [{"email": "a@example.com"}, {"email": "b@example.com"}], ["email"])
    warehouse.replace("customers", [customer(1), customer(2)], CUSTOMER_COLUMNS)

    def syncs(users_key: str) -> str:
        return f"""
        segments = SyncDiffOperator(task_id="diff_segments", sync_id="bad_shared_segments", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
        PermutiveSyncOperator(task_id="segments", plan=segments.output, import_id="{import_id}", audience_mode="mirror",
                              field_mapping={{"segment_code": "code", "segment_name": "name"}})
        members = SyncDiffOperator(task_id="diff_members", sync_id="bad_members", conn_id="warehouse",
                                   sql="SELECT * FROM audience", primary_key="email")
        PersonyzeSyncOperator(task_id="members", plan=members.output, object_type="user_list_members",
                              audience_mode="mirror", list_id={list_id})
        users = SyncDiffOperator(task_id="diff_users", sync_id="bad_users", conn_id="warehouse",
                                 sql="SELECT * FROM customers", primary_key="{users_key}")
        PersonyzeSyncOperator(task_id="users", plan=users.output, object_type="users", sync_mode="upsert",
                              field_mapping={{"email": "email", "first_name": "first_name"}})
        """

    first = dag_runner.run(write_dag(dag_runner, "bad_input_baseline", syncs("customer_id")))
    assert first.state == "success", first.task_states
    assert personyze.list_member_emails(list_id) == {"a@example.com", "b@example.com"}
    held = {"segments": set(permutive.segments(import_id)), "users": {u["email"] for u in personyze.users.values()}}
    assert held == {"segments": {"seg-1", "seg-2"}, "users": {"user1@example.com", "user2@example.com",
                                                              "a@example.com", "b@example.com"}}

    # Run 2, same DAG: the audience query now returns nothing, and the users' key column changed.
    warehouse.replace("audience", [], ["email"])
    personyze.clear_requests()
    permutive.clear_requests()
    capsys.readouterr()
    second = dag_runner.run(write_dag(dag_runner, "bad_input_baseline", syncs("email")))
    out = capsys.readouterr().out
    assert (second.task_states["members"], second.task_states["diff_users"]) == ("failed", "failed")
    assert second.task_states["segments"] == "success"  # unchanged: nothing to send, nothing refused
    kind, text = the_error(out, "Sync 'bad_members': the source returned no rows but 2 are committed")
    assert kind == "RefusedBeforeSending" and "set allow_empty_source=True" in text
    kind, text = the_error(out, "Sync 'bad_users' was committed with primary_key ['customer_id'], now ['email']")
    assert kind == "ConfigurationError" and "use a new sync_id" in text

    # Run 3, another DAG on the first DAG's sync_id (and import): refused before its first request.
    warehouse.replace("other_segments", [{"code": "seg-9", "name": "Nine"}], ["code", "name"])
    third = dag_runner.run(write_dag(dag_runner, "bad_input_other_dag", f"""
        segments = SyncDiffOperator(task_id="diff_segments", sync_id="bad_shared_segments", conn_id="warehouse",
                                    sql="SELECT * FROM other_segments", primary_key="code")
        PermutiveSyncOperator(task_id="segments", plan=segments.output, import_id="{import_id}", audience_mode="mirror",
                              field_mapping={{"segment_code": "code", "segment_name": "name"}})
    """))
    out = capsys.readouterr().out
    assert third.task_states["segments"] == "failed"
    kind, text = the_error(out, "DAG 'bad_input_baseline' task 'segments'", "DAG 'bad_input_other_dag' task 'segments'")
    assert kind == "RefusedBeforeSending" and "rebind" in text

    # Neither later run wrote anything: the list, the segments and the users are as the first run left them.
    assert writes(personyze) == [] and writes(permutive, ignore_empty_patch=True) == []
    assert personyze.list_member_emails(list_id) == {"a@example.com", "b@example.com"}
    assert set(permutive.segments(import_id)) == {"seg-1", "seg-2"}
