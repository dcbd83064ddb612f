"""The ASGI layer between the server and an emulated API: it logs each API request and applies the faults.

It sits outside the web framework so that an injected fault never reaches the vendor's handlers (a refused
request changes no state), and so that it can do what no handler can: cut a connection mid-response.

Cutting a connection: the full answer is computed (so the write, if any, has landed — the nasty case a
client must survive), then the status line and headers go out with the true Content-Length, then half the
body, and the application returns. The server sees an unfinished response and closes the socket, so the
client reads fewer bytes than announced and raises a protocol or read error. An empty 200 is announced as one
byte and cut the same way; a 204 or 304, which may carry no body, has nothing to cut and arrives whole.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from airflow_provider_zeotap.testing.faults import FaultInjector, Verdict
from airflow_provider_zeotap.testing.request_log import RecordedRequest, RequestLog

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: True in the task that is cutting its connection on purpose.
_cutting_connection: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cutting_connection", default=False
)


class _ExpectedCutFilter(logging.Filter):
    """Silences the server's complaint about an unfinished response when the emulator cut it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cutting_connection.get() and "without completing response" in record.getMessage())


logging.getLogger("uvicorn.error").addFilter(_ExpectedCutFilter())


class FaultMiddleware:
    """Wraps the emulator's app: admin requests pass untouched; API requests are logged and judged."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        log: RequestLog,
        injector: FaultInjector,
        refusal: Callable[[Verdict], Response],
        admin_prefix: str,
    ) -> None:
        self.app = app
        self.log = log
        self.injector = injector
        self.refusal = refusal
        self.admin_prefix = admin_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.admin_prefix):
            await self.app(scope, receive, send)
            return
        started_at = time.monotonic()
        body = await _read_body(receive)
        ticket = self.log.begin(RecordedRequest.from_scope(scope, body, started_at))
        verdict = self.injector.judge(scope["path"], started_at, scope.get("method"), body)
        status: int | None = None
        released = False

        def finish() -> None:
            # Called before the last frame leaves and again at the end; the log keeps the first call, and
            # the in-flight slot is given back once, before the client can hold its answer.
            nonlocal released
            self.log.finish(ticket, finished_at=time.monotonic(), status=status, fault=verdict.fault)
            if not released:
                released = True
                self.injector.release(verdict)

        async def send_logged(message: Message) -> None:
            # Close the log entry before the last frame leaves: a client holding its answer must find the
            # request finished in the log, or sequential requests would look concurrent.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False):
                finish()
            await send(message)

        try:
            if verdict.delay:
                await asyncio.sleep(verdict.delay)
            replay = _replay(body, receive)
            answer = _echoing(send_logged, scope, body) if self.injector.config.echo_request else send_logged
            if verdict.refused:
                await self.refusal(verdict)(scope, replay, answer)
            elif verdict.fault == "dropped":
                await self._answer_and_cut(scope, replay, send_logged)  # cut: nothing to echo
            else:
                await self.app(scope, replay, answer)
        finally:
            finish()  # a no-op unless the client left early or the app failed

    async def _answer_and_cut(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the status line, the headers with the full Content-Length and half the body; then stop."""
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None:
            return
        content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        headers = [
            (name, value) for name, value in start.get("headers", []) if name.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(content)).encode()))
        if not content and start["status"] not in (204, 304):
            # An empty answer (Personyze's ``do`` answers nothing) is lost by announcing one byte and sending none.
            headers[-1] = (b"content-length", b"1")
        await send({**start, "headers": headers})
        if content or start["status"] not in (204, 304):
            half = {"type": "http.response.body", "body": content[: len(content) // 2], "more_body": True}
            await send(half)
            _cutting_connection.set(True)  # the server closes the connection when this app returns
        else:
            await send({"type": "http.response.body", "body": b""})


def _echoing(send: Send, scope: Scope, body: bytes) -> Send:
    """``send`` for the ``echo_request`` fault: an error answer becomes its own text plus the request echoed.

    Some gateways answer an error with the request they received, headers and all. The echo is plain text
    after the vendor's own error text, so a client that quotes error bodies quotes the credentials too.
    """
    held: Message | None = None
    chunks: list[bytes] = []

    async def echo(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await send(message)
            else:
                held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        lines = [f"{scope.get('method', '')} {scope['path']}"]
        lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in scope.get("headers", [])]
        text = b"".join(chunks).decode("utf-8", "replace")
        echoed = f"{text}\n-- the request, as received --\n" + "\n".join(lines) + "\n\n" + body.decode("utf-8", "replace")
        content = echoed.encode()
        headers = [(n, v) for n, v in held.get("headers", []) if n.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(content)).encode()), (b"content-type", b"text/plain; charset=utf-8")]
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    return echo


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then waits on the real connection."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
