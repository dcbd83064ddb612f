"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point.

Connection forms are declared here (``conn-fields`` and ``ui-field-behaviour``) so the UI can render them
without importing the hooks: they come from ``hooks/forms.py``, plain data the hooks read too.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_zeotap import __version__
from airflow_provider_zeotap.hooks.forms import FORMS


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-zeotap",
        "name": "Zeotap reverse ETL",
        "description": "Sync warehouse data into Personyze, Optimizely, Permutive and the Zeotap Profile API.",
        "versions": [__version__],
        "connection-types": [form.provider_info() for form in FORMS.values()],
        "operators": [
            {
                "integration-name": "Zeotap reverse ETL",
                "python-modules": [
                    "airflow_provider_zeotap.operators.diff",
                    "airflow_provider_zeotap.operators.personyze",
                    "airflow_provider_zeotap.operators.permutive",
                    "airflow_provider_zeotap.operators.zeotap",
                    "airflow_provider_zeotap.operators.optimizely",
                ],
            }
        ],
        "config": {
            "zeotap_sync": {
                "description": "Defaults of the Zeotap reverse ETL provider.",
                "options": {
                    "state_uri": {
                        "description": "Where snapshots, changes and rejected rows are written "
                        "(any ObjectStoragePath URI). Default: file://$AIRFLOW_HOME/zeotap_sync_state",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://my-bucket/zeotap-sync",
                        "default": "",
                    },
                    "connection_pools": {
                        "description": "Put every sync task without a pool of its own into the Airflow pool "
                        "zeotap_sync__<conn_id> of the connection it writes through, so that the scheduler runs "
                        "the tasks of one API key or organisation one at a time (each task paces itself to the "
                        "API's whole limit). Create each pool first, e.g. "
                        "airflow pools set zeotap_sync__personyze_default 1 \"Personyze API\": a task in a pool "
                        "that does not exist is never scheduled.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                },
            }
        },
    }
