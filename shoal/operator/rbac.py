"""The operator's RBAC: exactly the verbs it uses, rendered into crds/operator-rbac.yaml by
crdgen (the chart copies it). Kept next to the code so a new API call and its permission change
together (tests/operator/test_operator_rbac.py checks the cluster-side effect)."""

from __future__ import annotations

from typing import Any

from shoal.operator import spec as api

SERVICE_ACCOUNT = "shoal-operator"
NAMESPACE = "shoal-system"

RULES: list[dict[str, Any]] = [
    # ModelServices: kopf watches them and patches metadata (its annotations, the finalizer
    # that stops the per-object daemon); kube.py patches the status subresource.
    {
        "apiGroups": [api.GROUP],
        "resources": [api.PLURAL],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
    # The autoscaler writes spec.replicas through the scale subresource.
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/scale"], "verbs": ["patch"]},
    # Owned objects: server-side apply (PATCH, which creates when absent).
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {
        "apiGroups": [""],
        "resources": ["services", "serviceaccounts"],
        "verbs": ["create", "patch"],
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create", "patch"]},
    # Status: pods are watched (scheduling, crashes) and listed per pass; the autoscaler
    # patches their deletion cost before scale-in.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
    # Events: ours and kopf's.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    # Peering between operator replicas (kopf).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings", "clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


def manifests(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "shoal-operator", "app.kubernetes.io/part-of": "shoal"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": SERVICE_ACCOUNT, "labels": labels},
            "rules": RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": SERVICE_ACCOUNT, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": SERVICE_ACCOUNT,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}
            ],
        },
    ]
