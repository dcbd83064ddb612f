"""The fault matrix's scenarios: one per destination and object type, reusable by any test that runs them.

A :class:`Scenario` knows what a sync of one object type needs at its emulator (a list, an import, a
project), the source rows of each run, the DAG tasks (a diff and its sync) that deliver them, the end state
the emulator must hold after a run, and the writes it must not repeat. :func:`dag_source` puts the tasks of
several scenarios into one DAG, so one Airflow run exercises a whole vendor.

:func:`configured_secrets` lists every secret the scenarios configure (the API keys, and the Basic-auth
encoding of the Personyze key): a scan of logs, XCom and state files after a fault-matrix run looks for these.
"""

from __future__ import annotations

import base64
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.integration.conftest import connection_env

#: Retries for the matrix: quick backoffs, and enough attempts that 15% 5xx and 3% drops never exhaust them.
RETRIES = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 10}

#: The faults every scenario meets: 15% 5xx, 3% dropped connections (the write applied, the answer lost),
#: 2% 429 with Retry-After, 5% of requests delayed by a 300 ms spike; all drawn from one seeded generator.
FAULTS: dict[str, Any] = {
    "error_rate": 0.15,
    "error_status": 503,
    "drop_rate": 0.03,
    "rate_limited_rate": 0.02,
    "rate_limited_retry_after": 1,
    "latency_spike_rate": 0.05,
    "latency_spike_ms": 300,
}

WRITES = ("POST", "PUT", "PATCH", "DELETE")
_START = 1767225600  # 2026-01-01T00:00:00Z


def landed(request: Any) -> bool:
    """The request's write was applied: a 2xx answer, delivered or cut off on its way back."""
    return request.status is not None and 200 <= request.status < 300


@dataclass
class Scenario:
    """One destination object type under the matrix (see the module docstring).

    ``rows(run)`` is the source at run ``run`` (1, 2...); ``expect(emulator, rows_by_run)`` asserts the end
    state once those runs are done; ``writes(emulator)`` gives the key of each write request that must land
    at most once (a create or an event: the API is not idempotent); ``resends(emulator)`` the key of each
    write the API takes twice harmlessly, which may land again only after an answer was lost.
    """

    key: str
    vendor: str
    destination: str
    operator: str
    columns: list[str]
    primary_key: str
    rows: Callable[[int], list[dict[str, Any]]]
    sync_args: str
    setup: Callable[[Any], dict[str, Any]] = lambda emulator: {}
    expect: Callable[[Any, Mapping[str, Any], list[list[dict[str, Any]]]], None] = lambda e, c, r: None
    writes: Callable[[Any, Mapping[str, Any]], list[str]] | None = None
    resends: Callable[[Any, Mapping[str, Any]], list[tuple[str, bool]]] | None = None
    sql: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def table(self, prefix: str) -> str:
        return f"{prefix}_{self.key}"

    def sync_id(self, prefix: str) -> str:
        return f"{prefix}_{self.key}"

    def prepare(self, emulator: Any) -> None:
        self.context = self.setup(emulator)

    def load(self, warehouse: Any, prefix: str, run: int) -> list[dict[str, Any]]:
        rows = self.rows(run)
        warehouse.replace(self.table(prefix), rows, self.columns)
        return rows

    def tasks(self, prefix: str) -> str:
        sql = (self.sql or "SELECT * FROM {table}").format(table=self.table(prefix))
        args = self.sync_args.format(**self.context)
        return (
            f"diff_{self.key} = SyncDiffOperator(task_id='diff_{self.key}', sync_id='{self.sync_id(prefix)}', "
            f"conn_id='warehouse', sql={sql!r}, primary_key='{self.primary_key}')\n"
            f"{self.operator}(task_id='sync_{self.key}', plan=diff_{self.key}.output, {args})\n"
        )

    def check(self, emulator: Any, rows_by_run: list[list[dict[str, Any]]]) -> None:
        """The end state, and no write repeated (see the class docstring)."""
        self.expect(emulator, self.context, rows_by_run)
        if self.writes is not None:
            counts = Counter(self.writes(emulator, self.context))
            assert counts and max(counts.values()) == 1, f"{self.destination}: landed twice: " + str(
                {k: n for k, n in counts.items() if n > 1}
            )
        if self.resends is not None:
            answered = Counter(key for key, lost in self.resends(emulator, self.context) if not lost)
            assert max(answered.values(), default=0) <= 1, f"{self.destination}: re-sent after an answer arrived"


