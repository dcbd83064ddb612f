"""Arrows point one way: the engine owns its port and knows no adapter, no vendor and no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import airflow_provider_zeotap

PACKAGE = Path(airflow_provider_zeotap.__file__).parent


def imported_modules(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / folder).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[path.name] = names
    return found


def test_the_engine_imports_nothing_from_adapters_hooks_http_or_operators():
    forbidden = ("destinations", "hooks", "http", "operators")
    offenders = {
        module: sorted(name for name in names if any(name.startswith(f"airflow_provider_zeotap.{f}") for f in forbidden))
        for module, names in imported_modules("sync").items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_hooks_know_nothing_of_syncs_and_the_http_core_nothing_of_vendors():
    for folder, forbidden in (("hooks", ("sync", "destinations", "operators")), ("http", ("sync", "destinations", "operators", "hooks"))):
        for module, names in imported_modules(folder).items():
            bad = [n for n in names if any(n.startswith(f"airflow_provider_zeotap.{f}") for f in forbidden)]
            assert bad == [], f"{folder}/{module} imports {bad}"


def test_the_syncs_page_reads_stored_records_and_calls_no_destination():
    forbidden = ("destinations", "hooks", "http", "operators")
    for module, names in imported_modules("ui").items():
        bad = [n for n in names if any(n.startswith(f"airflow_provider_zeotap.{f}") for f in forbidden)]
        assert bad == [], f"ui/{module} imports {bad}"
