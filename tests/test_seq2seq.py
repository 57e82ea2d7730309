"""tfsft/seq2seq.py: prompt/response layout, response-only targets, truncation, scores."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tfsft import bpe, seq2seq
from tfsft.errors import DataError

TEXTS = ["Translate: a red cat", "die rote Katze", "a blue dog", "der blaue Hund"] * 10


@pytest.fixture(scope="module")
def tok():
    vocab, merges = bpe.train(TEXTS, 300)
    return bpe.tokenizer(vocab, merges)


def ids(tok, text: str) -> list[int]:
    return [int(i) for i in tok(text)]


def pairs(prompts, responses):
    return seq2seq.Pairs([[(p, False), (r, True)] for p, r in zip(prompts, responses)],
                         [f"d.tsv:{i + 2}" for i in range(len(prompts))], list(prompts))


def test_prompt_positions_have_zero_weight_and_response_positions_one(tok):
    prompts = ["Translate: a red cat\n", "Translate: a blue dog and a red cat\n"]
    ex = pairs(prompts, ["die rote Katze", "der blaue Hund"])
    enc = seq2seq.encode(tok, ex, 32)
    for r in range(2):
        prompt, response = ids(tok, prompts[r]), ids(tok, ex.responses[r])
        expected = [tok.start_token_id, *prompt, *response, tok.end_token_id]
        n = len(expected)
        assert enc.features["token_ids"][r, :n].tolist() == expected
        assert enc.features["padding_mask"][r].tolist() == [1] * n + [0] * (32 - n)
        weight = (enc.labels[r] >= 0).astype(int)
        # position t predicts token t + 1: weight 1 exactly where that is a response token
        # or the end token, 0 for the start token, the prompt and padding
        assert weight.tolist() == [0] * len(prompt) + [1] * (len(response) + 1) + \
            [0] * (32 - len(prompt) - len(response) - 1)
        assert enc.labels[r][weight == 1].tolist() == [*response, tok.end_token_id]
    assert enc.notes["target_tokens"] == sum(len(ids(tok, t)) + 1 for t in ex.responses)


def test_prompt_loss_trains_on_the_prompt_too(tok):
    ex = pairs(["Translate: a red cat\n"], ["die rote Katze"])
    enc = seq2seq.encode(tok, ex, 32, prompt_loss=True)
    n = int(enc.lengths[0])
    assert enc.labels[0, :n - 1].tolist() == enc.features["token_ids"][0, 1:n].tolist()
    assert (enc.labels[0, n - 1:] == -1).all()


def test_response_only_loss_equals_keras_mean_with_sample_weight(tok):
    """The engine's loss (targets -1 ignored, summed over the batch / target count) is
    Keras' sparse CE with weights 1 on response tokens, `mean_with_sample_weight`."""
    import keras
    import tensorflow as tf

    from tfsft import training

    ex = pairs(["Translate: a red cat\n", "Translate: a blue dog\n"],
               ["die rote Katze", "der blaue Hund und die rote Katze"])
    enc = seq2seq.encode(tok, ex, 32)
    logits = tf.random.stateless_normal((2, 32, len(tok.vocabulary)), seed=(1, 2))
    y = tf.constant(enc.labels)
    ours = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    total, count = training.loss_terms(ours, y, logits)
    weights = tf.cast(y >= 0, tf.float32)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")
    expected = keras_loss(tf.maximum(y, 0), logits, sample_weight=weights)
    assert float(count) == enc.notes["target_tokens"]
    assert float(total / count) == pytest.approx(float(expected), abs=1e-5)


def test_prompt_side_truncation_keeps_the_whole_response(tok):
    long_prompt = "Translate: " + "a red cat " * 20 + "\n"
    ex = pairs([long_prompt], ["die rote Katze"])
    enc = seq2seq.encode(tok, ex, 24)
    response = ids(tok, "die rote Katze")
    row = enc.features["token_ids"][0].tolist()
    assert row[0] == tok.start_token_id and enc.lengths[0] == 24
    assert row[-len(response) - 1:] == [*response, tok.end_token_id]
    assert row[1:24 - len(response) - 1] == ids(tok, long_prompt)[-(24 - len(response) - 2):]
    assert enc.notes["prompts_truncated"] == 1 and enc.notes["responses_truncated"] == 0
    assert enc.full_lengths[0] == 1 + len(ids(tok, long_prompt)) + len(response) + 1


