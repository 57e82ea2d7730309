"""The fused GELU and LayerNorm equal Keras' own, forward and backward, and a backbone
using them computes what the unchanged backbone computes."""

from __future__ import annotations

import numpy as np

from tfsft import backbones, fused


def test_fused_gelu_equals_keras_approximate_gelu_and_its_gradient():
    import keras
    import tensorflow as tf

    x = tf.constant(np.linspace(-8, 8, 4001, dtype=np.float32).reshape(1, -1))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = fused.gelu(x)
        theirs = keras.activations.gelu(x, approximate=True)
        ours_sum, theirs_sum = tf.reduce_sum(ours * x), tf.reduce_sum(theirs * x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-6)
    np.testing.assert_allclose(tape.gradient(ours_sum, x).numpy(),
                               tape.gradient(theirs_sum, x).numpy(), atol=2e-5)
    # and the check can fail: exact (erf) GELU differs from the approximation
    exact = keras.activations.gelu(x, approximate=False)
    assert np.abs(exact.numpy() - ours.numpy()).max() > 1e-4


def test_fused_layer_norm_equals_keras_layer_norm_and_its_gradients():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, size=(4, 5, 24)).astype(np.float32))
    weight = tf.constant(rng.normal(size=(4, 5, 24)).astype(np.float32))
    plain = keras.layers.LayerNormalization(epsilon=1e-12)
    plain.build(x.shape)
    plain.gamma.assign(rng.normal(1.0, 0.3, size=24).astype(np.float32))
    plain.beta.assign(rng.normal(0.0, 0.3, size=24).astype(np.float32))
    ours = fused.layer_norm_class()(epsilon=1e-12)
    ours.build(x.shape)
    ours.set_weights(plain.get_weights())
    results = []
    for layer in (plain, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * weight)
        results.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    for theirs, mine in zip(*results):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=2e-5, rtol=1e-5)
    assert np.abs(results[1][1].numpy()).max() > 1e-2  # a gradient that could be wrong


def test_backbone_with_the_fused_layers_computes_the_same(tiny_bert):
    import keras_hub

    backbone, pre = backbones.load(str(tiny_bert), 16)  # load() fuses
    plain = keras_hub.models.Backbone.from_preset(str(tiny_bert))
    assert all(layer._feedforward_intermediate_dense.activation is fused.gelu
               for layer in backbone.transformer_layers)
    norms = [x for x in backbone._flatten_layers() if "layer_norm" in x.name]
    assert norms and all(type(x) is fused.layer_norm_class() for x in norms)
    assert fused.use_fused_gelu(plain) == len(plain.transformer_layers) > 0
    plain = keras_hub.models.Backbone.from_preset(str(tiny_bert))
    x = pre(["the film was good", "bad"])
    np.testing.assert_allclose(backbone(x)["sequence_output"].numpy(),
                               plain(x)["sequence_output"].numpy(), atol=1e-5)
