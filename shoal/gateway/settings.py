"""Gateway settings: one typed tree, built in `cli.run` from flags (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StaticUpstream:
    """A model served by fixed replica URLs (`--upstream name=url`), or none (`--model name`)."""

    model: str
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """EndpointSlice discovery: each Service in `namespace` is a model of the same name."""

    endpoint_slices: bool = True
    """Discover replicas from EndpointSlices (False: only the tokens Secret is read)."""
    namespace: str | None = None
    """Namespace to watch; None: the pod's own namespace (in-cluster) or the kubeconfig's."""
    kubeconfig: str | None = None
    """Path to a kubeconfig; None: in-cluster service account credentials."""
    label_selector: str = "app.kubernetes.io/name=shoal-model"
    """Only EndpointSlices matching this selector (the EndpointSlice controller copies a
    Service's labels onto its slices; the operator labels ModelService Services so)."""
    port_name: str = "http"
    """The EndpointSlice port that carries HTTP; a slice with one unnamed port uses that one."""
    tokens_secret: str | None = None
    """A Secret whose `tokens` key (YAML/JSON) holds the bearer tokens; watched for changes."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Connections from the gateway to one replica."""

    max_connections: int = 256
    """Open connections per replica at most; more requests wait for a free one."""
    max_idle: int = 64
    """Idle keep-alive connections kept per replica."""
    connect_timeout_s: float = 1.0
    idle_timeout_s: float = 60.0
    """An idle connection older than this is closed instead of reused: shorter than the
    replica's keep-alive timeout (75 s in `shoal serve`), so the replica never closes one
    just as the gateway sends on it."""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries on another replica (connection failure, reset before any response byte, or a 503
    carrying `x-shoal-draining: 1`)."""

    max_attempts: int = 3
    """Tries per request, the first included."""
    budget_ratio: float = 0.2
    """Retry tokens earned per request: retries stay under this share of traffic."""
    budget_min_per_s: float = 10.0
    """Retry tokens earned per second regardless of traffic (so a quiet model can still retry)."""
    budget_max_tokens: float = 100.0
    """Cap on saved-up retry tokens (the largest burst of retries)."""
    eject_s: float = 1.0
    """A replica that refused a connection is skipped this long (doubling while it fails)."""
    saturated_recheck_s: float = 0.05
    """A request a busy replica refused (503 + Retry-After, not draining) waits for a completion
    on its model, at most this long (doubling per refusal, up to 1 s), then is sent again."""
    drain_eject_s: float = 30.0
    """A replica that answered 'draining' is skipped this long (discovery removes it meanwhile)."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Limits on what clients may send."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    request_read_timeout_s: float = 30.0
    """A request (head and body) must arrive within this time of its first byte; else 408."""
    keepalive_timeout_s: float = 75.0
    """An idle client connection is closed after this long."""
    max_pipelined: int = 16
    """Pipelined requests queued on one connection before the gateway stops reading from it."""
    max_connections: int = 10_000
    """Client connections at once (also kept `fd_reserve` below the open-file limit). At the
    cap a newcomer closes the longest idle connection, or is answered 503 + Retry-After."""
    fd_reserve: int = 256
    """File descriptors left free for upstream connections, discovery and logs."""
    max_buffered_bytes: int = 256 * 1024 * 1024
    """Request body bytes all connections together may hold; past it 503 + Retry-After."""
    linger_s: float = 2.0
    """After an error answered with `connection: close`, what the client still sends is read
    and dropped this long (so it sees the answer, not a reset)."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "0.0.0.0"
    port: int = 8080
    static: tuple[StaticUpstream, ...] = ()
    kubernetes: KubernetesSettings | None = None
    default_timeout_ms: int = 30_000
    """Deadline of a request without `x-shoal-timeout-ms`."""
    max_timeout_ms: int = 600_000
    """Longest deadline a client may ask for."""
    max_held_per_model: int = 1000
    """Requests held per model while it has no ready replica; beyond: 503 + Retry-After.
    0 disables holding (a model without replicas answers 503 at once)."""
    retry_after_s: int = 1
    tokens_file: str | None = None
    auth_health: bool = False
    """Require a token for /v2/health/* too (with tokens, /metrics always needs one on the
    main port)."""
    metrics_port: int | None = None
    """Also serve /metrics (and health) without a token on this port, for the scraper only
    (0: any free port; None: no such listener)."""
    metrics_host: str | None = None
    """Address of the metrics listener (None: the same as `host`)."""
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    http: HttpSettings = field(default_factory=HttpSettings)
