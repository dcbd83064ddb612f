"""Test session set-up: a private AIRFLOW_HOME with a SQLite metadata database.

The environment is set here, before anything imports Airflow, so every test (and every real Airflow
task run with ``dag.test()``) uses this temporary home and never the developer's own.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="zeotap-airflow-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(_HOME, "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], exist_ok=True)

# The emulator fixtures are opt-in (no pytest11 entry point): this suite asks for them like any user would.
pytest_plugins = ["airflow_provider_zeotap.testing.pytest_plugin"]


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    shutil.rmtree(_HOME, ignore_errors=True)