def dag_source(dag_id: str, prefix: str, scenarios: Sequence[Scenario]) -> str:
    body = "".join(textwrap.indent(s.tasks(prefix), "    ") for s in scenarios)
    return (
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_provider_zeotap.operators.diff import SyncDiffOperator\n"
        "from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator\n"
        "from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator\n"
        "from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator\n"
        "from airflow_provider_zeotap.operators.zeotap import ZeotapProfileSyncOperator\n\n"
        f"with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:\n"
        + body
    )


#: Retries that ride out an emulator restart (about a second without a listening port) within the run.
PATIENT_RETRIES = {"backoff_initial": 0.05, "backoff_max": 0.25, "max_attempts": 10}


def connections(emulators: Mapping[str, Any], retries: Mapping[str, Any] = RETRIES) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for the emulators given by vendor name."""
    env = {}
    for vendor, emulator in emulators.items():
        secret = {"personyze": "api_key", "permutive": "write_key", "optimizely": "token", "zeotap": "api_key"}[vendor]
        extra = dict(retries)
        if vendor == "zeotap":
            extra.update(org_id=str(emulator.org_id), region=emulator.region)
        env[f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT"] = connection_env(
            vendor, emulator.url, getattr(emulator, secret), **extra
        )
    return env


def configured_secrets(emulators: Mapping[str, Any]) -> list[str]:
    """Every secret the scenarios put in a connection, and the forms it travels in (Basic auth for Personyze)."""
    secrets = []
    for vendor, emulator in emulators.items():
        if vendor == "personyze":
            secrets += [emulator.api_key, base64.b64encode(f"api:{emulator.api_key}".encode()).decode()]
        elif vendor == "permutive":
            secrets.append(emulator.write_key)
        elif vendor == "optimizely":
            secrets.append(emulator.token)
        elif vendor == "zeotap":
            secrets.append(emulator.api_key)
    return secrets


def latest(rows_by_run: list[list[dict[str, Any]]], key: str, *, removes: bool) -> dict[Any, dict[str, Any]]:
    """What a target holds after the runs: mirror (``removes``) the last source; upsert every key's last row."""
    if removes:
        return {row[key]: row for row in rows_by_run[-1]}
    held: dict[Any, dict[str, Any]] = {}
    for rows in rows_by_run:
        held.update({row[key]: row for row in rows})
    return held


def first(rows_by_run: list[list[dict[str, Any]]], key: str) -> dict[Any, dict[str, Any]]:
    """What an insert-only target holds: each key as it was first seen (later changes are not sent)."""
    held: dict[Any, dict[str, Any]] = {}
    for rows in rows_by_run:
        for row in rows:
            held.setdefault(row[key], row)
    return held


# -- Personyze ------------------------------------------------------------------------------------------------


def _users(domain: str) -> Callable[[int], list[dict[str, Any]]]:
    """Run 1: 8 users; run 2: two renamed, two new, two no longer in the source (upsert keeps them)."""

    def rows(run: int) -> list[dict[str, Any]]:
        ids = range(1, 9) if run == 1 else range(3, 11)
        renamed = {5, 6} if run > 1 else set()
        return [{"customer_id": i, "email": f"{domain}{i}@example.com",
                 "first_name": f"Renamed{i}" if i in renamed else f"First{i}", "plan": "vip" if i % 3 else "basic"}
                for i in ids]

    return rows


