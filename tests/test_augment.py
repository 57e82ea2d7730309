"""Word-level augmentation (tfsft.augment): each edit, determinism, protected (entity)
words, and the classification task's use of it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tfsft import augment, tasks

WORDS = "the quick brown fox jumps over the lazy dog near the river bank".split()


def test_delete_removes_the_rate_keeps_order_and_never_empties():
    rng = np.random.default_rng(0)
    out, index = augment.edit_words(WORDS, "delete", 0.25, rng)
    assert len(out) == len(WORDS) - 3  # round(0.25 * 13) = 3
    assert index == sorted(index) and out == [WORDS[i] for i in index]
    assert augment.edit_words(["alone"], "delete", 0.5, rng) == (["alone"], [0])
    assert len(augment.edit_words(["two", "words"], "delete", 0.5, rng)[0]) == 1
    assert len(augment.edit_words(WORDS[:3], "delete", 0.5, rng)[0]) == 1  # 2 of 3 go


def test_swap_keeps_the_words_and_replace_draws_from_the_vocabulary():
    rng = np.random.default_rng(1)
    out, index = augment.edit_words(WORDS, "swap", 0.2, rng)
    assert Counter(out) == Counter(WORDS) and out != WORDS
    assert out == [WORDS[i] for i in index]
    vocab = augment.vocabulary([["alpha", "beta", "beta"]])
    assert vocab[0].tolist() == ["alpha", "beta"] and np.allclose(vocab[1], [1 / 3, 2 / 3])
    out, index = augment.edit_words(WORDS, "replace", 0.3, rng, vocab)
    changed = [i for i, (a, b) in enumerate(zip(out, WORDS)) if a != b]
    assert 1 <= len(changed) <= 4 and all(out[i] in ("alpha", "beta") for i in changed)
    assert index == list(range(len(WORDS)))


def test_protected_words_are_never_deleted_moved_or_replaced():
    """NER: words inside entities keep their text, order and tags under every edit."""
    tokens = "Ada Lovelace met Charles Babbage in London in 1833 at a dinner".split()
    tags = ["B-per", "I-per", "O", "B-per", "I-per", "O", "B-loc", "O", "O", "O", "O", "O"]
    protected = [t != "O" for t in tags]
    vocab = augment.vocabulary([tokens], [protected])
    assert not {"Ada", "London"} & set(vocab[0].tolist())
    rng = np.random.default_rng(2)
    for trial in range(300):
        edit = augment.EDITS[trial % 3]
        out, index = augment.edit_words(tokens, edit, 0.5, rng, vocab, protected)
        new_tags = [tags[i] for i in index]
        entities = [(w, t) for w, t in zip(out, new_tags) if t != "O"]
        assert entities == [(w, t) for w, t in zip(tokens, tags) if t != "O"]
        # each entity stays contiguous: B- followed by its I- words
        for k, t in enumerate(new_tags):
            if t.startswith("I-"):
                assert new_tags[k - 1] in (f"B-{t[2:]}", t) and out[k - 1] in tokens


def test_augmenter_is_deterministic_for_a_seed_and_skips_identical_copies():
    lists = [w.split() for w in ["a b c d e", "one", "x y", "p q r s t u v"]]
    first = augment.Augmenter(("delete", "swap", "replace"), 0.3, 3, seed=5).run(lists)
    again = augment.Augmenter(("delete", "swap", "replace"), 0.3, 3, seed=5).run(lists)
    other = augment.Augmenter(("delete", "swap", "replace"), 0.3, 3, seed=6).run(lists)
    assert first == again and first != other
    assert all(words != lists[row] for row, _, _, words, _ in first)
    assert not any(row == 1 for row, _, edit, _, _ in first if edit == "swap")
    with pytest.raises(ValueError, match="unknown edit"):
        augment.Augmenter(("shuffle",)).run(lists)


def test_classification_augment_copies_labels_and_pairs_and_marks_rows():
    task, _ = tasks.resolve("tasks/classification")
    cfg = task.config_class(text_pair_field="hypothesis")
    ex = task.examples(cfg, type("R", (), {
        "source": "t.tsv", "where": ["t.tsv:2", "t.tsv:3"],
        "fields": [{"text": "a fine day out", "hypothesis": "it was nice", "label": "yes"},
                   {"text": "rain all week long", "hypothesis": "it was dry", "label": "no"}],
    })(), True)
    out, added = task.augment(cfg, ex, augment.Augmenter(("swap",), 0.5, 2, seed=0))
    assert len(out) == 2 + len(added) and len(added) == 4
    for k, (row, copy, edit, words, _) in enumerate(added):
        assert out.texts[2 + k] == " ".join(words) != ex.texts[row]
        assert out.labels[2 + k] == ex.labels[row] and out.pairs[2 + k] == ex.pairs[row]
        assert out.where[2 + k] == f"{ex.where[row]} (augmented, copy {copy + 1}: swap)"
