"""One client connection: an asyncio Protocol on llhttp (httptools), no ASGI layer.

ASGI turns every request into dicts and every response into messages through awaitables; a proxy
only needs bytes in and bytes out, so the gateway parses with httptools and writes whole
responses in one `transport.write`. The parts follow uvicorn's `httptools_impl`: this protocol
(parsing and the connection's life), `ResponseCycle` (one response), `FlowControl` (why reading
is paused).

What a hostile client cannot do here: make the gateway read a body before the request's head
was admitted (route, method, token: `Handler.admit` runs on the head, and `100 Continue` goes out
only after it); make it buffer more than the server-wide cap of body bytes; turn trailers into
headers (they are dropped); queue answers for a client that reads none (reading pauses while
writes are paused); hold a connection without sending (idle and read timeouts). An error found
on the head of a request with a body is answered at once with `connection: close`; the rest of
the body is read and dropped for a short while (a lingering close, as nginx does) so the client
sees the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from shoal.gateway.clock import Timer
from shoal.gateway.cycle import ResponseCycle
from shoal.gateway.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    NotSupported,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UriTooLong,
)
from shoal.gateway.flow import ANSWERING, PIPELINE, FlowControl
from shoal.gateway.wire import Request

if TYPE_CHECKING:
    from shoal.gateway.httpserver import HttpServer

log = logging.getLogger(__name__)


class Handler(Protocol):
    def admit(self, req: Request) -> None:
        """Judge a request on its head (no body yet); raise GatewayError to refuse it."""
        ...

    async def handle(self, req: Request, cycle: ResponseCycle) -> None:
        """Answer an admitted request whose body has arrived."""
        ...


class ReadState(enum.Enum):
    """Where the parser is on this connection (a request may be running meanwhile)."""

    IDLE = "idle"
    """Between requests (or before the first): the idle timer may close it."""
    HEAD = "head"
    BODY = "body"
    DISCARDING = "discarding"
    """An error was answered with `connection: close`: what still arrives is dropped."""
    CLOSED = "closed"


_IDLE = ReadState.IDLE
_HEAD = ReadState.HEAD
_BODY = ReadState.BODY
_DISCARDING = ReadState.DISCARDING
_CLOSED = ReadState.CLOSED
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_MAX_BYTES = 256 * 1024
"""A lingering close reads and drops at most this much (nginx bounds it by time alone; a client
blasting a refused 15 MB body would cost the gateway CPU for all of it)."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, server: HttpServer) -> None:
        self._handler = handler
        self._server = server
        self._settings = server.settings
        self._clock = server.clock
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl
        self.peer = ""
        self.state = _IDLE
        self.closed_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_active = self._clock.time()
        self._task: asyncio.Task[None] | None = None
        self._pending: deque[Request | GatewayError] = deque()
        self._read_timer: Timer | None = None
        self._idle_timer: Timer | None = None
        self._stopping = False
        self._reserved = 0
        """Body bytes of this connection's requests counted against the server-wide cap."""
        self._discarded = 0
        # Per-request parse state.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._request: Request | None = None
        self._started_at = 0.0
        self._error: GatewayError | None = None
        self._refused: GatewayError | None = None
        """Admission refused this body-less request: answer it in turn, keep the connection."""

    @property
    def evictable(self) -> bool:
        """Idle: nothing in progress, so closing it loses no work (the server's connection cap
        pushes out the longest idle one to make room)."""
        return self.state is _IDLE and self._task is None and not self._pending

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        if self._server.register(self):
            self._arm_idle(self._settings.keepalive_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        self._server.forget(self)
        self._cancel_timers()
        if self._task is not None:
            self._task.cancel()  # the client went away: stop holding or waiting for it
        self._pending.clear()
        self._server.release(self._reserved)
        self._reserved = 0
        if self.transport is not None:
            self.flow.connection_lost()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

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

    def _arm_idle(self, delay: float) -> None:
        # One timer per connection, re-armed only when it fires (not per request): the
        # request path just stamps `last_active`.
        self._idle_timer = self._clock.call_at(self._clock.time() + delay, self._on_idle_timeout)

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self.transport is None or self.state is _CLOSED:
            return
        timeout = self._settings.keepalive_timeout_s
        if not self.evictable:
            self._arm_idle(timeout)
            return
        closes_at = self.last_active + timeout
        if self._clock.time() >= closes_at:
            self.transport.close()
        else:
            self._idle_timer = self._clock.call_at(closes_at, self._on_idle_timeout)

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        self._fail(RequestTimeout("request not received in time"))

    # -- parsing ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state is _DISCARDING:
            self._discarded += len(data)
            if self._discarded > _LINGER_MAX_BYTES and self.transport is not None:
                self.transport.close()  # still sending a body nobody will read: stop paying
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Whatever follows the upgrade request is not HTTP/1.1: read no more. A WebSocket
            # request was refused in on_message_complete; others (h2c) are answered in HTTP/1.1
            # and the connection closed.
            self.flow.pause_reading(ANSWERING)
            if self._error is not None:
                self._fail(self._error)
            return
        except httptools.HttpParserCallbackError:
            self._fail(self._error or BadRequest("malformed HTTP request"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadRequest(f"malformed HTTP request: {exc}"))
            return
        if self.state is not _IDLE and self._read_timer is None and self.state is not _CLOSED:
            # Only a request split over several reads needs the timer (most arrive whole).
            when = self._started_at + self._settings.request_read_timeout_s
            self._read_timer = self._clock.call_at(when, self._on_read_timeout)

    def _fail(self, exc: GatewayError) -> None:
        """Read no further request; answer `exc` once earlier pipelined requests are answered;
        then close (lingering)."""
        if self.transport is None or self.state is _CLOSED or self.state is _DISCARDING:
            return
        self.flow.pause_reading(ANSWERING)
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._release_message()
        if self._task is None:
            self._answer_and_close(exc)
        else:
            self._pending.append(exc)

    def _answer_and_close(self, exc: GatewayError) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = ResponseCycle(
            transport, self.flow, False, False, None, self._server.retry_after_header
        )
        cycle.error(exc)
        # Lingering close: tell the client we are done (FIN after the answer), then drop what
        # it still sends until it closes or `linger_s` passes. Closing at once with unread
        # input would reset the connection and could lose the answer.
        self.state = _DISCARDING
        self._pending.clear()
        if transport.can_write_eof():
            transport.write_eof()
        self._clock.call_at(self._clock.time() + self._settings.linger_s, transport.close)
        self.flow.resume_reading(ANSWERING)

    def _release_message(self) -> None:
        """Give back what the request being parsed had reserved (it will not run)."""
        req = self._request
        if req is not None and req.reserved:
            self._server.release(req.reserved)
            self._reserved -= req.reserved
            req.reserved = 0

    def _reserve(self, req: Request, size: int) -> None:
        if not self._server.reserve(size):
            raise self._raise(
                Overloaded(
                    "the gateway is buffering as many request bodies as it may "
                    f"({self._settings.max_buffered_bytes} bytes); retry later"
                )
            )
        req.reserved += size
        self._reserved += size

    def _raise(self, exc: GatewayError) -> GatewayError:
        self._error = exc
        return exc

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._request = None
        self._error = None
        self._refused = None
        self._started_at = self._clock.time()
        self.state = _HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._settings.max_url_bytes:
            raise self._raise(UriTooLong(f"URL longer than {self._settings.max_url_bytes} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state is _BODY:
            # A trailer (after a chunked body): dropped. Never a header, never auth.
            return
        self._header_bytes += len(name) + len(value) + 4
        if (
            self._header_bytes > self._settings.max_header_bytes
            or len(self._headers) >= self._settings.max_headers
        ):
            raise self._raise(
                HeadersTooLarge(
                    f"request headers exceed {self._settings.max_headers} fields or "
                    f"{self._settings.max_header_bytes} bytes"
                )
            )
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.state = _BODY
        url = self._url
        if not url.startswith(b"/"):
            # absolute-form ("http://...") and asterisk-form ("*") are for proxies/OPTIONS.
            raise self._raise(BadRequest("request target must be a path starting with '/'"))
        expect_continue = False
        declared = 0
        has_body = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # llhttp rejects malformed lengths itself
                has_body = declared > 0
                if declared > self._settings.max_body_bytes:
                    raise self._raise(
                        PayloadTooLarge(
                            f"request body larger than {self._settings.max_body_bytes} bytes"
                        )
                    )
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        path, _, query = url.partition(b"?")
        req = Request(
            self._parser.get_method(),
            path.decode("latin-1"),
            query,
            self._headers,
            self._parser.should_keep_alive(),
            self._started_at,
            self.peer,
        )
        self._request = req
        try:
            self._handler.admit(req)
        except GatewayError as exc:
            if has_body:
                raise self._raise(exc) from None  # answered now; the body is never read
            self._refused = exc
            return
        if declared:
            self._reserve(req, declared)
        if expect_continue and self.transport is not None and self._task is None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        req = self._request
        if self._body_len > self._settings.max_body_bytes:
            raise self._raise(
                PayloadTooLarge(f"request body larger than {self._settings.max_body_bytes} bytes")
            )
        if req is not None and self._body_len > req.reserved:
            self._reserve(req, self._body_len - req.reserved)  # chunked: counted as it comes
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.state = _IDLE
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        req = self._request
        assert req is not None
        if self._parser.should_upgrade():
            for name, value in self._headers:
                if name == b"upgrade" and b"websocket" in value.lower():
                    self._error = NotSupported("WebSocket upgrades are not supported")
                    return
                if name in (b"content-length", b"transfer-encoding") and value.strip() != b"0":
                    # llhttp hands the bytes after an upgrade request's head back unparsed.
                    self._error = NotSupported("protocol upgrades with a body are not supported")
                    return
            req.keep_alive = False
        if self._refused is not None:
            req.admitted = self._refused
        else:
            req.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._request = None
        if self._task is None:
            self._start(req)
        else:
            self._pending.append(req)
            if len(self._pending) >= self._settings.max_pipelined:
                self.flow.pause_reading(PIPELINE)

    # -- running requests ---------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        assert self.transport is not None
        cycle = ResponseCycle(
            self.transport,
            self.flow,
            req.keep_alive and not self._stopping,
            req.method == b"HEAD",
            req.request_id,
            self._server.retry_after_header,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(req, cycle))

    async def _run(self, req: Request, cycle: ResponseCycle) -> None:
        try:
            refused = req.admitted
            if isinstance(refused, GatewayError):
                cycle.error(refused)
            else:
                await self._handler.handle(req, cycle)
        except asyncio.CancelledError:
            return  # connection lost
        except Exception:
            log.exception("gateway error on %s %s", req.method, req.path)
            if not cycle.head_sent:
                cycle.error(GatewayError("internal gateway error"))
            else:
                cycle.abort()
        finally:
            if req.reserved and self.state is not _CLOSED:
                self._server.release(req.reserved)
                self._reserved -= req.reserved
                req.reserved = 0
        transport = self.transport
        if self.state is _CLOSED or transport is None:
            return
        if not cycle.keep_alive or self._stopping:
            self._task = None
            transport.close()
            return
        if self.flow.writes_paused:
            # The client is not reading: start nothing new until it does (the task stays set,
            # so the idle timer leaves the connection alone meanwhile).
            try:
                await self.flow.drain()
            except asyncio.CancelledError:
                return
            if self.state is _CLOSED:
                return
        self._task = None
        self.last_active = self._clock.time()
        if self._pending:
            nxt = self._pending.popleft()
            if isinstance(nxt, GatewayError):
                self._answer_and_close(nxt)
                return
            if len(self._pending) < self._settings.max_pipelined:
                self.flow.resume_reading(PIPELINE)
            self._start(nxt)
