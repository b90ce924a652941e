"""The gateway's data path over real loopback HTTP: routing, deadlines, P2C spread, retries,
draining, streaming, metrics."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import orjson

from shoal import metric_names
from tests.gateway.conftest import GatewayFactory, ReplicaFactory, wait_until
from tests.gateway.manual_clock import ManualClock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_routes_v1_v2_and_custom_paths_to_the_named_model(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    a = await replicas("a")
    b = await replicas("b")
    gw = await gateway({"alpha": [a.url], "beta": [b.url]})
    cases = [
        ("POST", "/v1/models/alpha:predict", "a"),
        ("GET", "/v1/models/beta", "b"),
        ("POST", "/v2/models/beta/infer", "b"),
        ("GET", "/v2/models/alpha/ready", "a"),
        ("POST", "/v2/models/alpha/versions/3/infer", "a"),
        ("GET", "/beta/custom/route?x=1", "b"),
        ("POST", "/alpha", "a"),
    ]
    for method, path, replica in cases:
        resp = await gw.client.request(method, path, content=b'{"instances":[1]}')
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json()["replica"] == replica, path
        assert resp.json()["path"] == path.split("?")[0]
    assert b.seen[-1].query == "x=1"
    assert a.seen[-1].body == b'{"instances":[1]}'


async def test_unknown_model_is_404_listing_known_models(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    a = await replicas("a")
    gw = await gateway({"alpha": [a.url], "zeta": []})
    for path in ("/v1/models/nope:predict", "/v2/models/nope/infer", "/nope/x", "/v2/other"):
        resp = await gw.client.post(path)
        assert resp.status_code == 404, path
        body = resp.json()
        assert body["known_models"] == ["alpha", "zeta"], path
    assert a.seen == []


async def test_gateway_endpoints(replicas: ReplicaFactory, gateway: GatewayFactory) -> None:
    a = await replicas("a")
    gw = await gateway({"alpha": [a.url]})
    assert (await gw.client.get("/v2/health/live")).status_code == 200
    assert (await gw.client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await gw.client.get("/v1/models")).json() == {"models": ["alpha"]}
    assert (await gw.client.get("/v2")).json()["name"] == "shoal-gateway"
    assert (await gw.client.post("/v2/health/live")).status_code == 405
    await gw.client.post("/v1/models/alpha:predict", content=b"{}")
    text = (await gw.client.get("/metrics")).text
    assert f'{metric_names.GATEWAY_REQUESTS_TOTAL}{{code="200",model="alpha"}} 1.0' in text
    assert f"{metric_names.GATEWAY_REQUEST_DURATION_SECONDS}_bucket" in text
    assert f'{metric_names.GATEWAY_HELD_REQUESTS}{{model="alpha"}} 0.0' in text
    assert (
        f'{metric_names.GATEWAY_OUTSTANDING_REQUESTS}{{model="alpha",replica="127.0.0.1:{a.port}"}}'
        in text
    )
    assert a.seen
    assert all(s.path.startswith("/v1/") for s in a.seen)


async def test_deadline_is_propagated_as_remaining_budget(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    a = await replicas("a")
    gw = await gateway({"alpha": [a.url]}, default_timeout_ms=5000, clock=clock)
    resp = await gw.client.post("/v1/models/alpha:predict", headers={"x-shoal-timeout-ms": "800"})
    assert int(resp.json()["timeout_ms"]) == 800, "time stood still: the whole budget is left"
    resp = await gw.client.post("/v1/models/alpha:predict")
    assert int(resp.json()["timeout_ms"]) == 5000
    for bad in ("abc", "0", "-5", "99999999999"):
        resp = await gw.client.post("/v1/models/alpha:predict", headers={"x-shoal-timeout-ms": bad})
        assert resp.status_code == 400, bad
        assert "x-shoal-timeout-ms" in resp.json()["error"]


async def test_deadline_expiry_is_504_and_other_requests_continue(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    slow = await replicas("slow")
    slow.mode = "slow"
    fast = await replicas("fast")
    gw = await gateway({"slow": [slow.url], "fast": [fast.url]}, clock=clock)
    task = asyncio.create_task(
        gw.client.post("/v1/models/slow:predict", headers={"x-shoal-timeout-ms": "200"})
    )
    await wait_until(lambda: len(slow.seen) == 1, what="request at the replica")
    clock.advance(0.2)
    resp = await task
    assert resp.status_code == 504
    assert "deadline" in resp.json()["error"]
    assert (await gw.client.post("/v1/models/fast:predict")).status_code == 200


async def test_p2c_spreads_load_over_replicas(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    reps = [await replicas(f"r{i}") for i in range(3)]
    gw = await gateway({"m": [r.url for r in reps]})
    results = await asyncio.gather(
        *(gw.client.post("/v1/models/m:predict", content=b"1") for _ in range(90))
    )
    counts = Counter(r.json()["replica"] for r in results)
    assert set(counts) == {"r0", "r1", "r2"}
    assert min(counts.values()) >= 10, counts


async def test_connection_refused_is_retried_on_another_replica(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    live = await replicas("live")
    dead = f"http://127.0.0.1:{_free_port()}"
    gw = await gateway({"m": [dead, live.url]})
    results = [await gw.client.post("/v1/models/m:predict") for _ in range(10)]
    assert [r.status_code for r in results] == [200] * 10
    text = (await gw.client.get("/metrics")).text
    assert f'{metric_names.GATEWAY_RETRIES_TOTAL}{{model="m",reason="connect"}} 1.0' in text, (
        "the refusing replica is ejected after its first failure"
    )


async def test_all_replicas_refusing_is_502(gateway: GatewayFactory) -> None:
    gw = await gateway({"m": [f"http://127.0.0.1:{_free_port()}"]})
    resp = await gw.client.post("/v1/models/m:predict")
    assert resp.status_code == 502
    assert "refused" in resp.json()["error"]
    assert resp.headers["retry-after"] == "1"


async def test_draining_replica_is_retried_elsewhere_and_gets_no_new_requests(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    draining = await replicas("draining")
    draining.mode = "draining"
    ok = await replicas("ok")
    gw = await gateway({"m": [draining.url, ok.url]})
    results = [await gw.client.post("/v1/models/m:predict") for _ in range(20)]
    assert all(r.status_code == 200 and r.json()["replica"] == "ok" for r in results)
    assert len(draining.seen) == 1, "after one 'draining' answer the replica gets nothing new"


async def test_lone_draining_replica_passes_its_503_through(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    draining = await replicas("draining")
    draining.mode = "draining"
    gw = await gateway({"m": [draining.url]}, max_held_per_model=0)
    resp = await gw.client.post("/v1/models/m:predict")
    assert resp.status_code == 503
    assert resp.headers["x-shoal-draining"] == "1"
    assert resp.headers["retry-after"] == "1"


async def test_streaming_response_is_not_buffered(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    rep = await replicas("s")
    rep.mode = "stream"
    gw = await gateway({"s": [rep.url]})
    async with gw.client.stream("POST", "/s/generate") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        it = resp.aiter_raw()
        for i in range(3):
            event = f"data: {i}\n\n".encode()
            rep.chunks.put_nowait(event)
            # The chunk arrives while the replica's response is still open.
            got = await asyncio.wait_for(it.__anext__(), 5)
            assert got == event
        rep.chunks.put_nowait(None)
        rest = [c async for c in it]
        assert b"".join(rest) == b""


async def test_large_bodies_pass_both_ways(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    payload = orjson.dumps({"instances": ["x" * 1000] * 2000})
    resp = await gw.client.post("/v1/models/m:predict", content=payload)
    assert resp.status_code == 200
    assert resp.json()["body"] == payload.decode()


async def test_client_going_away_cancels_its_upstream_request(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    slow = await replicas("slow")
    slow.mode = "slow"
    gw = await gateway({"m": [slow.url]})
    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.app.port)
    writer.write(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    model = gw.app.registry.models["m"]
    await wait_until(lambda: model.replicas[0].outstanding == 1, what="request in flight")
    writer.close()
    await wait_until(lambda: model.replicas[0].outstanding == 0, what="request cancelled")


async def test_upstream_connections_are_kept_alive_and_bounded(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    from shoal.gateway.settings import UpstreamSettings

    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]}, upstream=UpstreamSettings(max_connections=4, max_idle=4))
    for _ in range(20):
        assert (await gw.client.post("/v1/models/m:predict")).status_code == 200
    assert len({s.client_port for s in rep.seen}) == 1, "sequential requests share a connection"
    rep.seen.clear()
    results = await asyncio.gather(*(gw.client.post("/v1/models/m:predict") for _ in range(40)))
    assert all(r.status_code == 200 for r in results)
    assert len({s.client_port for s in rep.seen}) <= 4, "never more than max_connections"
    pool = gw.app.registry.models["m"].replicas[0].pool
    assert pool.total <= 4


async def test_head_and_body_written_apart_reach_the_client_as_one_sized_response(
    gateway: GatewayFactory,
) -> None:
    """Like the runtime's server: chunked, head and body in separate writes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            writer.write(b"transfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)  # the replica's own pace, not test synchronisation
            writer.write(b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n')
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway({"m": [f"http://127.0.0.1:{port}"]})
        resp = await gw.client.post("/v1/models/m:predict")
        assert resp.status_code == 200
        assert resp.json() == {"a": 1}
        assert resp.headers["content-length"] == "7"
        assert "transfer-encoding" not in resp.headers
    finally:
        server.close()


async def test_request_ids_are_propagated_or_assigned(
    replicas: ReplicaFactory, gateway: GatewayFactory, clock: ManualClock
) -> None:
    rep = await replicas("a")
    slow = await replicas("slow")
    slow.mode = "slow"
    gw = await gateway({"m": [rep.url], "s": [slow.url]}, clock=clock)
    await gw.client.post("/v1/models/m:predict", headers={"x-request-id": "client-42"})
    assert rep.seen[-1].headers["x-request-id"] == "client-42"
    await gw.client.post("/v1/models/m:predict")
    await gw.client.post("/v1/models/m:predict")
    assigned = [s.headers["x-request-id"] for s in rep.seen[-2:]]
    assert all(a.startswith("gw") for a in assigned)
    assert assigned[0] != assigned[1]
    task = asyncio.create_task(
        gw.client.post(
            "/v1/models/s:predict", headers={"x-shoal-timeout-ms": "100", "x-request-id": "late-1"}
        )
    )
    await wait_until(lambda: len(slow.seen) == 1, what="request at the replica")
    clock.advance(0.1)
    resp = await task
    assert resp.status_code == 504
    assert resp.headers["x-request-id"] == "late-1"


async def test_unknown_model_names_do_not_become_metric_labels(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    for i in range(5):
        assert (await gw.client.post(f"/v1/models/junk-{i}:predict")).status_code == 404
    text = (await gw.client.get("/metrics")).text
    assert "junk" not in text


async def test_head_request_gets_headers_only_and_the_connection_stays_usable(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    rep = await replicas("a")
    gw = await gateway({"m": [rep.url]})
    resp = await gw.client.head("/v1/models/m")
    assert resp.status_code == 200
    assert resp.content == b""
    assert resp.headers["x-replica"] == "a"
    resp = await gw.client.get("/v1/models/m")
    assert resp.json()["replica"] == "a"


async def test_graceful_stop_finishes_in_flight_requests(
    replicas: ReplicaFactory, gateway: GatewayFactory
) -> None:
    slow = await replicas("slow")
    slow.mode = "slow"
    gw = await gateway({"m": [slow.url]})
    in_flight = asyncio.create_task(gw.client.post("/v1/models/m:predict", content=b"last"))
    await wait_until(lambda: len(slow.seen) == 1, what="request at the replica")
    stopping = asyncio.create_task(gw.app.stop(grace_s=30.0))
    listener = gw.app.server._server
    assert listener is not None
    await wait_until(lambda: not listener.is_serving(), what="listener closed")
    assert not stopping.done(), "stop waits for the request in flight"
    slow.gate.set()
    resp = await in_flight
    assert resp.status_code == 200
    assert resp.json()["body"] == "last"
    await asyncio.wait_for(stopping, 10)
