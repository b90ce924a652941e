"""The Shoal gateway: routes model requests to ready replicas (P2C on outstanding requests),
retries within a deadline and a budget, holds requests for models at zero replicas, checks
bearer tokens, and exports its own metrics. `shoal gateway` runs it (see cli.py)."""

from shoal.gateway.app import GatewayApp
from shoal.gateway.settings import GatewaySettings, StaticUpstream

__all__ = ["GatewayApp", "GatewaySettings", "StaticUpstream"]