def _expect_users(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = latest(rows_by_run, "email", removes=False)
    domain = next(iter(wanted)).split("@")[0].rstrip("0123456789")
    held = {u["email"]: u for u in emulator.users.values() if str(u.get("email", "")).startswith(domain)}
    assert set(held) == set(wanted), set(held) ^ set(wanted)
    assert {e: (u.get("first_name"), u.get("plan")) for e, u in held.items()} == {
        e: (r["first_name"], r["plan"]) for e, r in wanted.items()}
    all_emails = [u.get("email") for u in emulator.users.values() if u.get("email")]
    assert len(all_emails) == len(set(all_emails)), "a user was created twice"


USER_COLUMNS = ["customer_id", "email", "first_name", "plan"]
USER_MAPPING = "field_mapping={{'email': 'email', 'first_name': 'first_name', 'plan': 'plan'}}"


def _members(run: int) -> list[dict[str, Any]]:
    ids = range(1, 9) if run == 1 else range(4, 12)
    return [{"email": f"member{i}@example.com"} for i in ids]


def _setup_list(emulator: Any) -> dict[str, Any]:
    list_id = emulator.create_list("Fault matrix")
    emulator.add_to_list(list_id, emulator.create_user(email="by-hand@example.com"))
    return {"list_id": list_id}


def _expect_members(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = set(latest(rows_by_run, "email", removes=True)) | {"by-hand@example.com"}
    assert emulator.list_member_emails(context["list_id"]) == wanted


def _member_adds(emulator: Any, context: Mapping[str, Any]) -> list[tuple[str, bool]]:
    return [(r.json.get("user_email"), r.fault == "dropped") for r in emulator.requests
            if r.method == "POST" and r.path == "/rest/user_list_users" and landed(r)]


def _products(run: int) -> list[dict[str, Any]]:
    ids = range(1, 9) if run == 1 else range(4, 12)
    return [{"sku": f"SKU-{i:03d}", "title": f"Product {i}" + (" v2" if run > 1 and i in (6, 7) else ""),
             "price": 10.0 + i} for i in ids]


def _setup_catalog(emulator: Any) -> dict[str, Any]:
    emulator.create_product(internal_id="BY-HAND", title="Made by hand", price=1.0)
    return {}


def _expect_products(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = latest(rows_by_run, "sku", removes=True)
    held = emulator.products
    assert set(held) == set(wanted) | {"BY-HAND"}, set(held) ^ (set(wanted) | {"BY-HAND"})
    assert {k: (p["title"], float(p["price"])) for k, p in held.items() if k != "BY-HAND"} == {
        k: (r["title"], r["price"]) for k, r in wanted.items()}


def _purchases(run: int) -> list[dict[str, Any]]:
    """Run 1: 16 order lines; run 2: 8 more, and one old line changed (events are not sent again)."""
    rows = []
    for i in range(1, 17 if run == 1 else 25):
        when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(_START + 60 * i))
        rows.append({"line_id": i, "customer": f"fm-cust-{i % 7}", "sku": f"SKU-{i % 5}", "status": "goal",
                     "quantity": 1 + i % 3 + (5 if run > 1 and i == 2 else 0), "ordered_at": when})
    return rows


def _expect_interactions(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    internal = {user_id: u.get("internal_id") for user_id, u in emulator.users.items()}
    held = Counter((r["product_internal_id"], internal.get(r["user_id"]), int(r["transaction_time"]))
                   for r in emulator.interactions if str(internal.get(r["user_id"])).startswith("fm-cust-"))
    wanted = Counter((r["sku"], r["customer"], _START + 60 * r["line_id"]) for r in first(rows_by_run, "line_id").values())
    assert held == wanted, f"missing: {wanted - held}, twice: {held - wanted}"


def _articles(run: int) -> list[dict[str, Any]]:
    ids = range(1, 9) if run == 1 else range(4, 12)
    return [{"slug": f"fm-post-{i:03d}", "title": f"Post {i}" + (" v2" if run > 1 and i in (6, 7) else "")}
            for i in ids]


def _setup_articles(emulator: Any) -> dict[str, Any]:
    emulator.create_article(internal_id="BY-HAND", title="Written by hand")
    return {}


def _expect_articles(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = latest(rows_by_run, "slug", removes=True)
    held = {k: a["title"] for k, a in emulator.articles.items()}
    expected = {k: r["title"] for k, r in wanted.items()} | {"BY-HAND": "Written by hand"}
    assert held == expected, set(held.items()) ^ set(expected.items())


def _reads(run: int) -> list[dict[str, Any]]:
    """Run 1: 12 article reads; run 2: 6 more, and one old read changed (events are not sent again)."""
    return [{"read_id": i, "reader": f"fm-reader{i % 4}@example.com", "slug": f"fm-post-{i % 5}",
             "action": "liked" if i % 3 == 0 or (run > 1 and i == 2) else "viewed"}
            for i in range(1, 13 if run == 1 else 19)]


def _article_commands(emulator: Any, context: Mapping[str, Any]) -> list[tuple[tuple[str, str, str], bool]]:
    """Each article command of each ``do`` request that was applied, and whether its answer was lost.

    A cut answer without a body is cut before its status line, so the log has no status for it: a dropped
    request (the matrix drops after the write) counts as applied whatever its status."""
    return [((str(command[1]), str(command[3]), str(command[2])), r.fault == "dropped") for r in emulator.requests
            if r.method == "POST" and r.path == "/rest/do" and (landed(r) or r.fault == "dropped")
            for command in r.json or []
            if isinstance(command, list) and len(command) == 4 and str(command[2]).startswith("Article ")]


def _expect_article_reads(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    """Every read logged; one repeated only where an answer was lost (no REST object reads them back)."""
    emails = {user_id: u.get("email") for user_id, u in emulator.users.items()}
    held = Counter((emails.get(a["user_id"]), a["article_internal_id"], a["action"])
                   for a in emulator.article_interactions if str(emails.get(a["user_id"])).startswith("fm-reader"))
    wanted = Counter((r["reader"], r["slug"], r["action"]) for r in first(rows_by_run, "read_id").values())
    assert not wanted - held, f"missing: {wanted - held}"
    lost = sum(1 for _, dropped in _article_commands(emulator, context) if dropped)
    assert sum((held - wanted).values()) <= lost, f"twice without a lost answer: {held - wanted}"


def personyze_scenarios() -> list[Scenario]:
    return [
        Scenario("users_do", "personyze", "Personyze users (POST /rest/do)", "PersonyzeSyncOperator", USER_COLUMNS,
                 "customer_id", _users("do"), "object_type='users', sync_mode='upsert', " + USER_MAPPING,
                 expect=_expect_users),
        Scenario("users_per_row", "personyze", "Personyze users (per row)", "PersonyzeSyncOperator", USER_COLUMNS,
                 "customer_id", _users("row"),
                 "object_type='users', sync_mode='upsert', users_write='per_row', " + USER_MAPPING,
                 expect=_expect_users),
        Scenario("members", "personyze", "Personyze list members", "PersonyzeSyncOperator", ["email"], "email",
                 _members, "object_type='user_list_members', audience_mode='mirror', list_id='{list_id}'",
                 setup=_setup_list, expect=_expect_members, resends=_member_adds),
        Scenario("products", "personyze", "Personyze products catalog", "PersonyzeSyncOperator",
                 ["sku", "title", "price"], "sku", _products,
                 "object_type='products', sync_mode='mirror', "
                 "field_mapping={{'internal_id': 'sku', 'title': 'title', 'price': 'price'}}",
                 setup=_setup_catalog, expect=_expect_products),
        Scenario("purchases", "personyze", "Personyze product interactions", "PersonyzeSyncOperator",
                 ["line_id", "customer", "sku", "status", "quantity", "ordered_at"], "line_id", _purchases,
                 "object_type='product_interactions', sync_mode='insert', batch_size=8, "
                 "field_mapping={{'user_internal_id': 'customer', 'product_internal_id': 'sku', 'status': 'status', "
                 "'quantity': 'quantity', 'transaction_time': 'ordered_at'}}",
                 expect=_expect_interactions),
        Scenario("articles", "personyze", "Personyze articles catalog", "PersonyzeSyncOperator", ["slug", "title"],
                 "slug", _articles, "object_type='articles', sync_mode='mirror', "
                 "field_mapping={{'internal_id': 'slug', 'title': 'title'}}",
                 setup=_setup_articles, expect=_expect_articles),
        Scenario("article_reads", "personyze", "Personyze article interactions", "PersonyzeSyncOperator",
                 ["read_id", "reader", "slug", "action"], "read_id", _reads,
                 "object_type='article_interactions', sync_mode='insert', batch_size=6, "
                 "field_mapping={{'user_email': 'reader', 'article_internal_id': 'slug', 'status': 'action'}}",
                 expect=_expect_article_reads),
    ]


# -- Permutive ------------------------------------------------------------------------------------------------


def _segments(run: int) -> list[dict[str, Any]]:
    ids = range(1, 31) if run == 1 else range(6, 36)
    return [{"code": f"fm-seg-{i:03d}", "name": f"Segment {i}" + (" renamed" if run > 1 and i % 10 == 0 else "")}
            for i in ids]


def _setup_import(emulator: Any) -> dict[str, Any]:
    import_id = emulator.create_import("Fault matrix")
    emulator.create_segment(import_id, code="by-hand", name="Made by hand")
    return {"import_id": import_id}


def _expect_segments(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = latest(rows_by_run, "code", removes=True)
    held = {c: s["name"] for c, s in emulator.segments(context["import_id"]).items()}
    expected = {c: r["name"] for c, r in wanted.items()} | {"by-hand": "Made by hand"}
    assert held == expected, set(held.items()) ^ set(expected.items())


def _segment_creates(emulator: Any, context: Mapping[str, Any]) -> list[str]:
    return [op["data"]["code"] for r in emulator.requests if r.method == "PATCH" and landed(r)
            for op in (r.json or {}).get("operations") or [] if op["operation"] == "Create"]


def permutive_scenarios() -> list[Scenario]:
    return [
        Scenario("segments", "permutive", "Permutive segments", "PermutiveSyncOperator", ["code", "name"], "code",
                 _segments, "import_id='{import_id}', audience_mode='mirror', batch_size=6, "
                 "field_mapping={{'segment_code': 'code', 'segment_name': 'name'}}",
                 setup=_setup_import, expect=_expect_segments, writes=_segment_creates),
    ]


# -- Optimizely -----------------------------------------------------------------------------------------------


def _list_users(run: int) -> list[dict[str, Any]]:
    ids = range(1, 21) if run == 1 else range(6, 26)
    return [{"user_id": f"fm-u{i:03d}"} for i in ids]


def _setup_project(emulator: Any) -> dict[str, Any]:
    project = emulator.create_project("Fault matrix")
    return {"project_id": project, "list_id": emulator.create_list_attribute(project, "fm_vips", ["by-hand"])}


def _expect_list(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    members = emulator.list_members(context["list_id"])
    assert len(members) == len(set(members)), "an id is in the list twice"
    assert set(members) == set(latest(rows_by_run, "user_id", removes=True)) | {"by-hand"}


def _events(run: int) -> list[dict[str, Any]]:
    ids = range(1, 7) if run == 1 else range(1, 10)
    return [{"event_key": f"fm_event_{i}", "event_name": f"Event {i}" + (" renamed" if run > 1 and i == 2 else "")}
            for i in ids]


def _expect_events(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    held = [e for e in emulator.objects("custom_events", context["project_id"])]
    assert sorted(e["key"] for e in held) == sorted(first(rows_by_run, "event_key"))
    names = {e["key"]: e["name"] for e in held}
    assert names == {k: r["event_name"] for k, r in first(rows_by_run, "event_key").items()}


def _event_creates(emulator: Any, context: Mapping[str, Any]) -> list[str]:
    path = f"/v2/projects/{context['project_id']}/custom_events"
    return [r.json["key"] for r in emulator.requests if r.method == "POST" and r.path == path and landed(r)]


def _upserted(object_type: str, key: str, name: str, column: str, value: str, path: str) -> dict[str, Any]:
    """An Optimizely object type upserted by ``key`` from the columns ``column`` (key) and ``value``: run 1 has
    4 objects, run 2 two more and one changed; the end state is every key's last value, and each create lands
    once."""
    def rows(run: int) -> list[dict[str, Any]]:
        return [{column: f"fm_{object_type}_{i}", value: f"{object_type} {i}" + (" v2" if run > 1 and i == 2 else "")}
                for i in range(1, 5 if run == 1 else 7)]

    def expect(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
        held = {o[key]: o.get(name) for o in emulator.objects(object_type, context["project_id"])
                if str(o.get(key)).startswith("fm_")}
        assert held == {k: r[value] for k, r in latest(rows_by_run, column, removes=False).items()}

    def creates(emulator: Any, context: Mapping[str, Any]) -> list[str]:
        return [r.json[key] for r in emulator.requests if r.method == "POST" and r.path == path and landed(r)]

    return {"rows": rows, "expect": expect, "writes": creates}


def optimizely_scenarios() -> list[Scenario]:
    shared: dict[str, Any] = {}

    def setup_once(emulator: Any) -> dict[str, Any]:
        if not shared:
            shared.update(_setup_project(emulator))
        return shared

    return [
        Scenario("list_attribute", "optimizely", "Optimizely list attributes", "OptimizelySyncOperator", ["user_id"],
                 "user_id", _list_users, "object_type='list_attributes', audience_mode='mirror', "
                 "project_id='{project_id}', list_attribute_id='{list_id}'",
                 setup=setup_once, expect=_expect_list),
        Scenario("custom_events", "optimizely", "Optimizely custom events", "OptimizelySyncOperator",
                 ["event_key", "event_name"], "event_key", _events,
                 "object_type='custom_events', sync_mode='insert', project_id='{project_id}', "
                 "field_mapping={{'key': 'event_key', 'name': 'event_name'}}",
                 setup=setup_once, expect=_expect_events, writes=_event_creates),
        Scenario(key="audiences", vendor="optimizely", destination="Optimizely audiences",
                 operator="OptimizelySyncOperator", columns=["audience", "about"], primary_key="audience",
                 sync_args="object_type='audiences', sync_mode='upsert', project_id='{project_id}', "
                 "field_mapping={{'name': 'audience', 'description': 'about'}}", setup=setup_once,
                 **_upserted("audiences", "name", "description", "audience", "about", "/v2/audiences")),
        Scenario(key="attributes", vendor="optimizely", destination="Optimizely attributes",
                 operator="OptimizelySyncOperator", columns=["attribute", "label"], primary_key="attribute",
                 sync_args="object_type='attributes', sync_mode='upsert', project_id='{project_id}', "
                 "field_mapping={{'key': 'attribute', 'name': 'label'}}", setup=setup_once,
                 **_upserted("attributes", "key", "name", "attribute", "label", "/v2/attributes")),
    ]


# -- Zeotap ---------------------------------------------------------------------------------------------------


def _profiles(run: int) -> list[dict[str, Any]]:
    ids = range(1, 31) if run == 1 else range(6, 36)
    return [{"customer_id": f"fm-{i:03d}", "first_name": f"First{i}" + (" v2" if run > 1 and i % 7 == 0 else ""),
             "plan": "vip" if i % 2 else "basic"} for i in ids]


def _expect_profiles(emulator: Any, context: Mapping[str, Any], rows_by_run: list[list[dict[str, Any]]]) -> None:
    wanted = latest(rows_by_run, "customer_id", removes=True)
    held = {p["ids"]["user_id"]: p["profile"] for p in emulator.profiles.values() if "user_id" in p["ids"]}
    assert held == {k: {"first_name": r["first_name"], "plan": r["plan"]} for k, r in wanted.items()}


def zeotap_scenarios() -> list[Scenario]:
    return [
        Scenario("profiles", "zeotap", "Zeotap profiles", "ZeotapProfileSyncOperator",
                 ["customer_id", "first_name", "plan"], "customer_id", _profiles,
                 "id_type='user_id', sync_mode='mirror', batch_size=10, "
                 "field_mapping={{'first_name': 'first_name', 'profile.plan': 'plan'}}",
                 expect=_expect_profiles),
    ]


SCENARIOS: dict[str, Callable[[], list[Scenario]]] = {
    "personyze": personyze_scenarios,
    "permutive": permutive_scenarios,
    "optimizely": optimizely_scenarios,
    "zeotap": zeotap_scenarios,
}


# -- a restart in the middle of a run -------------------------------------------------------------------------


class RestartAfterWrites(threading.Thread):
    """Restarts an emulator (connections cut, the port refused for ``down_for`` s) once it has seen
    ``writes`` write requests: in the middle of a delivery, whatever its timing."""

    def __init__(self, emulator: Any, writes: int, *, down_for: float = 0.3) -> None:
        super().__init__(daemon=True, name=f"restart-{emulator.name}")
        self.emulator, self.writes, self.down_for = emulator, writes, down_for
        self.finished = threading.Event()
        self.restarted_after: int | None = None  # the request log's length when the restart began

    def run(self) -> None:
        while not self.finished.is_set():
            requests = self.emulator.requests
            if sum(r.method in WRITES for r in requests) >= self.writes:
                self.restarted_after = len(requests)
                self.emulator.restart(down_for=self.down_for)
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self.finished.set()
        self.join(10)
