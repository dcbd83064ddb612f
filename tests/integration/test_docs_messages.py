"""The docs quote error messages; each quote must be what the code path it describes really says.

The quotes are the ``- *"..."*:`` bullets of ``docs/connections.md``'s "What the errors say", of each destination
page's "Troubleshooting" section, and of the whole troubleshooting index, ``docs/troubleshooting.md``. In a quote,
``...`` stands for any text and a lone ``N`` for a number. Each page's quotes are matched against the messages its
own scenarios produce, over real sockets against the emulators (and, for the sync paths, in real Airflow runs);
the index's quotes against the messages of every scenario.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.testing import PermutiveEmulator, PersonyzeEmulator
from tests.integration.conftest import connection_env

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: A quote opens a bullet: ``- *"message"*:`` or ``- *"message"* (...)``; it may wrap over lines.
QUOTE = re.compile(r'^- \*"([^*]+?)"\*(?=:|\s+\()', re.MULTILINE)
#: Where each scenario's quotes are: (page, ``## `` heading), or (page, None) for the whole page.
PAGES = {
    "Connections": ("connections.md", "What the errors say"),
    "Personyze": ("destinations/personyze.md", "Troubleshooting"),
    "Permutive": ("destinations/permutive.md", "Troubleshooting"),
}
INDEX = "troubleshooting.md"
#: The troubleshooting index's sections with quotes, and the test module that checks each one against the
#: messages its scenarios produce (each destination's own scenarios, so none runs twice).
INDEX_SECTIONS = {
    "Bad input, any destination": "tests/integration/test_bad_input.py",
    "Personyze": "tests/integration/test_docs_messages.py",
    "Permutive": "tests/integration/test_docs_messages.py",
    "Optimizely": "tests/integration/test_optimizely_docs_messages.py",
    "Zeotap Profile API": "tests/integration/test_zeotap_docs_messages.py",
}


def use(monkeypatch: pytest.MonkeyPatch, conn_type: str, host: str, password: str, **extras: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_type.upper()}_DEFAULT", connection_env(conn_type, host, password, **extras))


def section(page: str, heading: str | None) -> str:
    """A docs page, or its ``## heading`` section up to the next ``## `` heading."""
    text = (DOCS / page).read_text()
    if heading is None:
        return text
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def quotes(page: str, heading: str | None = None) -> list[str]:
    return [" ".join(quote.split()) for quote in QUOTE.findall(section(page, heading))]


def as_pattern(quote: str) -> re.Pattern[str]:
    pattern = re.escape(quote).replace(re.escape("..."), ".+?")
    return re.compile(re.sub(r"\bN\b", r"\\d+", pattern))


def test_the_docs_quote_messages_at_all():
    """Guards the parser: an edit that breaks the bullet format must not make the test below vacuous."""
    assert len(quotes(*PAGES["Connections"])) >= 6
    assert len(quotes(*PAGES["Personyze"])) >= 2
    assert len(quotes(*PAGES["Permutive"])) >= 4
    assert len(quotes(INDEX, "Personyze")) >= 6
    assert len(quotes(INDEX, "Permutive")) >= 5
    assert as_pattern("user list N does not exist").search("user list 42 does not exist")


def test_every_quote_of_the_troubleshooting_index_is_in_a_checked_section():
    """A quote in a section no test reads would never be checked: each section with quotes must be listed."""
    text = section(INDEX, None)
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    quoted = {title for title, body in sections.items() if QUOTE.search(body)}
    assert quoted <= set(INDEX_SECTIONS), f"sections with quotes that no test checks: {quoted - set(INDEX_SECTIONS)}"
    assert not QUOTE.search(text.split("\n## ", 1)[0]), "quotes before the first section are not checked"


def _dag(dag_runner, dag_id: str, body: str) -> str:
    return dag_runner.write(f'''
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_provider_zeotap.operators.diff import SyncDiffOperator
        from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
        from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

        with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            {body}
    ''')


