"""The Airflow plugin: the Syncs app in the API server, and a "Syncs" entry in the UI's navigation.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), which Airflow loads in every
process. A provider's ``plugins`` list in its provider info is loaded only with ``[core]
lazy_discover_providers = False``, and declaring the plugin both ways would load it twice, so it is
declared once, here.

Workers and the scheduler load plugins too, so this module stays light: the FastAPI app (and Airflow's API
server modules it needs) is built on the first request the API server routes to it, never elsewhere.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.plugins_manager import AirflowPlugin

PLUGIN_NAME = "zeotap_syncs"
#: Where the API server mounts the app.
URL_PREFIX = "/zeotap-sync"


class SyncsApp:
    """An ASGI app that builds the Syncs FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_provider_zeotap.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class ZeotapSyncsPlugin(AirflowPlugin):
    name = PLUGIN_NAME
    fastapi_apps = [{"name": "Zeotap syncs", "app": SyncsApp(), "url_prefix": URL_PREFIX}]
    external_views = [
        {
            "name": "Syncs",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "syncs",
        }
    ]
