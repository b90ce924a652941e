"""`shoal gateway`: route model requests to replicas."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import shoal.logs as logs
from shoal.gateway.discovery.static import parse_upstream_url
from shoal.gateway.httpserver import raise_fd_limit
from shoal.gateway.settings import (
    GatewaySettings,
    HttpSettings,
    KubernetesSettings,
    RetrySettings,
    StaticUpstream,
    UpstreamSettings,
)

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A bad flag, file or address: one line on stderr and exit status 2 (no traceback)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = GatewaySettings()
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port, help="0: any free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a replica of model NAME at http://host:port (repeat for more replicas/models)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="a model with no replica yet: its requests are held (scale from zero)",
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="discover replicas from EndpointSlices (Service name = model name)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster credentials)")
    parser.add_argument("--namespace", help="namespace to watch (default: the pod's own)")
    parser.add_argument(
        "--label-selector",
        default=KubernetesSettings().label_selector,
        help="only Services with these labels ('' for every Service in the namespace)",
    )
    parser.add_argument("--tokens-file", help="bearer tokens: YAML/JSON token -> [models] or '*'")
    parser.add_argument("--tokens-secret", help="Kubernetes Secret whose 'tokens' key holds them")
    parser.add_argument(
        "--auth-health",
        action="store_true",
        help="require a token for health too (with tokens, /metrics always needs one)",
    )
    parser.add_argument("--default-timeout-ms", type=int, default=d.default_timeout_ms)
    parser.add_argument("--max-held-per-model", type=int, default=d.max_held_per_model)
    parser.add_argument("--max-body-bytes", type=int, default=d.http.max_body_bytes)
    parser.add_argument(
        "--max-connections-per-replica", type=int, default=d.upstream.max_connections
    )
    parser.add_argument("--max-attempts", type=int, default=d.retry.max_attempts)
    parser.add_argument(
        "--request-read-timeout-s", type=float, default=d.http.request_read_timeout_s
    )
    parser.add_argument(
        "--max-client-connections",
        type=int,
        default=d.http.max_connections,
        help="client connections at once (also kept --fd-reserve below the open-file limit)",
    )
    parser.add_argument(
        "--fd-reserve",
        type=int,
        default=d.http.fd_reserve,
        help="file descriptors kept free for upstream connections",
    )
    parser.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=d.http.max_buffered_bytes,
        help="request body bytes all connections together may buffer (beyond: 503)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="also serve /metrics and health without a token on this port (for the scraper)",
    )
    parser.add_argument("--metrics-host", help="address of the metrics port (default: --host)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    urls: dict[str, list[str]] = {}
    for item in args.upstream:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise UsageError(f"--upstream {item!r}: expected NAME=http://host:port")
        try:
            parse_upstream_url(url)
        except ValueError as exc:
            raise UsageError(f"--upstream {item!r}: {exc}") from None
        urls.setdefault(name, []).append(url)
    for name in args.model:
        urls.setdefault(name, [])
    static = tuple(StaticUpstream(name, tuple(u)) for name, u in urls.items())
    kube = None
    if args.kubernetes or args.tokens_secret:
        kube = KubernetesSettings(
            endpoint_slices=args.kubernetes,
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            label_selector=args.label_selector,
            tokens_secret=args.tokens_secret,
        )
    d = GatewaySettings()
    return GatewaySettings(
        host=args.host,
        port=args.port,
        static=static,
        kubernetes=kube,
        default_timeout_ms=args.default_timeout_ms,
        max_held_per_model=args.max_held_per_model,
        tokens_file=args.tokens_file,
        auth_health=args.auth_health,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        upstream=UpstreamSettings(
            max_connections=args.max_connections_per_replica,
            max_idle=d.upstream.max_idle,
            connect_timeout_s=d.upstream.connect_timeout_s,
        ),
        retry=RetrySettings(max_attempts=args.max_attempts),
        http=HttpSettings(
            max_body_bytes=args.max_body_bytes,
            request_read_timeout_s=args.request_read_timeout_s,
            max_connections=args.max_client_connections,
            fd_reserve=args.fd_reserve,
            max_buffered_bytes=args.max_buffered_bytes,
        ),
    )


async def _serve(settings: GatewaySettings, port_file: str | None = None) -> None:
    from shoal.gateway.app import GatewayApp
    from shoal.gateway.auth import TokenFileError
    from shoal.gateway.kubeapi import KubeConfigError

    raise_fd_limit()
    app = GatewayApp(settings)
    try:
        port = await app.start()
    except TokenFileError as exc:
        raise UsageError(f"--tokens-file {settings.tokens_file}: {exc}") from None
    except KubeConfigError as exc:
        raise UsageError(f"kubernetes: {exc}") from None
    except OSError as exc:
        raise UsageError(_os_error(exc, settings)) from None
    if port_file is not None:
        await asyncio.to_thread(Path(port_file).write_text, str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway stopping")
    await app.stop()


def _os_error(exc: OSError, settings: GatewaySettings) -> str:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.filename:  # a file flag (tokens, kubeconfig)
        return f"cannot read {exc.filename}: {reason}"
    return f"cannot listen on {settings.host}:{settings.port}: {reason}"


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        settings = settings_from_args(args)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
            asyncio.run(_serve(settings, args.port_file))
        else:
            with contextlib.suppress(KeyboardInterrupt):
                uvloop.run(_serve(settings, args.port_file))
    except UsageError as exc:
        sys.stderr.write(f"shoal gateway: {exc}\n")
        return 2
    return 0
