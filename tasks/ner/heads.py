"""The NER head: dropout + dense over each word's first sub-token, and word accuracy."""

from __future__ import annotations

import keras

from tfsft.layers import UnseenWordsOutside, WordStartPooling


def build(backbone, num_outputs: int, dropout: float) -> keras.Model:
    """Logits [batch, words, tags] from the int32 features plus `word_starts`."""
    if hasattr(backbone, "pooled_dense"):
        backbone.pooled_dense.trainable = False  # BERT's [CLS] pooler is unused here
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in backbone.input}
    inputs["word_starts"] = keras.Input(shape=(None,), dtype="int32", name="word_starts")
    sequence = backbone({k: v for k, v in inputs.items() if k != "word_starts"})
    if isinstance(sequence, dict):
        sequence = sequence["sequence_output"]
    words = WordStartPooling(name="word_start")(sequence, inputs["word_starts"])
    words = keras.layers.Dropout(dropout, name="head_dropout")(words)
    logits = keras.layers.Dense(num_outputs, name="tag_logits")(words)
    logits = UnseenWordsOutside(name="unseen_words_outside")(logits, inputs["word_starts"])
    return keras.Model(inputs, logits, name=f"{backbone.name}_token_classifier")


class WordAccuracy(keras.metrics.Mean):
    """Share of words whose highest-scoring tag is right; targets -1 (padding, words the
    model cannot see) are left out."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.cast(y_true, "int32")
        valid = keras.ops.cast(y_true >= 0, "float32")
        right = keras.ops.cast(
            keras.ops.equal(keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32"), y_true),
            "float32")
        return super().update_state(right, sample_weight=valid)
