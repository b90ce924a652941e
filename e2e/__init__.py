"""Shoal's local Kubernetes control plane for end-to-end tests.

Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the Go module
proxy (``build-binaries.sh``), plus a process kubelet that runs pods as local processes in their
own network namespaces. Start it with ``python -m e2e.cluster up`` or the ``k8s_cluster`` pytest
fixture; see ``e2e/README.md``.
"""
