"""Look for secrets everywhere a sync leaves text behind, and say where each one was found.

One call, :func:`scan_for_secrets`, covers what a run leaves: every line of every task log under the
Airflow home's log folder, every text value of the metadata database (XCom, rendered template fields,
the asset and task state stores, task and DAG run rows: the whole database, table by table, so a new
table is covered without a change here), every file of the sync state and delivery folders (parquet
files are decoded value by value, since their pages may be compressed, which hides a plain byte search;
rejected-rows and outcome files are among them), and any text the caller hands over (exception texts,
captured output).

Each secret is looked for as it is and in the forms it travels in: Basic auth's ``base64("api:<key>")``
(what the Personyze hook sends) and ``base64("<key>:")`` (the vendor's curl examples), and
percent-encoded. A finding names the place and the form, never the secret.

From a fixture or a test::

    assert_no_secrets(airflow_home=os.environ["AIRFLOW_HOME"], state_dirs=[state_dir],
                      secrets=[emulator.api_key], texts={"exception": str(error)})

The metadata database of a test session is shared by every test in it: give the emulators keys of their own
(``PersonyzeEmulator(api_key=...)``) so a finding is the run's under test, not another test's.
"""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: The metadata database of an Airflow home on SQLite (what the tests and the demo use).
METADATA_DB = "airflow.db"


@dataclass(frozen=True)
class Finding:
    """One secret found: where (a file and line, a table, row and column, a named text) and in which form."""

    where: str
    form: str

    def __str__(self) -> str:
        return f"{self.form} in {self.where}"


def secret_forms(secrets: Iterable[str]) -> dict[str, str]:
    """Each secret and the forms it travels in, by a name that does not spell it ("secret #1, base64('api:…')")."""
    forms: dict[str, str] = {}
    for number, secret in enumerate(dict.fromkeys(s for s in secrets if s), start=1):
        name = f"secret #{number}"
        forms[secret] = name
        for label, raw in ((f"base64('api:' + {name})", f"api:{secret}"), (f"base64({name} + ':')", f"{secret}:")):
            forms[base64.b64encode(raw.encode()).decode("ascii")] = label
        if quote(secret, safe="") != secret:
            forms[quote(secret, safe="")] = f"{name}, percent-encoded"
    return forms


def scan_for_secrets(
    *,
    secrets: Iterable[str],
    airflow_home: str | os.PathLike[str] | None = None,
    state_dirs: Iterable[str | os.PathLike[str]] = (),
    texts: Mapping[str, str] | None = None,
    log_dirs: Iterable[str | os.PathLike[str]] = (),
    metadata_db: str | os.PathLike[str] | None = None,
) -> list[Finding]:
    """Every place where a secret (in any of its :func:`secret_forms`) was found; empty when none.

    ``airflow_home`` brings its ``logs/`` folder and its SQLite metadata database (``airflow.db``) unless
    ``log_dirs`` or ``metadata_db`` name others. ``state_dirs`` are the sync state folders (snapshots,
    plans with their delivery outcomes and rejected rows, ownership records). ``texts`` are named texts
    such as exception messages or a task's captured output.
    """
    forms = secret_forms(secrets)
    if not forms:
        raise ValueError("no secret to look for: a scan for nothing finds nothing and proves nothing")
    logs = [Path(d) for d in log_dirs]
    database = Path(metadata_db) if metadata_db else None
    if airflow_home is not None:
        home = Path(airflow_home)
        logs = logs or [home / "logs"]
        database = database or home / METADATA_DB
    findings: list[Finding] = []
    for where, text in _texts(logs, database, [Path(d) for d in state_dirs], texts or {}):
        findings += [Finding(where, name) for value, name in forms.items() if value in text]
    return findings


def assert_no_secrets(**scan: Any) -> None:
    """:func:`scan_for_secrets` with the same arguments, failing with one line per finding."""
    findings = scan_for_secrets(**scan)
    assert findings == [], "secrets found:\n" + describe(findings)


def describe(findings: Iterable[Finding]) -> str:
    """One line per finding, for an assertion message."""
    return "\n".join(str(finding) for finding in findings) or "no secret found"


def _texts(
    logs: list[Path], database: Path | None, state_dirs: list[Path], texts: Mapping[str, str]
) -> Iterator[tuple[str, str]]:
    for folder in logs:
        for path in _files(folder):
            for number, line in enumerate(_read_text(path).splitlines(), start=1):
                yield f"log {path} line {number}", line
    if database is not None:
        if not database.exists():
            raise FileNotFoundError(f"no metadata database at {database}: pass metadata_db=")
        yield from _database_texts(database)
    for folder in state_dirs:
        for path in _files(folder):
            if path.suffix == ".parquet":
                yield from _parquet_texts(path)
            else:
                yield f"state file {path}", _read_text(path)
    for name, text in texts.items():
        yield name, text


def _files(folder: Path) -> Iterator[Path]:
    if not folder.exists():
        return
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            yield Path(root) / name


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def _database_texts(database: Path) -> Iterator[tuple[str, str]]:
    """Every text or blob value of every table (read-only, so a running test's database is left alone)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = db.execute(f'SELECT rowid, * FROM "{table}"')
            columns = [d[0] for d in cursor.description][1:]
            for rowid, *values in cursor:
                for column, value in zip(columns, values):
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    if isinstance(value, str):
                        yield f"metadata table {table} row {rowid} column {column}", value


def _parquet_texts(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for column in table.column_names:
        for number, value in enumerate(table.column(column).to_pylist()):
            if value is not None:
                yield f"state file {path} column {column} row {number}", str(value)
