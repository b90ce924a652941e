"""Hostile and careless clients against a real gateway and real upstreams on loopback (issue 10,
gateway items 1-7): memory and connections stay bounded, auth is decided on the request head,
nothing the client smuggles in reaches a replica, and the gateway's own overload is never blamed
on a healthy replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from shoal.gateway.settings import HttpSettings
from tests.gateway.conftest import GatewayFactory, GatewayProcess, ReplicaFactory, wait_until

TOKENS = "tokens:\n  admin-token-1: '*'\n"
AUTH = b"authorization: Bearer admin-token-1\r\n"


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(TOKENS)
    return str(path)


class Raw:
    """One raw client connection (the tests speak bytes, as an attacker would)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout_s: float = 10.0) -> tuple[int, dict[bytes, bytes], bytes]:
        """Read one response with a content-length body: (status, headers, body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        if headers.get(b"transfer-encoding") == b"chunked":
            return status, headers, await asyncio.wait_for(self._chunks(), timeout_s)
        length = int(headers.get(b"content-length", b"0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout_s)
        return status, headers, body

    async def _chunks(self) -> bytes:
        body = b""
        while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        await self.reader.readexactly(2)  # the empty trailer section
        return body

    async def closed(self, timeout_s: float = 10.0) -> bool:
        """True when the server closed the connection (EOF or reset)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(-1), timeout_s)
        except ConnectionResetError:
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


