"""Kubernetes discovery: EndpointSlices of the ModelServices' Services (Service name = model name),
ready and not terminating endpoints only, on the port named `http`. A model whose Service has a
slice with no ready endpoint is known at zero replicas: its requests are held (scale from zero).
Also the tokens Secret watch for auth."""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from shoal.gateway.auth import Authenticator, TokenFileError, parse_tokens
from shoal.gateway.discovery.base import DiscoverySink
from shoal.gateway.kubeapi import ApiConfig, JsonObj, list_watch, load_config
from shoal.gateway.registry import Endpoint
from shoal.gateway.routing import is_model_name
from shoal.gateway.settings import KubernetesSettings

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_endpoints(obj: JsonObj, port_name: str) -> tuple[str | None, list[Endpoint]]:
    """(service name, ready endpoints) of one EndpointSlice object."""
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    ports: list[Any] = obj.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
    if port is None and len(ports) == 1 and not ports[0].get("name"):
        port = ports[0].get("port")
    endpoints: list[Endpoint] = []
    if port:
        for ep in obj.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # API semantics: ready nil means ready; terminating nil means not terminating.
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            addresses = ep.get("addresses") or []
            if addresses:
                endpoints.append(Endpoint(addresses[0], int(port)))
    return service, endpoints


class KubernetesDiscovery:
    def __init__(self, settings: KubernetesSettings, config: ApiConfig | None = None) -> None:
        self.settings = settings
        self.config = config
        """Credentials, loaded by the app before it listens (None: loaded in `run`)."""
        self._slices: dict[str, tuple[str, list[Endpoint]]] = {}
        self._models: set[str] = set()
        self._sink: DiscoverySink | None = None

    async def run(self, sink: DiscoverySink) -> None:
        self._sink = sink
        config = self.config or await load_config(self.settings.kubeconfig, self.settings.namespace)
        params = (
            {"labelSelector": self.settings.label_selector} if self.settings.label_selector else {}
        )
        path = f"/apis/discovery.k8s.io/v1/namespaces/{config.namespace}/endpointslices"
        log.info("watching EndpointSlices in namespace %s", config.namespace)
        await list_watch(config, path, params, self._on_list, self._on_event)

    def _on_list(self, items: list[JsonObj]) -> None:
        self._slices = {}
        for obj in items:
            self._store(obj)
        models = {svc for svc, _ in self._slices.values()}
        assert self._sink is not None
        for name in self._models - models:
            self._sink.remove_model(name)
        self._models = models
        for name in models:
            self._sink.set_model(name, self._endpoints_of(name))
        self._sink.mark_synced()

    def _on_event(self, kind: str, obj: JsonObj) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        before = self._slices.get(name)
        if kind == "DELETED":
            self._slices.pop(name, None)
        else:
            self._store(obj)
        after = self._slices.get(name)
        for service in {s for s in (before and before[0], after and after[0]) if s}:
            self._publish(service)

    def _store(self, obj: JsonObj) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        service, endpoints = slice_endpoints(obj, self.settings.port_name)
        if service and is_model_name(service):
            self._slices[name] = (service, endpoints)
        else:
            self._slices.pop(name, None)

    def _endpoints_of(self, service: str) -> Sequence[Endpoint]:
        found: list[Endpoint] = []
        for svc, eps in self._slices.values():
            if svc == service:
                found.extend(eps)
        return sorted(set(found))

    def _publish(self, service: str) -> None:
        assert self._sink is not None
        if any(svc == service for svc, _ in self._slices.values()):
            self._models.add(service)
            self._sink.set_model(service, self._endpoints_of(service))
        elif service in self._models:
            self._models.discard(service)
            self._sink.remove_model(service)


class SecretTokens:
    """Keeps `auth` in step with a Secret's `tokens` key. A malformed update keeps the previous
    table (logged); a deleted Secret leaves no valid token."""

    def __init__(
        self, settings: KubernetesSettings, auth: Authenticator, config: ApiConfig | None = None
    ) -> None:
        assert settings.tokens_secret is not None
        self.settings = settings
        self.config = config
        self.name = settings.tokens_secret
        self.auth = auth

    async def run(self) -> None:
        config = self.config or await load_config(self.settings.kubeconfig, self.settings.namespace)
        path = f"/api/v1/namespaces/{config.namespace}/secrets"
        params = {"fieldSelector": f"metadata.name={self.name}"}
        await list_watch(config, path, params, self._on_list, self._on_event)

    def _on_list(self, items: list[JsonObj]) -> None:
        if items:
            self._load(items[0])
        else:
            log.warning("tokens Secret %s not found: every model request is refused", self.name)
            self.auth.replace({})

    def _on_event(self, kind: str, obj: JsonObj) -> None:
        if kind == "DELETED":
            self.auth.replace({})
        else:
            self._load(obj)

    def _load(self, obj: JsonObj) -> None:
        raw = (obj.get("data") or {}).get("tokens")
        if raw is None:
            log.error("Secret %s has no 'tokens' key; keeping the previous tokens", self.name)
            return
        try:
            self.auth.replace(parse_tokens(base64.b64decode(raw).decode()))
        except (TokenFileError, ValueError) as exc:
            log.error("Secret %s: %s; keeping the previous tokens", self.name, exc)
