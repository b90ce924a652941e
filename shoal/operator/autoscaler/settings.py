"""The autoscaler loop's settings (the policy's own knobs come from each ModelService's spec)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AutoscalerSettings:
    """The loop's knobs (the policy's own come from each ModelService's spec)."""

    enabled: bool = True
    """Run the loop at all (off: spec.autoscaling is left to an HPA or KEDA)."""
    interval_seconds: float = 1.0
    """Time between two decisions for one ModelService (scrapes at most this far apart)."""
    scrape_timeout_seconds: float = 0.5
    """A replica or gateway slower than this counts as not answering."""
    max_concurrent_scrapes: int = 32
    """Scrapes in flight at once, over all ModelServices."""
    gateway_metrics_urls: tuple[str, ...] = ()
    """Gateways' /metrics (e.g. their metrics port, which needs no token), scraped every tick;
    the held requests are summed over them. `dns+http://HOST:PORT/path` stands for every
    address HOST resolves to (a headless Service: each gateway pod); see discovery.py."""
    gateway_dns_refresh_seconds: float = 5.0
    """Least time between two resolutions of one `dns+` entry."""
    gateway_dns_stale_seconds: float = 30.0
    """How long a `dns+` entry that no longer resolves keeps its last known addresses."""
    gateway_token: str | None = None
    """Bearer token for gateways whose /metrics needs one."""
    zero_poll_seconds: float = 0.25
    """Between ticks, how often the gateways are asked about models at zero replicas: the
    first held request is acted on this fast (the gateways are few; replicas wait for ticks)."""
    status_interval_seconds: float = 5.0
    """Least time between two writes of status.queueDepth when only the demand changed."""
    window_overrides: Mapping[str, float] = field(default_factory=dict)
    """Policy fields to override for every ModelService (stable_window_s, panic_window_s):
    short windows for tests."""


def from_env(env: Mapping[str, str]) -> AutoscalerSettings:
    """From SHOAL_OPERATOR_AUTOSCALER_* variables (ENABLED, INTERVAL_SECONDS,
    SCRAPE_TIMEOUT_SECONDS, ZERO_POLL_SECONDS, GATEWAY_METRICS_URLS as a comma list,
    GATEWAY_DNS_REFRESH_SECONDS, GATEWAY_DNS_STALE_SECONDS, GATEWAY_TOKEN)."""
    base = AutoscalerSettings()
    p = "SHOAL_OPERATOR_AUTOSCALER_"

    def num(name: str, default: float) -> float:
        raw = env.get(p + name)
        return default if not raw else float(raw)

    urls = tuple(u.strip() for u in env.get(p + "GATEWAY_METRICS_URLS", "").split(",") if u.strip())
    return AutoscalerSettings(
        enabled=env.get(p + "ENABLED", "1").lower() not in ("0", "false", "no"),
        interval_seconds=num("INTERVAL_SECONDS", base.interval_seconds),
        scrape_timeout_seconds=num("SCRAPE_TIMEOUT_SECONDS", base.scrape_timeout_seconds),
        zero_poll_seconds=num("ZERO_POLL_SECONDS", base.zero_poll_seconds),
        gateway_metrics_urls=urls,
        gateway_dns_refresh_seconds=num(
            "GATEWAY_DNS_REFRESH_SECONDS", base.gateway_dns_refresh_seconds
        ),
        gateway_dns_stale_seconds=num("GATEWAY_DNS_STALE_SECONDS", base.gateway_dns_stale_seconds),
        gateway_token=env.get(p + "GATEWAY_TOKEN") or None,
    )
