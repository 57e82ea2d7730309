"""`train.precision`: what a run computes in.

- `float32`: everything in float32.
- `onednn_bfloat16`: a float32 Keras model; TensorFlow's oneDNN auto-mixed-precision graph
  pass runs the matmuls (and what it can keep next to them) in bfloat16. CPUs with AVX-512
  only: elsewhere TensorFlow emulates bfloat16 under the pass, slower than float32 (with
  oneDNN off it skips the pass silently and computes in float32), so a run asking for it
  on another CPU is refused (`unavailable`). On a
  CPU this beats `mixed_bfloat16`: Keras' policy also makes every elementwise op
  (GELU, LayerNorm, dropout) bfloat16, which TensorFlow computes slowly on CPUs, and casts
  every weight in every layer call (docs/performance.md has the figures).
- `mixed_bfloat16`: Keras' policy: float32 variables, bfloat16 compute (TPUs, GPUs).
- `mixed_float16`: the same in float16, with loss scaling (Keras wraps the optimizer).
- `auto`: `mixed_bfloat16` on TPUs and on GPUs of compute capability 8.0 or newer,
  `onednn_bfloat16` on CPUs with AVX512_BF16 or AMX, else `float32`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

CHOICES = ("float32", "auto", "onednn_bfloat16", "mixed_bfloat16", "mixed_float16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN runs bfloat16 natively only where one of these is present (TensorFlow's
# IsBF16SupportedByOneDNNOnThisCPU: AVX512F, or AVX-NE-CONVERT); even then, without
# AVX512_BF16 or AMX it is slower than float32, which is why `auto` does not pick it there.
# Without them the pass emulates bfloat16: an AVX2-only AMD EPYC (2026-12-03, oneDNN on) ran
# a 2048 x 2048 matmul under the pass at 119 GFLOP/s against 161 in float32.
ONEDNN_PASS_FLAGS = ("avx512f", "avx_ne_convert")
ONEDNN_PASS = "auto_mixed_precision_onednn_bfloat16"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's instruction-set flags as Linux lists them in /proc/cpuinfo (`flags` on x86,
    `Features` on ARM); empty where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags list AVX512_BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    return any(f in cpu_flags(cpuinfo) for f in CPU_BF16_FLAGS)


def onednn_bf16_native(cpuinfo: str | None = None) -> bool:
    """True when oneDNN runs the bfloat16 graph pass's matmuls natively on this CPU."""
    return any(f in cpu_flags(cpuinfo) for f in ONEDNN_PASS_FLAGS)


def unavailable(mode: str, cpuinfo: str | None = None) -> str | None:
    """Why a resolved mode cannot run here as asked, or None when it can."""
    if mode == "onednn_bfloat16" and not onednn_bf16_native(cpuinfo):
        return ("`train.precision` is onednn_bfloat16, but this CPU has no AVX-512 (neither "
                "avx512f nor avx_ne_convert in /proc/cpuinfo): TensorFlow's oneDNN bfloat16 "
                "pass would emulate bfloat16 here, slower than float32 and less precise (a "
                "2048 x 2048 matmul on an AVX2-only CPU: 119 against 161 GFLOP/s), or, with "
                "TF_ENABLE_ONEDNN_OPTS=0, not run at all and leave the run in float32. Use "
                "train.precision=auto (float32 on this CPU) or float32")
    return None


def resolve(choice: str) -> str:
    """The precision mode a `train.precision` value means on this machine."""
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
    return "onednn_bfloat16" if cpu_has_bf16() else "float32"


def keras_policy(mode: str) -> str:
    """The Keras dtype policy of a resolved mode (`onednn_bfloat16` builds a float32 model)."""
    return "float32" if mode == "onednn_bfloat16" else mode


def use_graph_pass(mode: str) -> None:
    """Turn the oneDNN bfloat16 graph pass on for `onednn_bfloat16`, off otherwise. It is a
    process-wide TensorFlow setting, read when a `tf.function` is first run: every run sets
    it for itself before it builds anything."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({ONEDNN_PASS: mode == "onednn_bfloat16"})


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
