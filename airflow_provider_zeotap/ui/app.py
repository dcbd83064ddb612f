"""The FastAPI app of the Syncs page, mounted by the plugin in Airflow's API server.

Every route asks Airflow who the user is (the UI's session cookie, or a bearer token from ``POST
/auth/token``) and which DAGs they may read (the configured auth manager), and shows only the syncs of
those DAGs. A sync of a DAG the user may not read answers 404, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airflow_provider_zeotap.ui import pages
from airflow_provider_zeotap.ui.models import RejectedRowsPage, SyncDetail, SyncRun, SyncSummary
from airflow_provider_zeotap.ui.service import DEFAULT_RUNS, MAX_RUNS, NotFound, SyncsService

CHART_RUNS = 20


def _readable_dags(user: Any) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_authorized_dag_ids(user=user, method="GET")


def _user_dependency() -> Callable[..., Any]:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def _session() -> Any:
    from airflow.utils.session import create_session

    with create_session(scoped=False) as session:
        yield session


def service(request: Request, session: Annotated[Any, Depends(_session)], user: Annotated[Any, Depends(_user_dependency())]) -> SyncsService:
    """The syncs this request's user may see. Tests override this one dependency."""
    from airflow_provider_zeotap.sync.storage import default_state_uri
    from airflow_provider_zeotap.ui.reader import MetadataReader

    return SyncsService(MetadataReader(session), _readable_dags(user), default_state_uri())


ServiceDep = Annotated[SyncsService, Depends(service)]


def create_app() -> FastAPI:
    app = FastAPI(
        title="Zeotap reverse ETL: syncs",
        description="Each sync with its runs, rows per run and rejected rows, for the DAGs the user may read. "
        "See docs/ui.md of airflow-provider-zeotap.",
        version="1",
    )

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> Response:  # noqa: ARG001 - FastAPI's signature
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(HTTPException)
    async def unauthenticated(request: Request, error: HTTPException) -> Response:
        """A person opening the page without a session goes to Airflow's login, and comes back after it."""
        from fastapi.responses import JSONResponse

        wants_html = "text/html" in request.headers.get("accept", "") and request.method == "GET"
        if error.status_code == 401 and wants_html:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return JSONResponse(status_code=error.status_code, content={"detail": error.detail}, headers=error.headers)

    # -- JSON --------------------------------------------------------------------------------------
    @app.get("/syncs", response_model=list[SyncSummary], summary="Every sync of a DAG the user may read")
    def list_syncs(syncs: ServiceDep) -> list[SyncSummary]:
        return syncs.list_syncs()

    @app.get("/syncs/{sync_id}", response_model=SyncDetail, summary="One sync: its binding, settings and runs")
    def get_sync(sync_id: str, syncs: ServiceDep, limit: Annotated[int, Query(ge=1, le=MAX_RUNS)] = DEFAULT_RUNS) -> SyncDetail:
        return syncs.detail(sync_id, limit=limit)

    @app.get("/syncs/{sync_id}/runs", response_model=list[SyncRun], summary="A sync's runs, newest first")
    def get_runs(sync_id: str, syncs: ServiceDep, limit: Annotated[int, Query(ge=1, le=MAX_RUNS)] = DEFAULT_RUNS) -> list[SyncRun]:
        return syncs.runs(sync_id, limit=limit)

    @app.get(
        "/syncs/{sync_id}/runs/{run_id}/rejected",
        response_model=RejectedRowsPage,
        summary="The rejected and failed rows of one run, paged and searchable",
    )
    def get_rejected(
        sync_id: str,
        run_id: str,
        syncs: ServiceDep,
        search: str = "",
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> RejectedRowsPage:
        return syncs.rejected_rows(sync_id, run_id, search=search, page=page, page_size=page_size)

    # -- HTML --------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, syncs: ServiceDep) -> HTMLResponse:
        return HTMLResponse(pages.index_page(syncs.list_syncs(), _base(request)))

    @app.get("/page/{sync_id}", response_class=HTMLResponse, include_in_schema=False)
    def sync_page(
        request: Request,
        sync_id: str,
        syncs: ServiceDep,
        run: str | None = None,
        search: str = "",
        page: Annotated[int, Query(ge=1)] = 1,
        runs: Annotated[int, Query(ge=1, le=MAX_RUNS)] = DEFAULT_RUNS,
    ) -> HTMLResponse:
        detail = syncs.detail(sync_id, limit=runs)
        selected = next((r for r in detail.runs if r.run_id == run), None) if run else None
        if selected is None and run is None:  # the newest run with rejected rows, one click saved
            selected = next((r for r in detail.runs if r.has_rejected_rows), None)
        rejected = syncs.rejected_rows(sync_id, selected.run_id, search=search, page=page) if selected else None
        return HTMLResponse(pages.sync_page(detail, _base(request), selected=selected, rejected=rejected,
                                            chart_runs=CHART_RUNS))

    return app


def _base(request: Request) -> str:
    """The app's own path prefix as the browser sees it (the mount point), for links."""
    return quote(request.scope.get("root_path", "").rstrip("/")) or ""
