"""Import TensorFlow without its start-up chatter on the terminal."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter (absl logs written before logging is
    initialised ignore TF_CPP_MIN_LOG_LEVEL) kept off the terminal; shown if import fails.
    Every tfsft path into TensorFlow comes here, so it also sets up the cache of compiled
    kernels (`xla_cache`: read at the first XLA compile, after the import)."""
    from tfsft import xla_cache

    xla_cache.configure()
    if "tensorflow" in sys.modules or os.environ.get("TFSFT_VERBOSE_TF"):
        return
    import tempfile

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
