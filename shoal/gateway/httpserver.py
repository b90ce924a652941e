"""The gateway's HTTP/1.1 front end: an asyncio Protocol on llhttp (httptools), no ASGI layer.

ASGI turns every request into dicts and every response into messages through awaitables; a proxy
only needs bytes in and bytes out, so the gateway parses with httptools and writes whole
responses in one `transport.write`. Limits (URL, header, body size; time to receive a request;
keep-alive idle time) are enforced here and answered with JSON 4xx bodies before any routing.
Pipelined requests are answered in order; a client that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from shoal.gateway.settings import HttpSettings
from shoal.gateway.wire import JSON_HEADER, Request, json_body, status_line

log = logging.getLogger(__name__)


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request, "HttpConnection"], Awaitable[None]]


class HttpConnection(asyncio.Protocol):
    """One client connection. Also the response sink the gateway writes to."""

    def __init__(
        self,
        handler: Handler,
        settings: HttpSettings,
        connections: set[HttpConnection],
        clock: Callable[[], float],
    ) -> None:
        self._handler = handler
        self._settings = settings
        self._connections = connections
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.closed_future: asyncio.Future[None] = self._loop.create_future()
        self._task: asyncio.Task[None] | None = None
        self._pending: deque[Request | _Reject] = deque()
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._in_message = False
        self._stopping = False
        # Per-request parse state.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._started_at = 0.0
        self._reject: _Reject | None = None
        # Per-response state, read by the gateway after a response.
        self.status = 0
        self.head_sent = False
        self.request_id: bytes | None = None
        """Set by the gateway for model requests (its own or the client's x-request-id)."""
        self._chunked = False
        self._keep_alive = True
        self._head_only = False

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        self._connections.discard(self)
        self._cancel_timers()
        if self._task is not None:
            self._task.cancel()  # the client went away: stop holding or waiting for it
        self._pending.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the current response."""
        self._stopping = True
        if self._task is None and self.transport is not None:
            self.transport.close()

    def _cancel_timers(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _arm_idle(self, delay: float | None = None) -> None:
        # One timer per connection, re-armed only when it fires (not per request): the
        # request path just stamps `_last_active`.
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(
            self._settings.keepalive_timeout_s if delay is None else delay,
            self._on_idle_timeout,
        )

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self.transport is None or self.closed:
            return
        timeout = self._settings.keepalive_timeout_s
        if self._task is not None or self._pending or self._in_message:
            self._idle_timer = self._loop.call_later(timeout, self._on_idle_timeout)
            return
        idle_for = self._loop.time() - self._last_active
        if idle_for >= timeout:
            self.transport.close()
        else:
            self._idle_timer = self._loop.call_later(timeout - idle_for, self._on_idle_timeout)

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        self._fail(_Reject(408, "request not received in time"))

    # -- parsing ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Whatever follows the upgrade request is not HTTP/1.1: read no more. A WebSocket
            # request was refused in on_message_complete; others (h2c) are answered in HTTP/1.1
            # and the connection closed.
            if self.transport is not None:
                self.transport.pause_reading()
            if self._reject is not None:
                self._fail(self._reject)
            return
        except httptools.HttpParserCallbackError:
            self._fail(self._reject or _Reject(400, "malformed HTTP request"))
            return
        except httptools.HttpParserError as exc:
            self._fail(_Reject(400, f"malformed HTTP request: {exc}"))
            return
        if self._in_message and self._read_timer is None:
            # Only a request split over several reads needs the timer (most arrive whole).
            remaining = self._started_at + self._settings.request_read_timeout_s - self._clock()
            self._read_timer = self._loop.call_later(max(0.0, remaining), self._on_read_timeout)

    def _fail(self, reject: _Reject) -> None:
        """Stop reading; answer `reject` once earlier pipelined requests are answered; close."""
        if self.transport is None or self.closed:
            return
        self.transport.pause_reading()
        self._reading_paused = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._task is None:
            self._send_reject(reject)
        else:
            self._pending.append(reject)

    def _send_reject(self, reject: _Reject) -> None:
        self._keep_alive = False
        self._head_only = False
        self.write_full(reject.status, JSON_HEADER, json_body(reject.status, reject.message))
        if self.transport is not None:
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._reject = None
        self._started_at = self._clock()
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._settings.max_url_bytes:
            self._reject = _Reject(414, f"URL longer than {self._settings.max_url_bytes} bytes")
            raise self._reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if (
            self._header_bytes > self._settings.max_header_bytes
            or len(self._headers) >= self._settings.max_headers
        ):
            self._reject = _Reject(
                431,
                f"request headers exceed {self._settings.max_headers} fields or "
                f"{self._settings.max_header_bytes} bytes",
            )
            raise self._reject
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        expect_continue = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0  # llhttp rejects malformed lengths itself
                if size > self._settings.max_body_bytes:
                    self._reject = _Reject(
                        413, f"request body larger than {self._settings.max_body_bytes} bytes"
                    )
                    raise self._reject
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if expect_continue and self.transport is not None and self._task is None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._settings.max_body_bytes:
            self._reject = _Reject(
                413, f"request body larger than {self._settings.max_body_bytes} bytes"
            )
            raise self._reject
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        url = self._url
        if not url.startswith(b"/"):
            # absolute-form ("http://...") and asterisk-form ("*") are for proxies/OPTIONS.
            self._reject = _Reject(400, "request target must be a path starting with '/'")
            raise self._reject
        keep_alive = self._parser.should_keep_alive()
        if self._parser.should_upgrade():
            for name, value in self._headers:
                if name == b"upgrade" and b"websocket" in value.lower():
                    self._reject = _Reject(501, "WebSocket upgrades are not supported")
                    return
                if name in (b"content-length", b"transfer-encoding") and value.strip() != b"0":
                    # llhttp hands the bytes after an upgrade request's head back unparsed.
                    self._reject = _Reject(501, "protocol upgrades with a body are not supported")
                    return
            keep_alive = False
        path, _, query = url.partition(b"?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self._parser.get_method(),
            path.decode("latin-1"),
            query,
            self._headers,
            body,
            keep_alive,
            self._started_at,
        )
        if self._task is None:
            self._start(request)
        else:
            self._pending.append(request)
            if len(self._pending) >= self._settings.max_pipelined and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    # -- running requests ---------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self.status = 0
        self.head_sent = False
        self.request_id = None
        self._chunked = False
        self._keep_alive = request.keep_alive and not self._stopping
        self._head_only = request.method == b"HEAD"
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self._handler(request, self)
        except asyncio.CancelledError:
            return  # connection lost
        except Exception:
            log.exception("gateway error on %s %s", request.method, request.path)
            if not self.head_sent:
                self.write_full(500, JSON_HEADER, json_body(500, "internal gateway error"))
            else:
                self.abort()
        self._task = None
        if self.closed or self.transport is None:
            return
        if not self._keep_alive or self._stopping:
            self.transport.close()
            return
        if self._pending:
            nxt = self._pending.popleft()
            if isinstance(nxt, _Reject):
                self._send_reject(nxt)
                return
            if self._reading_paused and len(self._pending) < self._settings.max_pipelined:
                self._reading_paused = False
                self.transport.resume_reading()
            self._start(nxt)
        else:
            self._last_active = self._loop.time()

    # -- the response sink (used by the gateway) ----------------------------------------------

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    def write_full(
        self, status: int, header_block: bytes | bytearray, body: bytes, head_length: int = -1
    ) -> None:
        """A complete response: status, pre-encoded `name: value\\r\\n` headers, body."""
        if self.transport is None or self.closed:
            return
        self.status = status
        self.head_sent = True
        length = head_length if self._head_only and head_length >= 0 else len(body)
        tail = b"content-length: %d\r\n" % length
        if not self._keep_alive:
            tail += b"connection: close\r\n"
        tail += b"\r\n"
        if self._head_only:
            self.transport.write(status_line(status) + header_block + tail)
        else:
            self.transport.write(b"".join((status_line(status), header_block, tail, body)))

    def start_stream(
        self, status: int, header_block: bytes | bytearray, length: int | None
    ) -> None:
        """Begin a streamed response: with a known length as is, else chunked (HTTP/1.1)."""
        if self.transport is None or self.closed:
            return
        self.status = status
        self.head_sent = True
        if length is not None:
            tail = b"content-length: %d\r\n" % length
        else:
            self._chunked = True
            tail = b"transfer-encoding: chunked\r\n"
        if not self._keep_alive:
            tail += b"connection: close\r\n"
        self.transport.write(status_line(status) + header_block + tail + b"\r\n")

    async def write_chunk(self, data: bytes) -> None:
        """Forward one piece of a streamed body; waits while the client is not reading."""
        if self.transport is None or self.closed:
            raise ConnectionResetError("client went away")
        if self._chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)
        if self._write_paused:
            self._writable = self._loop.create_future()
            await self._writable
            if self.closed:
                raise ConnectionResetError("client went away")

    def end_stream(self) -> None:
        if self._chunked and self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """The response cannot be completed: close so the client sees it is truncated."""
        self._keep_alive = False
        if self.transport is not None:
            self.transport.close()


class HttpServer:
    """Listens and tracks connections for a graceful shutdown."""

    def __init__(
        self, handler: Handler, settings: HttpSettings, clock: Callable[[], float]
    ) -> None:
        self._handler = handler
        self._settings = settings
        self._clock = clock
        self._server: asyncio.Server | None = None
        self.connections: set[HttpConnection] = set()

    async def start(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self._handler, self._settings, self.connections, self._clock),
            host,
            port,
            reuse_address=True,
            backlog=2048,
        )
        sock = self._server.sockets[0]
        bound: int = sock.getsockname()[1]
        return bound

    async def stop(self, grace_s: float) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        waiting = [conn.closed_future for conn in self.connections]
        if waiting:
            await asyncio.wait(waiting, timeout=grace_s)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self._server.wait_closed()
