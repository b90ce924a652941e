"""Bearer tokens over real HTTP: 401/403 with clear JSON bodies, per-model allow-lists, open or
protected health endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.conftest import GatewayFactory, ReplicaFactory


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  admin-token-1: '*'\n  iris-token-1: [iris]\n")
    return str(path)


async def test_tokens_gate_model_requests(
    replicas: ReplicaFactory, gateway: GatewayFactory, tokens_file: str
) -> None:
    iris = await replicas("iris")
    adder = await replicas("adder")
    gw = await gateway({"iris": [iris.url], "adder": [adder.url]}, tokens_file=tokens_file)
    url = "/v1/models/iris:predict"
    resp = await gw.client.post(url)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert "missing bearer token" in resp.json()["error"]
    resp = await gw.client.post(url, headers={"authorization": "Bearer wrong-token-x"})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid bearer token"
    resp = await gw.client.post(url, headers={"authorization": "Token iris-token-1"})
    assert resp.status_code == 401
    assert "malformed" in resp.json()["error"]
    resp = await gw.client.post(
        "/v1/models/adder:predict", headers={"authorization": "Bearer iris-token-1"}
    )
    assert resp.status_code == 403
    assert "adder" in resp.json()["error"]
    assert adder.seen == []
    resp = await gw.client.post(url, headers={"authorization": "Bearer iris-token-1"})
    assert resp.status_code == 200
    resp = await gw.client.post(
        "/v1/models/adder:predict", headers={"authorization": "Bearer admin-token-1"}
    )
    assert resp.status_code == 200
    # The model listing and 404s name only the models the token may call.
    resp = await gw.client.get("/v1/models", headers={"authorization": "Bearer iris-token-1"})
    assert resp.json() == {"models": ["iris"]}
    resp = await gw.client.post("/v1/models/nope:predict")
    assert resp.status_code == 401, "no listing of models to strangers"
    # Health stays open by default (kubelet probes); metrics list models and replica
    # addresses, so they need a token (or the scraper-only metrics port).
    assert (await gw.client.get("/v2/health/ready")).status_code == 200
    assert (await gw.client.get("/metrics")).status_code == 401
    resp = await gw.client.get("/metrics", headers={"authorization": "Bearer iris-token-1"})
    assert resp.status_code == 200


async def test_auth_health_protects_health_and_metrics(
    gateway: GatewayFactory, tokens_file: str
) -> None:
    gw = await gateway({"iris": []}, tokens_file=tokens_file, auth_health=True)
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert (await gw.client.get(path)).status_code == 401, path
        resp = await gw.client.get(path, headers={"authorization": "Bearer iris-token-1"})
        assert resp.status_code == 200, path
