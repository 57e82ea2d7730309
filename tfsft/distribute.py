"""`make_strategy()`: the tf.distribute strategy a run builds its model under and steps in.

`distribute.strategy`:
- `auto`: a TPU if one is attached (TPU VM), else `mirrored` over all GPUs when there are
  several (or over `distribute.cpu_devices` logical CPUs), else one device.
- `one_device`: the first GPU, else the CPU.
- `mirrored`: all local GPUs, else `distribute.cpu_devices` logical CPU devices (the CPU
  split in N: slower than one device, it exists to test the distributed path anywhere).
- `tpu`: the TPU of this TPU VM; without one, a clear error at once (no silent fallback).
- `multi_worker`: MultiWorkerMirroredStrategy over the workers `TF_CONFIG` names (one
  process per machine, each mirroring its local GPUs); `auto` picks it when `TF_CONFIG`
  names more than one worker. `tools/launch_multiworker.sh` starts N local workers.

The training step (training.py) is written for any of these: one loss and one update per
global batch, whatever the number of replicas.
"""

from __future__ import annotations

import json
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


def cluster() -> dict | None:
    """{"workers": N, "type": ..., "index": i, "has_chief": ...} from TF_CONFIG, or None."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
        spec, task = config.get("cluster", {}), config.get("task", {})
        workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
        return {"workers": workers, "type": task["type"], "index": int(task.get("index", 0)),
                "has_chief": bool(spec.get("chief"))}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"the TF_CONFIG environment variable is not valid ({e}): it must be "
                        'JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}}') from None


def is_chief(strategy) -> bool:
    """True for the one process that writes the run directory (and always off-cluster):
    the `chief` task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


def wants_multi_worker(kind: str) -> bool:
    """`multi_worker`, or `auto` with a TF_CONFIG that names several workers."""
    found = cluster()
    return kind == "multi_worker" or (kind == "auto" and bool(found) and found["workers"] > 1)


def make_strategy(kind: str = "auto", cpu_devices: int = 0):
    """The strategy for `distribute.strategy`. Multi-worker must be made before TensorFlow
    runs any op (call this first)."""
    import tensorflow as tf

    if wants_multi_worker(kind):
        if not cluster():
            raise UserError("`distribute.strategy` is 'multi_worker' but TF_CONFIG is not set: "
                            "start the workers with tools/launch_multiworker.sh N -- fit ... "
                            "(one machine), or set TF_CONFIG on each machine (README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
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
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    name = type(strategy).__name__
    found = cluster()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and found:
        name = "MultiWorkerMirroredStrategy"
        where = f" ({found['workers']} workers; this is {found['type']} {found['index']})"
    return f"{name} over {n} replica{'s' if n != 1 else ''}{where}"
