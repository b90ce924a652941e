"""`python -m shoal.operator`: the same as `shoal operator` (the operator's own parser, so this
part imports nothing of the top-level `shoal` command)."""

import argparse
import sys

from shoal.operator import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m shoal.operator", description=cli.__doc__)
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
