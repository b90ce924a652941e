"""One request-response cycle on a client connection (uvicorn's `RequestResponseCycle`): the
response sink the request path writes to. It knows how the response is framed (length or
chunked, HEAD, keep-alive) and what was sent (status, whether the head went out); the
connection decides what happens after it."""

from __future__ import annotations

import asyncio

from shoal.gateway.errors import GatewayError, render
from shoal.gateway.flow import FlowControl
from shoal.gateway.wire import status_line


class ResponseCycle:
    __slots__ = (
        "_chunked",
        "_flow",
        "_transport",
        "head_only",
        "head_sent",
        "keep_alive",
        "request_id",
        "retry_after",
        "status",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        flow: FlowControl,
        keep_alive: bool,
        head_only: bool,
        request_id: bytes | None,
        retry_after_header: bytes,
    ) -> None:
        self._transport = transport
        self._flow = flow
        self.retry_after = retry_after_header
        """The encoded `retry-after` header line of this gateway."""
        self._chunked = False
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.request_id = request_id
        self.status = 0
        self.head_sent = False

    @property
    def closed(self) -> bool:
        return self._transport.is_closing()

    def error(self, exc: GatewayError) -> None:
        """Answer the gateway's own failure (the one error model: see errors.py)."""
        self.write_full(*render(exc, self.request_id, self.retry_after))

    def write_full(
        self, status: int, header_block: bytes | bytearray, body: bytes, head_length: int = -1
    ) -> None:
        """A complete response: status, pre-encoded `name: value\\r\\n` headers, body."""
        transport = self._transport
        if transport.is_closing():
            return
        self.status = status
        self.head_sent = True
        length = head_length if self.head_only and head_length >= 0 else len(body)
        tail = b"content-length: %d\r\n" % length
        if not self.keep_alive:
            tail += b"connection: close\r\n"
        tail += b"\r\n"
        if self.head_only:
            transport.write(status_line(status) + header_block + tail)
        else:
            transport.write(b"".join((status_line(status), header_block, tail, body)))

    def start_stream(
        self, status: int, header_block: bytes | bytearray, length: int | None
    ) -> None:
        """Begin a streamed response: with a known length as is, else chunked (HTTP/1.1)."""
        if self._transport.is_closing():
            return
        self.status = status
        self.head_sent = True
        if length is not None:
            tail = b"content-length: %d\r\n" % length
        else:
            self._chunked = True
            tail = b"transfer-encoding: chunked\r\n"
        if not self.keep_alive:
            tail += b"connection: close\r\n"
        self._transport.write(status_line(status) + header_block + tail + b"\r\n")

    async def write_chunk(self, data: bytes) -> None:
        """Forward one piece of a streamed body; waits while the client is not reading."""
        if self._transport.is_closing():
            raise ConnectionResetError("client went away")
        if self._chunked:
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._transport.write(data)
        if self._flow.writes_paused:
            await self._flow.drain()
            if self._transport.is_closing():
                raise ConnectionResetError("client went away")

    def end_stream(self) -> None:
        if self._chunked and not self._transport.is_closing():
            self._transport.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """The response cannot be completed: close so the client sees it is truncated."""
        self.keep_alive = False
        self._transport.close()
