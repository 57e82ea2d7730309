"""tfsft/generation.py: every decoding stops at the end token and keeps input order."""

from __future__ import annotations

import numpy as np
import pytest

from tfsft import generation


def rigged_lm(winner: int, vocab: int = 40):
    """A tiny GPT2CausalLM whose next token is always `winner`: the final LayerNorm
    outputs a constant (gamma 0) equal to `winner`'s embedding, which has the largest norm,
    so the tied output layer ranks `winner` first everywhere."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout=0.0, max_sequence_length=64)
    emb = np.random.default_rng(0).normal(size=(vocab, 16)).astype("float32") * 0.1
    emb[winner] = np.linspace(1.0, 2.0, 16)
    backbone.token_embedding.embeddings.assign(emb)
    norm = backbone.layer_norm
    norm.gamma.assign(np.zeros(16, "float32"))
    norm.beta.assign(emb[winner])
    return keras_hub.models.GPT2CausalLM(backbone)


ROWS = [[1, 5, 6, 7], [1, 8], [1, 9, 10, 11, 12, 13, 14, 15], [1, 20, 21]]


@pytest.mark.parametrize("decoding", generation.DECODINGS)
def test_generation_stops_at_the_end_token(decoding):
    end = 3
    model = rigged_lm(winner=end)
    options = generation.Options(decoding=decoding, max_new_tokens=10, top_k=5,
                                 jit_compile=False)
    out = generation.generate(model, ROWS, end, options, batch_size=2)
    assert out == [[], [], [], []]  # the end token first: nothing generated, nothing after


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_without_the_end_token_generation_runs_to_max_new_tokens(decoding):
    model = rigged_lm(winner=7)
    options = generation.Options(decoding=decoding, max_new_tokens=6, jit_compile=False)
    out = generation.generate(model, ROWS, end_id=3, options=options, batch_size=3)
    assert out == [[7] * 6] * 4  # in input order, whatever the length-sorted batches were


def test_xla_compiled_generation_gives_the_same_tokens():
    model = rigged_lm(winner=11)
    plain = generation.generate(model, ROWS, 3, generation.Options(max_new_tokens=5,
                                                                  jit_compile=False))
    xla = generation.generate(model, ROWS, 3, generation.Options(max_new_tokens=5,
                                                                jit_compile=True))
    assert plain == xla == [[11] * 5] * 4


def test_unknown_decoding_is_refused():
    with pytest.raises(ValueError, match="greedy, beam, top_k, top_p"):
        generation.sampler(generation.Options(decoding="nucleus"))
