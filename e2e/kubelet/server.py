"""The kubelet's read-only HTTPS endpoint, enough for ``kubectl logs [-f] [--tail N]``.

All nodes share the bridge address, so one server on ``<bridge>:10250`` answers for every node;
the API server proxies ``pods/log`` to it. Exec/attach/port-forward are not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

KUBELET_PORT = 10250

# (namespace, pod name, container) -> log file, or None when the pod is unknown.
LogLookup = Callable[[str, str, str], Path | None]


async def serve(host: str, cert: Path, key: Path, lookup: LogLookup, stop: asyncio.Event) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _handle(reader, writer, lookup, stop)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, KUBELET_PORT, ssl=ctx)
    async with server:
        await stop.wait()


async def _respond(writer: asyncio.StreamWriter, code: int, body: bytes) -> None:
    reason = {200: "OK", 404: "Not Found", 400: "Bad Request"}.get(code, "Error")
    head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
    writer.write(f"{head}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: LogLookup,
    stop: asyncio.Event,
) -> None:
    request = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
    method, target = request.split(" ", 2)[:2]
    url = urlsplit(target)
    parts = [unquote(p) for p in url.path.strip("/").split("/")]
    if method != "GET" or len(parts) != 4 or parts[0] != "containerLogs":
        await _respond(writer, 404, b"only GET /containerLogs/{ns}/{pod}/{container} is served\n")
        return
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    path = lookup(parts[1], parts[2], parts[3])
    if path is None:
        await _respond(writer, 404, f"pod {parts[1]}/{parts[2]} not found\n".encode())
        return
    data = path.read_bytes() if path.exists() else b""
    if "tailLines" in query:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
    if query.get("follow") != "true":
        await _respond(writer, 200, data)
        return
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    writer.write(data)
    await writer.drain()
    offset = path.stat().st_size if path.exists() else 0
    while not stop.is_set() and path.exists() and not reader.at_eof():
        size = path.stat().st_size
        if size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                writer.write(f.read(size - offset))
            offset = size
            await writer.drain()
        await asyncio.sleep(0.2)  # follow: poll the log file like `tail -f`
