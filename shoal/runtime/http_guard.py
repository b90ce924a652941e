"""Limits uvicorn's httptools protocol lacks: bounded request heads, head/body timeouts, and a
cap on open connections. Measured without them (issue 10): four 50 MB unterminated headers took
a replica from 51 MB to 256 MB, 500 slowloris connections were never answered, a connection that
sent nothing stayed open for good, and under a 1,024 fd limit 2,000 idle connections locked
normal clients out.

uvicorn's own knobs do not cover this: `h11_max_incomplete_event_size` is for the h11 protocol
only (httptools buffers an unterminated header without bound), `timeout_keep_alive` is armed
only after a response, and `limit_concurrency` answers 503 but keeps every socket open. So this
is uvicorn's `HttpToolsProtocol` with a small state machine in front of its parser:

    IDLE --first byte of a request--> HEAD --head complete--> BODY --body complete--> IDLE

- IDLE: nothing of a request has arrived. A new connection must send a complete head within
  `head_timeout_s`, else it is closed (silently: it said nothing); a kept-alive one is closed by
  uvicorn's keep-alive timer.
- HEAD: bytes of a request line and headers, at most `max_header_bytes` and
  `max_header_count` fields (431 and close), complete within `head_timeout_s` (408 and close).
- BODY: the body must be complete within `body_timeout_s` of the head (408 and close).

No timer is armed for a request whose head and body arrive in one read (the usual case on the
hot path); only a partial head or body arms one. A connection over `max_connections` closes an
idle connection to make room, or is answered 503 and closed at once (so a flood holds no file
descriptors beyond the cap)."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shoal.runtime.http_cork import CorkedTransport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 32 << 10
    max_header_count: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 4096


class Phase(enum.Enum):
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"


def _response(status: bytes, message: bytes, *extra: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % (len(message) + 12),
            b"connection: close\r\n",
            *extra,
            b"\r\n",
            b'{"error": "' + message + b'"}',
        ]
    )


_HEAD_TOO_LARGE = _response(b"431 Request Header Fields Too Large", b"request head too large")
_TOO_MANY_HEADERS = _response(b"431 Request Header Fields Too Large", b"too many header fields")
_HEAD_TIMEOUT = _response(b"408 Request Timeout", b"request head not received in time")
_BODY_TIMEOUT = _response(b"408 Request Timeout", b"request body not received in time")
_FULL = _response(b"503 Service Unavailable", b"too many open connections", b"retry-after: 1\r\n")


class _TooManyHeaders(Exception):
    pass


_Base = HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits = Limits()
    idle: dict[GuardedHttpToolsProtocol, None] = {}
    """Idle connections of this server, oldest first (what a connection over the cap evicts).
    Each server's protocol class has its own (see `protocol_with`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = Phase.IDLE
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._corked = CorkedTransport(transport)
        if full and not self._evict_an_idle_connection():
            self._refused = True
            logger.warning("refused a connection: %d open", len(self.connections))
            self._close_with(_FULL)
            return
        self.idle[self] = None
        # a new connection must send a head in time (uvicorn arms nothing before a response)
        self._arm(self.limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def _evict_an_idle_connection(self) -> bool:
        while self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            if oldest.is_idle():
                oldest.transport.close()
                self.connections.discard(oldest)
                return True
        return False

    def is_idle(self) -> bool:
        """Nothing of a request arrived and no response is owed: closing loses nothing."""
        return (
            self.phase is Phase.IDLE
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and not self.transport.is_closing()
        )

    # The overrides below run for every request, so they call the base class directly (no
    # `super()` lookup) and keep to a few attribute checks: the guard's first version cost
    # ~12 us a request on the V1 hot path (bench/RESULTS.md), mostly in per-header and
    # per-response Python frames. Eviction re-checks `is_idle()`, so the registry may hold a
    # connection that has since become busy or closed.
    def on_response_complete(self) -> None:
        self._corked.flush()  # a head-only response (HEAD, an empty body) is out now
        _Base.on_response_complete(self)
        if self.phase is Phase.IDLE and not self.pipeline:
            self.idle[self] = None

    # -- bytes in ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        phase = self.phase
        try:
            if phase is Phase.BODY:
                self.parser.feed_data(data)
            elif self._head_bytes + len(data) <= self.limits.max_header_bytes:
                # the usual case: the whole read fits what is left of the head budget
                self._head_bytes += len(data)
                self.parser.feed_data(data)
            else:
                self._feed_bounded(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__cause__ or exc.__context__, _TooManyHeaders):
                raise
            self._close_with(_TOO_MANY_HEADERS)
            return
        except httptools.HttpParserError:
            logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # ws="none": no upgrades here
            return
        phase = self.phase
        if phase is Phase.IDLE or self.transport.is_closing():
            return
        if phase is Phase.HEAD and len(self.headers) > self.limits.max_header_count:
            # a head still open after this read: its fields so far count (a complete head's
            # are counted in on_headers_complete)
            self._close_with(_TOO_MANY_HEADERS)
        elif self._timer is None:
            self._arm(
                self.limits.head_timeout_s if phase is Phase.HEAD else self.limits.body_timeout_s
            )

    def _feed_bounded(self, data: bytes) -> None:
        """Feed the parser, at most what is left of the head budget while a head is being read;
        the rest (the body, the next request) only once that head is complete."""
        limit = self.limits.max_header_bytes
        while data:
            if self.phase is Phase.BODY:
                self.parser.feed_data(data)
                return
            room = limit - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self.parser.feed_data(data)
                return
            self._head_bytes = limit
            self.parser.feed_data(data[:room])
            if self.transport.is_closing():
                return
            if self._head_bytes:  # not reset by on_headers_complete: the head is still open
                self._close_with(_HEAD_TOO_LARGE)
                return
            data = data[room:]

    # -- parser callbacks (uvicorn's, plus the phase) ----------------------------------------
    def on_message_begin(self) -> None:
        self.phase = Phase.HEAD
        self.idle.pop(self, None)
        _Base.on_message_begin(self)

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_header_count:
            raise _TooManyHeaders
        self.phase = Phase.BODY
        self._head_bytes = 0
        if self._timer is not None:
            self._disarm()
        _Base.on_headers_complete(self)
        cycle = self.cycle
        if cycle is not None:
            # head and body of its response in one write (http_cork.py)
            cycle.transport = self._corked  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.phase = Phase.IDLE
        if self._timer is not None:
            self._disarm()
        _Base.on_message_complete(self)

    # -- timers and answers -----------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._on_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.phase is Phase.HEAD:
            self._close_with(_HEAD_TIMEOUT)
        elif self.phase is Phase.BODY:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # the app may be waiting for the body: it gets http.disconnect, its answer
                # goes nowhere
                cycle.disconnected = True
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
            self._close_with(_BODY_TIMEOUT)
        elif self.cycle is None:
            self.transport.close()  # a new connection that never sent a byte

    def _close_with(self, response: bytes) -> None:
        self._disarm()
        self.idle.pop(self, None)
        self.transport.write(response)
        self.transport.close()


def protocol_with(limits: Limits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits and its own
    registry of idle connections."""
    return type("ShoalHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "idle": {}})
