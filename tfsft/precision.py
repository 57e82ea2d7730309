"""`train.precision`: the Keras dtype policy a run computes in.

`mixed_bfloat16` keeps float32 variables and computes matmuls in bfloat16: on CPUs with
AVX512_BF16 or AMX (oneDNN) and on TPUs and recent GPUs that is much faster
(tools/bench.py measures the matmul peak of both). `mixed_float16` adds loss scaling
(Keras wraps the optimizer in a LossScaleOptimizer when compiling). `auto` picks
`mixed_bfloat16` where the hardware has native bfloat16, else `float32`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

CHOICES = ("float32", "auto", "mixed_bfloat16", "mixed_float16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags list AVX512_BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(f in flags for f in CPU_BF16_FLAGS)


def resolve(choice: str) -> str:
    """The Keras policy name for a `train.precision` value."""
    if choice not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        caps = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))
                for g in gpus]
        return "mixed_bfloat16" if all(c >= (8, 0) for c in caps) else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


@contextlib.contextmanager
def policy(name: str):
    """Set the global Keras dtype policy for the body (models built inside use it)."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
