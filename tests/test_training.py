from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from tfsft import training


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_warmup_then_decay(kind):
    lr = training.WarmupDecay(1e-3, total_steps=100, warmup_steps=10, kind=kind)
    at = {s: float(lr(s)) for s in (0, 5, 10, 55, 100, 150)}
    assert at[0] == 0.0 and at[5] == pytest.approx(5e-4) and at[10] == pytest.approx(1e-3)
    if kind == "constant":
        assert at[100] == pytest.approx(1e-3)
    else:
        assert at[55] == pytest.approx(5e-4, rel=1e-5)  # halfway in both linear and cosine
        assert at[100] == pytest.approx(0.0, abs=1e-9) and at[150] == pytest.approx(0.0, abs=1e-9)
    assert training.WarmupDecay(**lr.get_config()).get_config() == lr.get_config()


def test_weight_decay_skips_bias_and_layernorm():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.LayerNormalization()])
    opt = training.make_optimizer(1e-2, 10, 0.0, "constant", 0.5)
    opt.build(model.trainable_variables)
    decayed = {v.name: opt._use_weight_decay(v) for v in model.trainable_variables}
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False}


@pytest.mark.parametrize("jit", [False, True])
def test_adamw_apply_matches_keras_apply(jit):
    # bit for bit the weights, moments and step count of Keras' AdamW.apply after five
    # updates (warmup and decay, decayed and exempt variables, a gradient of zeros), eager
    # or in the XLA-compiled update the training step runs (it reads Keras' private
    # optimizer state: this is the test that a Keras upgrade would break it)
    import keras
    import tensorflow as tf

    def run(apply):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.LayerNormalization()])
        opt = training.make_optimizer(1e-1, 4, 0.5, "linear", 0.3)
        opt.build(model.trainable_variables)
        assert training.plain_adamw(opt, model.trainable_variables)
        step = tf.function(lambda g: apply(opt, g, model.trainable_variables) or 0,
                           jit_compile=jit, autograph=False)
        rng = np.random.default_rng(0)
        for k in range(5):
            grads = [tf.constant(rng.normal(size=v.shape) * (k != 2), tf.float32)
                     for v in model.trainable_variables]
            step(grads)
        return [v.numpy() for v in model.trainable_variables + opt.variables]

    ours, keras_ = run(training.adamw_apply), run(type(keras.optimizers.AdamW()).apply)
    assert len(ours) == len(keras_) == 4 + 1 + 2 * 4  # weights, step count, m and v
    for a, b in zip(ours, keras_):
        np.testing.assert_array_equal(a, b)
    assert ours[4] == 5  # the step count
    assert not training.plain_adamw(keras.optimizers.AdamW(clipnorm=1.0), [])
    half = keras.Variable(1.0, dtype="bfloat16")
    assert not training.plain_adamw(keras.optimizers.AdamW(), [half])


@pytest.mark.parametrize(("rows", "batch", "epochs", "max_steps", "accum", "expected"), [
    (100, 10, 3, 0, 1, (3, 10, 10, 30)),
    (95, 10, 2, 0, 1, (2, 10, 10, 20)),        # a partial last batch counts
    (100, 10, 3, 25, 1, (3, 10, 10, 25)),      # stops inside the third epoch
    (100, 10, 0, 7, 1, (1, 10, 10, 7)),        # epochs=0: max_steps alone decides
    (100, 10, 0, 7, 2, (2, 10, 5, 7)),         # max_steps counts updates of 2 batches
    (100, 10, 1, 0, 2, (1, 10, 5, 5)),
    (90, 10, 2, 0, 2, (2, 9, 5, 10)),          # the epoch's last update has one batch
])
def test_plan(rows, batch, epochs, max_steps, accum, expected):
    p = training.plan(rows, batch, epochs, max_steps, accum)
    assert (p.epochs, p.batches_per_epoch, p.updates_per_epoch, p.total_updates) == expected


# --------------------------------------------------------------------------- the step


