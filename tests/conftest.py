"""Shared fixtures: tiny BERT and GPT-2 presets built from arguments, small data files."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from tfsft import quiet

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
quiet.use_onednn_by_default()  # as every tfsft command has it, before any test imports TF

# No kernel cache (tfsft/xla_cache.py) in the user's home: every test process compiles as
# before (a shared cache did not make the suite faster: 609 against 576 s); the cache's
# own tests give it a folder of theirs.
os.environ.setdefault("TFSFT_XLA_CACHE", "off")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "nice", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "nasty", "weak"]
FILLER = ["the", "film", "was", "very", "food", "and", "really", "a", "show", "it"]


MAX_WORKERS = 4  # each worker holds TensorFlow (~1 GB) and starts CLI subprocesses


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` (pyproject.toml): one worker per core, at most MAX_WORKERS. Most of the
    suite's time is single-threaded Python (imports, tracing, subprocess start-up), so 2
    workers on 2 cores take ~0.6x the time. None hands PYTEST_XDIST_AUTO_NUM_WORKERS to
    xdist's own hook, which reads and checks it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    yield
    if "tensorflow" in sys.modules:  # a run in this process may have turned it on
        from tfsft import precision

        precision.use_graph_pass("float32")


def _bert_vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER


def build_tiny_bert(folder: Path, dropout: float = 0.1) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(1234)  # the same random "pretrained" weights every time
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=_bert_vocab(), lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(_bert_vocab()), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64, dropout=dropout)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer,
                                                                   sequence_length=32)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return folder


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet: every byte has a token, so any text encodes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): i for i, c in enumerate(cs)}
    return vocab


def _words_bpe(vocab: dict[str, int], words: list[str]) -> list[str]:
    """Left-to-right merges that build each word; every intermediate joins the vocab."""
    merges = []
    for word in words:
        piece = word[0]
        for ch in word[1:]:
            rule = f"{piece} {ch}"
            piece += ch
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(piece, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return merges


def build_tiny_gpt2(folder: Path) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(1234)
    vocab = _byte_vocab()
    merges = _words_bpe(vocab, ["Ġgood", "Ġbad", "Ġgreat", "Ġawful", "Ġthe"])
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64)
    backbone.save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


def write_sentiment_tsv(path: Path, rows: int, seed: int) -> Path:
    """Learnable toy data: the label follows the sentiment words in the sentence."""
    rng = random.Random(seed)
    lines = ["text\tlabel"]
    for i in range(rows):
        label = "positive" if i % 2 == 0 else "negative"
        words = POSITIVE if label == "positive" else NEGATIVE
        sentence = rng.sample(FILLER, 3) + [rng.choice(words)] + rng.sample(FILLER, 2)
        rng.shuffle(sentence)
        lines.append(f"{' '.join(sentence)}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def toy_data(tmp_path) -> tuple[Path, Path]:
    return (write_sentiment_tsv(tmp_path / "train.tsv", 64, 1),
            write_sentiment_tsv(tmp_path / "dev.tsv", 24, 2))


def shared_data(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {path}: ../shared/data is not beside this checkout")
    return path


COLOURS = {"red": "rot", "blue": "blau", "green": "gruen", "black": "schwarz"}
ANIMALS = {"cat": "katze", "dog": "hund", "bird": "vogel", "fish": "fisch"}


def write_translation_tsv(path: Path, rows: int, seed: int) -> Path:
    """Learnable toy pairs: "the red cat is here" -> "die rot katze ist hier" (word by
    word; five words, so BLEU-4 has 4-grams to count)."""
    rng = random.Random(seed)
    lines = ["source\ttarget"]
    for _ in range(rows):
        c, a = rng.choice(sorted(COLOURS)), rng.choice(sorted(ANIMALS))
        lines.append(f"the {c} {a} is here\tdie {COLOURS[c]} {ANIMALS[a]} ist hier")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_toy_gpt2(folder: Path, texts: list[str], vocab_size: int = 300,
                   max_length: int = 64, hidden: int = 32, layers: int = 2) -> Path:
    """A GPT-2 preset with a BPE vocabulary trained on `texts` (tfsft.bpe)."""
    import keras
    import keras_hub

    from tfsft import bpe

    keras.utils.set_random_seed(1234)
    vocab, merges = bpe.train(texts, vocab_size)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=layers, num_heads=2, hidden_dim=hidden,
        intermediate_dim=2 * hidden, dropout=0.0, max_sequence_length=max_length)
    backbone.save_to_preset(str(folder))
    bpe.tokenizer(vocab, merges).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def toy_translation(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(train.tsv, validation.tsv, GPT-2 preset with a vocabulary learned on train)."""
    folder = tmp_path_factory.mktemp("toy_translation")
    train = write_translation_tsv(folder / "train.tsv", 96, 1)
    dev = write_translation_tsv(folder / "dev.tsv", 16, 2)
    texts = [t for line in train.read_text().splitlines()[1:] for t in line.split("\t")]
    return train, dev, build_toy_gpt2(folder / "gpt2", texts)
