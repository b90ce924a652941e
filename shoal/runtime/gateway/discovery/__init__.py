"""Where replicas come from: a `Discovery` feeds a `DiscoverySink` (the gateway's registry)."""

from shoal.runtime.gateway.discovery.base import Discovery, DiscoverySink
from shoal.runtime.gateway.discovery.static import StaticDiscovery, parse_upstream_url

__all__ = ["Discovery", "DiscoverySink", "StaticDiscovery", "parse_upstream_url"]
