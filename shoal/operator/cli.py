"""`shoal operator` (also `python -m shoal.operator`): run the ModelService operator.

Settings come from SHOAL_OPERATOR_* environment variables (see settings.from_env), and flags
override them. Without --standalone the operator joins kopf peering (the KopfPeering or
ClusterKopfPeering object named by --peering must exist; crds/kopf-peering.yaml): of several
replicas only the one with the highest priority acts, the others stay paused until it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import socket
import sys
import time
import urllib.parse
from typing import Any

from shoal.operator.settings import OperatorSettings, from_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="namespace to watch (repeatable); default: SHOAL_OPERATOR_NAMESPACES or all",
    )
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--default-image", help="runtime image for ModelServices without one")
    parser.add_argument("--mlflow-tracking-uri", help="MLflow registry for models:/name@alias")
    parser.add_argument(
        "--gateway-url", help="gateway address given to replicas for shoal.handle calls"
    )
    parser.add_argument("--log-format", choices=["plain", "json"], help="log line format")
    parser.add_argument(
        "--liveness",
        help="liveness endpoint URL (default http://0.0.0.0:8080/healthz; empty: off)",
    )
    parser.add_argument(
        "--gpu-device", help="SHOAL_DEVICE for GPU replicas: cuda (default) or auto"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (one replica)")
    parser.add_argument("--peering", help="KopfPeering object name shared by the replicas")
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority (default: from the start time, oldest highest)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def settings_from_args(
    args: argparse.Namespace, env: dict[str, str] | None = None
) -> OperatorSettings:
    s = from_env(env)
    changes: dict[str, Any] = {}
    if args.all_namespaces:
        changes["namespaces"] = ()
    elif args.namespaces:
        changes["namespaces"] = tuple(args.namespaces)
    for attr in (
        "default_image",
        "mlflow_tracking_uri",
        "gateway_url",
        "log_format",
        "priority",
        "gpu_device",
    ):
        value = getattr(args, attr, None)
        if value is not None:
            changes[attr] = value
    if args.liveness is not None:
        changes["liveness_endpoint"] = args.liveness or None
    if args.peering:
        changes["peering_name"] = args.peering
    if args.standalone:
        changes["standalone"] = True
    if args.verbose:
        changes["verbose"] = True
    return dataclasses.replace(s, **changes)


def _ref(record: logging.LogRecord) -> str | None:
    ref = getattr(record, "k8s_ref", None)  # kopf's per-object logger adds this
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    return f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else str(ref["name"])


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ref = _ref(record)
        if ref is None:
            return text
        head, sep, tail = text.partition(": ")
        return f"{head}{sep}[{ref}] {tail}" if sep else f"[{ref}] {text}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj = _ref(record)
        if obj:
            doc["object"] = obj
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(settings: OperatorSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.verbose else logging.INFO)
    if not settings.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class StartupError(Exception):
    """The operator cannot start as configured; the message says why (exit 2)."""


def check_liveness(url: str | None) -> None:
    """The liveness port must be free: kopf would otherwise die with a traceback."""
    if not url:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.port is None:
        raise StartupError(f"--liveness {url!r}: expected http://HOST:PORT/PATH")
    try:
        with socket.create_server((parts.hostname or "0.0.0.0", parts.port)):
            pass
    except OSError as exc:
        raise StartupError(
            f"--liveness {url}: cannot listen on port {parts.port} ({exc.strerror}); "
            "pick another port with --liveness, or --liveness '' to turn it off"
        ) from None


async def check_peering(settings: OperatorSettings) -> None:
    """Without --standalone kopf waits, silently and forever, for a peering object that does
    not exist: say so at start instead."""
    if settings.standalone:
        return
    from shoal.operator.kube import Kube, KubeError

    kube = await Kube.connect()
    try:
        where = [None] if settings.cluster_wide else list(settings.namespaces)
        for ns in where:
            try:
                found = await kube.peering_exists(settings.peering_name, ns)
            except KubeError as exc:
                raise StartupError(f"cannot read the peering object: {exc}") from None
            if not found:
                kind = "ClusterKopfPeering" if ns is None else f"KopfPeering in namespace {ns}"
                raise StartupError(
                    f"no {kind} named {settings.peering_name!r}: create it (see "
                    "crds/operator-rbac.yaml) or run one replica with --standalone"
                )
    finally:
        await kube.close()


def start_priority(now_ms: int | None = None, rng: random.Random | None = None) -> int:
    """A peering priority from the start time, the oldest replica highest: a restarted or new
    replica never takes the lead from the one that holds it (kopf pauses whoever sees a higher
    priority), so the lead moves only when its holder goes. The last two digits are random, so
    replicas started in the same millisecond do not tie. It stays below 2**53, so any JSON
    reader of the peering object (kopf keeps the peers there) keeps it exact."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return (10**13 - ms) * 100 + (rng or random).randrange(100)


async def run_operator(settings: OperatorSettings) -> None:
    import kopf

    from shoal.operator.handlers import configure_kopf, register

    await check_peering(settings)
    registry, _ = register(settings)
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, settings)
    priority = settings.priority if settings.priority is not None else start_priority()
    await kopf.operator(
        registry=registry,
        settings=kopf_settings,
        standalone=settings.standalone,
        priority=priority,
        # kopf makes peering mandatory whenever a peering name is given, even when standalone.
        peering_name=None if settings.standalone else settings.peering_name,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint,
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        check_liveness(settings.liveness_endpoint)
    except (ValueError, StartupError) as exc:  # a bad SHOAL_OPERATOR_* value, a taken port
        sys.stderr.write(f"shoal operator: {exc}\n")
        return 2
    configure_logging(settings)
    logging.getLogger(__name__).info(
        "shoal operator: %s, default image %s",
        "cluster-wide" if settings.cluster_wide else f"namespaces {','.join(settings.namespaces)}",
        settings.default_image,
    )
    try:
        asyncio.run(run_operator(settings))
    except StartupError as exc:
        sys.stderr.write(f"shoal operator: {exc}\n")
        return 2
    return 0
