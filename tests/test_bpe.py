"""tfsft/bpe.py: a byte-level BPE vocabulary that KerasHub's GPT2Tokenizer reads."""

from __future__ import annotations

from tfsft import bpe

TEXTS = ["the translation of the text", "translation is a text task",
         "ein Hund rennt über die Straße", "the the the translation"] * 20


def test_pad_is_id_0_and_the_end_token_is_not():
    vocab, _ = bpe.train(TEXTS, 300)
    tok = bpe.tokenizer(vocab, _)
    assert vocab[bpe.PAD] == 0 == tok.pad_token_id
    assert tok.end_token_id == vocab[bpe.END] != 0
    assert len(vocab) <= 300


def test_any_text_round_trips(tmp_path):
    vocab, merges = bpe.train(TEXTS, 300)
    tok = bpe.tokenizer(vocab, merges)
    texts = ["Größe 😀 naïve\tcafé", "unseen words: zebra quokka!", "  two  spaces ",
             "line\nbreak", "a <|endoftext|> literal"]
    ids = tok(texts)
    assert tok.detokenize(ids) == texts
    assert vocab[bpe.END] in ids[4]  # the special token stays whole
    bpe.write(vocab, merges, tmp_path)  # and the written files load back the same
    import keras_hub

    again = keras_hub.models.GPT2Tokenizer(vocabulary=str(tmp_path / "vocabulary.json"),
                                           merges=str(tmp_path / "merges.txt"),
                                           unsplittable_tokens=list(bpe.SPECIAL))
    assert again(texts) == ids


def test_frequent_words_become_single_tokens_and_training_is_deterministic():
    vocab, merges = bpe.train(TEXTS, 320)
    tok = bpe.tokenizer(vocab, merges)
    assert len(tok(" translation")) == 1 and len(tok(" the")) == 1
    assert len(tok(" quokka")) == len(" quokka".encode())  # unseen: bytes
    assert bpe.train(TEXTS, 320) == (vocab, merges)
    assert merges[0] in {"t h", "Ġ t"}  # the most frequent pair is merged first
