from __future__ import annotations

import numpy as np
import pytest

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
    opt = training.make_optimizer(1e-2, 10, 0.0, "constant", 0.5, 0.0, 1)
    opt.build(model.trainable_variables)
    decayed = {v.name: opt._use_weight_decay(v) for v in model.trainable_variables}
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False}


def test_gradient_accumulation_updates_every_k_batches():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    opt = training.make_optimizer(1e-1, 10, 0.0, "constant", 0.0, 0.0, 2)
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    w0 = model.get_weights()[0].copy()
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(model.get_weights()[0], w0)  # accumulated, not applied
    model.train_on_batch(x, y)
    assert not np.allclose(model.get_weights()[0], w0)


def test_clip_norm_zero_means_off():
    assert training.make_optimizer(1.0, 10, 0.0, "constant", 0.0, 0.0, 1).global_clipnorm is None
    assert training.make_optimizer(1.0, 10, 0.0, "constant", 0.0, 0.5, 1).global_clipnorm == 0.5


@pytest.mark.parametrize(("rows", "batch", "epochs", "max_steps", "accum", "expected"), [
    (100, 10, 3, 0, 1, (3, 10, 30)),
    (95, 10, 2, 0, 1, (2, 10, 20)),        # a partial last batch counts
    (100, 10, 3, 25, 1, (3, 10, 25)),      # stops inside the third epoch
    (100, 10, 0, 7, 1, (1, 10, 7)),        # epochs=0: max_steps alone decides
    (100, 10, 0, 7, 2, (2, 10, 14)),       # max_steps counts updates of 2 batches
    (100, 10, 1, 0, 2, (1, 10, 10)),
])
def test_plan(rows, batch, epochs, max_steps, accum, expected):
    p = training.plan(rows, batch, epochs, max_steps, accum)
    assert (p.epochs, p.batches_per_epoch, p.total_batches) == expected


def test_schedule_spans_all_batches_with_accumulation():
    """Keras' schedules count batches, also with gradient accumulation: the decay must
    reach zero at the last batch, not after 1/k of training."""
    import keras

    keras.utils.set_random_seed(0)
    p = training.plan(rows=40, batch_size=4, epochs=1, max_steps=0, grad_accum_steps=2)
    opt = training.make_optimizer(1e-2, p.total_batches, 0.0, "linear", 0.0, 0.0, 2)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    rates = []
    for _ in range(p.total_batches):
        rates.append(float(keras.ops.convert_to_numpy(opt.learning_rate)))
        model.train_on_batch(x, y)
    assert rates[p.total_batches // 2] == pytest.approx(5e-3)
    assert rates[-1] > 0 and int(keras.ops.convert_to_numpy(opt.iterations)) == 5


def test_nan_loss_stops_at_its_batch_and_keeps_the_last_good_epoch(tmp_path):
    import keras
    import tensorflow as tf

    from tfsft.errors import TrainingError

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    calls = {"n": 0}

    def batches():  # 4 batches an epoch; the 2nd batch of epoch 2 holds a NaN
        for _ in range(4):
            calls["n"] += 1
            x = np.ones((8, 2), "float32")
            if calls["n"] == 6:
                x[3, 1] = np.nan
            yield x, np.ones((8, 1), "float32")

    ds = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((8, 2), tf.float32), tf.TensorSpec((8, 1), tf.float32)))
    initial = model.weights[0].numpy().copy()
    with pytest.raises(TrainingError) as e:
        training.train(model, ds, None, plan=training.Plan(3, 4, 12), batch_size=8,
                       run_dir=tmp_path, monitor="loss", patience=0, keep_best=True,
                       verbose=0, advice="Lower it.")
    text = str(e.value)
    assert "the loss became nan at training batch 6 (epoch 2, batch 2). Lower it." in text
    assert f"after epoch 1 are kept in {tmp_path / 'checkpoints' / 'last.weights.h5'}" in text
    fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    fresh.load_weights(str(tmp_path / "checkpoints" / "last.weights.h5"))
    assert all(np.all(np.isfinite(w.numpy())) for w in fresh.weights)
    assert not np.allclose(fresh.weights[0].numpy(), initial)  # trained for one epoch
    assert np.all(np.isnan(model.weights[0].numpy()))  # what was not saved
