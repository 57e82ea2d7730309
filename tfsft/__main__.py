import sys

from tfsft.cli import main

sys.exit(main())
