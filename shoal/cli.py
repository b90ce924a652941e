"""The `shoal` command. Each subcommand lives in its own module and is imported only when chosen,
so `shoal serve` never pays for the operator's or Ray's imports."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, help). The module defines `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("shoal.runtime.cli_serve", "serve one or more model classes over HTTP"),
    "demo": ("shoal.runtime.cli_demo", "serve the embedded default model and query it"),
    "gateway": ("shoal.gateway.cli", "route model requests to replicas"),
    "operator": ("shoal.operator.cli", "run the ModelService operator"),
    "batch-predict": ("shoal.offline.cli", "run a model over a dataset with Ray Data"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every command fails in one line: a bad flag exits 2 with argparse's message; a taken
    port or a file that cannot be read or written exits 2 with the cause (commands say more
    where they know more); Ctrl-C exits 130 without a traceback."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        rc: int = module.run(args)
    except OSError as exc:
        print(f"shoal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
