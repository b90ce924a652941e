"""Just enough of the Kubernetes API for the gateway: credentials (in-cluster service account or a
kubeconfig) and a list-then-watch loop over plain httpx. The data plane never imports a
Kubernetes client library (DESIGN.md: only the operator talks to the API with one)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

JsonObj = dict[str, Any]


class KubeConfigError(ValueError):
    """Credentials could not be found or read."""


@dataclass(frozen=True)
class ApiConfig:
    server: str
    ssl_context: ssl.SSLContext | None
    namespace: str
    token: str | None = None
    token_file: str | None = None
    """Re-read on every (re)connect: projected service-account tokens rotate."""

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = Path(self.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = self.ssl_context if self.ssl_context is not None else True
        return httpx.AsyncClient(
            base_url=self.server,
            verify=verify,
            timeout=httpx.Timeout(10.0),
        )


def load_config(kubeconfig: str | None, namespace: str | None) -> ApiConfig:
    if kubeconfig is None:
        kubeconfig = os.environ.get("KUBECONFIG") if not _in_cluster() else None
    if kubeconfig is None:
        return _in_cluster_config(namespace)
    return _kubeconfig(Path(kubeconfig), namespace)


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and SERVICE_ACCOUNT_DIR.is_dir()


def _in_cluster_config(namespace: str | None) -> ApiConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not SERVICE_ACCOUNT_DIR.is_dir():
        raise KubeConfigError(
            "not in a cluster (no KUBERNETES_SERVICE_HOST or service account); pass --kubeconfig"
        )
    if ":" in host:
        host = f"[{host}]"
    ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    ns = namespace or (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
    return ApiConfig(
        server=f"https://{host}:{port}",
        ssl_context=ctx,
        namespace=ns,
        token_file=str(SERVICE_ACCOUNT_DIR / "token"),
    )


def _named(items: Any, name: str, kind: str) -> JsonObj:
    for item in items or []:
        if item.get("name") == name:
            value: JsonObj = item.get(kind) or {}
            return value
    raise KubeConfigError(f"kubeconfig has no {kind} named {name!r}")


def _kubeconfig(path: Path, namespace: str | None) -> ApiConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    base = path.parent
    context = _named(doc.get("contexts"), doc.get("current-context", ""), "context")
    cluster = _named(doc.get("clusters"), context.get("cluster", ""), "cluster")
    user = _named(doc.get("users"), context.get("user", ""), "user") if context.get("user") else {}
    server = cluster.get("server")
    if not server:
        raise KubeConfigError(f"kubeconfig {path}: cluster has no server")
    ctx: ssl.SSLContext | None = None
    if server.startswith("https://"):
        ctx = _ssl_context(cluster, user, base)
    token = user.get("token")
    token_file = user.get("tokenFile")
    return ApiConfig(
        server=server.rstrip("/"),
        ssl_context=ctx,
        namespace=namespace or context.get("namespace") or "default",
        token=token,
        token_file=str(base / token_file) if token_file else None,
    )


def _ssl_context(cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path) -> ssl.SSLContext:
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        ctx = ssl.create_default_context(cadata=ca)
    elif cluster.get("certificate-authority"):
        ctx = ssl.create_default_context(cafile=str(base / cluster["certificate-authority"]))
    else:
        ctx = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert_data = user.get("client-certificate-data")
    key_data = user.get("client-key-data")
    if cert_data and key_data:
        # ssl only loads client certificates from files: write them to a private temp dir.
        with tempfile.TemporaryDirectory() as tmp:
            cert = Path(tmp) / "client.crt"
            key = Path(tmp) / "client.key"
            cert.write_bytes(base64.b64decode(cert_data))
            key.touch(mode=0o600)
            key.write_bytes(base64.b64decode(key_data))
            ctx.load_cert_chain(str(cert), str(key))
    elif user.get("client-certificate") and user.get("client-key"):
        ctx.load_cert_chain(str(base / user["client-certificate"]), str(base / user["client-key"]))
    return ctx


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


async def list_watch(
    config: ApiConfig,
    path: str,
    params: Mapping[str, str],
    on_list: Callable[[list[JsonObj]], None],
    on_event: Callable[[str, JsonObj], None],
    max_backoff_s: float = 30.0,
) -> None:
    """List `path`, hand the items to `on_list`, then watch and hand each change to `on_event`;
    relist when the watch expires (410) or fails. Runs until cancelled."""
    backoff = 0.5
    async with config.client() as client:
        while True:
            try:
                resp = await client.get(path, params=dict(params), headers=config.headers())
                resp.raise_for_status()
                listing = orjson.loads(resp.content)
                rv = listing["metadata"]["resourceVersion"]
                on_list(listing.get("items") or [])
                backoff = 0.5
                while True:
                    rv = await _watch_once(client, config, path, params, rv, on_event)
            except _Gone:
                continue
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError, KeyError, KubeConfigError) as exc:
                log.warning("kubernetes %s: %s; retrying in %.1fs", path, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)


async def _watch_once(
    client: httpx.AsyncClient,
    config: ApiConfig,
    path: str,
    params: Mapping[str, str],
    rv: str,
    on_event: Callable[[str, JsonObj], None],
) -> str:
    watch_params = {
        **params,
        "watch": "1",
        "resourceVersion": rv,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "290",
    }
    timeout = httpx.Timeout(10.0, read=330.0)
    async with client.stream(
        "GET", path, params=watch_params, headers=config.headers(), timeout=timeout
    ) as resp:
        if resp.status_code == 410:
            raise _Gone
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line:
                continue
            event = orjson.loads(line)
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise ValueError(f"watch error: {obj.get('message')}")
            rv = obj.get("metadata", {}).get("resourceVersion", rv)
            if kind != "BOOKMARK":
                on_event(kind, obj)
    return rv