def _loss_cases():
    import keras

    from tfsft.layers import SparseSmoothedCrossentropy

    rng = np.random.default_rng(0)
    logits3 = rng.normal(size=(6, 3)).astype("float32")
    labels3 = np.array([0, 2, 1, 1, 0, 2])
    tags = np.array([[1, 0, -1, -1], [2, 2, 0, -1], [0, -1, -1, -1]])
    tag_logits = rng.normal(size=(3, 4, 3)).astype("float32")
    multi = rng.integers(0, 2, size=(6, 4)).astype("float32")
    return [
        ("sparse", keras.losses.SparseCategoricalCrossentropy(from_logits=True), labels3,
         logits3, 6),
        ("smoothed", SparseSmoothedCrossentropy(0.1), labels3, logits3, 6),
        ("binary", keras.losses.BinaryCrossentropy(from_logits=True), multi,
         rng.normal(size=(6, 4)).astype("float32"), 6),
        ("ner", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
         tags, tag_logits, 6),
    ]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_terms_sum_over_count_is_the_keras_loss(case, weighted):
    """sum / count of loss_terms equals what Keras reports for the batch, so splitting a
    batch over replicas or accumulation steps and adding up both gives the same loss."""
    name, loss, y, pred, _ = _loss_cases()[case]
    w = None
    if weighted:  # per row; per word for NER (what Keras accepts there)
        w = np.linspace(0.5, 2.0, y.size if name == "ner" else len(y)).astype("float32")
        w = w.reshape(y.shape) if name == "ner" else w
    s, c = training.loss_terms(loss, y, pred, w)
    expected = float(loss(y, pred, sample_weight=w))
    assert float(s) / float(c) == pytest.approx(expected, rel=1e-5), name
    if name == "ner":
        assert float(c) == 6  # only the words the model sees
    halves = [training.loss_terms(loss, y[i::2], pred[i::2], None if w is None else w[i::2])
              for i in (0, 1)]
    assert sum(float(h[0]) for h in halves) == pytest.approx(float(s), rel=1e-5)
    assert sum(float(h[1]) for h in halves) == pytest.approx(float(c))


def _train_tiny(tmp_path, batch, accum, clip, epochs=2, max_steps=0, per_call=1,
                validate=None, monitor="loss"):
    """A Dense model trained by the engine on 24 fixed rows; returns (weights, result).
    `validate(model)`: the validation function the loop calls (none when None)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    p = training.plan(24, batch, epochs, max_steps, accum)
    model.compile(optimizer=training.make_optimizer(0.05, p.total_updates, 0.0, "linear", 0.01))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def epoch_data(epoch):  # a fixed order per epoch, as the pipeline guarantees
        order = np.random.default_rng(epoch).permutation(24)
        return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch)

    result = training.train(
        model, epoch_data, None if validate is None else lambda: validate(model),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        strategy=tf.distribute.get_strategy(), plan=p,
        settings=training.Settings(batch_size=batch, grad_accum_steps=accum, clip_norm=clip,
                                   monitor=monitor, checkpoint_every=0,
                                   steps_per_execution=per_call),
        run_dir=tmp_path, verbose=0)
    return [w.numpy() for w in model.weights], result


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_accumulating_two_batches_equals_one_batch_of_both(tmp_path, clip):
    """An update from 2 accumulated batches of 4 rows is the update of one batch of 8: same
    loss normalisation, and clipping applies to the update's whole gradient."""
    big, r1 = _train_tiny(tmp_path / "a", batch=8, accum=1, clip=clip)
    acc, r2 = _train_tiny(tmp_path / "b", batch=4, accum=2, clip=clip)
    assert r1.steps == r2.steps == 6
    for a, b in zip(big, acc):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r2.history],
                                                             rel=1e-5)
    plain, _ = _train_tiny(tmp_path / "c", batch=8, accum=1, clip=0.0)
    if clip:  # the clip did something
        assert not np.allclose(plain[0], big[0], atol=1e-4)


@pytest.mark.parametrize("accum", [1, 2])
def test_steps_per_execution_runs_the_same_updates(tmp_path, accum):
    """k updates per call (a loop in the graph) train exactly like one update per call,
    also when an epoch does not divide into k (24 rows / 4 = 6 batches; k = 4)."""
    one, r1 = _train_tiny(tmp_path / "a", batch=4, accum=accum, clip=0.05, epochs=3)
    many, r4 = _train_tiny(tmp_path / "b", batch=4, accum=accum, clip=0.05, epochs=3,
                           per_call=4)
    assert r1.steps == r4.steps == 18 // accum
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r4.history],
                                                             rel=1e-6)


@pytest.mark.parametrize(("scores", "best", "restored"), [
    ([0.5, 0.4, 0.3], 3, False), ([0.5, 0.3, 0.4], 2, True)])
def test_a_validation_function_is_called_at_each_epoch_end(tmp_path, scores, best, restored):
    """`val_data` as a function: called once per epoch with the epoch's final weights, its
    scores logged as val_*, monitored for the best epoch; `restored_best` says whether the
    model then holds an earlier epoch's weights than the last validated."""
    x = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)
    seen = []

    def validate(model):
        seen.append(model(x).numpy())
        return {"loss": scores[len(seen) - 1], "accuracy": 0.5}

    weights, result = _train_tiny(tmp_path, batch=8, accum=1, clip=0.0, epochs=3,
                                  validate=validate, monitor="val_loss")
    assert [h["val_loss"] for h in result.history] == scores
    assert [h["val_accuracy"] for h in result.history] == [0.5] * 3
    assert len(seen) == 3 and not np.allclose(seen[1], seen[2])  # trained in between
    assert result.best_epoch == best and result.restored_best is restored
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    model.set_weights(weights)
    np.testing.assert_allclose(model(x).numpy(), seen[best - 1], atol=1e-6)


def test_schedule_spans_all_updates_with_accumulation(tmp_path):
    """The learning-rate schedule counts optimizer updates: with accumulation it still
    decays to zero at the last update, not after 1/k of training."""
    _, result = _train_tiny(tmp_path, batch=4, accum=2, clip=0.0, epochs=2)
    assert result.steps == 6
    assert result.history[0]["learning_rate"] == pytest.approx(0.05 * 3 / 6, rel=1e-5)
    assert result.history[1]["learning_rate"] == pytest.approx(0.0, abs=1e-9)


def test_max_steps_stops_inside_an_epoch(tmp_path):
    _, result = _train_tiny(tmp_path, batch=4, accum=1, clip=0.0, epochs=0, max_steps=8)
    assert result.steps == 8 and len(result.history) == 2  # 6 updates, then 2 of epoch 2
    # kept until the model is saved (a failed save resumes from them), then discarded
    assert (tmp_path / "checkpoints" / "resume.npz").is_file()
    training.discard_checkpoints(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_nan_loss_stops_at_its_batch_and_keeps_the_last_good_epoch(tmp_path):
    import keras
    import tensorflow as tf

    from tfsft.errors import TrainingError

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01))

    def epoch_data(epoch):  # 4 batches an epoch; the 2nd batch of epoch 2 holds a NaN
        x = np.ones((32, 2), "float32")
        if epoch == 1:
            x[11, 1] = np.nan
        return tf.data.Dataset.from_tensor_slices((x, np.ones((32, 1), "float32"))).batch(8)

    initial = model.weights[0].numpy().copy()
    with pytest.raises(TrainingError) as e:
        training.train(model, epoch_data, None, loss=keras.losses.MeanSquaredError(),
                       metrics=list, strategy=tf.distribute.get_strategy(),
                       plan=training.Plan(3, 4, 4, 12),
                       settings=training.Settings(batch_size=8, monitor="loss"),
                       run_dir=tmp_path, verbose=0, advice="Lower it.")
    text = str(e.value)
    assert "the loss became nan at training batch 6 (epoch 2, batch 2). Lower it." in text
    assert f"after epoch 1 are kept in {tmp_path / 'checkpoints' / 'last.weights.h5'}" in text
    fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    fresh.load_weights(str(tmp_path / "checkpoints" / "last.weights.h5"))
    assert all(np.all(np.isfinite(w.numpy())) for w in fresh.weights)
    assert not np.allclose(fresh.weights[0].numpy(), initial)  # trained for one epoch
    assert np.all(np.isnan(model.weights[0].numpy()))  # what was not saved


# --------------------------------------------------------------------------- resume (CLI)


def _resume_cmd(backbone, toy_data, out):
    train, dev = toy_data
    return [sys.executable, "-m", "tfsft", "fit", "tasks/sentiment", f"model.backbone={backbone}",
            f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
            "train.epochs=4", "train.global_batch_size=4", "train.learning_rate=1e-2",
            "model.dropout=0.1", "train.deterministic=true", "train.checkpoint_every=3",
            "--output", str(out), "--quiet"]


def _run(cmd):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _checkpoint_position(path):
    from tfsft import checkpoints

    return checkpoints.load_state(path)[1]["position"]


