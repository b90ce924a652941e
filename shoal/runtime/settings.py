"""`shoal serve` settings: one typed object built from flags and env in main() (flags win).

The operator starts pods as `shoal serve` with env only, so every setting has an env name."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.runtime.loading import (
    MLFLOW_TARGET,
    LoadError,
    ModelSpec,
    default_name,
    is_mlflow_uri,
    parse_config_json,
    parse_config_pairs,
    split_named,
)

DEFAULT_MAX_QUEUE_SIZE = 1024
KUBERNETES_TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class ServeSettings:
    models: list[ModelSpec]
    """What to serve: one or more named model classes."""
    host: str = "0.0.0.0"
    """Bind address (SHOAL_HOST). Each e2e pod has its own network namespace and IP."""
    port: int = 8000
    """Bind port (SHOAL_PORT); 0 picks a free one (see port_file)."""
    port_file: str | None = None
    """Write the bound port here once listening (tests, the demo)."""
    metrics_port: int | None = None
    """A second port that serves only GET /metrics (SHOAL_METRICS_PORT; 0 = any free one), so
    a NetworkPolicy can open metrics to a Prometheus without opening inference. /metrics stays
    on the main port too (the autoscaler reads it there)."""
    device: str = "auto"
    """torch device: auto (cuda when available), cpu, cuda, cuda:1 (SHOAL_DEVICE)."""
    max_batch_size: int | None = None
    """Overrides every batched model's decorator value (SHOAL_MAX_BATCH_SIZE)."""
    batch_wait_timeout_s: float | None = None
    """Overrides the decorator's wait (SHOAL_BATCH_WAIT_TIMEOUT_S)."""
    batch_wait_mode: str | None = None
    """hard or adaptive: overrides the decorator's (SHOAL_BATCH_WAIT_MODE); see batch_queue.py."""
    max_concurrent_batches: int | None = None
    """Overrides the decorator's value (SHOAL_MAX_CONCURRENT_BATCHES)."""
    max_queue_size: int | None = None
    """Rows waiting per model before 503 + Retry-After (SHOAL_MAX_QUEUE_SIZE); overrides the
    decorator's; when neither sets it, DEFAULT_MAX_QUEUE_SIZE."""
    request_timeout_s: float = 30.0
    """Deadline of a request without x-shoal-timeout-ms, queue time included (504 after)."""
    max_timeout_ms: int = 600_000
    """Largest x-shoal-timeout-ms a caller may ask for (SHOAL_MAX_TIMEOUT_MS); more is a 400."""
    grace_period_s: float = 25.0
    """After SIGTERM: time to finish queued and in-flight work before exiting anyway."""
    drain_quiet_s: float = 0.5
    """After draining, exit once no request has arrived for this long (SHOAL_DRAIN_QUIET_S)."""
    max_body_bytes: int = 16 << 20
    """Larger request bodies get 413 (SHOAL_MAX_BODY_BYTES)."""
    max_header_bytes: int = 32 << 10
    """A request line plus headers larger than this gets 431 and the connection is closed
    (SHOAL_MAX_HEADER_BYTES)."""
    max_header_count: int = 100
    """A request with more header fields gets 431 and is closed (SHOAL_MAX_HEADER_COUNT)."""
    head_timeout_s: float = 10.0
    """A request's head must arrive within this long of its first byte, and a new connection
    must send one within this long of opening: else 408 and close (SHOAL_HEAD_TIMEOUT_S)."""
    body_timeout_s: float = 60.0
    """A request's body must arrive within this long of its head: else 408 and close
    (SHOAL_BODY_TIMEOUT_S)."""
    keep_alive_timeout_s: float = 75.0
    """An idle keep-alive connection is closed after this long (SHOAL_KEEP_ALIVE_TIMEOUT_S):
    longer than the gateway's and typical clients' pool idle timeouts, so they close first."""
    max_connections: int = 4096
    """Open connections at most (SHOAL_MAX_CONNECTIONS), and never more than the file
    descriptor limit allows (raised to its hard limit at start) less a reserve for the model:
    a new connection over the cap closes an idle one, or gets 503 and is closed."""
    log_format: str = "text"
    """text or json (SHOAL_LOG_FORMAT)."""
    log_level: str = "INFO"
    """SHOAL_LOG_LEVEL."""
    termination_log: str | None = None
    """Where a failed load writes its cause (SHOAL_TERMINATION_LOG). Default: Kubernetes'
    terminationMessagePath /dev/termination-log, only when running in a pod
    (KUBERNETES_SERVICE_HOST is set); elsewhere none, the log line is enough."""
    app_dir: str | None = None
    """Directory put first on sys.path to import model modules (default: the current one)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def batch_overrides(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "batch_wait_mode": self.batch_wait_mode,
            "max_concurrent_batches": self.max_concurrent_batches,
            "max_queue_size": self.max_queue_size,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="[NAME=]MODEL",
        help="module:Class or path/to/file.py:Class (env SHOAL_MODEL_CLASS); several may be "
        "given as name=module:Class",
    )
    add = parser.add_argument
    add("--model-name", help="name of the single model (SHOAL_MODEL_NAME; default from the class)")
    add(
        "--model-uri",
        help="local path, file://, models:/name/version, models:/name@alias, "
        "runs:/id/path (SHOAL_MODEL_URI); passed as uri= or served as an MLflow pyfunc",
    )
    add(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor kwarg (repeatable; values parsed as JSON when they parse); with several "
        "models use name.key=value",
    )
    add("--config-json", help="constructor kwargs as a JSON object (SHOAL_MODEL_CONFIG)")
    add("--host", help="bind address (SHOAL_HOST, default 0.0.0.0)")
    add("--port", type=int, help="bind port (SHOAL_PORT, default 8000; 0 = any free port)")
    add("--port-file", help="write the bound port to this file once listening")
    add(
        "--metrics-port",
        type=int,
        help="also serve GET /metrics, and nothing else, on this port (SHOAL_METRICS_PORT)",
    )
    add("--device", help="torch device: auto, cpu, cuda, cuda:N (SHOAL_DEVICE)")
    add("--max-batch-size", type=int)
    add("--batch-wait-timeout-s", type=float)
    add(
        "--batch-wait-mode",
        choices=["hard", "adaptive"],
        help="adaptive (the default): with the model idle, wait only while the arrival rate "
        "can fill the batch; hard: always wait --batch-wait-timeout-s for a full batch, as "
        "Ray Serve does (SHOAL_BATCH_WAIT_MODE; overrides the decorator)",
    )
    add("--max-concurrent-batches", type=int)
    add("--max-queue-size", type=int)
    add("--request-timeout-s", type=float)
    add("--grace-period-s", type=float)
    add("--max-body-bytes", type=int)
    add("--max-timeout-ms", type=int)
    add("--max-header-bytes", type=int)
    add("--max-header-count", type=int)
    add("--head-timeout-s", type=float)
    add("--body-timeout-s", type=float)
    add("--keep-alive-timeout-s", type=float)
    add("--max-connections", type=int)
    add("--drain-quiet-s", type=float)
    add("--log-format", choices=["text", "json"])
    add("--log-level")
    add("--termination-log")
    add("--app-dir")


_ENV = {
    "host": ("SHOAL_HOST", str),
    "port": ("SHOAL_PORT", int),
    "device": ("SHOAL_DEVICE", str),
    "max_batch_size": ("SHOAL_MAX_BATCH_SIZE", int),
    "batch_wait_timeout_s": ("SHOAL_BATCH_WAIT_TIMEOUT_S", float),
    "batch_wait_mode": ("SHOAL_BATCH_WAIT_MODE", str),
    "max_concurrent_batches": ("SHOAL_MAX_CONCURRENT_BATCHES", int),
    "max_queue_size": ("SHOAL_MAX_QUEUE_SIZE", int),
    "request_timeout_s": ("SHOAL_REQUEST_TIMEOUT_S", float),
    "grace_period_s": ("SHOAL_GRACE_PERIOD_S", float),
    "max_body_bytes": ("SHOAL_MAX_BODY_BYTES", int),
    "max_timeout_ms": ("SHOAL_MAX_TIMEOUT_MS", int),
    "max_header_bytes": ("SHOAL_MAX_HEADER_BYTES", int),
    "max_header_count": ("SHOAL_MAX_HEADER_COUNT", int),
    "head_timeout_s": ("SHOAL_HEAD_TIMEOUT_S", float),
    "body_timeout_s": ("SHOAL_BODY_TIMEOUT_S", float),
    "keep_alive_timeout_s": ("SHOAL_KEEP_ALIVE_TIMEOUT_S", float),
    "max_connections": ("SHOAL_MAX_CONNECTIONS", int),
    "drain_quiet_s": ("SHOAL_DRAIN_QUIET_S", float),
    "log_format": ("SHOAL_LOG_FORMAT", str),
    "log_level": ("SHOAL_LOG_LEVEL", str),
    "termination_log": ("SHOAL_TERMINATION_LOG", str),
    "port_file": ("SHOAL_PORT_FILE", str),
    "metrics_port": ("SHOAL_METRICS_PORT", int),
    "app_dir": ("SHOAL_APP_DIR", str),
}


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeSettings:
    """Flags, then env, then defaults. Raises LoadError (usage problems) with a clear message."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for key, (var, conv) in _ENV.items():
        flag = getattr(args, key, None)
        if flag is not None:
            values[key] = flag
        elif env.get(var, "") != "":
            try:
                values[key] = conv(env[var])
            except ValueError:
                raise LoadError(f"{var}={env[var]!r} is not a valid {conv.__name__}") from None
    values.setdefault("termination_log", default_termination_log(env))
    _check_positive(values)
    _check_ports(values)
    values["models"] = _model_specs(args, env)
    return ServeSettings(**values)


