"""Real nodes: the real kubelet with containerd, runc and the CNI bridge, beside the process
kubelet (see e2e/README.md, "Real nodes")."""
