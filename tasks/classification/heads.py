"""Classification heads: KerasHub's TextClassifier where it exists, a last-token head for GPT-2."""

from __future__ import annotations

import keras

from tfsft.layers import LastTokenPooling, MaskedMeanPooling


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
    if hasattr(backbone, "pooled_dense"):
        backbone.pooled_dense.trainable = False  # BERT's [CLS] pooler is unused here
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
