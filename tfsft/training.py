"""The training engine: optimizer, schedule, callbacks and the loop (today `model.fit`).

Everything that steps the model lives here behind one function, `train()`, so the loop
can become a `strategy.run` step with exact mid-epoch resume (see the README's
architecture section) without touching tasks, data or the CLI.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras

NO_DECAY = ["bias", "gamma", "beta", "LayerNorm", "layer_norm"]


@keras.saving.register_keras_serializable(package="tfsft")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then linear or cosine decay to 0 (or constant).

    Example:
    >>> float(WarmupDecay(1e-3, total_steps=100, warmup_steps=10)(5))
    0.0005
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str = "linear"):
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = max(self.warmup_steps, 1)
        warmup = self.peak * step / warm
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "linear":
            decayed = self.peak * (1.0 - progress)
        else:
            decayed = ops.convert_to_tensor(self.peak, "float32")
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind}


def make_optimizer(learning_rate: float, total_steps: int, warmup_ratio: float, schedule: str,
                   weight_decay: float, clip_norm: float, grad_accum_steps: int):
    """AdamW with warmup+decay; no weight decay on biases and LayerNorm; global-norm clip."""
    lr = WarmupDecay(learning_rate, total_steps, round(total_steps * warmup_ratio), schedule)
    optimizer = keras.optimizers.AdamW(
        learning_rate=lr, weight_decay=weight_decay, global_clipnorm=clip_norm or None,
        gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1 else None)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


class Throughput(keras.callbacks.Callback):
    """Logs examples/s and the learning rate to TensorBoard, and `train_seconds` /
    `examples_per_second` of each epoch's training batches (the first epoch includes
    graph tracing) to the epoch logs."""

    def __init__(self, batch_size: int, log_dir: str, every: int = 10):
        super().__init__()
        self.batch_size, self.every = batch_size, every
        self.writer_dir = log_dir
        self._writer = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(str(Path(self.writer_dir) / "train"))
        self._step = 0
        self._t = time.perf_counter()
        self._examples = 0
        self._epoch_t = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_t, self._epoch_steps = time.perf_counter(), 0
        self._last_batch_t = self._epoch_t

    def on_train_batch_end(self, batch, logs=None):
        import tensorflow as tf

        self._step += 1
        self._epoch_steps += 1
        self._last_batch_t = time.perf_counter()
        if self._step % self.every == 0:
            now = time.perf_counter()
            rate = self.every * self.batch_size / (now - self._t)
            self._t = now
            lr = self.model.optimizer.learning_rate
            with self._writer.as_default(step=self._step):
                tf.summary.scalar("examples_per_second", rate)
                tf.summary.scalar("learning_rate", float(keras.ops.convert_to_numpy(lr)))
                if logs and "loss" in logs:
                    tf.summary.scalar("batch_loss", float(logs["loss"]))
            self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        # training batches only: validation runs after the last batch and is not counted
        seconds = self._last_batch_t - self._epoch_t
        if logs is not None:
            logs["train_seconds"] = seconds
            logs["examples_per_second"] = self._epoch_steps * self.batch_size / max(seconds, 1e-9)


class HistoryFile(keras.callbacks.Callback):
    """Appends each epoch's logs as one JSON line to `history.jsonl` in the run directory."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class Plan:
    """How long training runs, in batches (what Keras' LR schedules count, even with
    gradient accumulation) and epochs."""

    epochs: int
    batches_per_epoch: int
    total_batches: int


def plan(rows: int, batch_size: int, epochs: int, max_steps: int, grad_accum_steps: int) -> Plan:
    """`max_steps` counts optimizer updates (each `grad_accum_steps` batches)."""
    from tfsft.pipeline import steps_per_epoch

    per_epoch = steps_per_epoch(rows, batch_size)
    total = per_epoch * epochs if epochs else 0
    if max_steps:
        cap = max_steps * grad_accum_steps
        total = min(total, cap) if total else cap
    return Plan(-(-total // per_epoch), per_epoch, total)


class StopAfter(keras.callbacks.Callback):
    """Stops training after exactly `batches` batches, also in the middle of an epoch."""

    def __init__(self, batches: int):
        super().__init__()
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.batches:
            self.model.stop_training = True


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]
    best_epoch: int | None
    seconds: float
    steps: int


def train(model, train_ds, val_ds, *, plan: Plan, batch_size: int, run_dir: Path,
          monitor: str, patience: int, keep_best: bool, verbose: int = 1) -> TrainResult:
    """Fit `model` (compiled) and leave it holding the weights to keep.

    Runs `plan.total_batches` batches (stopping inside an epoch if need be); with keep_best
    the weights of the best epoch by `monitor` (loss-like metrics are minimised) are
    restored at the end.
    """
    run_dir = Path(run_dir)
    mode = "min" if "loss" in monitor else "max"
    best_path = run_dir / "checkpoints" / "best.weights.h5"
    best_path.parent.mkdir(parents=True, exist_ok=True)
    callbacks = [
        Throughput(batch_size, str(run_dir / "tensorboard")),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
        HistoryFile(run_dir / "history.jsonl"),
        StopAfter(plan.total_batches),
    ]
    if val_ds is not None and keep_best:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(best_path), monitor=monitor, mode=mode, save_best_only=True,
            save_weights_only=True, verbose=0))
    if val_ds is not None and patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                       patience=patience, verbose=1))
    start = time.perf_counter()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=plan.epochs, shuffle=False,
                     callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    rows = [dict(zip(hist.history, vals)) for vals in zip(*hist.history.values())]
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))  # before any restore
    best_epoch = None
    if val_ds is not None and keep_best and best_path.exists() and monitor in hist.history:
        values = hist.history[monitor]
        pick = min if mode == "min" else max
        best_epoch = values.index(pick(values)) + 1
        model.load_weights(str(best_path))
    return TrainResult([{k: float(v) for k, v in r.items()} for r in rows], best_epoch,
                       seconds, steps)
