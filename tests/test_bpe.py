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


def _new_gpt2():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("new_gpt2", REPO / "tools" / "new_gpt2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_gpt2_makes_a_preset_and_refuses_bad_arguments(tmp_path, capsys):
    import keras_hub

    tool = _new_gpt2()
    data = tmp_path / "pairs.tsv"
    data.write_text("source\ttarget\n" + "".join(f"the dog {i}\tder hund {i}\n"
                                                   for i in range(20)))
    small = ["--layers", "1", "--hidden", "16", "--heads", "2", "--max-length", "32"]
    for args, said in [
            ([str(data), "--fields", "source,traget"], "has no field 'traget'"),
            ([str(tmp_path / "missing.tsv")], "file not found"),
            ([str(data), "--vocab-size", "10"], "--vocab-size 10: vocab_size must be at least"),
            ([str(data), "--heads", "0"], "--heads 0 must be >= 1")]:
        assert tool.main([*small, *args, "--out", str(tmp_path / "bad")]) == 2, args
        assert said in capsys.readouterr().err and not (tmp_path / "bad").exists()
    out = tmp_path / "preset"
    assert tool.main([str(data), "--vocab-size", "300", *small, "--out", str(out)]) == 0
    assert "data.max_length=32" in capsys.readouterr().err
    backbone = keras_hub.models.Backbone.from_preset(str(out))
    assert backbone.num_layers == 1 and backbone.hidden_dim == 16
