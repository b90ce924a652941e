"""`python -m bench.fake_replica --ports P1,P2,...`: one process answering on many loopback ports
as if each were a model replica, for benchmarks of the gateway alone.

Each port is a keep-alive HTTP/1.1 server (uvloop, llhttp via httptools) that answers every POST
with a fixed, small JSON body of the OIP V2 shape (KServe V1's `{"predictions": ...}` for a
`:predict` path), and `GET /stats` with the number of POSTs that port answered. No model, no
batching, no parsing of the body: a request costs it a few microseconds, the same whatever the
number of ports, so what a benchmark through the gateway measures is the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
from collections.abc import Sequence
from typing import cast

import httptools
import orjson

_V2 = orjson.dumps(
    {
        "model_name": "mlp",
        "outputs": [
            {"name": "output-0", "shape": [1, 10], "datatype": "FP32", "data": [0.125] * 10}
        ],
    }
)
_V1 = orjson.dumps({"predictions": [[0.125] * 10]})


def _response(body: bytes, keep_alive: bool) -> bytes:
    conn = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: %b\r\n\r\n%b" % (len(body), conn, body)
    )


_ANSWERS = {
    (kind, keep): _response(body, keep)
    for kind, body in (("v2", _V2), ("v1", _V1))
    for keep in (True, False)
}


class Counter:
    """Requests answered on one port."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests = 0


class FakeReplica(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        keep = self.parser.should_keep_alive()
        assert self.transport is not None
        if self.parser.get_method() == b"GET" and url == b"/stats":
            body = orjson.dumps({"requests": self.counter.requests})
            self.transport.write(_response(body, keep))
        else:
            self.counter.requests += 1
            self.transport.write(_ANSWERS["v1" if url.endswith(b":predict") else "v2", keep])
        if not keep:
            self.transport.close()


async def serve(ports: Sequence[int], host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        counter = Counter()
        servers.append(
            await loop.create_server(
                functools.partial(FakeReplica, counter), host, port, backlog=1024
            )
        )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for srv in servers:
        srv.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fake_replica", description=__doc__)
    p.add_argument("--ports", required=True, help="comma list of ports to listen on")
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args(argv)
    ports = [int(x) for x in a.ports.split(",") if x.strip()]
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(ports, a.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
