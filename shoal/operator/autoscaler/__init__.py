"""Queue-depth autoscaling: a pure policy (policy.py), metric parsing (observe.py) and the loop
that scrapes replicas and gateways and writes the scale subresource (loop.py)."""