def test_response_side_truncation_cuts_the_end_token_first(tok):
    ex = pairs(["Translate: a red cat\n"], ["die rote Katze " * 10])
    enc = seq2seq.encode(tok, ex, 24, truncation="response")
    assert enc.lengths[0] == 24 and tok.end_token_id not in enc.labels[0].tolist()
    assert enc.notes["responses_truncated"] == 1


@pytest.mark.parametrize("truncation", ["prompt", "response"])
def test_a_row_with_nothing_left_to_train_on_is_reported_with_its_line(tok, truncation):
    ok = ("Translate: a red cat\n", "die rote Katze")
    bad = ("Translate: " + "a red cat " * 20, "die rote Katze " * 20) if truncation == "prompt" \
        else ("Translate: " + "a red cat " * 20, "die rote Katze")
    ex = pairs([ok[0], bad[0]], [ok[1], bad[1]])
    with pytest.raises(DataError) as e:
        seq2seq.encode(tok, ex, 24, truncation=truncation)
    assert e.value.rows == [1]
    msg = str(e.value)
    assert "d.tsv:3" in msg and "`data.max_length` 24" in msg and "too_long: skip" in msg
    enc = seq2seq.encode(tok, ex, 24, truncation=truncation, too_long="skip")
    assert (enc.labels[1] == -1).all() and (enc.labels[0] >= 0).any()  # no loss, listed
    assert enc.notes["rows_without_loss"] == 1
    assert enc.notes["rows_without_loss_list"][0].startswith("d.tsv:3")


def test_generation_prompts_are_laid_out_as_in_training_and_cut_only_when_too_long(tok):
    rows, cut = seq2seq.prompt_ids(tok, [[("Translate: a red cat\n", False)],
                                         [("a red cat " * 20, False)]], 32)
    assert rows[0] == [tok.start_token_id, *ids(tok, "Translate: a red cat\n")]
    assert len(rows[1]) == 31 and rows[1][0] == tok.start_token_id and cut == 1
    assert rows[1][1:] == ids(tok, "a red cat " * 20)[-30:]


# -- scores: sacrebleu against independent implementations of BLEU and chrF

HYPS = ["the cat sat on the mat", "a dog runs in the green park", "hello there world",
        "one two three four five"]
REFS = ["the cat sat on a mat", "a dog runs in a green park", "hello world", "one two three four"]


def _bleu(hyps, refs) -> float:
    """BLEU-4 as Papineni et al. define it (corpus counts, brevity penalty)."""
    match, total = [0] * 4, [0] * 4
    hl = rl = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hl, rl = hl + len(h), rl + len(r)
        for n in range(1, 5):
            hg = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rg = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rg[g]) for g, c in hg.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if hl > rl else math.exp(1 - rl / hl)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def _chrf(hyps, refs, beta=2, order=6) -> float:
    """chrF (Popović 2015): character n-gram F-beta, n = 1..6, spaces removed, averaged."""
    precision, recall = [], []
    for n in range(1, order + 1):
        m = th = tr = 0
        for h, r in zip(hyps, refs):
            h, r = h.replace(" ", ""), r.replace(" ", "")
            hg = Counter(h[i:i + n] for i in range(len(h) - n + 1))
            rg = Counter(r[i:i + n] for i in range(len(r) - n + 1))
            m += sum(min(c, rg[g]) for g, c in hg.items())
            th, tr = th + sum(hg.values()), tr + sum(rg.values())
        precision.append(m / th)
        recall.append(m / tr)
    p, r = np.mean(precision), np.mean(recall)
    return 100 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


def test_scores_agree_with_independent_bleu_and_chrf():
    s = seq2seq.scores(HYPS, REFS)
    assert s["bleu"] == pytest.approx(_bleu(HYPS, REFS), abs=1e-6)
    assert s["chrf"] == pytest.approx(_chrf(HYPS, REFS), abs=1e-6)
    assert s["exact_match"] == 0.0
    assert seq2seq.scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    assert seq2seq.scores(REFS, REFS)["exact_match"] == 100.0
    assert "tok:13a" in s["bleu_signature"] and "nrefs:1" in s["bleu_signature"]
