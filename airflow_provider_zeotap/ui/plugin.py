"""The Airflow plugin: the Syncs app in the API server, and a "Syncs" entry in the UI's navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), which Airflow loads in every
process. A provider's ``plugins`` list in its provider info is loaded only with ``[core]
lazy_discover_providers = False``, and declaring the plugin both ways would load it twice, so it is
declared once, here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_zeotap.ui.app import URL_PREFIX, create_app

PLUGIN_NAME = "zeotap_syncs"


class ZeotapSyncsPlugin(AirflowPlugin):
    name = PLUGIN_NAME
    fastapi_apps = [{"name": "Zeotap syncs", "app": create_app(), "url_prefix": URL_PREFIX}]
    external_views = [
        {
            "name": "Syncs",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "syncs",
        }
    ]