def connections_messages(monkeypatch, tmp_path) -> list[str]:
    messages: list[str] = []

    def tested(conn_type: str, host: str, password: str = "k3y-value", **extras) -> str:
        use(monkeypatch, conn_type, host, password, **extras)
        hook = {"personyze": PersonyzeHook, "permutive": PermutiveHook, "zeotap": ZeotapProfileHook}[conn_type]()
        return hook.test_connection()[1]

    messages.append(tested("personyze", "app.personyze.com"))
    messages.append(tested("personyze", "http://10.20.30.40"))
    with PersonyzeEmulator() as emulator:
        messages.append(tested("personyze", f"{emulator.url}/api", emulator.api_key))
        messages.append(tested("personyze", emulator.url.replace("http://", "https://"), emulator.api_key))
        messages.append(tested("personyze", emulator.url, emulator.api_key, max_atempts=2))
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = str(tmp_path / "chain.pem"), str(tmp_path / "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(chain)
    cert.private_key_pem.write_to_path(key)
    with PersonyzeEmulator(ssl_certfile=chain, ssl_keyfile=key) as emulator:
        messages.append(tested("personyze", emulator.url, emulator.api_key))
    with PermutiveEmulator() as emulator:
        messages.append(tested("permutive", emulator.url, emulator.write_key))
    use(monkeypatch, "zeotap", "https://api.zeotap.com", "k3y-value", org_id="1", region="EU",
        client_key="not-a-real-key")
    hook = ZeotapProfileHook()
    hook.settings  # noqa: B018 - reading the extras is what warns
    messages += hook.notes
    return messages


def personyze_messages(monkeypatch, dag_runner, warehouse, capfd) -> list[str]:
    messages: list[str] = []
    with PersonyzeEmulator() as emulator:
        use(monkeypatch, "personyze", emulator.url, emulator.api_key)
        with pytest.raises(Exception) as caught:
            PersonyzeHook().require_user_list(999)
        messages.append(str(caught.value))

        # A users sync with a bad key: the task fails with the guidance, in the task's own log.
        use(monkeypatch, "personyze", emulator.url, "bad-key-x1", max_attempts=1)
        warehouse.replace("customers", [{"id": 1, "email": "a@example.com"}], ["id", "email"])
        capfd.readouterr()
        run = dag_runner.run(_dag(dag_runner, "docs_personyze_bad_key", '''
            diff = SyncDiffOperator(task_id="diff", sync_id="docs_personyze_bad_key", conn_id="warehouse",
                                    sql="SELECT * FROM customers", primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert")
        '''))
        output = capfd.readouterr()
        assert run.task_states["sync"] == "failed"
        assert "bad-key-x1" not in output.out + output.err
        messages += [line for line in (output.out + output.err).splitlines() if "Personyze" in line]

        # 503 on every answer: retried with backoff up to max_attempts, then the error says it gave up.
        use(monkeypatch, "personyze", emulator.url, emulator.api_key, max_attempts=2, backoff_initial=0.01,
            backoff_max=0.01)
        emulator.set_faults(error_rate=1, error_status=503)
        with pytest.raises(Exception) as caught:
            PersonyzeHook().require_user_list(999)
        messages.append(str(caught.value))
        emulator.set_faults()

        # Rows refused per row: users with no email, with a non-email, and two emails that meet once normalised;
        # an update of a product not in the catalog, an unknown interaction status, and a command Personyze
        # itself refuses (a user_id that names no user).
        use(monkeypatch, "personyze", emulator.url, emulator.api_key)
        warehouse.replace("people", [{"id": 1, "email": None}, {"id": 2, "email": "not-an-email"},
                                     {"id": 3, "email": "Jo@Ex.com"}, {"id": 4, "email": "jo@ex.com "},
                                     {"id": 5, "email": "  "}],
                          ["id", "email"])
        warehouse.replace("products", [{"sku": "SKU-404", "title": "Gone"}], ["sku", "title"])
        warehouse.replace("events", [{"id": 1, "user_id": 424242, "sku": "S", "status": "goal", "at": 1},
                                     {"id": 2, "user_id": 424243, "sku": "S", "status": "purchase", "at": 2}],
                          ["id", "user_id", "sku", "status", "at"])
        for name, sync in (
            ("docs_personyze_people", '''
            diff = SyncDiffOperator(task_id="diff", sync_id="docs_personyze_people", conn_id="warehouse",
                                    sql="SELECT * FROM people", primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert",
                                  field_mapping={"email": "email"}, normalize_email=True)
            '''),
            ("docs_personyze_catalog", '''
            diff = SyncDiffOperator(task_id="diff", sync_id="docs_personyze_catalog", conn_id="warehouse",
                                    sql="SELECT * FROM products", primary_key="sku")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="products", sync_mode="update",
                                  field_mapping={"internal_id": "sku", "title": "title"})
            '''),
            ("docs_personyze_events", '''
            diff = SyncDiffOperator(task_id="diff", sync_id="docs_personyze_events", conn_id="warehouse",
                                    sql="SELECT * FROM events", primary_key="id")
            PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="product_interactions",
                                  sync_mode="insert", field_mapping={"user_id": "user_id", "status": "status",
                                  "product_internal_id": "sku", "transaction_time": "at"})
            '''),
        ):
            result = dag_runner.run(_dag(dag_runner, name, sync)).result("sync")
            with open(result["rejected_rows_uri"].removeprefix("file://")) as rejected:
                messages += [json.loads(line)["reason"] for line in rejected]
    return messages


def permutive_messages(monkeypatch, dag_runner, warehouse) -> list[str]:
    messages: list[str] = []
    with PermutiveEmulator() as emulator:
        import_id = emulator.create_import("Web visitors")
        for key in ("not-a-private-key", emulator.read_only_key):
            use(monkeypatch, "permutive", emulator.url, key)
            messages.append(PermutiveHook().test_connection()[1])
        use(monkeypatch, "permutive", emulator.url, emulator.write_key)
        with pytest.raises(Exception) as caught:
            PermutiveHook().require_write_access("32f8e031-c532-41bb-b25e-65bdb677a96f")
        messages.append(str(caught.value))

        # Someone else's segment meets an add sync's Create: the row is rejected with the reason.
        emulator.create_segment(import_id, code="seg-1", name="Made by hand")
        warehouse.replace("segments", [{"code": "seg-1", "name": "Segment 1"}, {"code": "bad code", "name": "Bad"}],
                          ["code", "name"])
        run = dag_runner.run(_dag(dag_runner, "docs_permutive_conflict", f'''
            diff = SyncDiffOperator(task_id="diff", sync_id="docs_permutive_conflict", conn_id="warehouse",
                                    sql="SELECT * FROM segments", primary_key="code")
            PermutiveSyncOperator(task_id="sync", plan=diff.output, import_id="{import_id}", audience_mode="add",
                                  field_mapping={{"segment_code": "code", "segment_name": "name"}})
        '''))
        result = run.result("sync")
        with open(result["rejected_rows_uri"].removeprefix("file://")) as rejected:
            messages += [json.loads(line)["reason"] for line in rejected]
    return messages


def test_every_quoted_message_is_produced_by_the_code_path_it_describes(dag_runner, warehouse, monkeypatch,
                                                                       capfd, tmp_path):
    produced = {
        "Connections": connections_messages(monkeypatch, tmp_path),
        "Personyze": personyze_messages(monkeypatch, dag_runner, warehouse, capfd),
        "Permutive": permutive_messages(monkeypatch, dag_runner, warehouse),
    }
    missing = {
        title: [q for q in quotes(*PAGES[title]) if not any(as_pattern(q).search(m) for m in produced[title])]
        for title in PAGES
    }
    missing[INDEX] = [
        q for title, sources in (("Personyze", ("Personyze", "Connections")), ("Permutive", ("Permutive",)))
        for q in quotes(INDEX, title)
        if not any(as_pattern(q).search(m) for source in sources for m in produced[source])
    ]
    expected = {title: [] for title in [*PAGES, INDEX]}
    assert missing == expected, f"not produced: {missing}; produced: {json.dumps(produced)}"
