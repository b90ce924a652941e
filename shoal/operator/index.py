"""What the operator's watches last reported: ModelServices, the objects they own, their pods.

Reconcile passes read from here instead of asking the API server (a 500-object idle cluster
cost ~86 requests/s when every pass re-applied and re-listed). kopf's watch handlers feed it;
the operator's status writes feed it too (the server's answer), so a pass right after a write
compares with what it wrote, not with the not-yet-echoed old status. Pure data, no I/O.

The autoscaler reads `pods_of(key)` (the replica pods of one ModelService, with their IPs and
readiness) instead of listing pods itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

Key = tuple[str, str]
"""(namespace, ModelService name)."""

OWNED_KINDS = ("ServiceAccount", "Service", "PodDisruptionBudget", "Deployment")
"""The kinds a ModelService owns; each object is named like its ModelService."""


def _version(obj: Mapping[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether `candidate` may replace `current`. resourceVersions are opaque to clients, but
    etcd's are integers: an older answer must not overwrite a newer watch event. When they
    do not parse, the later arrival wins."""
    if current is None:
        return True
    a, b = _version(candidate), _version(current)
    return a is None or b is None or a >= b


def key_of(obj: Mapping[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return (str(md.get("namespace") or ""), str(md.get("name") or ""))


class ObservedIndex:
    """The latest known version of every object the operator reconciles or reads."""

    def __init__(self) -> None:
        self._msvcs: dict[Key, dict[str, Any]] = {}
        self._stores: dict[str, Mapping[Key, Collection[Mapping[str, Any]]]] = {}
        self._pods: Mapping[Key, Collection[Mapping[str, Any]]] = {}

    # ModelServices
    def put_modelservice(self, body: Mapping[str, Any]) -> Key:
        key = key_of(body)
        if newer(body, self._msvcs.get(key)):
            self._msvcs[key] = dict(body)
        return key

    def drop_modelservice(self, key: Key) -> None:
        self._msvcs.pop(key, None)

    def modelservice(self, key: Key) -> dict[str, Any] | None:
        return self._msvcs.get(key)

    def keys(self) -> list[Key]:
        return list(self._msvcs)

    # Owned objects and pods: views over kopf's indices (kopf keeps them current, removes
    # deleted objects, and fills them from its initial listings before any handler runs).
    def attach(self, kind: str, store: Mapping[Key, Collection[Mapping[str, Any]]]) -> None:
        self._stores[kind] = store

    def attach_pods(self, store: Mapping[Key, Collection[Mapping[str, Any]]]) -> None:
        self._pods = store

    def owned(self, kind: str, key: Key) -> dict[str, Any] | None:
        """The object of `kind` named like ModelService `key`, if the watch has it."""
        values = list(self._stores.get(kind, {}).get(key, ()))
        return dict(values[0]) if values else None

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The replica pods of one ModelService as last watched (terminating ones included)."""
        return [dict(p) for p in self._pods.get(key, ())]
