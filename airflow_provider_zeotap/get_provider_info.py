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
                    }
                },
            }
        },
    }