Connect = Callable[[int], Awaitable[Raw]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`await connect(port)`: a Raw connection, closed after the test."""
    opened: list[Raw] = []

    async def make(port: int) -> Raw:
        raw = await Raw.open(port)
        opened.append(raw)
        return raw

    yield make
    for raw in opened:
        raw.close()


# -- 1. auth and the route are decided on the head; buffered bytes and connections are capped --


async def test_unauthenticated_body_is_refused_on_its_head_and_never_continued(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file)
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 15000000\r\n"
        b"expect: 100-continue\r\n\r\n"
    )
    status, headers, body = await raw.response()
    assert status == 401, "no 100 Continue for a request without a token"
    assert headers[b"connection"] == b"close"
    assert b"missing bearer token" in body
    # Without Expect the head is judged as soon as it is in: the 15 MB are never awaited.
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 15000000\r\n\r\n"
        + b"x" * 65536
    )
    status, _, _ = await raw.response()
    assert status == 401
    assert gw.app.server.buffered_bytes == 0, "nothing of a refused body is kept"
    assert rep.seen == []


async def test_unknown_model_is_refused_on_its_head(
    replicas: ReplicaFactory, gateway: GatewayFactory, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/other:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 15000000\r\n"
        b"expect: 100-continue\r\n\r\n"
    )
    status, _, body = await raw.response()
    assert status == 404
    assert b"unknown model" in body


async def test_authorised_expect_continue_still_gets_100(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file)
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        + AUTH
        + b"expect: 100-continue\r\n\r\n"
    )
    assert (await raw.response())[0] == 100
    await raw.send(b"hi")
    status, _, body = await raw.response()
    assert status == 200
    assert orjson.loads(body)["body"] == "hi"


async def test_total_buffered_bytes_are_capped_with_503(
    replicas: ReplicaFactory, gateway: GatewayFactory, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway(
        {"m": [rep.url]}, http=HttpSettings(max_body_bytes=100_000, max_buffered_bytes=120_000)
    )
    head = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 80000\r\n\r\n"
    first = await connect(gw.app.port)
    second = await connect(gw.app.port)
    await first.send(head + b"a" * 40_000)
    await wait_until(lambda: gw.app.server.buffered_bytes >= 40_000, what="first body arriving")
    await second.send(head + b"b" * 40_000)
    status, headers, body = await second.response()
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert b"buffering" in body
    await first.send(b"a" * 40_000)
    status, _, body = await first.response()
    assert status == 200, "the request within the cap is served"
    assert len(orjson.loads(body)["body"]) == 80_000
    await wait_until(lambda: gw.app.server.buffered_bytes == 0, what="buffers released")


async def test_connection_cap_answers_503_and_evicts_idle_connections_first(
    replicas: ReplicaFactory, gateway: GatewayFactory, connect: Connect
) -> None:
    rep = await replicas("a")
    rep.mode = "slow"
    gw = await gateway({"m": [rep.url]}, http=HttpSettings(max_connections=3))
    request = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    busy = [await connect(gw.app.port) for _ in range(3)]
    for raw in busy:
        await raw.send(request)
    await wait_until(lambda: len(rep.seen) == 3, what="three requests at the replica")
    extra = await connect(gw.app.port)
    status, headers, _ = await extra.response()
    assert status == 503, "every connection is busy: no room"
    assert headers[b"retry-after"] == b"1"
    assert await extra.closed()
    rep.gate.set()
    for raw in busy:
        assert (await raw.response())[0] == 200
    # Now all three are idle keep-alive connections: a newcomer pushes out the oldest.
    newcomer = await connect(gw.app.port)
    await newcomer.send(request)
    assert (await newcomer.response())[0] == 200
    assert await busy[0].closed(), "the longest idle connection made room"


# -- 2. write backpressure ------------------------------------------------------------------


async def test_client_that_pipelines_and_never_reads_is_bounded(
    replicas: ReplicaFactory, gateway: GatewayFactory, connect: Connect
) -> None:
    rep = await replicas("a")
    rep.big_body = 16 * 1024  # small enough to arrive whole: written in one piece, not streamed
    gw = await gateway({"m": [rep.url]})
    raw = await connect(gw.app.port)
    n = 512  # 8 MB of answers to a client that reads none of them
    raw.writer.write(
        b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n" * n
    )  # no drain: the client never waits
    await wait_until(lambda: len(gw.app.server.connections) == 1, what="connection accepted")
    (conn,) = gw.app.server.connections

    def buffered() -> int:
        return conn.transport.get_write_buffer_size() if conn.transport is not None else 0

    await wait_until(
        lambda: conn.flow.paused_for_writes or buffered() > 4 << 20,
        what="the gateway to stop reading or to pile up answers",
    )
    assert buffered() <= 1 << 20, "answers queue up for a client that reads none"
    # Reading resumes as the client reads: every answer arrives, in order.
    for i in range(n):
        status, headers, body = await raw.response()
        assert status == 200
        assert len(body) == 16 * 1024 + 2, (i, headers)


# -- 3. out of descriptors: the gateway's own overload ----------------------------------------


async def test_out_of_descriptors_is_the_gateways_503_and_ejects_no_replica(
    replicas: ReplicaFactory, gateway: GatewayFactory, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    raw = await connect(gw.app.port)
    await wait_until(lambda: len(gw.app.server.connections) == 1, what="connection accepted")
    request = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Every descriptor this process may open is taken (the limit just above the highest one in
    # use, the gaps below filled): the gateway's connect() gets EMFILE.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))), hard))
    fillers: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        await raw.send(request)
        status, headers, body = await raw.response()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert status == 503, body
    assert headers[b"retry-after"] == b"1"
    assert b"gateway is out of file descriptors" in body
    replica = gw.app.registry.models["m"].replicas[0]
    assert replica.ejected_until == 0.0, "a healthy replica is not blamed"
    await raw.send(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    assert (await raw.response())[0] == 200


# -- 4. trailers ----------------------------------------------------------------------------


async def test_trailers_are_dropped_and_never_authenticate(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file)
    chunked = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
    trailer = b"2\r\nhi\r\n0\r\nx-user: admin\r\nx-shoal-timeout-ms: 600000\r\n"
    raw = await connect(gw.app.port)
    await raw.send(chunked + b"\r\n2\r\nhi\r\n0\r\n" + AUTH + b"\r\n")
    assert (await raw.response())[0] == 401, "a token in a trailer is no token"
    raw = await connect(gw.app.port)
    await raw.send(chunked + AUTH + b"\r\n" + trailer + b"\r\n")
    assert (await raw.response())[0] == 200
    seen = rep.seen[-1].headers
    assert "x-user" not in seen
    assert int(seen["x-shoal-timeout-ms"]) <= 30_000, "the default deadline, not the trailer's"


# -- 5. request ids -------------------------------------------------------------------------


@pytest.mark.parametrize("rid", [b"\xff\xfe-bad", b"a b", b"x" * 500])
async def test_unusable_request_id_is_replaced(
    gateway: GatewayFactory, connect: Connect, rid: bytes
) -> None:
    gw = await gateway({"cold": []}, max_held_per_model=0)
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/cold:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
        b"x-request-id: " + rid + b"\r\n\r\n"
    )
    status, headers, _ = await raw.response()
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert headers[b"x-request-id"].startswith(b"gw")


async def test_good_request_id_is_kept(gateway: GatewayFactory, connect: Connect) -> None:
    gw = await gateway({"cold": []}, max_held_per_model=0)
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/cold:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
        b"x-request-id: req-7_A.b:c\r\n\r\n"
    )
    _, headers, _ = await raw.response()
    assert headers[b"x-request-id"] == b"req-7_A.b:c"


# -- 6. metrics and health ------------------------------------------------------------------


async def test_metrics_need_a_token_or_the_metrics_port(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file, metrics_port=0)
    resp = await gw.client.get("/metrics")
    assert resp.status_code == 401, "the model list and replica addresses are not public"
    resp = await gw.client.get("/metrics", headers={"authorization": "Bearer admin-token-1"})
    assert resp.status_code == 200
    assert gw.app.metrics_port not in (0, gw.app.port)
    async with __import__("httpx").AsyncClient(
        base_url=f"http://127.0.0.1:{gw.app.metrics_port}"
    ) as scraper:
        resp = await scraper.get("/metrics")
        assert resp.status_code == 200
        assert "shoal_gateway" in resp.text
        assert (await scraper.get("/v1/models/m")).status_code == 404, "only metrics there"
    live = await gw.client.get("/v2/health/live")
    assert live.json() == {"live": True}, "health says nothing about models or replicas"


# -- 7. what reaches the replica -------------------------------------------------------------


async def test_token_hop_by_hop_and_spoofed_forwarding_headers_do_not_reach_the_replica(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file)
    raw = await connect(gw.app.port)
    await raw.send(
        b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
        + AUTH
        + b"x-forwarded-for: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\nx-real-ip: 6.6.6.6\r\n"
        b"connection: keep-alive, x-private\r\nx-private: 1\r\nproxy-authorization: p\r\n"
        b"x-app: kept\r\n\r\n"
    )
    assert (await raw.response())[0] == 200
    seen = rep.seen[-1].headers
    assert "authorization" not in seen, "the gateway's token stays at the gateway"
    assert "proxy-authorization" not in seen
    assert "x-private" not in seen, "headers named in Connection are hop-by-hop"
    assert "x-real-ip" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["forwarded"] == "for=127.0.0.1"
    assert seen["x-app"] == "kept"


async def test_duplicate_authorization_is_refused(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str, connect: Connect
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, tokens_file=tokens_file)
    for path in (b"/v1/models/m:predict", b"/v1/models"):
        raw = await connect(gw.app.port)
        await raw.send(
            b"GET "
            + path
            + b" HTTP/1.1\r\nhost: x\r\n"
            + AUTH
            + b"authorization: Bearer no\r\n\r\n"
        )
        status, _, body = await raw.response()
        assert status == 400, path
        assert b"one Authorization header" in body
    assert rep.seen == []


async def test_404_echo_is_bounded(replicas: ReplicaFactory, gateway: GatewayFactory) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    for path in ("/v2/" + "n" * 6000, "/v1/models/" + "q" * 6000 + ":predict"):
        resp = await gw.client.get(path)
        assert resp.status_code == 404
        assert len(resp.content) < 400, len(resp.content)


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))


async def test_idle_flood_under_a_low_fd_limit_does_not_lock_out_clients(
    replicas: ReplicaFactory, tmp_path: Path, connect: Connect
) -> None:
    """`shoal gateway` started with 256 open files (hard limit 512), flooded by 700 idle
    connections: it raises its own limit, keeps descriptors for upstreams, and answers."""
    rep = await replicas("a")
    gateway = GatewayProcess(["--upstream", f"m={rep.url}"], tmp_path, _low_fd_limit)
    try:
        port = await gateway.listening()
        limits = await asyncio.to_thread(Path(f"/proc/{gateway.proc.pid}/limits").read_text)
        assert re.search(r"Max open files\s+512\s+512", limits), "soft limit raised to hard"
        for _ in range(700):
            await connect(port)
        request = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        for _ in range(3):
            client = await connect(port)
            await client.send(request)
            status, _, body = await client.response(timeout_s=30)
            assert status == 200, body
        assert "Too many open files" not in gateway.logs()
    finally:
        await gateway.stop()
