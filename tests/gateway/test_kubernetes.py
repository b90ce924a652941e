"""EndpointSlice discovery: parsing (unit), and the gateway's view following a real API server
(hand-made Service + EndpointSlice, and a real Deployment whose pods the gateway reaches)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest

from e2e.cluster import Cluster
from e2e.tests import manifests
from shoal.gateway.app import GatewayApp
from shoal.gateway.discovery.kubernetes import KubernetesDiscovery, slice_endpoints
from shoal.gateway.registry import Endpoint
from shoal.gateway.settings import GatewaySettings, KubernetesSettings, StaticUpstream
from tests.gateway.conftest import ReplicaFactory, wait_until


def _slice(
    name: str,
    service: str | None,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    labels["app.kubernetes.io/name"] = "shoal-model"
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": endpoints,
    }


def _ep(ip: str, ready: bool | None = True, terminating: bool | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [ip], "conditions": cond}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_slice("s", "iris", [_ep("10.0.0.1"), _ep("10.0.0.2")]), ["10.0.0.1", "10.0.0.2"]),
        (_slice("s", "iris", [_ep("10.0.0.1", ready=None)]), ["10.0.0.1"]),
        (_slice("s", "iris", [_ep("10.0.0.1", ready=False)]), []),
        (_slice("s", "iris", [_ep("10.0.0.1", terminating=True)]), []),
        (_slice("s", "iris", []), []),
        (
            _slice("s", "iris", [_ep("10.0.0.1")], ports=[{"name": "metrics", "port": 9090}]),
            [],
        ),
        (_slice("s", "iris", [_ep("10.0.0.1")], ports=[{"port": 8000}]), ["10.0.0.1"]),
        (
            _slice(
                "s",
                "iris",
                [_ep("10.0.0.1")],
                ports=[{"name": "grpc", "port": 9000}, {"name": "http", "port": 8000}],
            ),
            ["10.0.0.1"],
        ),
    ],
)
def test_slice_endpoints(obj: dict[str, Any], expected: list[str]) -> None:
    service, endpoints = slice_endpoints(obj, "http")
    assert service == "iris"
    assert [e.host for e in endpoints] == expected
    assert all(e.port == 8000 for e in endpoints)


class RecordingSink:
    def __init__(self) -> None:
        self.models: dict[str, list[Endpoint]] = {}
        self.synced = False

    def set_model(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        self.models[name] = list(endpoints)

    def remove_model(self, name: str) -> None:
        del self.models[name]

    def mark_synced(self) -> None:
        self.synced = True


def test_discovery_merges_slices_per_service_and_follows_events() -> None:
    disc = KubernetesDiscovery(KubernetesSettings())
    sink = RecordingSink()
    disc._sink = sink
    disc._on_list(
        [
            _slice("iris-a", "iris", [_ep("10.0.0.1")]),
            _slice("iris-b", "iris", [_ep("10.0.0.2"), _ep("10.0.0.3", ready=False)]),
            _slice("cold-a", "cold", []),
            _slice("orphan", None, [_ep("10.0.0.9")]),
            _slice("bad", "Not_A_Name", [_ep("10.0.0.9")]),
        ]
    )
    assert sink.synced
    assert sink.models == {
        "iris": [Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000)],
        "cold": [],
    }
    disc._on_event("MODIFIED", _slice("iris-a", "iris", [_ep("10.0.0.1", terminating=True)]))
    assert sink.models["iris"] == [Endpoint("10.0.0.2", 8000)]
    disc._on_event("ADDED", _slice("cold-a", "cold", [_ep("10.0.0.5")]))
    assert sink.models["cold"] == [Endpoint("10.0.0.5", 8000)]
    disc._on_event("DELETED", _slice("iris-b", "iris", []))
    assert sink.models["iris"] == []
    disc._on_event("DELETED", _slice("iris-a", "iris", []))
    assert "iris" not in sink.models
    # A relist drops what vanished meanwhile.
    disc._on_list([_slice("new-a", "new", [_ep("10.0.0.7")])])
    assert sink.models == {"new": [Endpoint("10.0.0.7", 8000)]}


# -- against the real API server ---------------------------------------------------------------


@pytest.fixture
async def k8s_gateway(k8s_cluster: Cluster, k8s_namespace: str) -> AsyncIterator[GatewayApp]:
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        kubernetes=KubernetesSettings(
            namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig)
        ),
    )
    app = GatewayApp(settings)
    await app.start()
    await wait_until(lambda: app.registry.synced, timeout_s=30, what="first EndpointSlice list")
    yield app
    await app.stop(grace_s=1.0)


def _apply(cluster: Cluster, ns: str, obj: dict[str, Any]) -> None:
    cluster.apply(ns, json.dumps(obj))


def _hosts(app: GatewayApp, model: str) -> set[str] | None:
    m = app.registry.models.get(model)
    return None if m is None else {r.endpoint.host for r in m.replicas}


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_gateway_view_follows_hand_made_endpoint_slices(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_gateway: GatewayApp
) -> None:
    ns, app = k8s_namespace, k8s_gateway
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hand", "labels": {"app.kubernetes.io/name": "shoal-model"}},
        "spec": {"ports": [{"name": "http", "port": 8000}]},  # no selector: slices are ours
    }
    await asyncio.to_thread(_apply, k8s_cluster, ns, service)
    slice_obj = _slice("hand-1", "hand", [_ep("10.250.0.7"), _ep("10.250.0.8", ready=False)])
    await asyncio.to_thread(_apply, k8s_cluster, ns, slice_obj)
    await wait_until(lambda: _hosts(app, "hand") == {"10.250.0.7"}, what="ready endpoint seen")
    assert app.registry.models["hand"].replicas[0].endpoint.port == 8000

    slice_obj["endpoints"] = [_ep("10.250.0.7", ready=False, terminating=True), _ep("10.250.0.8")]
    await asyncio.to_thread(_apply, k8s_cluster, ns, slice_obj)
    await wait_until(lambda: _hosts(app, "hand") == {"10.250.0.8"}, what="terminating dropped")

    slice_obj["endpoints"] = []
    await asyncio.to_thread(_apply, k8s_cluster, ns, slice_obj)
    await wait_until(lambda: _hosts(app, "hand") == set(), what="model known at zero")
    # Known at zero replicas: a request is held, not refused.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}") as client:
        resp = await client.post("/v1/models/hand:predict", headers={"x-shoal-timeout-ms": "200"})
    assert resp.status_code == 504

    await asyncio.to_thread(
        k8s_cluster.kubectl, "delete", "endpointslice", "hand-1", "-n", ns, "--wait=true"
    )
    await wait_until(lambda: _hosts(app, "hand") is None, what="model gone with its slice")


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_gateway_routes_to_deployment_pods_and_drops_unready_ones(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_gateway: GatewayApp
) -> None:
    ns, app = k8s_namespace, k8s_gateway
    service = json.loads(manifests.service("web"))
    service["metadata"]["labels"] = {"app.kubernetes.io/name": "shoal-model"}
    await asyncio.to_thread(_apply, k8s_cluster, ns, service)
    # A Service without the label is not a model (the controller copies labels to slices).
    await asyncio.to_thread(k8s_cluster.apply, ns, manifests.service("other"))
    await asyncio.to_thread(
        k8s_cluster.apply,
        ns,
        manifests.deployment("web", 2, manifests.server_container()),
    )
    await wait_until(
        lambda: len(_hosts(app, "web") or ()) == 2, timeout_s=120, what="two ready pods"
    )
    ips = _hosts(app, "web")
    assert ips is not None
    assert "other" not in app.registry.models
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as client:
        seen = {(await client.get("/web/")).json()["ip"] for _ in range(30)}
        assert seen == ips, "both pods answer through the gateway"
        # One pod turns unready: the gateway stops sending it requests.
        victim = sorted(ips)[0]
        resp = await client.post(f"http://{victim}:8080/unready")
        assert resp.status_code == 200
        await wait_until(
            lambda: _hosts(app, "web") == ips - {victim}, timeout_s=30, what="unready pod dropped"
        )
        seen = {(await client.get("/web/")).json()["ip"] for _ in range(20)}
        assert seen == ips - {victim}


def _secret(tokens: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gw-tokens"},
        "stringData": {"tokens": tokens},
    }


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_tokens_follow_a_kubernetes_secret(
    k8s_cluster: Cluster, k8s_namespace: str, replicas: ReplicaFactory
) -> None:
    ns = k8s_namespace
    rep = await replicas("a")
    await asyncio.to_thread(_apply, k8s_cluster, ns, _secret("first-token-1: [m]\n"))
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        static=(StaticUpstream("m", (rep.url,)),),
        kubernetes=KubernetesSettings(
            endpoint_slices=False,
            namespace=ns,
            kubeconfig=str(k8s_cluster.kubeconfig),
            tokens_secret="gw-tokens",
        ),
    )
    app = GatewayApp(settings)
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}") as client:

            async def status(token: str) -> int:
                resp = await client.post(
                    "/v1/models/m:predict", headers={"authorization": f"Bearer {token}"}
                )
                return resp.status_code

            await wait_until_async(lambda: status("first-token-1"), 200, "first token accepted")
            await asyncio.to_thread(_apply, k8s_cluster, ns, _secret("second-token-2: '*'\n"))
            await wait_until_async(lambda: status("second-token-2"), 200, "second token accepted")
            assert await status("first-token-1") == 401
            assert (await client.post("/v1/models/m:predict")).status_code == 401
    finally:
        await app.stop(grace_s=1.0)


async def wait_until_async(
    probe: Callable[[], Awaitable[int]], want: int, what: str, timeout_s: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (got := await probe()) != want:
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {got})")
        await asyncio.sleep(0.05)
