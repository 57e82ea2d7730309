"""`make_strategy()`: the tf.distribute strategy a run builds its model under and steps in.

`distribute.strategy`:
- `auto`: a TPU if one is attached (TPU VM), else `mirrored` over all GPUs when there are
  several (or over `distribute.cpu_devices` logical CPUs), else one device.
- `one_device`: the first GPU, else the CPU.
- `mirrored`: all local GPUs, else `distribute.cpu_devices` logical CPU devices (the CPU
  split in N: slower than one device, it exists to test the distributed path anywhere).
- `tpu`: the TPU of this TPU VM; without one, a clear error at once (no silent fallback).

The training step (training.py) is written for any of these: one loss and one update per
global batch, whatever the number of replicas.
"""

from __future__ import annotations

import os

from tfsft.errors import UserError


def configure_cpu_devices(n: int) -> None:
    """Split the CPU into `n` logical devices; must run before TensorFlow uses a device."""
    import tensorflow as tf

    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:  # already initialised (a second run in one process)
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise UserError(f"`distribute.cpu_devices` ({n}) cannot change once TensorFlow has "
                            f"started in this process (it has {have}); run in a new process")


def _tpu_strategy():
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
            RuntimeError) as e:
        raise UserError(
            f"`distribute.strategy` is 'tpu' but no TPU is attached to this machine "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no details'}). "
            "Run on a Cloud TPU VM (see tools/tpu_vm.md), or set distribute.strategy=auto"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _tpu_attached() -> bool:
    """A cheap look for TPU VM devices before asking TensorFlow (which takes longer)."""
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0") \
        or bool(os.environ.get("TPU_NAME"))


def make_strategy(kind: str = "auto", cpu_devices: int = 0):
    import tensorflow as tf

    configure_cpu_devices(cpu_devices)
    if kind == "tpu" or (kind == "auto" and _tpu_attached()):
        try:
            return _tpu_strategy()
        except UserError:
            if kind == "tpu":
                raise
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if kind == "mirrored" or (kind == "auto" and (len(gpus) > 1 or cpu_devices > 1)):
        devices = gpus or (cpus if cpu_devices > 1 else cpus[:1])
        return tf.distribute.MirroredStrategy(devices)
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0])
    return tf.distribute.get_strategy()


def describe(strategy) -> str:
    """'MirroredStrategy over 2 replicas (/cpu:0, /cpu:1)' and the like, for the log."""
    devices = getattr(strategy.extended, "worker_devices", ()) or ()
    where = ", ".join(d.split("/")[-1].replace("device:", "") for d in devices)
    where = f" ({where})" if where else ""
    n = strategy.num_replicas_in_sync
    return f"{type(strategy).__name__} over {n} replica{'s' if n != 1 else ''}{where}"
