"""The process kubelet: nodes and pods of the local cluster, played by local processes."""
