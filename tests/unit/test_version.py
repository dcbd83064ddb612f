"""The version is written once, in ``airflow_provider_zeotap/__init__.py``; everything else reads it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from airflow_provider_zeotap import __version__
from airflow_provider_zeotap.get_provider_info import get_provider_info

ROOT = Path(__file__).resolve().parents[2]


def test_get_provider_info_reports_the_package_version():
    assert get_provider_info()["versions"] == [__version__]


def test_the_package_metadata_takes_the_version_from_the_package():
    # pyproject.toml declares the version dynamic, read from __version__: no second literal to drift.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version\s*=\s*"', pyproject, re.MULTILINE) is None
    assert 'version = { attr = "airflow_provider_zeotap.__version__" }' in pyproject
    assert importlib.metadata.version("airflow-provider-zeotap") == __version__


def test_the_changelog_s_first_entry_names_the_version():
    entries = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert entries, "CHANGELOG.md has no '## <version>' entry"
    assert entries[0] == __version__
