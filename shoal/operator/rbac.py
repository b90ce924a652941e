"""The operator's RBAC: exactly the verbs it uses, in one place.

Two modes, one rule list:
- cluster-wide (no `-n`): a ClusterRole + ClusterRoleBinding with `RULES` (every rule, kopf's
  ClusterKopfPeering included);
- namespaced (`-n A -n B`): a Role + RoleBinding with `NAMESPACED_RULES` in each watched
  namespace and nothing cluster-wide, so the operator can create Deployments (and so run pods as
  any ServiceAccount) only where it serves models.

crdgen renders the cluster-wide variant into crds/operator-rbac.yaml; scripts/chart-rbac renders
`RULES` (key `cluster`) and the namespaced subset (key `namespaced`, the same as
`NAMESPACED_RULES`) into the chart's files/operator-rbac-rules.yaml, which its templates read,
so chart and code cannot drift apart. `python -m shoal.operator.rbac -n A -n B` prints the
namespaced manifests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from shoal.operator import spec as api

SERVICE_ACCOUNT = "shoal-operator"
NAMESPACE = "shoal-system"
_OWNED_VERBS = ["get", "list", "watch", "create", "patch"]

NAMESPACED_RULES: list[dict[str, Any]] = [
    # ModelServices: kopf lists and watches them (and patches away the finalizer that
    # versions before 0.2 added); the operator patches the status subresource.
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
    # The autoscaler writes spec.replicas through the scale subresource.
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/scale"], "verbs": ["patch"]},
    # Owner references with blockOwnerDeletion need this where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (most managed clusters).
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/finalizers"], "verbs": ["update"]},
    # Owned objects: watched (label-selected), read by name when a name is taken by an object
    # the watch does not show, server-side applied (PATCH; create when absent).
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _OWNED_VERBS},
    {"apiGroups": [""], "resources": ["services", "serviceaccounts"], "verbs": _OWNED_VERBS},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _OWNED_VERBS},
    # Status: the replica pods are watched (label-selected); the autoscaler patches their
    # deletion cost before a scale-in.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
    # core/v1 Events, ours and kopf's; repeats are counted on the Event (patch).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    # Peering between operator replicas (kopf), per namespace.
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

CLUSTER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

RULES: list[dict[str, Any]] = NAMESPACED_RULES + CLUSTER_RULES

LABELS = {"app.kubernetes.io/name": "shoal-operator", "app.kubernetes.io/part-of": "shoal"}


_GROUP = "rbac.authorization.k8s.io"


def _role_and_binding(
    kind: str, rules: list[dict[str, Any]], sa_namespace: str, namespace: str | None
) -> list[dict[str, Any]]:
    """A (Cluster)Role with `rules` and its binding to the operator's ServiceAccount."""
    meta: dict[str, Any] = {"name": SERVICE_ACCOUNT, "labels": LABELS}
    if namespace is not None:
        meta["namespace"] = namespace
    subject = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": sa_namespace}
    return [
        {"apiVersion": f"{_GROUP}/v1", "kind": kind, "metadata": meta, "rules": rules},
        {
            "apiVersion": f"{_GROUP}/v1",
            "kind": f"{kind}Binding",
            "metadata": meta,
            "roleRef": {"apiGroup": _GROUP, "kind": kind, "name": SERVICE_ACCOUNT},
            "subjects": [subject],
        },
    ]


def manifests(
    namespace: str = NAMESPACE, watched: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The ServiceAccount in `namespace` and its grants: cluster-wide when `watched` is None,
    else a Role + RoleBinding in each watched namespace."""
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace, "labels": LABELS},
        }
    ]
    if watched is None:
        return out + _role_and_binding("ClusterRole", RULES, namespace, None)
    for ns in watched:
        out += _role_and_binding("Role", NAMESPACED_RULES, namespace, ns)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the operator's RBAC manifests")
    parser.add_argument("--operator-namespace", default=NAMESPACE)
    parser.add_argument(
        "-n", "--namespace", action="append", dest="watched", help="watched namespace"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(yaml.safe_dump_all(manifests(args.operator_namespace, args.watched)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
