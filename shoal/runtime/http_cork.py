"""One write per response instead of two.

uvicorn writes a response's head and its body with two `transport.write` calls, and uvloop
sends each at once: two `send` syscalls and two TCP segments for a response of a few hundred
bytes, on both ends of the connection. This is the transport as uvicorn's request cycle sees it:
a head that announces a fixed length (`content-length`) is held and written together with the
next write, its body. Anything else (a chunked head, body chunks, `100 Continue`) goes through
at once, so a streaming response's head is never delayed.

Holding never reorders bytes: what is held goes out before the next write, before a close, and
when the response completes (`flush`, called by the protocol), whichever comes first.
"""

from __future__ import annotations

import asyncio


class CorkedTransport:
    """Wraps one connection's transport (the cycles of its requests share it: they answer one
    after another)."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.endswith(b"\r\n\r\n") and b"\r\ncontent-length: " in data:
            self._held = data  # a fixed-length head: its body comes next
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()
