"""The one `[tfsft]` progress/warning line writer (stderr), for every layer."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[tfsft] {msg}", file=sys.stderr, flush=True)
