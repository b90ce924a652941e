"""The bad-input table over raw sockets: each bad request gets a clear 4xx (JSON body naming the
problem) and never disturbs other clients' requests."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from shoal.gateway.settings import HttpSettings
from tests.gateway.conftest import (
    FakeReplica,
    GatewayFactory,
    ReplicaFactory,
    RunningGateway,
    wait_until,
)
from tests.gateway.manual_clock import ManualClock

LIMITS = HttpSettings(
    max_body_bytes=1024,
    max_header_bytes=2048,
    max_headers=20,
    max_url_bytes=512,
    request_read_timeout_s=0.5,
)


async def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> tuple[int, bytes, bytes]:
    """Send `data`, read until the server closes; (status, head, body) of the first response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body


@pytest.fixture
async def env(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> tuple[RunningGateway, FakeReplica]:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, http=LIMITS, clock=clock)
    return gw, rep


def _req(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


BAD = [
    ("garbage request line", b"GARBAGE\r\n\r\n", 400, "malformed"),
    ("bad header syntax", _req("GET /v2/health/live HTTP/1.1\nbad header\n"), 400, "malformed"),
    (
        "absolute-form target",
        _req("GET http://evil.example/v2/health/live HTTP/1.1\nhost: x\n"),
        400,
        "starting with '/'",
    ),
    ("asterisk target", _req("OPTIONS * HTTP/1.1\nhost: x\n"), 400, "starting with '/'"),
    (
        "method not allowed on a model",
        _req("TRACE /v1/models/m HTTP/1.1\nconnection: close\n"),
        405,
        "TRACE",
    ),
    (
        "method not allowed on health",
        _req("DELETE /metrics HTTP/1.1\nconnection: close\n"),
        405,
        "DELETE",
    ),
    (
        "declared body too large",
        _req("POST /v1/models/m:predict HTTP/1.1\nhost: x\ncontent-length: 5000\n"),
        413,
        "larger than 1024",
    ),
    (
        "chunked body too large",
        _req(
            "POST /v1/models/m:predict HTTP/1.1\nhost: x\ntransfer-encoding: chunked\n",
            b"400\r\n" + b"x" * 1024 + b"\r\n400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n",
        ),
        413,
        "larger than 1024",
    ),
    (
        "content-length and chunked together",
        _req(
            "POST /v1/models/m:predict HTTP/1.1\nhost: x\ncontent-length: 3\n"
            "transfer-encoding: chunked\n",
            b"0\r\n\r\n",
        ),
        400,
        "malformed",
    ),
    (
        "non-numeric content-length",
        _req("POST /v1/models/m:predict HTTP/1.1\nhost: x\ncontent-length: ten\n"),
        400,
        "malformed",
    ),
    (
        "too many headers",
        _req("GET /v2/health/live HTTP/1.1\n" + "".join(f"x-h{i}: v\n" for i in range(30))),
        431,
        "exceed",
    ),
    (
        "header block too large",
        _req("GET /v2/health/live HTTP/1.1\nx-big: " + "v" * 3000 + "\n"),
        431,
        "exceed",
    ),
    ("URL too long", _req("GET /v1/models/m?" + "q" * 600 + " HTTP/1.1\nhost: x\n"), 414, "URL"),
    (
        "websocket upgrade",
        _req("GET /m/ws HTTP/1.1\nhost: x\nconnection: upgrade\nupgrade: websocket\n"),
        501,
        "WebSocket",
    ),
    (
        "bad deadline header",
        _req(
            "POST /v1/models/m:predict HTTP/1.1\nhost: x\nx-shoal-timeout-ms: soon\n"
            "connection: close\n"
        ),
        400,
        "x-shoal-timeout-ms",
    ),
    (
        "unknown model",
        _req("POST /v1/models/zzz:predict HTTP/1.1\nhost: x\nconnection: close\n"),
        404,
        "unknown model",
    ),
    (
        "unknown path",
        _req("GET /Not_A_Model HTTP/1.1\nhost: x\nconnection: close\n"),
        404,
        "no route",
    ),
]


@pytest.mark.parametrize(("name", "data", "status", "message"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_clear_4xx_and_others_are_undisturbed(
    env: tuple[RunningGateway, FakeReplica], name: str, data: bytes, status: int, message: str
) -> None:
    gw, rep = env
    # A good request in flight on another connection while the bad one is handled.
    rep.mode = "slow"
    good = asyncio.create_task(gw.client.post("/v1/models/m:predict", content=b"ok"))
    got, _, body = await raw_exchange(gw.app.port, data)
    assert got == status, (name, body)
    assert message in orjson.loads(body)["error"], (name, body)
    rep.gate.set()
    resp = await good
    assert resp.status_code == 200
    assert resp.json()["body"] == "ok"
    assert all(s.body == b"ok" for s in rep.seen), "nothing of the bad request reached a replica"


async def test_slow_client_gets_408_and_others_are_served_meanwhile(
    env: tuple[RunningGateway, FakeReplica], clock: ManualClock
) -> None:
    gw, _ = env
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.app.port)
    writer.write(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
    await writer.drain()
    read_deadline = clock.now + LIMITS.request_read_timeout_s
    await wait_until(lambda: read_deadline in clock.timers(), what="the read timer armed")
    for _ in range(5):
        assert (await gw.client.post("/v1/models/m:predict")).status_code == 200
    clock.advance(LIMITS.request_read_timeout_s - 0.001)
    assert not reader.at_eof()
    clock.advance(0.001)
    raw = await asyncio.wait_for(reader.read(-1), 5.0)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert b"not received in time" in raw


async def test_pipelined_requests_are_answered_in_order(
    env: tuple[RunningGateway, FakeReplica],
) -> None:
    gw, _ = env
    data = b"".join(
        _req("POST /v1/models/m:predict HTTP/1.1\nhost: x\ncontent-length: 1\n", str(i).encode())
        for i in range(4)
    ) + _req("GET /v2/health/live HTTP/1.1\nhost: x\nconnection: close\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.app.port)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(-1), 5.0)
    writer.close()
    bodies = [b'"body":"%d"' % i for i in range(4)]
    positions = [raw.index(b) for b in bodies]
    assert positions == sorted(positions)
    assert raw.count(b"HTTP/1.1 200 OK") == 5
    assert raw.endswith(b'{"live":true}')


async def test_http10_client_is_answered_and_closed(
    env: tuple[RunningGateway, FakeReplica],
) -> None:
    gw, _ = env
    status, head, body = await raw_exchange(
        gw.app.port, b"POST /v1/models/m:predict HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi"
    )
    assert status == 200
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["body"] == "hi"


async def test_expect_100_continue(env: tuple[RunningGateway, FakeReplica]) -> None:
    gw, _ = env
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.app.port)
    writer.write(
        b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"expect: 100-continue\r\nconnection: close\r\n\r\n"
    )
    line = await asyncio.wait_for(reader.readline(), 5.0)
    assert line == b"HTTP/1.1 100 Continue\r\n"
    writer.write(b"hi")
    raw = await asyncio.wait_for(reader.read(-1), 5.0)
    writer.close()
    assert b"HTTP/1.1 200 OK" in raw
    assert b'"body":"hi"' in raw


async def test_h2c_upgrade_is_ignored_and_answered_in_http11(
    env: tuple[RunningGateway, FakeReplica],
) -> None:
    gw, _ = env
    upgrade = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMA\r\n"
    status, head, body = await raw_exchange(
        gw.app.port, b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n" + upgrade + b"\r\n"
    )
    assert status == 200
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["path"] == "/v1/models/m"
    status, _, body = await raw_exchange(
        gw.app.port,
        b"POST /v1/models/m HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n" + upgrade + b"\r\nhi",
    )
    assert status == 501
    assert "with a body" in orjson.loads(body)["error"]


async def test_idle_keepalive_connections_are_closed_busy_ones_are_not(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, http=HttpSettings(keepalive_timeout_s=0.3), clock=clock)
    # Busy: a request that outlives the idle timeout still gets its answer.
    rep.mode = "slow"
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.app.port)
    writer.write(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    await wait_until(lambda: len(rep.seen) == 1, what="request at the replica")
    clock.advance(10.0)  # far past the idle timeout: a busy connection stays
    rep.gate.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    (conn,) = gw.app.server.connections
    await wait_until(lambda: conn.evictable, what="the response finished")
    clock.advance(0.299)
    assert conn.transport is not None
    assert not conn.transport.is_closing(), "idle for less than the timeout"
    # Idle afterwards: the gateway closes the connection.
    clock.advance(0.001)
    rest = await asyncio.wait_for(reader.read(-1), 5)
    assert rest.endswith(b"}"), "the body arrived, then the connection closed"
    writer.close()
