"""The one module that talks to the Kubernetes API (besides kopf itself).

A small generic client over kubernetes_asyncio's transport: plain dicts in and out, server-side
apply with the operator's field manager, merge patches of the ModelService status subresource,
Events. Objects are addressed by (apiVersion, kind); the operator only uses the kinds below.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.operator import spec as api
from shoal.operator.settings import FIELD_MANAGER

log = logging.getLogger(__name__)

AUTOSCALER_FIELD_MANAGER = "shoal-autoscaler"

# (apiVersion, kind) -> plural resource name.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("kopf.dev/v1", "KopfPeering"): "kopfpeerings",
    (api.API_VERSION, api.KIND): api.PLURAL,
}


@dataclass
class KubeError(Exception):
    """An API request failed: `status` is the HTTP status, `message` the server's reason."""

    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def invalid(self) -> bool:
        """The server refused the object itself (retrying the same object cannot help)."""
        return self.status in (400, 422)


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return out if name is None else f"{out}/{name}"


def _error(exc: ApiException) -> KubeError:
    message, reason = str(exc.reason or ""), str(exc.reason or "")
    try:
        body = json.loads(exc.body or "{}")
        message = str(body.get("message", message))
        reason = str(body.get("reason", reason))
    except (TypeError, ValueError):
        pass
    return KubeError(int(exc.status or 0), reason, message)


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _kubeconfig_path() -> str | None:
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return path if os.path.exists(path.split(os.pathsep)[0]) else None


def in_cluster() -> bool:
    """In a pod with a service account token (the same test as kopf's login)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SERVICE_ACCOUNT_TOKEN)


class Kube:
    """Async access to the objects the operator reads and writes."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    async def connect(cls) -> Kube:
        """The in-cluster account when in a pod, else $KUBECONFIG (or ~/.kube/config): the
        order kopf's login uses too, so both clients act as the same identity."""
        cfg = client.Configuration()
        path = _kubeconfig_path()
        if in_cluster() or path is None:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=path, client_configuration=cfg)
        return cls(client.ApiClient(cfg))

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            return await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            raise _error(exc) from None

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` as the operator's field manager. Conflicts with other
        managers are forced: the caller applies only objects it controls (drift.control)."""
        md = obj["metadata"]
        path = _path(obj["apiVersion"], obj["kind"], md["namespace"], md["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        result = await self._call(
            "PATCH", path, query=query, body=dict(obj), content_type="application/apply-patch+yaml"
        )
        return dict(result)

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return dict(await self._call("GET", _path(api_version, kind, namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def peering_exists(self, name: str, namespace: str | None) -> bool:
        """Whether kopf's peering object exists (ClusterKopfPeering when namespace is None)."""
        if namespace is None:
            path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"
        else:
            path = _path("kopf.dev/v1", "KopfPeering", namespace, name)
        try:
            await self._call("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch a ModelService's status subresource (never touches spec); returns the
        object as stored."""
        path = _path(api.API_VERSION, api.KIND, namespace, name) + "/status"
        result = await self._call(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER)],
            body={"status": dict(patch)},
            content_type="application/merge-patch+json",
        )
        return dict(result)

    async def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        now: datetime,
    ) -> str:
        """A core/v1 Event about `involved` (a ModelService body); returns its name."""
        md = involved["metadata"]
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", api.API_VERSION),
                "kind": involved.get("kind", api.KIND),
                "name": md["name"],
                "namespace": md["namespace"],
                "uid": md.get("uid"),
                "resourceVersion": md.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        made = await self._call("POST", _path("v1", "Event", md["namespace"]), body=event)
        return str(made["metadata"]["name"])

    async def repeat_event(self, namespace: str, name: str, count: int, now: datetime) -> None:
        """Count one more occurrence of an Event already posted (as the kubelet's recorder
        aggregates repeats) instead of posting a new one."""
        await self._call(
            "PATCH",
            _path("v1", "Event", namespace, name),
            body={"count": count, "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            content_type="application/merge-patch+json",
        )

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a ModelService's `spec.replicas` through its scale subresource (the autoscaler's
        write: the same path an HPA takes, and it touches nothing else in the spec)."""
        path = _path(api.API_VERSION, api.KIND, namespace, name) + "/scale"
        await self._call(
            "PATCH",
            path,
            query=[("fieldManager", AUTOSCALER_FIELD_MANAGER)],
            body={"spec": {"replicas": int(replicas)}},
            content_type="application/merge-patch+json",
        )

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge annotations into a pod (the autoscaler's deletion costs before scale-in)."""
        await self._call(
            "PATCH",
            _path("v1", "Pod", namespace, name),
            query=[("fieldManager", AUTOSCALER_FIELD_MANAGER)],
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )
