"""The training engine: optimizer, schedule, the training step and the loop.

Everything that steps the model lives here behind one function, `train()`. The step is
our own `tf.function` run with `strategy.run` (the Model Garden / Orbit way), not Keras'
`model.fit`: `fit` fails under MultiWorkerMirroredStrategy (tensorflow#72388) and cannot
resume inside an epoch (BackupAndRestore restores only the epoch). Owning the step gives:

- one loss definition for any number of replicas and accumulated batches: the task loss
  summed over every valid element of the global batch, divided by their global count, so
  one device and N replicas compute the same update (tests/test_training.py);
- gradient clipping on the all-reduced gradient (Keras clips each replica's own);
- exact resume: a checkpoint (checkpoints.save_state) holds the model's variables (seed
  generator states included), the optimizer's, the training metrics', and the position
  (epoch, update, batch); every epoch's order is a pure function of (seed, epoch), so a
  restart skips the consumed batches and continues the same sequence bit for bit;
- SIGTERM / Ctrl-C write a checkpoint at the next update boundary before stopping.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tfsft import messages
from tfsft.errors import Terminated, TrainingError

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
                   weight_decay: float):
    """AdamW with warmup+decay over `total_steps` optimizer updates; no weight decay on
    biases and LayerNorm. Clipping and gradient accumulation are done by the training step
    (on the all-reduced gradient), not by the optimizer."""
    lr = WarmupDecay(learning_rate, total_steps, round(total_steps * warmup_ratio), schedule)
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


def plain_adamw(optimizer, variables) -> bool:
    """`optimizer` is make_optimizer's AdamW with nothing more for Keras' `apply` to do
    (no loss scale, EMA, accumulation, clipping, AMSGrad) and `variables` are float32 with
    no constraint, so adamw_apply may stand in for it."""
    return (type(optimizer) is keras.optimizers.AdamW and not optimizer.amsgrad
            and not optimizer.use_ema and not optimizer.gradient_accumulation_steps
            and optimizer.clipnorm is None and optimizer.global_clipnorm is None
            and optimizer.clipvalue is None and optimizer.loss_scale_factor is None
            and all(v.dtype == "float32" and v.constraint is None for v in variables))


def adamw_apply(optimizer, grads, variables) -> None:
    """`optimizer.apply(grads, variables)` of a plain_adamw optimizer, op for op: the
    decoupled weight decay, then Adam, of each variable, then the step count. Keras builds
    the schedule, the bias corrections and a merge call anew for every variable (for
    MiniLM's 82, 2 s of the first step's tracing); here they are built once. It reads the
    optimizer's own state (Keras-private names): tests/test_training.py checks the result
    bit for bit against `apply`."""
    import tensorflow as tf

    lr = tf.cast(optimizer._get_current_learning_rate(), tf.float32)
    wd = tf.cast(optimizer.weight_decay or 0.0, tf.float32)
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    b1_power = tf.pow(tf.cast(beta_1, tf.float32), step)
    b2_power = tf.pow(tf.cast(beta_2, tf.float32), step)
    alpha = lr * tf.sqrt(1 - b2_power) / (1 - b1_power)
    for grad, variable in zip(grads, variables):
        i = optimizer._get_variable_index(variable)
        m, v, var = optimizer._momentums[i].value, optimizer._velocities[i].value, variable.value
        grad = tf.cast(grad, tf.float32)
        if optimizer.weight_decay is not None and optimizer._use_weight_decay(variable):
            var.assign_sub(var * wd * lr)
        m.assign_add((grad - m) * (1 - beta_1))
        v.assign_add((tf.square(grad) - v) * (1 - beta_2))
        var.assign_sub((m * alpha) / (tf.sqrt(v) + optimizer.epsilon))
    optimizer.iterations.assign_add(1)


@dataclass(frozen=True)
class Plan:
    """How long training runs. An update (optimizer step) consumes `grad_accum_steps`
    batches; the last update of an epoch may consume fewer (accumulation never spans two
    epochs, so every epoch starts at an update boundary)."""

    epochs: int
    batches_per_epoch: int
    updates_per_epoch: int
    total_updates: int


def plan(rows: int, batch_size: int, epochs: int, max_steps: int, grad_accum_steps: int,
         drop_remainder: bool = False, batches: int | None = None) -> Plan:
    """`max_steps` counts optimizer updates; `drop_remainder`: a partial last batch is
    not trained on (static shapes); `batches`: the pipeline's batches per epoch where they
    are not `rows / batch_size` (pipeline.batches_per_epoch, `data.max_batch_tokens`)."""
    from tfsft.pipeline import steps_per_epoch

    per_epoch = steps_per_epoch(rows, batch_size, drop_remainder) if batches is None else batches
    if per_epoch < 1:
        raise TrainingError(f"{rows} training rows do not fill one batch of {batch_size}, and "
                            "data.static_shapes drops partial batches: lower "
                            "train.global_batch_size or turn data.static_shapes off")
    updates = -(-per_epoch // grad_accum_steps)
    total = updates * epochs if epochs else 0
    if max_steps:
        total = min(total, max_steps) if total else max_steps
    return Plan(-(-total // updates), per_epoch, updates, total)


@dataclass(frozen=True)
class Settings:
    """What the loop needs beyond the model and data (from `train.*`)."""

    batch_size: int  # rows per batch, all replicas together
    grad_accum_steps: int = 1
    clip_norm: float = 0.0  # global-norm clip of the update's gradient (0: off)
    monitor: str = "val_loss"
    patience: int = 0  # epochs without improvement of `monitor` before stopping (0: off)
    keep_best: bool = True
    checkpoint_every: int = 0  # updates between resume checkpoints (0: epoch ends only)
    log_every: int = 10  # updates between TensorBoard batch scalars
    jit_compile: bool = False  # XLA-compile the step
    steps_per_execution: int = 1  # updates per call of the compiled step


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]
    best_epoch: int | None
    seconds: float
    steps: int
    restored_best: bool = False  # the model holds an earlier epoch's weights than the last


# --------------------------------------------------------------------------- the step


def loss_terms(loss, y, pred, weights=None):
    """(sum, count) of a Keras loss over one batch: the loss summed over its valid elements
    (weighted), and what Keras' reduction divides that by (the valid elements; their total
    weight for `mean_with_sample_weight`). sum / count is the loss Keras reports for the
    batch; summing both over replicas and accumulated batches first gives the loss of the
    whole global batch, whatever way it was split."""
    import tensorflow as tf

    elem = tf.cast(loss.call(y, pred), tf.float32)
    valid = tf.ones_like(elem)
    ignore = getattr(loss, "ignore_class", None)
    if ignore is not None:  # e.g. NER: targets -1 for words the model does not see
        valid = tf.reshape(tf.cast(tf.not_equal(y, ignore), tf.float32), tf.shape(elem))
    weight = valid
    if weights is not None:
        w = tf.cast(weights, tf.float32)
        while w.shape.rank < elem.shape.rank:
            w = w[..., None]
        weight = valid * w
    total = tf.reduce_sum(elem * weight)
    count = tf.reduce_sum(weight if loss.reduction == "mean_with_sample_weight" else valid)
    return total, count


def _unpack(batch):
    x, y, *rest = batch
    return x, y, (rest[0] if rest else None)


def _rows(x):
    import tensorflow as tf

    return tf.shape(tf.nest.flatten(x)[0])[0]


def make_train_step(model, optimizer, loss, metrics, strategy, clip_norm: float,
                    jit_compile: bool = False, fuse_update: bool = True):
    """`step(iterator, n) -> (loss sum, count, rows)`: one optimizer update from the next
    `n` global batches of a distributed iterator; `step(iterator, n, k)` runs `k` such
    updates in one call (`train.steps_per_execution`: fewer host round trips, what TPUs
    want). `jit_compile`: the per-replica step is compiled by XLA (once per batch shape:
    see data.static_shapes). `fuse_update`: with one replica, the optimizer update alone
    is XLA-compiled (the same arithmetic, fused into one pass per variable)."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables

    def replica_step(batches):
        acc, total, count, rows = None, 0.0, 0.0, 0
        for batch in batches:
            x, y, w = _unpack(batch)
            # one batch's activations at a time: the next forward waits for these gradients
            after = [g for g in (acc or []) if g is not None]
            with tf.control_dependencies(after):
                with tf.GradientTape() as tape:
                    pred = model(x, training=True)
                    s, c = loss_terms(loss, y, pred, w)
                    scaled = optimizer.scale_loss(s)
                grads = tape.gradient(scaled, variables)
            # Embedding gradients arrive as IndexedSlices with one slice per token
            # occurrence. Keras' Adam squares the slices before summing duplicates, so its
            # second moment gets sum(g_i^2) where it needs (sum g_i)^2, and a different
            # split over replicas gives a different update. Dense gradients are exact.
            grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
            acc = grads if acc is None else [
                a if g is None else (g if a is None else a + g) for a, g in zip(acc, grads)]
            for m in metrics:
                m.update_state(y, pred)
            total, count, rows = total + s, count + c, rows + _rows(x)
        present = tuple(i for i, g in enumerate(acc) if g is not None)
        grads = [acc[i] for i in present]
        global_count = count
        if replicas > 1:
            *grads, global_count = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [*grads, count])
        apply_update(present, grads, global_count)
        return total, count, rows

    def apply_update(present, grads, global_count):
        """Apply the mean gradient of the global batch (`grads` are summed over it): one
        factor folds the mean, the global-norm clip (of the whole update's gradient,
        scaled when float16 scales the loss) and the per-replica share, so the gradients
        are scaled once, inside the optimizer's (XLA-fused) update."""
        factor = 1.0 / tf.maximum(global_count, 1.0)
        if clip_norm:
            limit = clip_norm * optimizer.scale_loss(1.0)
            norm = tf.linalg.global_norm(grads) * factor
            factor = factor * limit / tf.maximum(norm, limit)
        if replicas > 1:  # the Keras optimizer sums over replicas; each adds its share
            factor = factor / replicas
        return apply_scaled(present, grads, factor)

    apply = (adamw_apply if replicas == 1 and plain_adamw(optimizer, variables)
             else type(optimizer).apply)

    def apply_scaled(present, grads, factor):
        apply(optimizer, [g * tf.cast(factor, g.dtype) for g in grads],
              [variables[i] for i in present])
        return tf.constant(0)

    if fuse_update and replicas == 1 and not jit_compile:
        # AdamW is ~15 elementwise passes over every variable (22M values for MiniLM: 85
        # ms a step); XLA fuses them into one (29 ms). Keras' update merges across
        # replicas, which XLA cannot compile, so only a one-replica step is fused.
        apply_scaled = tf.function(apply_scaled, jit_compile=True, autograph=False)

    sum_ = tf.distribute.ReduceOp.SUM
    # no data-dependent Python control flow inside: AutoGraph has nothing to convert
    replica_step = tf.autograph.experimental.do_not_convert(replica_step)
    replica_fn = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    @tf.autograph.experimental.do_not_convert
    def update(iterator, n: int):
        batches = tuple(next(iterator) for _ in range(n))
        s, c, r = strategy.run(replica_fn, args=(batches,))
        return (strategy.reduce(sum_, s, axis=None), strategy.reduce(sum_, c, axis=None),
                strategy.reduce(sum_, r, axis=None))

    one = tf.function(update, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def many(iterator, n: int, k):  # k updates in one call: a loop in the graph
        s, c, r = tf.constant(0.0), tf.constant(0.0), tf.constant(0)
        for _ in tf.range(k):
            ds, dc, dr = update(iterator, n)
            s, c, r = s + ds, c + dc, r + tf.cast(dr, tf.int32)
        return s, c, r

    def step(iterator, n: int, k: int = 1):
        """(loss sum, count, rows) over `k` updates of `n` batches each."""
        return one(iterator, n) if k == 1 else many(iterator, n, tf.constant(k))

    return step


def make_eval_step(model, loss, metrics, strategy):
    """`step(iterator) -> (loss sum, count)` of the next global batch; updates `metrics`."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def replica_step(batch):
        x, y, _w = _unpack(batch)  # validation is unweighted
        pred = model(x, training=False)
        for m in metrics:
            m.update_state(y, pred)
        return loss_terms(loss, y, pred)

    sum_ = tf.distribute.ReduceOp.SUM

    @tf.function(reduce_retracing=True, autograph=False)
    def step(iterator):
        s, c = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(sum_, s, axis=None), strategy.reduce(sum_, c, axis=None)

    return step


def evaluate(model, dataset, loss, metrics, strategy, step=None) -> dict:
    """{"loss": ..., <metric>: ...} over a whole (finite) dataset (`step`: from
    make_eval_step with the same model, loss and metrics, made once per run)."""
    import tensorflow as tf

    step = step or make_eval_step(model, loss, metrics, strategy)
    for m in metrics:
        m.reset_state()
    total = count = 0.0
    it = iter(strategy.experimental_distribute_dataset(dataset))
    while True:
        try:
            s, c = step(it)
        except (StopIteration, tf.errors.OutOfRangeError):
            break
        total, count = total + float(s), count + float(c)
    return {"loss": total / max(count, 1.0), **{m.name: float(m.result()) for m in metrics}}


# --------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def stop_signals():
    """While training, SIGTERM and the first Ctrl-C only raise a flag: the loop saves a
    checkpoint at the next update boundary, then stops. A second Ctrl-C stops at once."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Position:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0  # epochs finished
    update_in_epoch: int = 0  # updates done in the current epoch
    updates: int = 0  # updates done in all
    batches: int = 0  # batches consumed in all
    loss_sum: float = 0.0  # this epoch so far
    loss_count: float = 0.0
    rows: int = 0
    seconds: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0  # epochs since `monitor` last improved
    stopped_early: bool = False
    best_is_current: bool = False  # the best epoch was the last: the model holds it


def state_variables(model, optimizer, metrics) -> list:
    """Everything a checkpoint must hold for an exact resume, in a fixed order."""
    out, seen = [], set()
    for v in [*model.variables, *optimizer.variables, *(v for m in metrics for v in m.variables)]:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def train(model, epoch_data, val_data, *, loss, metrics, strategy, plan: Plan,
          settings: Settings, run_dir: Path, verbose: int = 1, advice: str = "",
          resume_from: Path | None = None) -> TrainResult:
    """Train `model` (its optimizer: `model.optimizer`) and leave it holding the weights to
    keep; resumes from `run_dir/checkpoints/resume.npz` when that exists. The checkpoints
    stay: `discard_checkpoints` once the model is saved.

    `epoch_data(epoch)` returns the epoch's training batches (x, y[, weights]), the same
    every time for the same epoch; `val_data` the validation batches, or a function that
    validates the model as it is and returns {"loss": ..., <metric name>: ...} (or None);
    `metrics()` new metric objects. Runs `plan.total_updates` updates (stopping inside an epoch if
    need be); with keep_best the weights of the best epoch by `monitor` (loss-like metrics
    are minimised) are restored at the end. A NaN/Inf loss or running out of memory raises
    `TrainingError` (with `advice`); the last finished epoch's weights stay in
    `checkpoints/last.weights.h5`. SIGTERM or Ctrl-C saves a checkpoint, then raises
    `Terminated` / `KeyboardInterrupt`. `resume_from` names another resume checkpoint to
    start from (a multi-worker run's non-chief workers read the chief's).
    """
    import tensorflow as tf

    from tfsft import checkpoints, trainlog

    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)
        train_metrics, val_metrics = metrics(), metrics()
    step = make_train_step(model, optimizer, loss, train_metrics, strategy, settings.clip_norm,
                           settings.jit_compile)
    eval_step = make_eval_step(model, loss, val_metrics, strategy)
    variables = state_variables(model, optimizer, train_metrics)
    log = trainlog.Log(run_dir)
    pos = Position()
    resume_path = folder / "resume.npz"
    start_from = Path(resume_from) if resume_from else resume_path
    keep_best = settings.keep_best and val_data is not None
    mode = "min" if "loss" in settings.monitor else "max"

    def save():
        meta = {"position": vars(pos), "plan": vars(plan), "log": log.state()}
        checkpoints.save_state(resume_path, [np.asarray(v.numpy()) for v in variables], meta)
        log.flush()

    if start_from.exists():
        arrays, meta = checkpoints.load_state(start_from, len(variables))
        if meta["plan"] != vars(plan):
            raise TrainingError(f"{start_from} was written for another training plan "
                                f"({meta['plan']}, now {vars(plan)}); delete it to start over")
        for v, a in zip(variables, arrays):
            v.assign(a)
        pos = Position(**meta["position"])
        log.restore(meta["log"])
        log.flush()
        messages.log(f"resuming from {start_from}: update {pos.updates} of "
                     f"{plan.total_updates} (epoch {pos.epoch + 1}, update "
                     f"{pos.update_in_epoch} of the epoch)")

    start = time.perf_counter()
    try:
        with stop_signals() as stop:
            while pos.updates < plan.total_updates and not pos.stopped_early:
                _run_epoch(model, optimizer, step, eval_step, epoch_data, val_data, loss,
                           train_metrics, val_metrics, strategy, plan, settings, pos, log,
                           save, stop, folder, keep_best, mode, verbose, advice)
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        raise TrainingError(
            f"out of memory after {pos.updates} optimizer steps, with batches of "
            f"{settings.batch_size} ({type(e).__name__}). Raise `train.grad_accum_steps` to "
            "split each update into smaller batches with the same effective batch (for "
            f"example train.global_batch_size={settings.batch_size * settings.grad_accum_steps}"
            f" train.grad_accum_steps={2 * settings.grad_accum_steps}), cap the widest "
            "batches' rows x tokens with `data.max_batch_tokens`, or lower `data.max_length`."
            + _last_good(folder, pos.epoch)) from None
    seconds = time.perf_counter() - start
    restored = pos.best_epoch is not None and not pos.best_is_current
    if restored:
        model.load_weights(str(folder / "best.weights.h5"))
    # checkpoints/ stays until the caller has saved the model (discard_checkpoints): a
    # crash or a full disk while saving it can still resume
    return TrainResult(list(log.history), pos.best_epoch, seconds, pos.updates, restored)


def discard_checkpoints(run_dir: Path) -> None:
    """Remove `run_dir/checkpoints` once the model `train` left is saved (or not wanted):
    the model holds the weights to keep, and a second copy would only take space."""
    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)


def _run_epoch(model, optimizer, step, eval_step, epoch_data, val_data, loss, train_metrics,
               val_metrics, strategy, plan, settings, pos, log, save, stop, folder, keep_best,
               mode, verbose, advice) -> None:
    from tfsft import checkpoints

    accum = settings.grad_accum_steps
    first_update = pos.updates - pos.update_in_epoch  # of this epoch
    updates = min(plan.updates_per_epoch, plan.total_updates - first_update)
    if pos.update_in_epoch == 0:
        for m in train_metrics:
            m.reset_state()
        pos.loss_sum = pos.loss_count = pos.seconds = 0.0
        pos.rows = 0
    dataset = epoch_data(pos.epoch)
    if pos.update_in_epoch:  # resumed inside the epoch: the same order, minus what was done
        dataset = dataset.skip(pos.update_in_epoch * accum)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    if verbose:
        print(f"Epoch {pos.epoch + 1}/{plan.epochs}", flush=True)
    bar = keras.utils.Progbar(updates, verbose=verbose, unit_name="step")
    window_t, window_rows = time.perf_counter(), 0
    while pos.update_in_epoch < updates:
        n = min(accum, plan.batches_per_epoch - pos.update_in_epoch * accum)
        k = _updates_per_call(settings, pos, updates, plan.batches_per_epoch, accum)
        t0 = time.perf_counter()
        s, c, r = step(iterator, n, k)
        s, c, r = float(s), float(c), int(r)
        pos.seconds += time.perf_counter() - t0
        pos.updates += k
        pos.update_in_epoch += k
        pos.batches += k * n
        batch_loss = s / max(c, 1.0)
        if not math.isfinite(batch_loss):
            in_epoch = (pos.update_in_epoch - 1) * accum + n
            where = "at" if k == 1 else f"in the {k} steps up to"
            raise TrainingError(
                f"training diverged: the loss became {batch_loss} {where} training batch "
                f"{pos.batches} (epoch {pos.epoch + 1}, batch {in_epoch}). "
                f"{advice}".rstrip() + _last_good(folder, pos.epoch))
        pos.loss_sum, pos.loss_count, pos.rows = pos.loss_sum + s, pos.loss_count + c, pos.rows + r
        window_rows += r
        if pos.updates % settings.log_every == 0:
            now = time.perf_counter()
            log.scalar("train", "batch_loss", pos.updates, batch_loss)
            log.scalar("train", "examples_per_second", pos.updates,
                       window_rows / max(now - window_t, 1e-9))
            log.scalar("train", "learning_rate", pos.updates, _learning_rate(optimizer))
            window_t, window_rows = now, 0
        if pos.update_in_epoch < updates:
            if verbose == 1:
                bar.update(pos.update_in_epoch, _running(pos, train_metrics))
            due = settings.checkpoint_every and pos.updates % settings.checkpoint_every == 0
            if due or stop["signal"]:
                save()
            if stop["signal"]:
                _stop(stop["signal"], pos, folder)
    logs = _running(pos, train_metrics)
    if val_data is not None:
        scores = (val_data() if callable(val_data) else
                  evaluate(model, val_data, loss, val_metrics, strategy, eval_step))
        logs += [(f"val_{k}", v) for k, v in scores.items()]
    logs = dict(logs)
    logs["learning_rate"] = _learning_rate(optimizer)
    logs["train_seconds"] = pos.seconds
    logs["examples_per_second"] = pos.rows / max(pos.seconds, 1e-9)
    bar.update(updates, [(k, v) for k, v in logs.items() if k != "learning_rate"],
               finalize=True)
    finite = math.isfinite(logs["loss"])
    value = logs.get(settings.monitor)
    improved = False
    if finite and value is not None and math.isfinite(value):
        improved = pos.best is None or (value < pos.best if mode == "min" else value > pos.best)
        if improved:
            pos.best, pos.wait = float(value), 0
        else:
            pos.wait += 1
    pos.epoch += 1
    pos.update_in_epoch = 0
    if settings.patience and pos.wait >= settings.patience and val_data is not None:
        pos.stopped_early = True
        messages.log(f"early stopping: `{settings.monitor}` has not improved for {pos.wait} "
                     "epochs")
    log.epoch(pos.epoch, logs)
    # After the last epoch the model is saved next: the weights it holds need no copy
    # (nor a resume checkpoint: a crash before the model is saved resumes from the last
    # periodic one). MiniLM: 450 MB less to write.
    last = (pos.updates >= plan.total_updates or pos.stopped_early) and not stop["signal"]
    if improved and keep_best:
        pos.best_epoch = pos.epoch
        if not last:
            checkpoints.save_weights(model, folder / "best.weights.h5")
        pos.best_is_current = last
    if finite and not last:
        checkpoints.save_weights(model, folder / "last.weights.h5")
    if last:
        log.flush()
    else:
        save()
    if stop["signal"]:
        _stop(stop["signal"], pos, folder)


def _updates_per_call(settings: Settings, pos: Position, updates: int, batches: int,
                      accum: int) -> int:
    """How many updates the next call runs: `steps_per_execution`, but never past the
    epoch's end, the next log or checkpoint step, or into an update of fewer batches
    (the epoch's last), so logs and checkpoints fall on the same steps for any value."""
    k = min(settings.steps_per_execution, updates - pos.update_in_epoch)
    for every in (settings.log_every, settings.checkpoint_every):
        if every:
            k = min(k, every - pos.updates % every)
    full = (batches - pos.update_in_epoch * accum) // accum  # updates of `accum` batches
    return max(1, min(k, full)) if full else 1


def _running(pos: Position, metrics) -> list:
    return [("loss", pos.loss_sum / max(pos.loss_count, 1.0)),
            *((m.name, float(m.result())) for m in metrics)]


def _learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _stop(signum: int, pos: Position, folder: Path):
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    messages.log(f"{name}: checkpoint saved after update {pos.updates} (epoch "
                 f"{pos.epoch + 1}) in {folder / 'resume.npz'}; run the same command again to "
                 "resume from there")
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()




def _last_good(folder: Path, epochs_done: int) -> str:
    last = folder / "last.weights.h5"
    if not last.exists():
        return " No epoch finished, so there is no checkpoint to keep."
    return f" The weights after epoch {epochs_done} are kept in {last}."
