"""`shoal serve [NAME=]module:Class ...`: serve models over HTTP (V2, V1, metrics, ingress)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shoal import logs
from shoal.runtime.lifecycle import write_termination_log
from shoal.runtime.loading import LoadError
from shoal.runtime.settings import add_arguments as _add_arguments
from shoal.runtime.settings import default_termination_log, from_args

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = from_args(args)
    except LoadError as exc:
        logs.configure()
        logger.error("%s", exc)
        # In a pod, this is what `kubectl describe` shows for a misconfigured ModelService.
        write_termination_log(default_termination_log(os.environ), f"invalid settings: {exc}")
        return 2
    logs.configure(settings.log_format, settings.log_level)
    from shoal.runtime.uvicorn_runner import BindError
    from shoal.runtime.uvicorn_runner import run as serve_run

    try:
        return serve_run(settings)
    except BindError as exc:  # a port is taken: the message says which
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # the port file cannot be written: usage, exit 2
        logger.error("cannot serve on %s:%d: %s", settings.host, settings.port, exc)
        return 2


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace()))
