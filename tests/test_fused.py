"""The fused GELU equals KerasHub's tanh-approximate GELU, forward and backward, and a
backbone using it computes what the unchanged backbone computes."""

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


def test_backbone_with_the_fused_gelu_computes_the_same(tiny_bert):
    import keras_hub

    backbone, pre = backbones.load(str(tiny_bert), 16)  # load() fuses
    plain = keras_hub.models.Backbone.from_preset(str(tiny_bert))
    assert all(layer._feedforward_intermediate_dense.activation is fused.gelu
               for layer in backbone.transformer_layers)
    assert fused.use_fused_gelu(plain) == len(plain.transformer_layers) > 0
    plain = keras_hub.models.Backbone.from_preset(str(tiny_bert))
    x = pre(["the film was good", "bad"])
    np.testing.assert_allclose(backbone(x)["sequence_output"].numpy(),
                               plain(x)["sequence_output"].numpy(), atol=1e-5)
