"""tfsft/causal_lm.py + seq2seq.pack: a packed batch trains exactly like the same examples
unpacked."""

from __future__ import annotations

import numpy as np
import pytest

from tfsft import bpe, seq2seq

TEXTS = ["Translate: a red cat", "die rote Katze", "a blue dog", "der blaue Hund",
         "a green bird sings", "ein gruener Vogel singt"] * 10
PAIRS = [("Translate: a red cat\n", "die rote Katze"),
         ("Translate: a blue dog\n", "der blaue Hund und die rote Katze"),
         ("Translate: a green bird sings\n", "ein gruener Vogel singt"),
         ("Translate: cat\n", "Katze"),
         ("Translate: a blue dog and a green bird\n", "der blaue Hund"),
         ("Translate: dog\n", "Hund")]


@pytest.fixture(scope="module")
def setup():
    import keras
    import keras_hub

    from tfsft.causal_lm import PackedGPT2CausalLM

    keras.utils.set_random_seed(5)
    vocab, merges = bpe.train(TEXTS, 300)
    tok = bpe.tokenizer(vocab, merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, dropout=0.0, max_sequence_length=64)
    model = PackedGPT2CausalLM(backbone)
    ex = seq2seq.Pairs([[(p, False), (r, True)] for p, r in PAIRS],
                       [f"d.tsv:{i}" for i in range(len(PAIRS))], [p for p, _ in PAIRS])
    enc = seq2seq.encode(tok, ex, 48)
    return model, enc


def loss_of(model, features, labels):
    import keras

    from tfsft import training

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    total, count = training.loss_terms(loss, labels, model(features, training=False))
    return float(total), float(count)


def test_packing_fills_rows_and_keeps_every_target(setup):
    _, enc = setup
    packed = seq2seq.pack(enc, 48)
    assert len(packed) < len(enc)
    assert packed.lengths.sum() == enc.lengths.sum() <= 48 * len(packed)
    assert (packed.labels >= 0).sum() == (enc.labels >= 0).sum()
    seg, pos = packed.features["segment_ids"], packed.features["position_ids"]
    for r in range(len(packed)):
        for s in range(1, seg[r].max() + 1):
            where = np.flatnonzero(seg[r] == s)
            assert pos[r, where].tolist() == list(range(len(where)))  # restart per example
            # the last token of an example predicts nothing (not the next example's start)
            assert packed.labels[r, where[-1]] == -1
    assert packed.notes["padding_share_packed"] < packed.notes["padding_share_unpacked"]


def test_the_loss_of_a_packed_batch_equals_the_loss_unpacked(setup):
    model, enc = setup
    packed = seq2seq.pack(enc, 48)
    plain_total, plain_count = loss_of(model, enc.features, enc.labels)
    packed_total, packed_count = loss_of(model, packed.features, packed.labels)
    assert packed_count == plain_count
    assert packed_total / packed_count == pytest.approx(plain_total / plain_count, abs=1e-5)
    # and token by token: each example's logits are those it gets alone
    alone = np.asarray(model(enc.features, training=False))
    together = np.asarray(model(packed.features, training=False))
    seg = packed.features["segment_ids"]
    order = sorted(range(len(enc)), key=lambda i: (-int(enc.lengths[i]), i))
    seen = 0
    for r in range(len(packed)):
        for s in range(1, seg[r].max() + 1):
            where = np.flatnonzero(seg[r] == s)
            match = [i for i in order if enc.lengths[i] == len(where) and np.array_equal(
                enc.features["token_ids"][i, :len(where)], packed.features["token_ids"][r, where])]
            assert match
            np.testing.assert_allclose(together[r, where], alone[match[0], :len(where)],
                                       atol=1e-5)
            seen += 1
    assert seen == len(enc)


def test_without_the_segment_mask_packing_would_leak_across_examples(setup):
    """The check above can fail: the same packed tokens read as one sequence (no segment
    mask, positions running on) give another loss."""
    model, enc = setup
    packed = seq2seq.pack(enc, 48)
    plain_total, plain_count = loss_of(model, enc.features, enc.labels)
    leaky = {k: packed.features[k] for k in ("token_ids", "padding_mask")}
    leak_total, leak_count = loss_of(model, leaky, packed.labels)
    assert abs(leak_total / leak_count - plain_total / plain_count) > 1e-3
