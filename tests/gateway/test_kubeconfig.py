"""Kubeconfig outside the cluster: an `exec` plugin's token reaches the API server (through
kubernetes_asyncio's loader), and kubeconfigs the gateway cannot use are refused with a message,
never a crash."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import uvicorn
import yaml

from shoal.gateway.app import GatewayApp
from shoal.gateway.kubeapi import KubeConfigError, load_config
from shoal.gateway.settings import GatewaySettings, KubernetesSettings
from tests.gateway.conftest import Receive, Scope, Send, wait_until

_SLICE = {
    "metadata": {
        "name": "iris-abc",
        "resourceVersion": "1",
        "labels": {"kubernetes.io/service-name": "iris", "app.kubernetes.io/name": "shoal-model"},
    },
    "ports": [{"name": "http", "port": 8000}],
    "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
}


class FakeApiServer:
    """Answers the EndpointSlice list (and a watch that stays open) only to the right token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.authorizations: list[str] = []
        self.closing = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        self.authorizations.append(headers.get(b"authorization", b"").decode())
        if headers.get(b"authorization") != f"Bearer {self.token}".encode():
            await _send(send, 401, {"kind": "Status", "code": 401})
            return
        if b"watch=1" in scope["query_string"]:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await self.closing.wait()  # a watch with no events, until the server stops
        listing = {"metadata": {"resourceVersion": "1"}, "items": [_SLICE]}
        await _send(send, 200, listing)


async def _send(send: Send, status: int, obj: object) -> None:
    body = orjson.dumps(obj)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[FakeApiServer, str]]:
    app = FakeApiServer("tok-from-exec")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="fake API server")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield app, f"http://127.0.0.1:{port}"
    app.closing.set()
    server.should_exit = True
    await task


def _exec_kubeconfig(tmp_path: Path, server: str) -> Path:
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": "tok-from-exec"},
    }
    plugin.write_text(f"print({orjson.dumps(credential).decode()!r})\n")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "cloud",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [
            {"name": "cloud", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": sys.executable,
                        "args": [str(plugin)],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_exec_plugin_token_reaches_the_api_server(
    tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    api, url = api_server
    kubeconfig = _exec_kubeconfig(tmp_path, url)
    config = await load_config(str(kubeconfig), None)
    assert config.namespace == "ns"
    assert await config.headers() == {"Authorization": "Bearer tok-from-exec"}
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        kubernetes=KubernetesSettings(kubeconfig=str(kubeconfig)),
    )
    app = GatewayApp(settings)
    await app.start()
    try:
        await wait_until(lambda: "iris" in app.registry.models, what="the slice discovered")
        assert [r.key for r in app.registry.models["iris"].replicas] == ["10.1.2.3:8000"]
        assert api.authorizations[0] == "Bearer tok-from-exec"
    finally:
        await app.stop(grace_s=1.0)


async def test_exec_plugin_without_the_library_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = _exec_kubeconfig(tmp_path, "https://example.invalid")
    # The library absent, as in an image without the operator extra.
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio.client", None)
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio.config", None)
    with pytest.raises(KubeConfigError, match="exec plugin or an auth provider"):
        await load_config(str(kubeconfig), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "not a kubeconfig"),
        ("{current-context: x, contexts: []}", "no context named 'x'"),
        ("clusters: [", "cannot read kubeconfig"),
    ],
)
async def test_unusable_kubeconfig_is_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubeConfigError, match=message):
        await load_config(str(path), None)
