"""workflow.predict_logits batches rows by length and returns them in input order."""

from __future__ import annotations

import numpy as np

from tfsft import backbones, pipeline, workflow


def test_predictions_come_back_in_input_order(tiny_bert):
    import keras

    backbone, pre = backbones.load(str(tiny_bert), 16)
    texts = ["good", "the film was good and nice", "bad", "a b c d e f g h i j k", "ok",
             "the food was lovely", "nice"]
    enc = pipeline.encode(pre, texts)
    # the [CLS] summary: the same whatever padding follows a row
    model = keras.Model(backbone.input, backbone.output["pooled_output"])
    got = workflow.predict_logits(model, enc, batch_size=3)
    for i in range(len(texts)):  # each row alone, trimmed to its own length
        n = int(enc.lengths[i])
        one = {k: v[i:i + 1, :n] for k, v in enc.features.items()}
        np.testing.assert_allclose(got[i], model(one, training=False).numpy()[0], atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in got}) == len(texts)  # rows differ