def default_termination_log(env: Mapping[str, str]) -> str | None:
    """SHOAL_TERMINATION_LOG, else /dev/termination-log in a pod, else none: `shoal serve`
    on a laptop (perhaps as root) must not write into /dev."""
    if env.get("SHOAL_TERMINATION_LOG"):
        return env["SHOAL_TERMINATION_LOG"]
    return KUBERNETES_TERMINATION_LOG if env.get("KUBERNETES_SERVICE_HOST") else None


# Limits and timeouts: zero or less would turn a limit off or refuse everything.
_POSITIVE = (
    "max_body_bytes",
    "max_timeout_ms",
    "max_header_bytes",
    "max_header_count",
    "head_timeout_s",
    "body_timeout_s",
    "keep_alive_timeout_s",
    "max_connections",
    "request_timeout_s",
)


def _check_positive(values: Mapping[str, Any]) -> None:
    for key in _POSITIVE:
        if key in values and not 0 < values[key] < math.inf:
            flag = "--" + key.replace("_", "-")
            raise LoadError(f"{flag} must be a positive number, got {values[key]}")


def _check_ports(values: Mapping[str, Any]) -> None:
    port, metrics = values.get("port", 8000), values.get("metrics_port")
    for flag, value in (("--port", port), ("--metrics-port", metrics)):
        if value is not None and not 0 <= value <= 65535:
            raise LoadError(f"{flag} must be a TCP port (0-65535), got {value}")
    if metrics is not None and metrics != 0 and metrics == port:
        raise LoadError(f"--metrics-port {metrics} must differ from --port")


