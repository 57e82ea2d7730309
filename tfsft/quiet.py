"""Import TensorFlow without its start-up chatter on the terminal, and (in the command line
only) without the log lines it marks as errors that are not errors."""

from __future__ import annotations

import os
import platform
import re
import sys
import types

# Log lines TensorFlow and XLA write at ERROR level that report no error. Without this, a
# run that loads its compiled kernels from the cache (`xla_cache`) printed ~3 lines of up
# to 2,500 characters per kernel: 72 lines for the README's main command run twice.
NOISE = re.compile(
    rb"E\d{4} [^\]\n]*\] (?:"
    # the kernel cache reads each entry as a text proto, then (successfully) as binary
    rb"Error parsing text-format tensorflow\.XlaSerializedCacheEntry"
    # a kernel loaded from the cache names LLVM's tuning preferences, which are not
    # instruction sets, among the CPU features this host lacks. A real missing feature
    # (+avx512f, ...) is still shown.
    rb"|Loading XLA:CPU AOT result\. Target machine feature \+prefer-[\w-]+ is not +supported"
    # printed on every start, also on CPUs with AVX-512
    rb"|oneDNN supports DT_INT64 only on platforms with AVX-512\.)")

# The filter process: copies its stdin to its stdout without NOISE lines. It ignores SIGINT
# and SIGTERM and stops at end of input, so whatever tfsft wrote before it stopped (an
# exception, a crash) is still shown.
FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode("latin-1"))
def write(data):
    while data:
        data = data[os.write(1, data):]
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    kept = b"".join(line + b"\n" for line in lines if not noise.match(line))
    if pending and not pending.startswith(b"E"):  # a partial line that is not a log line
        kept, pending = kept + pending, b""
    write(kept)
write(pending)
"""

_filter = {"wanted": False, "child": None}


def drop_log_noise() -> None:
    """Ask for NOISE to be dropped from this process's stderr once TensorFlow is imported.
    Only the command line asks: the filter replaces file descriptor 2, which a library
    caller (or pytest's capture) may own."""
    _filter["wanted"] = True


def start_filter() -> bool:
    """Route file descriptor 2 through a child process that drops NOISE lines (once per
    process; not with TFSFT_VERBOSE_TF). Returns whether the filter is running. At exit
    stderr is restored and the child given time to write what it holds."""
    if _filter["child"] is not None or os.environ.get("TFSFT_VERBOSE_TF"):
        return _filter["child"] is not None
    import atexit
    import subprocess

    try:
        read, write = os.pipe()
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", FILTER, NOISE.pattern.decode("latin-1")],
            stdin=read, stdout=2)
    except OSError:
        return False
    os.close(read)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    _filter["child"] = child

    def stop():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # the pipe's last writer closes: the child drains it and ends
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a subprocess of ours still holds the pipe
            pass

    atexit.register(stop)
    return True


def use_onednn_by_default() -> None:
    """oneDNN on x86-64 CPUs, unless TF_ENABLE_ONEDNN_OPTS is set (TensorFlow reads it once,
    at import). TensorFlow turns oneDNN on by itself only with AVX512_VNNI, AVX512_BF16,
    AVX_VNNI or AMX, and runs float32 matmuls in Eigen elsewhere. On an AMD EPYC with AVX2
    only (2026-12-03, the sst2 recipe, tools/bench.py, 7 runs each alternating) oneDNN made
    training 129.4 against 122.2 examples/s and prediction 195.9 against 169.6 (medians).
    TF_ENABLE_ONEDNN_OPTS=0 turns it off. The tests call this too: they run what users run."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


class _DeferredPyplot(types.ModuleType):
    """Stands in for `matplotlib.pyplot` until one of its attributes is read, then imports
    it and hands on the attribute (and the module itself to later imports)."""

    def __getattr__(self, name):
        if sys.modules.get("matplotlib.pyplot") is self:
            del sys.modules["matplotlib.pyplot"]
        import importlib

        return getattr(importlib.import_module("matplotlib.pyplot"), name)


def defer_pyplot() -> None:
    """Keras imports `matplotlib.pyplot` as it starts, for image plots that tfsft never
    draws: 0.3-0.45 s of every run's start on a 2-core CPU (matplotlib is a tfsft
    dependency, for the confusion-matrix figure). A stand-in module takes its place in
    sys.modules until an attribute is read, so code that draws still gets all of pyplot.
    (`importlib.util.LazyLoader` does not do: the next `import` statement reads the
    module's `__spec__`, which loads it.)"""
    if "matplotlib.pyplot" not in sys.modules:
        sys.modules["matplotlib.pyplot"] = _DeferredPyplot("matplotlib.pyplot")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter (absl logs written before logging is
    initialised ignore TF_CPP_MIN_LOG_LEVEL) kept off the terminal; shown if import fails.
    Every tfsft path into TensorFlow comes here, so it also sets up the cache of compiled
    kernels (`xla_cache`: read at the first XLA compile, after the import) and, when the
    command line asked for it (`drop_log_noise`), the filter of stderr."""
    from tfsft import xla_cache

    xla_cache.configure()
    if _filter["wanted"]:
        start_filter()
    if "tensorflow" in sys.modules:
        return
    use_onednn_by_default()
    if os.environ.get("TFSFT_VERBOSE_TF"):
        return
    import tempfile

    defer_pyplot()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
