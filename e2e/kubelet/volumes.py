"""Pod volumes as host folders that the launcher bind-mounts into the container's private mount
namespace: emptyDir, configMap, secret, downwardAPI and projected (incl. the service account
token that the ServiceAccount admission plugin injects as ``kube-api-access-*``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from e2e.kube import Kube, Obj
from e2e.kubelet.podspec import ConfigError, PodFacts, Resolver, field_value

log = logging.getLogger(__name__)


def _write(base: Path, rel: str, data: bytes, mode: int) -> None:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _write_items(base: Path, data: dict[str, bytes], items: list[Obj] | None, mode: int) -> None:
    if not items:
        for key, value in data.items():
            _write(base, key, value, mode)
        return
    for item in items:
        if item["key"] not in data:
            raise ConfigError(f"key {item['key']} missing")
        _write(base, item["path"], data[item["key"]], item.get("mode", mode))


async def _token(kube: Kube, facts: PodFacts, source: Obj) -> bytes:
    meta = facts.pod["metadata"]
    sa = facts.pod["spec"].get("serviceAccountName") or "default"
    spec: dict[str, Any] = {
        "expirationSeconds": source.get("expirationSeconds", 3607),
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
        },
    }
    if source.get("audience"):
        spec["audiences"] = [source["audience"]]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
    out = await kube.create(path, body)
    token: str = out["status"]["token"]
    return token.encode()


async def _projected(
    kube: Kube, resolver: Resolver, facts: PodFacts, base: Path, vol: Obj, mode: int
) -> None:
    for source in vol.get("sources", []):
        if "serviceAccountToken" in source:
            src = source["serviceAccountToken"]
            _write(base, src["path"], await _token(kube, facts, src), mode)
        elif "configMap" in source or "secret" in source:
            kind, src = (
                ("configmaps", source["configMap"])
                if "configMap" in source
                else ("secrets", source["secret"])
            )
            data = await resolver.data(kind, src["name"], bool(src.get("optional")))
            if data is not None:
                _write_items(base, data, src.get("items"), mode)
        elif "downwardAPI" in source:
            _downward(facts, base, source["downwardAPI"], mode)
        else:
            raise ConfigError(f"unsupported projected source {sorted(source)}")


def _downward(facts: PodFacts, base: Path, vol: Obj, mode: int) -> None:
    for item in vol.get("items", []):
        if "fieldRef" not in item:
            raise ConfigError("only fieldRef items are supported in downwardAPI volumes")
        value = field_value(facts, item["fieldRef"]["fieldPath"]).encode()
        _write(base, item["path"], value, item.get("mode", mode))


async def materialize(kube: Kube, resolver: Resolver, facts: PodFacts, root: Path) -> None:
    """Creates root/<volume name> for every volume of the pod."""
    for vol in facts.pod["spec"].get("volumes", []):
        base = root / vol["name"]
        base.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            base.chmod(0o777)
        elif "configMap" in vol or "secret" in vol:
            is_cm = "configMap" in vol
            src = vol["configMap"] if is_cm else vol["secret"]
            name = src["name"] if is_cm else src["secretName"]
            data = await resolver.data(
                "configmaps" if is_cm else "secrets", name, bool(src.get("optional"))
            )
            _write_items(base, data or {}, src.get("items"), src.get("defaultMode", 0o644))
        elif "projected" in vol:
            src = vol["projected"]
            await _projected(kube, resolver, facts, base, src, src.get("defaultMode", 0o644))
        elif "downwardAPI" in vol:
            src = vol["downwardAPI"]
            _downward(facts, base, src, src.get("defaultMode", 0o644))
        elif "hostPath" in vol:
            continue  # mounted straight from the host path
        else:
            raise ConfigError(f"volume {vol['name']}: unsupported type {sorted(vol)}")


def mounts_for(pod: Obj, container: Obj, root: Path) -> list[dict[str, Any]]:
    """The launcher's bind mounts for one container."""
    by_name = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts: list[dict[str, Any]] = []
    for vm in container.get("volumeMounts", []):
        vol = by_name.get(vm["name"])
        if vol is None:
            raise ConfigError(f"volumeMount {vm['name']} names no volume")
        src = Path(vol["hostPath"]["path"]) if "hostPath" in vol else root / vm["name"]
        if vm.get("subPath"):
            src = src / vm["subPath"]
            if "emptyDir" in vol:
                src.mkdir(parents=True, exist_ok=True)
        readonly = bool(vm.get("readOnly")) or any(k in vol for k in ("projected", "secret"))
        mounts.append({"source": str(src), "target": vm["mountPath"], "readonly": readonly})
    return mounts


def ensure_mount_points(mounts: list[dict[str, Any]], created: Path, uses: Path) -> None:
    """Creates missing mount targets on the host (a mount needs an existing target).

    Mount points are host paths shared by every cluster on the machine (e.g.
    /var/run/secrets/kubernetes.io/serviceaccount), so each slot records the targets it uses in
    `uses`, and whatever gets created is recorded in the machine-wide `created`; a slot's
    teardown removes only created paths that no running slot uses (removing a directory that is
    a mount point elsewhere would silently unmount it there).
    """
    with uses.open("a") as f:
        f.writelines(f"{m['target']}\n" for m in mounts)
    new: list[str] = []
    for m in mounts:
        target = Path(m["target"])
        if target.exists():
            continue
        missing = [p for p in [target, *target.parents] if not p.exists()]
        if Path(m["source"]).is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        new += [str(p) for p in missing]
    if new:
        with created.open("a") as f:
            f.writelines(f"{p}\n" for p in new)


def remove_mount_points(created: Path, in_use: set[str]) -> None:
    """Removes the created mount points (and the folders created for them) that are not in use;
    the rest stay recorded for a later teardown."""
    if not created.exists():
        return
    paths = sorted(set(created.read_text().split()), key=len, reverse=True)
    busy = {p for p in paths if any(u == p or u.startswith(p + "/") for u in in_use)}
    for p in paths:
        if p in busy:
            continue
        try:
            if os.path.isdir(p):
                os.rmdir(p)
            elif os.path.isfile(p) and os.path.getsize(p) == 0:
                os.unlink(p)
        except OSError:
            pass  # not empty: someone else's content now, leave it
    remaining = [p for p in paths if p in busy]
    created.write_text("".join(f"{p}\n" for p in remaining))
