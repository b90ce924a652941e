"""Flow control of one client connection (uvicorn's `flow_control.py` split): why reading is
paused, and waiting while the client does not read what the gateway writes.

Reading pauses for any of several reasons and resumes only when none is left: a full pipeline
(requests parsed but not yet answered) and paused writes (the transport's buffer is over its high
water mark because the client is not reading). The second keeps a client that pipelines and
never reads from growing the gateway's memory with answers nobody takes."""

from __future__ import annotations

import asyncio

PIPELINE = 1
"""Too many pipelined requests are waiting for their turn."""
WRITES = 2
"""The client is not reading what was written."""
ANSWERING = 4
"""The connection answered an error and reads no further request (it closes after)."""


class FlowControl:
    __slots__ = ("_paused_by", "_transport", "_writable", "writes_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._paused_by = 0
        self.writes_paused = False
        self._writable: asyncio.Future[None] | None = None

    @property
    def paused_for_writes(self) -> bool:
        return bool(self._paused_by & WRITES)

    def pause_reading(self, reason: int) -> None:
        if not self._paused_by:
            self._transport.pause_reading()
        self._paused_by |= reason

    def resume_reading(self, reason: int) -> None:
        if not self._paused_by & reason:
            return
        self._paused_by &= ~reason
        if not self._paused_by and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- asyncio.Protocol's write flow control, forwarded by the connection --------------------

    def pause_writing(self) -> None:
        self.writes_paused = True
        self.pause_reading(WRITES)

    def resume_writing(self) -> None:
        self.writes_paused = False
        self.resume_reading(WRITES)
        self._wake()

    def connection_lost(self) -> None:
        self._wake()

    def _wake(self) -> None:
        fut = self._writable
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def drain(self) -> None:
        """Return once the client has read enough (or the connection is gone)."""
        while self.writes_paused and not self._transport.is_closing():
            fut = self._writable = asyncio.get_running_loop().create_future()
            await fut
