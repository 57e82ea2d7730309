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