def _stop_mid_epoch(proc, resume_file, sig, min_updates=5):
    """Freeze the process (SIGSTOP) whenever a checkpoint is on disk, and send `sig` once
    that checkpoint is inside an epoch, after `min_updates` updates."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if resume_file.exists():
            proc.send_signal(signal.SIGSTOP)
            try:
                pos = _checkpoint_position(resume_file)
            except Exception:  # noqa: BLE001 -- caught between writes; look again
                pos = None
            if pos and pos["update_in_epoch"] > 0 and pos["updates"] >= min_updates:
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)
                return pos
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint within 300 s")


def _interrupt(cmd, out, sig, min_updates=5):
    """Run `cmd` and send it `sig` once a mid-epoch checkpoint exists; returns (position
    of that checkpoint, the process's stderr, its exit code)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        pos = _stop_mid_epoch(proc, out / "checkpoints" / "resume.npz", sig, min_updates)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return pos, err, proc.returncode


def _event_steps(run, writer, tag):
    import tensorflow as tf

    steps = {}
    for path in sorted((run / "tensorboard" / writer).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == tag:
                    steps.setdefault(event.step, []).append(
                        float(tf.make_ndarray(v.tensor)))
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, tmp_path_factory, request):
    toy = request.getfixturevalue("toy_data_module")
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    r = _run(_resume_cmd(tiny_bert, toy, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, toy


@pytest.fixture(scope="module")
def toy_data_module(tmp_path_factory):
    from conftest import write_sentiment_tsv

    folder = tmp_path_factory.mktemp("toy")
    return (write_sentiment_tsv(folder / "train.tsv", 64, 1),
            write_sentiment_tsv(folder / "dev.tsv", 24, 2))


def _assert_same_run(a, b):
    from test_distribute import run_weights

    wa, wb = run_weights(a), run_weights(b)
    assert wa.keys() == wb.keys()
    assert max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa) == 0.0  # bit-identical
    ha, hb = ([json.loads(x) for x in (r / "history.jsonl").read_text().splitlines()]
              for r in (a, b))
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    assert [{k: h[k] for k in keys} for h in ha] == [{k: h[k] for k in keys} for h in hb]
    for writer, tag, expected in [("train", "batch_loss", list(range(10, 65, 10))),
                                  ("train", "epoch_loss", [1, 2, 3, 4]),
                                  ("validation", "epoch_accuracy", [1, 2, 3, 4])]:
        sa, sb = _event_steps(a, writer, tag), _event_steps(b, writer, tag)
        assert sorted(sb) == expected, (tag, sorted(sb))  # no step missing
        assert all(len(v) == 1 for v in sb.values()), tag  # and none written twice
        assert sb == sa, tag


def test_sigkill_mid_epoch_then_the_same_command_resumes_exactly(tiny_bert, uninterrupted,
                                                                 tmp_path):
    reference, toy = uninterrupted
    out = tmp_path / "run"
    cmd = _resume_cmd(tiny_bert, toy, out)
    pos, _, code = _interrupt(cmd, out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "model").exists()
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(resuming it)" in again.stderr
    resumed_at = re.search(r"resuming from .*: update (\d+) of 64 \(epoch (\d+), update (\d+)",
                           again.stderr)
    assert resumed_at and int(resumed_at[1]) >= pos["updates"] and int(resumed_at[3]) > 0
    _assert_same_run(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed"]) == 1
    assert not (out / "checkpoints").exists()


def test_sigterm_saves_a_checkpoint_before_exit(tiny_bert, uninterrupted, tmp_path):
    reference, toy = uninterrupted
    out = tmp_path / "run"
    cmd = _resume_cmd(tiny_bert, toy, out)
    _, err, code = _interrupt(cmd, out, signal.SIGTERM)
    assert code == 130, err[-3000:]
    said = re.search(r"SIGTERM: checkpoint saved after update (\d+)", err)
    assert said, err[-3000:]
    # the checkpoint on disk is the one written at SIGTERM, not an earlier periodic one
    assert _checkpoint_position(out / "checkpoints" / "resume.npz")["updates"] == int(said[1])
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"update {said[1]} of 64" in again.stderr
    _assert_same_run(reference, out)


def test_resume_refuses_a_changed_config(tiny_bert, uninterrupted, tmp_path):
    _, toy = uninterrupted
    out = tmp_path / "run"
    cmd = _resume_cmd(tiny_bert, toy, out)
    _interrupt(cmd, out, signal.SIGKILL, min_updates=1)
    before = (out / "checkpoints" / "resume.npz").read_bytes()
    r = _run([*cmd, "train.learning_rate=0.5"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert "holds an unfinished run with a resume checkpoint, but its config differs" in r.stderr
    assert "learning_rate: 0.5" in r.stderr and "--overwrite" in r.stderr
    assert (out / "checkpoints" / "resume.npz").read_bytes() == before  # nothing lost
