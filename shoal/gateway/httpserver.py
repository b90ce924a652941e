"""The gateway's listener and its server-wide limits: how many client connections (below the
process's file-descriptor limit, so upstream connections always find descriptors), how many body
bytes all connections together may buffer, and a graceful stop.

At the connection cap a newcomer pushes out the longest idle connection (it loses no work);
when every connection is busy the newcomer is answered 503 + Retry-After and closed. A flood of
idle connections therefore cannot lock normal clients out."""

from __future__ import annotations

import asyncio
import logging
import resource

from shoal.gateway.clock import Clock
from shoal.gateway.connection import Handler, HttpConnection
from shoal.gateway.errors import Overloaded, render
from shoal.gateway.settings import HttpSettings
from shoal.gateway.wire import status_line

log = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a process-start step); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - platform refusal
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(settings: HttpSettings) -> int:
    """`max_connections`, lowered to leave `fd_reserve` descriptors of the process's limit for
    upstream connections, discovery and logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - settings.fd_reserve))


class HttpServer:
    def __init__(
        self, handler: Handler, settings: HttpSettings, clock: Clock, retry_after_s: int
    ) -> None:
        self._handler = handler
        self.settings = settings
        self.clock = clock
        self.retry_after_header = b"retry-after: %d\r\n" % retry_after_s
        self._server: asyncio.Server | None = None
        self.connections: dict[HttpConnection, None] = {}
        """Open client connections, oldest first."""
        self.max_connections = settings.max_connections
        self.buffered_bytes = 0
        """Request body bytes held by all connections together (capped by max_buffered_bytes)."""
        status, headers, body = render(
            Overloaded("the gateway has no room for another connection; retry later"),
            None,
            self.retry_after_header,
        )
        self._full = b"%b%bcontent-length: %d\r\nconnection: close\r\n\r\n%b" % (
            status_line(status),
            headers,
            len(body),
            body,
        )

    # -- used by connections ------------------------------------------------------------------

    def register(self, conn: HttpConnection) -> bool:
        """Admit a new connection; False when it was answered 503 and closed."""
        if len(self.connections) >= self.max_connections:
            idle = [c for c in self.connections if c.evictable]
            if not idle:
                assert conn.transport is not None
                conn.transport.write(self._full)
                conn.transport.close()
                return False
            victim = min(idle, key=lambda c: c.last_active)
            if victim.transport is not None:
                victim.transport.close()
            self.connections.pop(victim, None)
        self.connections[conn] = None
        return True

    def forget(self, conn: HttpConnection) -> None:
        self.connections.pop(conn, None)

    def reserve(self, size: int) -> bool:
        if self.buffered_bytes + size > self.settings.max_buffered_bytes:
            return False
        self.buffered_bytes += size
        return True

    def release(self, size: int) -> None:
        self.buffered_bytes -= size

    # -- life ---------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        self.max_connections = connection_cap(self.settings)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self._handler, self),
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
