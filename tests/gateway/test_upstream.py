"""The upstream pool's bookkeeping under races, against a real loopback server."""

from __future__ import annotations

import asyncio

import pytest

from shoal.gateway.settings import UpstreamSettings
from shoal.gateway.upstream import ConnectError, ConnectionState, UpstreamPool


async def _server() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_connection_handed_to_a_waiter_that_gave_up_is_not_lost() -> None:
    server, port = await _server()
    pool = UpstreamPool("127.0.0.1", port, UpstreamSettings(max_connections=1, max_idle=1))
    try:
        conn = await pool.acquire()
        waiter = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)  # let it queue (one loop turn, not a timing guess)
        assert len(pool._waiters) == 1
        conn.state = ConnectionState.COMPLETE
        conn.finish()  # hands `conn` to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
        assert pool.idle == 1, "the connection went back to the pool"
        again = await asyncio.wait_for(pool.acquire(), 5)
        assert again is conn
        assert pool.total == 1
    finally:
        pool.close()
        server.close()


async def test_refused_connection_frees_its_slot() -> None:
    server, port = await _server()
    server.close()
    await server.wait_closed()
    pool = UpstreamPool("127.0.0.1", port, UpstreamSettings(max_connections=1))
    for _ in range(3):
        with pytest.raises(ConnectError, match="cannot connect"):
            await pool.acquire()
    assert pool.total == 0


async def test_idle_connections_past_their_age_are_not_reused() -> None:
    server, port = await _server()
    pool = UpstreamPool(
        "127.0.0.1", port, UpstreamSettings(max_connections=4, max_idle=4, idle_timeout_s=0.0)
    )
    try:
        conn = await pool.acquire()
        conn.state = ConnectionState.COMPLETE
        conn.finish()
        assert pool.idle == 1
        fresh = await pool.acquire()
        assert fresh is not conn, "an idle connection at its age limit is closed, not reused"
        assert conn.transport is not None
        assert conn.transport.is_closing()
    finally:
        pool.close()
        server.close()
