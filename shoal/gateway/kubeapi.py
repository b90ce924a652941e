"""Just enough of the Kubernetes API for the gateway: credentials (in-cluster service account or a
kubeconfig) and a list-then-watch loop over plain httpx.

In a pod the gateway needs no Kubernetes client library. Outside (`--kubeconfig` from a laptop),
kubeconfigs often authenticate through `exec` plugins or auth providers (EKS, GKE, AKS): where
`kubernetes_asyncio` is installed (the `operator` extra) its loader reads the kubeconfig and
runs the plugin, and the token is refreshed on reconnects; without it, a kubeconfig that needs
a plugin is refused with a message saying so. Only static credentials are parsed here."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
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


class PluginToken:
    """The token an exec plugin or auth provider gives, run again at most every `max_age_s`
    (on the watch's reconnects), so expiring cloud tokens are renewed."""

    def __init__(
        self,
        load: Callable[[], Awaitable[str | None]],
        first: str | None,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._value = first
        self._max_age_s = max_age_s
        self._clock = clock
        self._at = clock()

    async def authorization(self) -> str | None:
        if self._clock() - self._at > self._max_age_s:
            self._value = await self._load()
            self._at = self._clock()
        return self._value


@dataclass(frozen=True)
class ApiConfig:
    server: str
    ssl_context: ssl.SSLContext | None
    namespace: str
    token: str | None = None
    token_file: str | None = None
    """Re-read on every (re)connect: projected service-account tokens rotate."""
    plugin: PluginToken | None = None
    """An exec plugin or auth provider supplies the `Authorization` value."""

    async def headers(self) -> dict[str, str]:
        if self.plugin is not None:
            value = await self.plugin.authorization()
            return {"Authorization": value} if value else {}
        token = self.token
        if self.token_file is not None:
            token = (await asyncio.to_thread(Path(self.token_file).read_text)).strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = self.ssl_context if self.ssl_context is not None else True
        return httpx.AsyncClient(
            base_url=self.server,
            verify=verify,
            timeout=httpx.Timeout(10.0),
        )


async def load_config(kubeconfig: str | None, namespace: str | None) -> ApiConfig:
    """Credentials for the API server; raises KubeConfigError with a message naming the cause."""
    if kubeconfig is None:
        kubeconfig = os.environ.get("KUBECONFIG") if not _in_cluster() else None
    if kubeconfig is None:
        return _in_cluster_config(namespace)
    config = _kubeconfig(Path(kubeconfig), namespace)
    if isinstance(config, ApiConfig):
        return config
    return await _library_kubeconfig(Path(kubeconfig), *config)


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


def _kubeconfig(path: Path, namespace: str | None) -> ApiConfig | tuple[str, str]:
    """Static credentials parsed here; (namespace, user name) when the user entry needs a
    plugin (exec or auth-provider), for the library loader."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise KubeConfigError(f"kubeconfig {path} is not a kubeconfig (no mapping at the top)")
    base = path.parent
    context = _named(doc.get("contexts"), doc.get("current-context", ""), "context")
    cluster = _named(doc.get("clusters"), context.get("cluster", ""), "cluster")
    user = _named(doc.get("users"), context.get("user", ""), "user") if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        return namespace or context.get("namespace") or "default", str(context.get("user"))
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


async def _library_kubeconfig(path: Path, namespace: str, user: str) -> ApiConfig:
    try:
        from kubernetes_asyncio.client import Configuration
        from kubernetes_asyncio.config import ConfigException, kube_config
    except ImportError:
        raise KubeConfigError(
            f"kubeconfig {path}: user {user!r} authenticates through an exec plugin or an "
            "auth provider, which the gateway runs only with kubernetes_asyncio installed "
            "(pip install 'shoal[operator]'); or give it a token or client certificate"
        ) from None
    cfg = Configuration()
    try:
        loader = await kube_config.load_kube_config(
            config_file=str(path), client_configuration=cfg, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc}") from exc

    async def refresh() -> str | None:
        try:
            await loader.load_and_set(cfg)
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeConfigError(f"kubeconfig {path}: {exc}") from exc
        value = cfg.api_key.get("BearerToken")
        return str(value) if value else None

    ctx: ssl.SSLContext | None = None
    if str(cfg.host).startswith("https://"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else None
        ctx = ctx or ssl.create_default_context()
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    first = cfg.api_key.get("BearerToken")
    plugin = PluginToken(refresh, str(first) if first else None)
    return ApiConfig(
        server=str(cfg.host).rstrip("/"), ssl_context=ctx, namespace=namespace, plugin=plugin
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
                headers = await config.headers()
                resp = await client.get(path, params=dict(params), headers=headers)
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
        "GET", path, params=watch_params, headers=await config.headers(), timeout=timeout
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
