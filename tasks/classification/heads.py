"""Classification heads: KerasHub's TextClassifier where it exists, a last-token head for GPT-2."""

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


def _text_classifier_class(backbone):
    """KerasHub's TextClassifier subclass for this backbone class, or None."""
    import keras_hub

    todo = list(keras_hub.models.TextClassifier.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if getattr(cls, "backbone_cls", None) is type(backbone):
            return cls
    return None


def build(backbone, num_outputs: int, dropout: float, pooling: str = "auto") -> keras.Model:
    """Logits [batch, num_outputs] from the backbone's int32 feature dict.

    pooling: `cls` wraps KerasHub's own TextClassifier for the backbone (pooled [CLS]);
    `mean` averages the non-padding outputs; `last` takes the last non-padding token
    (decoder-only models); `auto` is `cls` where KerasHub has a classifier, else `last`.
    """
    from tfsft.errors import ConfigError

    cls = _text_classifier_class(backbone)
    if pooling == "auto":
        pooling = "cls" if cls is not None else "last"
    if pooling == "cls":
        if cls is None:
            raise ConfigError(f"`task.pooling` 'cls' needs a backbone with a KerasHub "
                              f"TextClassifier; {type(backbone).__name__} has none: use "
                              "'last' or 'mean'")
        return cls(backbone=backbone, num_classes=num_outputs, preprocessor=None,
                   activation=None, dropout=dropout)
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in backbone.input}
    sequence = backbone(inputs)
    if isinstance(sequence, dict):
        sequence = sequence["sequence_output"]
    pool = LastTokenPooling(name="last_token") if pooling == "last" else MaskedMeanPooling(
        name="mean_pool")
    pooled = pool(sequence, inputs["padding_mask"])
    pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    logits = keras.layers.Dense(num_outputs, name="logits")(pooled)
    return keras.Model(inputs, logits, name=f"{backbone.name}_{pooling}_classifier")
