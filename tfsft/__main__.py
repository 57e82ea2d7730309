import sys

from tfsft.cli import run

sys.exit(run())
