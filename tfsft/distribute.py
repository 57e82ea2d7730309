"""`make_strategy()`: the tf.distribute strategy a run builds its model under.

Today: MirroredStrategy over all local GPUs when there are several, else the default
(single-device) strategy. TPU and multi-worker selection land with the distributed-training
issue; callers already build model, optimizer and metrics inside `strategy.scope()`.
"""

from __future__ import annotations


def make_strategy(kind: str = "auto"):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if kind in ("auto", "mirrored") and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
