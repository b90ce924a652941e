"""`python -m bench.upstream_clients --client {shoal,httpx,aiohttp} [shoal gateway flags]`: the
gateway with its replica-side HTTP client swapped, for the head-to-head in bench/RESULTS.md
(issue 16 item 3).

Everything but the upstream client is the real gateway, unchanged: `shoal.gateway.cli.run` builds
the same app (client-side HTTP server, admission, routing, P2C, retries, deadlines). Only the
class the registry builds one per replica (`shoal.gateway.registry.UpstreamPool`) is replaced
by a pool over `httpx.AsyncClient` or `aiohttp.ClientSession`, one client per replica with the
same connection limits (HTTP/1.1, keep-alive). The proxy's contract with a pool is raw bytes in
(`send(request_bytes)`: request line, headers, body, as it would write them to a socket) and a
parsed response out (status, the forwarded header block, body); so each adapter splits the
request bytes back into method, target, headers and body for the library (a few microseconds
of pure Python a gateway written on that library would not spend; measured in the RESULTS.md
section) and builds the header block from the library's parsed headers. Responses are read
whole (the libraries' fastest path; the benchmark's bodies are small): no streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import aiohttp
import httpx

from shoal.gateway import cli
from shoal.gateway import registry as registry_module
from shoal.gateway.settings import UpstreamSettings
from shoal.gateway.upstream import (
    _STREAM_TYPES,
    HOP_BY_HOP,
    BrokenResponse,
    ConnectError,
    ResetBeforeResponse,
)

# Headers a library sets itself from the URL and the body.
_SET_BY_CLIENT = frozenset({b"host", b"content-length"})


def split_request(data: bytes) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """The proxy's request bytes -> (method, target, headers without host/length, body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name not in _SET_BY_CLIENT:
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return method.decode("latin-1"), target.decode("latin-1"), headers, body


class Exchange:
    """One request on a library-backed pool, with the face of an `UpstreamConnection` that the
    proxy uses: `send`, `await wait_head()`, then status/header_block/`take_body`, and
    `finish` or `abort`. The library call runs inside `wait_head` (the proxy awaits it under
    the request's deadline), as a coroutine, not a task: no extra scheduling per request."""

    def __init__(self, run: RunExchange) -> None:
        self._run = run
        self._pending: Coroutine[Any, Any, None] | None = None
        self.status = 0
        self.header_block = bytearray()
        self.content_length: int | None = None
        self.draining = False
        self.retry_after = False
        self.event_stream = False
        self.complete = False
        self.closed = False
        self._body = b""

    def send(self, data: bytes, head_only: bool = False) -> None:
        self._pending = self._run(self, *split_request(data))

    async def wait_head(self) -> None:
        coro, self._pending = self._pending, None
        assert coro is not None
        await coro

    def answered(
        self, status: int, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """The library's response -> the fields the proxy reads (hop-by-hop headers dropped,
        as the hand-written pool does)."""
        self.status = status
        block = self.header_block
        for name, value in raw_headers:
            name = name.lower()
            if name in HOP_BY_HOP:
                continue
            if name == b"x-shoal-draining" and value.strip() == b"1":
                self.draining = True
            elif name == b"retry-after":
                self.retry_after = True
            elif name == b"content-type" and value.lower().startswith(_STREAM_TYPES):
                self.event_stream = True
            block += name + b": " + value + b"\r\n"
        self._body = body
        self.content_length = len(body)
        self.complete = True

    def take_body(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def next_chunk(self) -> bytes | None:
        return self.take_body() or None

    def finish(self) -> None:
        pass  # the library returned the connection to its pool when the body was read

    def abort(self) -> None:
        if self._pending is not None:
            self._pending.close()
            self._pending = None


class RunExchange(Protocol):
    def __call__(
        self, ex: Exchange, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Coroutine[Any, Any, None]: ...


class _LibraryPool:
    """What the registry and the proxy use of a pool: `acquire`, `host_header`, `close`."""

    def __init__(self, host: str, port: int, settings: UpstreamSettings) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.host_header = (
            f"{host}:{port}".encode() if ":" not in host else f"[{host}]:{port}".encode()
        )
        self.base = "http://" + self.host_header.decode()
        self.closing = False
        self._closers: set[asyncio.Task[None]] = set()

    async def acquire(self) -> Exchange:
        if self.closing:
            raise ConnectError(f"replica {self.host}:{self.port} was removed")
        return Exchange(self.exchange)

    async def exchange(
        self, ex: Exchange, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(RuntimeError):  # no running loop: the process is ending
            task = asyncio.get_running_loop().create_task(self.aclose())
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)


class HttpxPool(_LibraryPool):
    """One `httpx.AsyncClient` per replica: HTTP/1.1, the gateway's connection limits, no
    environment proxies, none of httpx's default headers (the hand-written pool sends none)."""

    def __init__(self, host: str, port: int, settings: UpstreamSettings) -> None:
        super().__init__(host, port, settings)
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_idle,
                keepalive_expiry=settings.idle_timeout_s,
            ),
            timeout=httpx.Timeout(None, connect=settings.connect_timeout_s),
            trust_env=False,
            http1=True,
            http2=False,
        )
        for name in ("accept", "accept-encoding", "connection", "user-agent"):
            del self.client.headers[name]
        # httpx logs every request at INFO (the gateway runs at INFO); the hand-written pool
        # logs none, and neither would a gateway built on httpx.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def exchange(
        self, ex: Exchange, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        try:
            resp = await self.client.request(
                method, self.base + target, headers=headers, content=body or None
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectError(f"cannot connect to {self.base}: {exc}") from exc
        except httpx.RemoteProtocolError as exc:
            if "without sending a response" in str(exc):
                raise ResetBeforeResponse(str(exc)) from exc
            raise BrokenResponse(str(exc)) from exc
        except httpx.TransportError as exc:
            raise BrokenResponse(str(exc)) from exc
        ex.answered(resp.status_code, resp.headers.raw, resp.content)

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpPool(_LibraryPool):
    """One `aiohttp.ClientSession` per replica with the same limits; no automatic headers and
    no decompression (bytes pass through as the hand-written pool passes them)."""

    def __init__(self, host: str, port: int, settings: UpstreamSettings) -> None:
        super().__init__(host, port, settings)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.max_connections,
                limit_per_host=settings.max_connections,
                keepalive_timeout=settings.idle_timeout_s,
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def exchange(
        self, ex: Exchange, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        try:
            async with self.session.request(
                method, self.base + target, headers=headers, data=body or None
            ) as resp:
                payload = await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {self.base}: {exc}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise ResetBeforeResponse(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise BrokenResponse(str(exc)) from exc
        ex.answered(resp.status, resp.raw_headers, payload)

    async def aclose(self) -> None:
        await self.session.close()


POOLS: dict[str, type[_LibraryPool]] = {"httpx": HttpxPool, "aiohttp": AiohttpPool}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.upstream_clients", description=__doc__)
    p.add_argument("--client", choices=["shoal", *POOLS], required=True)
    cli.add_arguments(p)
    args = p.parse_args(argv)
    if args.client != "shoal":
        # The registry builds one pool per replica by this module-level name.
        setattr(registry_module, "UpstreamPool", POOLS[args.client])  # noqa: B010
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
