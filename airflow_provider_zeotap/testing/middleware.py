"""The ASGI layer between the server and an emulated API: it logs each API request and applies the faults.

It sits outside the web framework so that an injected fault never reaches the vendor's handlers unless it is
meant to, and so that it can do what no handler can: cut a connection.

Every injected fault has two forms (``FaultConfig.error_when`` and ``drop_when``):

* before the write: the handlers never see the request. An error is answered at once; a drop closes the
  connection without a byte of answer. Nothing changed, but the client cannot know that from a drop.
* after the write: the handlers answer the request in full (the write, if any, has landed), then the answer
  is replaced by the error, or cut. Cutting sends the status line and headers with the true Content-Length,
  then half the body, and the application returns: the server sees an unfinished response and closes the
  socket, so the client reads fewer bytes than announced. An answer without a body (a 204, Personyze's empty
  ``do`` answer) is cut by closing the connection before its status line: the client sees the server hang up.

A route the vendor serializes (Personyze's ``POST /rest/users``: one in flight per account) passes through a
:class:`SerialLane`: the request waits for the one ahead of it, and one that waited too long is refused with
the vendor's busy answer. Injected latency is spent inside the lane, as the real API's own work would be.
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


class SerialLane:
    """One request at a time through a route; one that waited over ``max_wait_s`` gets ``busy()`` instead.

    The lock is made on the event loop that serves (an emulator restarted on a new loop gets a new one).
    """

    def __init__(self, max_wait_s: float, busy: Callable[[], Response]) -> None:
        self.max_wait_s = max_wait_s
        self.busy = busy
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> bool:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        try:
            await asyncio.wait_for(self._lock.acquire(), self.max_wait_s)
        except asyncio.TimeoutError:
            return False
        return True

    def release(self) -> None:
        if self._lock is not None and self._lock.locked():
            self._lock.release()


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
        lane_for: Callable[[str, str], SerialLane | None] = lambda method, path: None,
    ) -> None:
        self.app = app
        self.log = log
        self.injector = injector
        self.refusal = refusal
        self.admin_prefix = admin_prefix
        self.lane_for = lane_for

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

        lane = self.lane_for(scope["method"], scope["path"]) if verdict.reaches_api else None
        try:
            replay = _replay(body, receive)
            # Echoed error answers (``echo_request``) quote the request, as some gateways do; a cut answer has
            # nothing to echo.
            answer = _echoing(send_logged, scope, body) if self.injector.config.echo_request else send_logged
            if lane is not None and not await lane.acquire():
                await lane.busy()(scope, replay, answer)
                return
            try:
                await self._answer(verdict, scope, replay, answer, send)
            finally:
                if lane is not None:
                    lane.release()
        finally:
            finish()  # a no-op unless the client left early, the connection was cut or the app failed

    async def _answer(self, verdict: Verdict, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if verdict.fault is None:
            await self.app(scope, receive, send)
        elif verdict.when == "before":
            if verdict.refused:
                await self.refusal(verdict)(scope, receive, send)
            else:
                _hang_up(raw_send)
        else:
            messages = await _capture(self.app, scope, receive)  # the API applies the request
            if verdict.refused:
                await self.refusal(verdict)(scope, receive, send)
            else:
                await _send_cut(messages, send, raw_send)


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> list[Message]:
    """Run the app to the end and keep its answer instead of sending it."""
    messages: list[Message] = []

    async def keep(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, keep)
    return messages


async def _send_cut(messages: list[Message], send: Send, raw_send: Send) -> None:
    """Send the status line, the headers with the full Content-Length and half the body; then stop.

    An answer with no body has nothing to cut: the connection is closed before its status line instead.
    """
    start = next((m for m in messages if m["type"] == "http.response.start"), None)
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    if start is None or not content:
        _hang_up(raw_send)
        return
    headers = [(name, value) for name, value in start.get("headers", []) if name.lower() != b"content-length"]
    headers.append((b"content-length", str(len(content)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": content[: len(content) // 2], "more_body": True})
    _cutting_connection.set(True)  # the server closes the connection when this app returns


def _hang_up(send: Send) -> None:
    """Close the connection without sending a byte of answer.

    ASGI has no message for this, so it goes to the server's transport: uvicorn's ``send`` is a method of the
    request cycle, which holds the transport. Marking the cycle disconnected stops uvicorn from answering
    500 for the app that "returned without starting a response".
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot close the connection: the emulator runs on uvicorn's h11 server only")
    cycle.disconnected = True  # type: ignore[union-attr]
    transport.close()


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
