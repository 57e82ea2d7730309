"""Keras objects tfsft heads use, registered as `tfsft>Name` so saved `.keras` files load.

Load an exported GPT-2 or mean/last-pooling model with:
    import keras, keras_hub, tfsft.layers
    model = keras.saving.load_model("export/model.keras", safe_mode=True)
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfsft")
class LastTokenPooling(keras.layers.Layer):
    """Pick each row's last non-padding position from a [batch, time, hidden] sequence.

    A decoder-only model (GPT-2) has seen the whole text only at its last real token, so
    that position summarises the text. Padding must be on the right (KerasHub's packers
    pad right).

    Example:
    >>> seq = keras.ops.reshape(keras.ops.arange(12, dtype="float32"), (2, 3, 2))
    >>> LastTokenPooling()(seq, keras.ops.convert_to_tensor([[1, 1, 0], [1, 1, 1]]))
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.cast(padding_mask, "int32")
        last = keras.ops.maximum(keras.ops.sum(mask, axis=1) - 1, 0)
        index = keras.ops.reshape(last, (-1, 1, 1))
        picked = keras.ops.take_along_axis(sequence, index, axis=1)
        return keras.ops.squeeze(picked, axis=1)


@keras.saving.register_keras_serializable(package="tfsft")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of a [batch, time, hidden] sequence over its non-padding positions.

    Sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained with this
    pooling, so it is the natural summary of their outputs.
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.expand_dims(keras.ops.cast(padding_mask, sequence.dtype), -1)
        total = keras.ops.sum(sequence * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="tfsft")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy from logits with label smoothing, on integer labels."""

    def __init__(self, label_smoothing: float = 0.0, name="sparse_smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"),
                              keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(
            y, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tfsft")
class WordStartPooling(keras.layers.Layer):
    """Each word's vector: the [batch, time, hidden] sequence at the word's first sub-token
    position (`word_starts`, [batch, words] int32; 0 for words without one, whose output
    the task then ignores).

    Example:
    >>> seq = keras.ops.reshape(keras.ops.arange(12, dtype="float32"), (1, 6, 2))
    >>> WordStartPooling()(seq, keras.ops.convert_to_tensor([[1, 3, 0]])).shape
    (1, 3, 2)
    """

    def call(self, sequence, word_starts):
        index = keras.ops.expand_dims(keras.ops.cast(word_starts, "int32"), -1)
        index = keras.ops.minimum(index, keras.ops.shape(sequence)[1] - 1)
        index = keras.ops.broadcast_to(
            index, (keras.ops.shape(index)[0], keras.ops.shape(index)[1],
                    keras.ops.shape(sequence)[2]))
        return keras.ops.take_along_axis(sequence, index, axis=1)

    def compute_output_shape(self, sequence_shape, word_starts_shape):
        return (sequence_shape[0], word_starts_shape[1], sequence_shape[2])


@keras.saving.register_keras_serializable(package="tfsft")
class UnseenWordsOutside(keras.layers.Layer):
    """Tag logits [batch, words, tags] with words that have no sub-token position
    (`word_starts` 0: no pieces, cut off, or padding) fixed to the outside tag (index 0),
    so predictions never guess at words the model did not see (no gradient flows there)."""

    def call(self, logits, word_starts):
        seen = keras.ops.expand_dims(keras.ops.cast(word_starts, "int32") > 0, -1)
        outside = keras.ops.one_hot(keras.ops.zeros_like(word_starts, dtype="int32"),
                                    keras.ops.shape(logits)[-1], dtype=logits.dtype) * 30.0
        return keras.ops.where(seen, logits, outside)
