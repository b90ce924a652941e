"""A small HTTP/1.1 client for gateway -> replica traffic: one asyncio Protocol per connection,
llhttp (httptools) for parsing, keep-alive pools per replica with explicit limits.

Hand-written instead of httpx/aiohttp because the gateway's whole cost is per-request overhead:
the request goes out in one write, the response head is parsed in C, and a small response that
arrives in one segment is handed back without any extra task or stream object. Headers are
filtered (hop-by-hop removed) while parsing, into the exact bytes the gateway writes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
from collections import deque
from typing import cast

import httptools

from shoal.gateway.settings import UpstreamSettings

log = logging.getLogger(__name__)

# Never forwarded in either direction (RFC 9110 section 7.6.1), plus the framing headers the
# gateway sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

_STREAM_TYPES = (
    b"text/event-stream",
    b"application/x-ndjson",
    b"application/jsonl",
    b"application/stream+json",
    b"multipart/x-mixed-replace",
)
_HIGH_WATER = 1 << 20  # stop reading a streaming response once this much waits for the client
_LOW_WATER = 1 << 18


class UpstreamError(Exception):
    """The replica could not be used for this request."""


class ConnectError(UpstreamError):
    """No connection could be made: the request never left the gateway (safe to retry)."""


class DescriptorsExhausted(ConnectError):
    """The gateway itself is out of file descriptors (EMFILE/ENFILE): its own overload, not the
    replica's fault (never ejects it)."""


class ResetBeforeResponse(UpstreamError):
    """The connection closed after the request was sent but before any response byte."""


class BrokenResponse(UpstreamError):
    """The response broke off or was malformed after it had started (not retryable)."""


class ConnectionState(enum.Enum):
    """The life of one upstream connection (httpcore's ConnectionState, for one request at a
    time). IDLE -> SENT -> RECEIVING -> HEAD -> COMPLETE -> (finish) IDLE, or CLOSED anywhere."""

    IDLE = "idle"
    """Open, no request (in the pool, or just connected)."""
    SENT = "sent"
    """A request was written; no response byte yet (a close now is a reset before response)."""
    RECEIVING = "receiving"
    """Part of the response head has arrived."""
    HEAD = "head"
    """The response head is parsed; its body is arriving."""
    COMPLETE = "complete"
    """The whole response is in; the gateway has not handed the connection back yet."""
    CLOSED = "closed"


