"""Fewer passes for the elementwise work of KerasHub transformer layers on CPUs.

TensorFlow runs a layer's elementwise math op by op, and on a CPU each op is a pass over
memory. KerasHub's tanh-approximate GELU is about a dozen passes over the [tokens, 4 x
hidden] activations forward and backward, as costly as the matmul in front of it; Keras'
LayerNormalization differentiates through its moments op by op. `gelu` is the same
function in one XLA-compiled kernel with a hand-written gradient; `layer_norm` has a
hand-written gradient (three row reductions). docs/performance.md has the before/after.
Only how the layers compute changes; their configs, weights and saved presets do not.
"""

from __future__ import annotations

import math

_C = 2.0 * math.sqrt(2.0 / math.pi)
_A = 0.044715
_gelu = None
_LayerNorm = None


def _make_gelu():
    import tensorflow as tf

    def sig(x):
        # 0.5 x (1 + tanh(c (x + a x^3))) == x sigmoid(2c (x + a x^3))
        return tf.sigmoid(_C * x * (1.0 + _A * x * x))

    @tf.custom_gradient
    def gelu(x):
        def grad(dy):
            s = sig(x)  # recomputed: the backward pass keeps x only (docs/performance.md)
            return dy * (s + x * s * (1.0 - s) * (_C * (1.0 + 3.0 * _A * x * x)))

        return x * sig(x), grad

    return tf.function(gelu, jit_compile=True, autograph=False)


def gelu(x):
    """Tanh-approximate GELU (as `keras.activations.gelu(x, approximate=True)`), fused."""
    global _gelu
    if _gelu is None:
        _gelu = _make_gelu()
    return _gelu(x)


def _layer_norm(x, gamma, beta, epsilon: float):
    import tensorflow as tf

    @tf.custom_gradient
    def norm(x, gamma, beta):
        mean = tf.reduce_mean(x, -1, keepdims=True)
        centred = x - mean
        inv = tf.math.rsqrt(tf.reduce_mean(centred * centred, -1, keepdims=True) + epsilon)
        xhat = centred * inv

        def grad(dy):
            g = dy * gamma
            dx = inv * (g - tf.reduce_mean(g, -1, keepdims=True)
                        - xhat * tf.reduce_mean(g * xhat, -1, keepdims=True))
            rows = list(range(len(x.shape) - 1))
            return dx, tf.reduce_sum(dy * xhat, rows), tf.reduce_sum(dy, rows)

        return xhat * gamma + beta, grad

    return norm(x, gamma, beta)


def layer_norm_class():
    """A `keras.layers.LayerNormalization` whose call has the hand-written gradient (last
    axis, centre and scale, float32 math as Keras does)."""
    global _LayerNorm
    if _LayerNorm is None:
        import keras
        import tensorflow as tf

        # the same class name: Keras' weight files name a layer's group after its class
        class LayerNormalization(keras.layers.LayerNormalization):
            def call(self, inputs):
                x = tf.cast(inputs, tf.float32)
                out = _layer_norm(x, tf.cast(self.gamma.value, tf.float32),
                                  tf.cast(self.beta.value, tf.float32), self.epsilon)
                return tf.cast(out, self.compute_dtype)

        _LayerNorm = LayerNormalization
    return _LayerNorm


def use_fused_layer_norm(backbone) -> int:
    """Give the backbone's LayerNormalization layers over the last axis (with centre and
    scale, no RMS scaling) the hand-written gradient; returns how many changed."""
    import keras

    fused_class = layer_norm_class()
    changed = 0
    for layer in backbone._flatten_layers(include_self=False):
        if type(layer) is not keras.layers.LayerNormalization:  # nor fused already
            continue
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if list(axis) == [-1] and layer.center and layer.scale and not layer.rms_scaling:
            layer.__class__ = fused_class
            changed += 1
    return changed


def use_fused_gelu(backbone) -> int:
    """Point the feedforward Dense layers of `backbone` that use KerasHub's approximate GELU
    at the fused one; returns how many were changed (0 for other activations)."""
    from keras_hub.src.utils.keras_utils import gelu_approximate

    changed = 0
    for layer in getattr(backbone, "transformer_layers", []):
        dense = getattr(layer, "_feedforward_intermediate_dense", None)
        if dense is not None and getattr(dense, "activation", None) is gelu_approximate:
            dense.activation = gelu
            changed += 1
    return changed