def _model_specs(args: argparse.Namespace, env: Mapping[str, str]) -> list[ModelSpec]:
    entries = [split_named(s) for s in (args.models or [])]
    if not entries and env.get("SHOAL_MODEL_CLASS"):
        entries = [split_named(s) for s in env["SHOAL_MODEL_CLASS"].split()]
    uri = args.model_uri or env.get("SHOAL_MODEL_URI") or None
    if not entries:
        if uri and is_mlflow_uri(uri):
            entries = [(None, MLFLOW_TARGET)]
        else:
            raise LoadError(
                "no model given: pass module:Class (or set SHOAL_MODEL_CLASS), or an MLflow "
                "--model-uri; `shoal demo` serves the embedded default model"
            )
    config_json = args.config_json or env.get("SHOAL_MODEL_CONFIG") or None
    config = (
        parse_config_json(config_json, "--config-json/SHOAL_MODEL_CONFIG") if config_json else {}
    )
    config.update(parse_config_pairs(args.config or []))
    single = len(entries) == 1
    if not single and uri:
        raise LoadError("--model-uri needs a single model; serve several models without one")
    specs: list[ModelSpec] = []
    names: set[str] = set()
    for name, target in entries:
        if name is None:
            name = (args.model_name or env.get("SHOAL_MODEL_NAME") or "") if single else ""
            name = name or default_name(target, uri)
        if name in names:
            raise LoadError(f"two models are named {name!r}; use name=module:Class")
        names.add(name)
        if single:
            cfg = config
        else:
            cfg = {k.partition(".")[2]: v for k, v in config.items() if k.partition(".")[0] == name}
        specs.append(ModelSpec(name=name, target=target, config=cfg, uri=uri if single else None))
    if not single:
        stray = [k for k in config if k.partition(".")[0] not in names or "." not in k]
        if stray:
            raise LoadError(f"with several models, config keys must be model.key; got {stray}")
    return specs