_IDLE = ConnectionState.IDLE
_SENT = ConnectionState.SENT
_RECEIVING = ConnectionState.RECEIVING
_HEAD = ConnectionState.HEAD
_COMPLETE = ConnectionState.COMPLETE
_CLOSED = ConnectionState.CLOSED
_AWAITING_HEAD = (_SENT, _RECEIVING)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a replica; carries one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = _IDLE
        self.holds_slot = False
        """Counted in the pool's `total` (released once, when the connection closes)."""
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.head_only = False
        """The request was HEAD: its response has no body, whatever its headers say."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.header_block = bytearray()
        """Response headers to forward, already encoded as `name: value\\r\\n` lines."""
        self.content_length: int | None = None
        self.chunked = False
        self.draining = False
        self.retry_after = False
        self.event_stream = False
        """A streaming media type (SSE, NDJSON): forward the head at once, before any event."""
        self.keep_alive = True
        self.error: UpstreamError | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    @property
    def complete(self) -> bool:
        return self.state is _COMPLETE

    # -- used by the gateway ------------------------------------------------------------------

    def send(self, data: bytes, head_only: bool = False) -> None:
        """Write a complete request; then `await wait_head()`."""
        self._reset()
        self.state = _SENT
        self.head_only = head_only
        assert self.transport is not None
        self.transport.write(data)

    async def wait_head(self) -> None:
        while self.state in _AWAITING_HEAD:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.state is _CLOSED and self.error is not None:
            raise self.error

    def take_body(self) -> bytes:
        """The whole body, once `complete`."""
        chunks = self._chunks
        self._chunks = []
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def next_chunk(self) -> bytes | None:
        """The next piece of a streaming body; None at its end."""
        while True:
            if self._chunks:
                data = self.take_body()
                self._buffered = 0
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return data
            if self.state is _COMPLETE:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()

    def finish(self) -> None:
        """Return the connection to its pool (reused when the response allows it)."""
        reuse = self.state is _COMPLETE and self.keep_alive and not self.head_only
        if self.state is not _CLOSED:
            self.state = _IDLE
        self.pool.release(self, reuse)

    def abort(self) -> None:
        """Drop the connection: its response was abandoned midway."""
        self.close()
        self.pool.release(self, False)

    def close(self) -> None:
        if self.transport is not None and self.state is not _CLOSED:
            self.transport.close()

    async def _wait(self) -> None:
        fut = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._waiter = None

    def _wake(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.holds_slot = True

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is _SENT:
            self.state = _RECEIVING
        elif state is _IDLE or state is _COMPLETE:
            # Bytes nobody asked for: the connection is out of sync; never reuse it.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = BrokenResponse(f"malformed response from replica: {exc}")
            self.keep_alive = False
            self.close()
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        if self.error is None:
            if state is _HEAD and self.content_length is None and not self.chunked:
                state = self.state = _COMPLETE  # a close-delimited body ends with the connection
            elif state is _RECEIVING or state is _HEAD:
                self.error = BrokenResponse("replica closed the connection mid-response")
            elif state is _SENT:
                self.error = ResetBeforeResponse("replica closed the connection before answering")
        if state is _COMPLETE:
            self.keep_alive = False  # the response stands; the connection is not reused
        else:
            self.state = _CLOSED
        self._wake()
        self.pool.forget(self)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"content-length":
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            return
        if name == b"x-shoal-draining" and value.strip() == b"1":
            self.draining = True
        elif name == b"retry-after":
            self.retry_after = True
        elif name == b"content-type" and value.lower().startswith(_STREAM_TYPES):
            self.event_stream = True
        self.header_block += name + b": " + value + b"\r\n"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # interim response; its own message_complete resets below
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.state = _HEAD
        if self.head_only:
            # llhttp cannot be told that a HEAD response has no body: finish here and never
            # reuse this connection (finish() checks head_only).
            self.state = _COMPLETE
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self.state is not _HEAD:
            if self.state is _RECEIVING:
                # The end of a 1xx interim response: wait for the real one.
                self.header_block = bytearray()
                self.content_length = None
                self.chunked = False
            return
        self.state = _COMPLETE
        self._wake()


class UpstreamPool:
    """Keep-alive connections to one replica: at most `max_connections` open, up to `max_idle`
    kept idle (most recently used first, so idle ones age out on the replica's side)."""

    def __init__(self, host: str, port: int, settings: UpstreamSettings) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.host_header = (
            f"{host}:{port}".encode() if ":" not in host else f"[{host}]:{port}".encode()
        )
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.total = 0
        self.closing = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> UpstreamConnection:
        while True:
            idle = self._idle
            if idle:
                oldest_ok = asyncio.get_running_loop().time() - self.settings.idle_timeout_s
                while idle:
                    conn = idle.pop()
                    if conn.state is _CLOSED:
                        continue
                    if conn.idle_since < oldest_ok:
                        conn.close()
                        continue
                    return conn
            if self.closing:
                raise ConnectError(f"replica {self.host}:{self.port} was removed")
            if self.total < self.settings.max_connections:
                return await self._connect()
            fut: asyncio.Future[UpstreamConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(fut)
            try:
                conn2 = await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    # Handed a connection (or a free slot) just as we gave up: pass it on,
                    # or it would be lost to the pool for good.
                    handed = fut.result()
                    if handed is not None:
                        self.release(handed, True)
                    else:
                        self._wake_one(None)
                else:
                    fut.cancel()
                    self._waiters.remove(fut)
                raise
            if conn2 is not None and not conn2.closed:
                return conn2
            # None: a slot freed up; loop to open a new connection.

    async def _connect(self) -> UpstreamConnection:
        self.total += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                _, proto = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except (OSError, TimeoutError) as exc:
            self.total -= 1
            self._wake_one(None)
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise DescriptorsExhausted(
                    f"the gateway is out of file descriptors ({exc.strerror})"
                ) from exc
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            self.total -= 1
            self._wake_one(None)
            raise
        return proto

    def release(self, conn: UpstreamConnection, reuse: bool) -> None:
        if reuse and not conn.closed and not self.closing:
            if self._wake_one(conn):
                return
            if len(self._idle) < self.settings.max_idle:
                conn.idle_since = asyncio.get_running_loop().time()
                self._idle.append(conn)
                return
        conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """Called when a connection has closed: frees its slot."""
        if conn.holds_slot:
            conn.holds_slot = False
            self.total -= 1
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._wake_one(None)

    def _wake_one(self, conn: UpstreamConnection | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def close(self) -> None:
        """Stop using this replica: close idle connections now, busy ones when released."""
        self.closing = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
