"""The model of prompt -> response fine-tuning: KerasHub's GPT2CausalLM, reading packed
rows too.

A packed row holds several examples one after another, with `segment_ids` (1, 2, ... per
example, 0 for padding) and `position_ids` (restarting at 0 with each example). Attention
is blocked across examples (a token attends to earlier tokens of its own example only)
and every example sees the positions it would see alone, so the loss of a packed batch is
the loss of the same examples unpacked. Rows without `segment_ids` take GPT2CausalLM's
own path; generation (`generate_step`) is GPT2CausalLM's.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops


@keras.saving.register_keras_serializable(package="tfsft")
class PackedGPT2CausalLM(keras_hub.models.GPT2CausalLM):
    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or "segment_ids" not in inputs:
            return super().call(inputs, training=training)
        b = self.backbone
        segments = ops.cast(inputs["segment_ids"], "int32")
        x = b.token_embedding(inputs["token_ids"])
        table = ops.cast(b.position_embedding.position_embeddings, x.dtype)
        x = b.embeddings_add((x, ops.take(table, inputs["position_ids"], axis=0)))
        x = b.embeddings_dropout(x, training=training)
        same = ops.equal(segments[:, :, None], segments[:, None, :])
        mask = ops.logical_and(same, (segments > 0)[:, :, None])  # causality: the layers
        for layer in b.transformer_layers:
            x = layer(x, decoder_padding_mask=inputs["padding_mask"],
                      decoder_attention_mask=mask, training=training)
        x = b.layer_norm(x)
        return b.token_embedding(x, reverse=True)
