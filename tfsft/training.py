"""The training engine: optimizer, schedule, callbacks and the loop (today `model.fit`).

Everything that steps the model lives here behind one function, `train()`, so the loop
can become a `strategy.run` step with exact mid-epoch resume (see the README's
architecture section) without touching tasks, data or the CLI.
"""

from __future__ import annotations

import json
import math
import shutil
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


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and remembers it."""

    def __init__(self):
        super().__init__()
        self.bad: dict | None = None
        self._epoch = 0
        self._seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad is None:
            self.bad = {"loss": float(loss), "step": self._seen, "epoch": self._epoch + 1,
                        "batch": batch + 1}
            self.model.stop_training = True


class Checkpoints(keras.callbacks.Callback):
    """At each epoch end with a finite loss: `last.weights.h5`, and with `keep_best` also
    `best.weights.h5` when `monitor` improved. Both written atomically (checkpoints.py)."""

    def __init__(self, folder: Path, monitor: str, mode: str, keep_best: bool):
        super().__init__()
        self.folder, self.monitor, self.mode = Path(folder), monitor, mode
        self.keep_best = keep_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.folder / "last.weights.h5"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.weights.h5"

    def on_epoch_end(self, epoch, logs=None):
        from tfsft import checkpoints

        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", float("nan")))):
            return  # never overwrite a good checkpoint with diverged weights
        checkpoints.save_weights(self.model, self.last_path)
        self.last_epoch = epoch + 1
        value = logs.get(self.monitor)
        if not self.keep_best or value is None or not math.isfinite(float(value)):
            return
        better = (self.best is None or (value < self.best if self.mode == "min"
                                        else value > self.best))
        if better:
            self.best, self.best_epoch = float(value), epoch + 1
            checkpoints.save_weights(self.model, self.best_path)


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]
    best_epoch: int | None
    seconds: float
    steps: int


def train(model, train_ds, val_ds, *, plan: Plan, batch_size: int, run_dir: Path,
          monitor: str, patience: int, keep_best: bool, verbose: int = 1,
          advice: str = "") -> TrainResult:
    """Fit `model` (compiled) and leave it holding the weights to keep.

    Runs `plan.total_batches` batches (stopping inside an epoch if need be); with keep_best
    the weights of the best epoch by `monitor` (loss-like metrics are minimised) are
    restored at the end. A NaN/Inf loss or running out of memory raises `TrainingError`
    (with `advice`: what to change in the config); the last good epoch's weights stay in
    `checkpoints/last.weights.h5`.
    """
    from tfsft.errors import TrainingError

    import tensorflow as tf

    run_dir = Path(run_dir)
    mode = "min" if "loss" in monitor else "max"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    guard = DivergenceGuard()
    saver = Checkpoints(run_dir / "checkpoints", monitor, mode, keep_best and val_ds is not None)
    callbacks = [
        guard,
        Throughput(batch_size, str(run_dir / "tensorboard")),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
        HistoryFile(run_dir / "history.jsonl"),
        StopAfter(plan.total_batches),
        saver,
    ]
    if val_ds is not None and patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                       patience=patience, verbose=1))
    start = time.perf_counter()
    try:
        hist = model.fit(train_ds, validation_data=val_ds, epochs=plan.epochs, shuffle=False,
                         callbacks=callbacks, verbose=verbose)
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        raise TrainingError(
            f"out of memory after {step} optimizer steps, with batches of {batch_size} "
            f"({type(e).__name__}). Lower `train.global_batch_size` and raise "
            "`train.grad_accum_steps` to keep the same effective batch (for example "
            f"train.global_batch_size={max(batch_size // 2, 1)} train.grad_accum_steps=2), "
            "or lower `data.max_length`." + _last_good(saver)) from None
    seconds = time.perf_counter() - start
    if guard.bad:
        b = guard.bad
        raise TrainingError(
            f"training diverged: the loss became {b['loss']} at training batch {b['step']} "
            f"(epoch {b['epoch']}, batch {b['batch']}). {advice}".rstrip()
            + _last_good(saver))
    rows = [dict(zip(hist.history, vals)) for vals in zip(*hist.history.values())]
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))  # before any restore
    if saver.best_epoch is not None:
        model.load_weights(str(saver.best_path))
    # the model now holds the weights to keep, saved next as model/: no second copy
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return TrainResult([{k: float(v) for k, v in r.items()} for r in rows], saver.best_epoch,
                       seconds, steps)


def _last_good(saver: Checkpoints) -> str:
    if saver.last_epoch is None:
        return " No epoch finished, so there is no checkpoint to keep."
    return f" The weights after epoch {saver.last_epoch} are kept in {saver.last_path}."
