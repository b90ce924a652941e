"""`python -m shoal.operator`: the same as `shoal operator`."""

import sys

from shoal.cli import main

if __name__ == "__main__":
    sys.exit(main(["operator", *sys.argv[1:]]))
