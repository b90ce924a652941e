"""Operator settings from environment and flags."""

from __future__ import annotations

import argparse
import random

from shoal.operator import cli
from shoal.operator.settings import DEFAULT_IMAGE, from_env


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    s = from_env({})
    assert s.cluster_wide
    assert s.default_image == DEFAULT_IMAGE == "ghcr.io/shoal-dev/shoal:0.1.0"
    assert s.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert not s.standalone
    assert s.priority is None


def test_environment() -> None:
    s = from_env(
        {
            "SHOAL_OPERATOR_NAMESPACES": "a, b",
            "SHOAL_OPERATOR_DEFAULT_IMAGE": "reg/shoal:dev",
            "MLFLOW_TRACKING_URI": "http://mlflow",
            "SHOAL_OPERATOR_LOG_FORMAT": "json",
            "SHOAL_OPERATOR_LIVENESS": "",
            "SHOAL_OPERATOR_STANDALONE": "true",
            "SHOAL_OPERATOR_PRIORITY": "7",
            "SHOAL_OPERATOR_GPU_DEVICE": "auto",
            "SHOAL_OPERATOR_GATEWAY_URL": "http://gw",
        }
    )
    assert s.namespaces == ("a", "b")
    assert not s.cluster_wide
    assert (s.default_image, s.mlflow_tracking_uri, s.log_format) == (
        "reg/shoal:dev",
        "http://mlflow",
        "json",
    )
    assert s.liveness_endpoint is None
    assert s.standalone
    assert s.priority == 7
    assert s.gpu_device == "auto"
    assert s.gateway_url == "http://gw"


def test_flags_override_environment() -> None:
    env = {"SHOAL_OPERATOR_NAMESPACES": "a", "SHOAL_OPERATOR_DEFAULT_IMAGE": "x/shoal:1"}
    s = cli.settings_from_args(
        parse(["-n", "b", "-n", "c", "--default-image", "y/shoal:2", "--standalone"]), env
    )
    assert s.namespaces == ("b", "c")
    assert s.default_image == "y/shoal:2"
    assert s.standalone
    s = cli.settings_from_args(
        parse(["-A", "--priority", "3", "--liveness", "", "--gateway-url", "http://g:80"]), env
    )
    assert s.gateway_url == "http://g:80"
    assert s.cluster_wide
    assert s.priority == 3
    assert s.liveness_endpoint is None


def test_log_formats_carry_the_object() -> None:
    import json
    import logging

    record = logging.LogRecord("kopf.objects", logging.INFO, "x", 1, "Handler ok", None, None)
    record.k8s_ref = {"namespace": "ml", "name": "iris"}
    doc = json.loads(cli._JsonFormatter().format(record))
    assert (doc["level"], doc["msg"], doc["object"]) == ("INFO", "Handler ok", "ml/iris")
    plain = cli._PlainFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert plain == "INFO kopf.objects: [ml/iris] Handler ok"


def test_start_priority_ranks_the_oldest_replica_highest() -> None:
    """Whatever the random tie-breaker draws, a replica started a millisecond earlier outranks
    a later one, so a new or restarted replica never takes the lead from the one holding it."""
    now_ms = 1_796_000_000_000  # late 2026
    highest_late = max(cli.start_priority(now_ms + 1, random.Random(s)) for s in range(200))
    lowest_early = min(cli.start_priority(now_ms, random.Random(s)) for s in range(200))
    assert lowest_early > highest_late
    drawn = {cli.start_priority(now_ms, random.Random(s)) for s in range(200)}
    assert len(drawn) > 50  # the tie-breaker spreads replicas started in one millisecond
    # exact in any JSON reader of the peering object, for centuries to come
    assert 0 < cli.start_priority(4_102_444_800_000) < cli.start_priority(now_ms) < 2**53
