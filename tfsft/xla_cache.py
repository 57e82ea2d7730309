"""A persistent cache of tfsft's XLA-compiled CPU kernels, kept across runs.

XLA compiles tfsft's fused kernels (the GELU, the AdamW update: `fused.py`, `training.py`)
once per input shape, ~86 ms each, and a run meets a new shape with every new batch width:
58 in one SST-2 epoch. TensorFlow can keep the compiled kernels on disk and load them in a
later run (~20 ms). docs/performance.md has the before/after.

The cache is a folder of small files (~33 KB a kernel) under the user's cache folder, one
subfolder per TensorFlow version and CPU: a kernel is machine code for the CPU that built
it, so a home folder shared by different machines must not mix them. `TFSFT_XLA_CACHE=off`
turns it off, `TFSFT_XLA_CACHE=<folder>` puts it elsewhere; a `TF_XLA_FLAGS` that already
names a cache folder is left alone. Delete the folder to clear it.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

ENV = "TFSFT_XLA_CACHE"
OFF = ("", "0", "off", "false", "no")
FLAG = "--tf_xla_persistent_cache_directory"


def cpu_key(cpuinfo: str | None = None) -> str:
    """A short name for this CPU's instruction sets (/proc/cpuinfo's flags, else what
    Python knows of the processor) and architecture: kernels built for one key run on
    every CPU with it."""
    from tfsft import precision

    flags = " ".join(sorted(precision.cpu_flags(cpuinfo))) or platform.processor()
    text = f"{platform.machine()} {flags}"
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def folder(environ=os.environ, cpuinfo: str | None = None) -> Path | None:
    """Where this machine's kernels go, or None when `TFSFT_XLA_CACHE` turns it off."""
    from importlib import metadata

    chosen = environ.get(ENV)
    if chosen is not None and chosen.strip().lower() in OFF:
        return None
    if chosen:
        root = Path(chosen).expanduser()
    else:
        base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "tfsft" / "xla"
    try:
        version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return root / f"tf{version}-{cpu_key(cpuinfo)}"


def configure(environ=os.environ, cpuinfo: str | None = None) -> Path | None:
    """Point TensorFlow's persistent XLA cache for CPU kernels at `folder()`, through
    `TF_XLA_FLAGS`, which TensorFlow reads at its first XLA compile. Returns the folder, or
    None (runs then compile as before) when off, already set by the user, or not usable:
    a space in its path, or not writable."""
    flags = environ.get("TF_XLA_FLAGS", "")
    if FLAG in flags:
        return None
    where = folder(environ, cpuinfo)
    if where is None or " " in str(where):  # TF_XLA_FLAGS is split at spaces
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(where, os.W_OK):
        return None
    environ["TF_XLA_FLAGS"] = " ".join(
        f for f in (flags, f"{FLAG}={where}", "--tf_xla_persistent_cache_device_types=CPU") if f)
    return where
