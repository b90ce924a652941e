"""Where replicas come from: a `Discovery` feeds a `DiscoverySink` (the gateway's registry)."""

from shoal.gateway.discovery.base import Discovery, DiscoverySink
from shoal.gateway.discovery.static import StaticDiscovery, parse_upstream_url

__all__ = ["Discovery", "DiscoverySink", "StaticDiscovery", "parse_upstream_url"]
