"""The frame every emulated API shares: a real HTTP server on a loopback port, with faults and a request log.

Integration tests must exercise the same code path as production — sockets, TLS, timeouts, retries — so an
emulator is a real server (a FastAPI app served by uvicorn in a background thread), not a mocked transport.
A vendor module subclasses :class:`Emulator` and supplies only what differs between vendors: the routes,
the authentication, the error shape and the in-memory state. Everything else lives here once: the server's
life cycle, optional (mutual) TLS, fault injection, the request log and the ``/_emulator`` admin endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict
from http import HTTPStatus
from types import TracebackType
from typing import Annotated, Any, ClassVar, TypedDict

import uvicorn
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from typing_extensions import Self, Unpack

from airflow_provider_zeotap.testing.faults import FaultConfig, FaultInjector, FaultSettings, Verdict
from airflow_provider_zeotap.testing.middleware import FaultMiddleware, SerialLane
from airflow_provider_zeotap.testing.request_log import RecordedRequest, RequestLog

#: Path prefix of the admin endpoints. They need no credentials and faults never touch them.
ADMIN_PREFIX = "/_emulator"

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class ServerOptions(TypedDict, total=False):
    """Where and how an emulator listens; every vendor emulator accepts these keyword arguments."""

    host: str
    port: int
    ssl_certfile: str | os.PathLike[str] | None
    ssl_keyfile: str | os.PathLike[str] | None
    ssl_ca_certs: str | os.PathLike[str] | None
    require_client_cert: bool


class EmulatorSettings(BaseModel):
    """What one emulator lets a test change beyond the fault knobs: a field per setting (none by default).

    Each field is an attribute of the emulator of the same name, and is set the same way from the constructor,
    the attribute, ``apply_settings``, ``POST /_emulator/settings`` and ``--<emulator>-<setting>``.
    """

    model_config = ConfigDict(extra="forbid")


class ApiError(Exception):
    """Raised by a handler to answer in the vendor's error shape (rendered by ``Emulator.error_response``)."""

    def __init__(
        self, status: int, message: str, *, kind: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = dict(headers or {})


class Emulator(ABC):
    """A local stand-in for one vendor API, served on 127.0.0.1 (or another loopback address).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with PersonyzeEmulator() as emulator:
            httpx.get(f"{emulator.api_url}/account", auth=("api", emulator.api_key))

    Subclasses set their own settings, then call ``super().__init__(**server_options)``, and implement the
    abstract hooks. Handlers must be ``async`` and hold ``self._lock`` around every touch of the state (the
    test thread seeds and inspects the same state while the server thread serves it), never across an await.
    """

    #: Short vendor name; also the Airflow connection type and the default connection id's stem.
    name: ClassVar[str]
    #: Path prefix under which the real API serves, e.g. "/rest".
    api_prefix: ClassVar[str]
    #: Faults in force after construction and after :meth:`reset`, e.g. the vendor's documented rate limits.
    default_faults: ClassVar[FaultConfig] = FaultConfig()
    #: How the vendor answers a request over its rate limit (``rate_per_second``, ``rate_per_minute``,
    #: ``max_in_flight``): the status, and whether a ``Retry-After`` header says when to come back.
    throttle_status: ClassVar[int] = 429
    throttle_retry_after: ClassVar[bool] = True

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_certfile: str | os.PathLike[str] | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        ssl_ca_certs: str | os.PathLike[str] | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.host = _loopback_only(host)
        self._port = port
        self._tls = _tls_options(ssl_certfile, ssl_keyfile, ssl_ca_certs, require_client_cert)
        self._lock = threading.RLock()
        self._log = RequestLog()
        self._injector = FaultInjector(self.default_faults)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clear_state()
        self.app = self._build_app()

    # -- life cycle ------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the port and serve from a background thread; return once connections are accepted."""
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already running")
        config = uvicorn.Config(
            FaultMiddleware(
                self.app,
                log=self._log,
                injector=self._injector,
                refusal=self._refusal,
                admin_prefix=ADMIN_PREFIX,
                lane_for=self._serial_lane,
            ),
            lifespan="on",
            loop="asyncio",
            http="h11",  # always installed with uvicorn; the dropped-connection fault is tested against it
            log_config=None,  # leave the host process's logging configuration alone...
            log_level="warning",  # ...but keep start/stop chatter out of test and task logs
            access_log=False,
            timeout_graceful_shutdown=1,
            **self._tls,
        )
        config.load()  # raises here, in the caller's thread, for a bad certificate or key
        sock = self._bind()
        server = _Server(config)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=serve, name=f"{self.name}-emulator", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError(f"{type(self).__name__} did not start") from (
                    failure[0] if failure else None
                )
            time.sleep(0.002)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and release the port; a no-op when not running. Open connections are closed."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_stop()
        thread.join(_STOP_TIMEOUT_S)
        self._server = self._thread = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """What a server restart looks like to a client: open connections are cut, a request arriving in
        between (``down_for`` seconds) is refused, then the same port answers again.

        The state, the request log and the fault knobs are kept, as a restarted service keeps its database.
        Requests in flight lose their answer (their write may have landed), as in a crash.
        """
        if self._server is not None:
            self._server.cut_connections()
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without the API prefix, e.g. ``http://127.0.0.1:8101``: what a connection's host holds."""
        scheme = "https" if self._tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Base URL with the vendor's API prefix, e.g. ``http://127.0.0.1:8101/rest``."""
        return self.url + self.api_prefix

    def __repr__(self) -> str:
        where = self.url if self._port else "unbound"
        return f"<{type(self).__name__} {where} {'running' if self.running else 'stopped'}>"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listener names its
        # protocol; without it every response written in two parts stalls ~40 ms on Nagle's algorithm.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]  # a restart keeps the port a free-port start was given
        return sock

    # -- faults, log, state ------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        return self._injector.config

    #: This emulator's own settings (``EmulatorSettings``).
    settings_model: ClassVar[type[EmulatorSettings]] = EmulatorSettings

    def settings(self) -> dict[str, Any]:
        """The settings in force."""
        return {name: getattr(self, name) for name in self.settings_model.model_fields}

    def apply_settings(self, **values: Any) -> dict[str, Any]:
        """Change some settings (validated: an unknown name or a bad value raises, and nothing changes)."""
        checked = self.settings_model.model_validate({**self.settings(), **values})
        for name in values:
            setattr(self, name, getattr(checked, name))
        return self.settings()

    def set_faults(self, **settings: Unpack[FaultSettings]) -> FaultConfig:
        """Replace the fault config, as ``POST /_emulator/faults`` does with a JSON body.

        A field not given takes its default for this emulator (``default_faults``: no faults, plus the
        vendor's documented rate limits where the emulator enforces them); pass ``rate_per_second=None``
        to lift such a limit. Rate windows and the random generator start afresh.
        """
        config = FaultConfig.model_validate({**self.default_faults.model_dump(), **settings})
        self._injector.configure(config)
        return config

    @property
    def requests(self) -> list[RecordedRequest]:
        """API requests received so far (admin requests are not logged), oldest first."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        self._log.clear()

    def max_in_flight_seen(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """The most logged requests (optionally of one method, under one path) that were open at once."""
        return self._log.max_in_flight(method, path_prefix)

    def reset(self) -> None:
        """Back to a fresh emulator: empty state, empty log, default faults. Settings and keys stay."""
        with self._lock:
            self._clear_state()
        self._log.clear()
        self._injector.configure(self.default_faults)

    # -- Airflow -----------------------------------------------------------------------------------------

    @property
    def default_conn_id(self) -> str:
        return f"{self.name}_default"

    def airflow_connection(self) -> dict[str, Any]:
        """This emulator as an Airflow connection in JSON form (host is the bare :attr:`url`)."""
        return {"conn_type": self.name, "host": self.url, **self._connection_fields()}

    def airflow_env(self, conn_id: str | None = None) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<ID>": "<json>"}``: set it in the environment and Airflow finds the connection."""
        variable = f"AIRFLOW_CONN_{(conn_id or self.default_conn_id).upper()}"
        return {variable: json.dumps(self.airflow_connection(), separators=(",", ":"))}

    # -- what a vendor supplies --------------------------------------------------------------------------

    @abstractmethod
    def _add_api_routes(self, router: APIRouter) -> None:
        """Declare the vendor's routes on ``router`` (already under ``api_prefix`` and authenticated)."""

    def _add_admin_routes(self, router: APIRouter) -> None:
        """Declare vendor seed endpoints under ``/_emulator`` (none by default)."""

    @abstractmethod
    def authenticate(self, request: Request) -> None:
        """Raise :class:`ApiError` unless the request carries valid credentials for what it asks."""

    @abstractmethod
    def error_response(self, status: int, message: str, kind: str | None = None) -> Response:
        """An error in the vendor's shape; ``kind`` is a vendor error type, None picks one from ``status``."""

    @abstractmethod
    def _clear_state(self) -> None:
        """Create the empty in-memory state (called with ``self._lock`` held, or from ``__init__``)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """A JSON-ready dump of the whole state, served by ``GET /_emulator/state``."""

    @abstractmethod
    def credentials(self) -> dict[str, str]:
        """The test credentials, by name, for people and tools that need them printed."""

    @abstractmethod
    def _connection_fields(self) -> dict[str, Any]:
        """Airflow connection fields besides conn_type and host (password, extra...)."""

    def seed_example(self) -> dict[str, str]:
        """Create what a first sync needs to exist (a list, an import...); return the ids by name."""
        return {}

    async def _on_serve_start(self) -> None:
        """Called on the server's event loop before it accepts connections: make loop-bound objects here."""

    def _serial_lane(self, method: str, path: str) -> SerialLane | None:
        """The lane of a route the vendor serves one request at a time, or None (the default: no such route)."""
        return None

    def _malformed_body(self) -> ApiError:
        """The error for a body that is not JSON; vendors whose real API answers differently override it."""
        return ApiError(400, "Malformed JSON body")

    async def read_json(self, request: Request) -> Any:
        """The request's JSON body, or the vendor's malformed-body error."""
        try:
            return json.loads(await request.body())
        except ValueError:
            raise self._malformed_body() from None

    # -- the app -----------------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(
            title=f"{self.name} emulator",
            lifespan=self._lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        app.add_exception_handler(ApiError, self._render_api_error)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, self._render_http_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self._render_validation_error)  # type: ignore[arg-type]

        async def authenticate(request: Request) -> None:
            self.authenticate(request)  # async wrapper: a sync dependency would run on a worker thread

        api = APIRouter(prefix=self.api_prefix, dependencies=[Depends(authenticate)])
        self._add_api_routes(api)
        app.include_router(api)
        admin = APIRouter(prefix=ADMIN_PREFIX)
        self._add_frame_admin_routes(admin)
        self._add_admin_routes(admin)
        app.include_router(admin)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self._on_serve_start()
        yield

    def _add_frame_admin_routes(self, router: APIRouter) -> None:
        @router.get("/requests")
        async def get_requests() -> list[dict[str, Any]]:
            return [asdict(entry) for entry in self.requests]

        @router.delete("/requests", status_code=204)
        async def delete_requests() -> None:
            self.clear_requests()

        @router.get("/faults")
        async def get_faults() -> dict[str, Any]:
            return self.faults.model_dump()

        @router.post("/faults")
        async def post_faults(
            settings: Annotated[dict[str, Any], Body(default_factory=dict)],
        ) -> dict[str, Any]:
            try:
                return self.set_faults(**settings).model_dump()
            except ValidationError as exc:
                raise HTTPException(
                    400, detail=exc.errors(include_url=False, include_context=False)
                ) from None

        @router.get("/settings")
        async def get_settings() -> dict[str, Any]:
            return self.settings()

        @router.post("/settings")
        async def post_settings(
            values: Annotated[dict[str, Any], Body(default_factory=dict)],
        ) -> dict[str, Any]:
            try:
                return self.apply_settings(**values)
            except ValidationError as exc:
                raise HTTPException(
                    400, detail=exc.errors(include_url=False, include_context=False)
                ) from None

        @router.post("/reset", status_code=204)
        async def post_reset() -> None:
            self.reset()

        @router.get("/state")
        async def get_state() -> dict[str, Any]:
            with self._lock:
                return self.state()

    def _render(self, status: int, message: str, kind: str | None, headers: Mapping[str, str]) -> Response:
        response = self.error_response(status, message, kind)
        response.headers.update(headers)
        return response

    async def _render_api_error(self, request: Request, exc: ApiError) -> Response:
        return self._render(exc.status, exc.message, exc.kind, exc.headers)

    async def _render_http_error(self, request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(ADMIN_PREFIX):
            return await http_exception_handler(request, exc)
        return self._render(exc.status_code, str(exc.detail), None, exc.headers or {})

    async def _render_validation_error(self, request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith(ADMIN_PREFIX):
            return await request_validation_exception_handler(request, exc)
        return self._render(400, "Invalid request", None, {})

    def _refusal(self, verdict: Verdict) -> Response:
        """The answer to a request an injected fault or a rate limit refuses.

        A rate limit answers as the vendor throttles (``throttle_status``, with or without ``Retry-After``);
        an injected error answers exactly as the knobs say.
        """
        if verdict.fault == "rate_limited":
            status = self.throttle_status
            retry_after = verdict.retry_after if self.throttle_retry_after else None
        else:
            status, retry_after = verdict.status or 503, verdict.retry_after
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return self._render(status, verdict.message or _reason(status), None, headers)


class _Server(uvicorn.Server):
    """uvicorn's server, woken at once by :meth:`request_stop` instead of polling ``should_exit`` every 0.1 s.

    Tests start and stop an emulator per test; the saved tenth of a second adds up.
    """

    _loop: asyncio.AbstractEventLoop | None = None

    def request_stop(self) -> None:
        """Ask the server to shut down; callable from any thread."""
        self.should_exit = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._wake.set)

    def cut_connections(self) -> None:
        """Abort every open connection at once, as a crash would (no graceful close); callable from any thread."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def cut() -> None:
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            done.set()

        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(cut)
            done.wait(_STOP_TIMEOUT_S)

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        ticks = 0
        while not await self.on_tick(ticks):  # on_tick refreshes the Date header and reads should_exit
            ticks += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _loopback_only(host: str) -> str:
    """The emulators serve fixed test keys: refuse any address other machines could reach."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"emulators bind to a loopback IP address only, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"emulators bind to a loopback address only, not {host!r}")
    return host


def _tls_options(
    certfile: str | os.PathLike[str] | None,
    keyfile: str | os.PathLike[str] | None,
    ca_certs: str | os.PathLike[str] | None,
    require_client_cert: bool,
) -> dict[str, Any]:
    """uvicorn's ssl_* options; empty for plain HTTP."""
    if certfile is None:
        if keyfile is not None or ca_certs is not None or require_client_cert:
            raise ValueError("TLS options need ssl_certfile")
        return {}
    if require_client_cert and ca_certs is None:
        raise ValueError("require_client_cert needs ssl_ca_certs, the CA that signs client certificates")
    return {
        "ssl_certfile": os.fspath(certfile),
        "ssl_keyfile": None if keyfile is None else os.fspath(keyfile),
        "ssl_ca_certs": None if ca_certs is None else os.fspath(ca_certs),
        "ssl_cert_reqs": ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE,
    }
