from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from tfsft import backbones, pipeline


def test_encode_and_trim(tiny_bert):
    _, pre = backbones.load(str(tiny_bert), 16)
    texts = ["good", "the film was very good and really nice and the food was superb too "
             "and it was a show the film was good"]
    enc = pipeline.encode(pre, texts)
    assert enc.features["token_ids"].shape == (2, 16)
    assert enc.features["token_ids"].dtype == np.int32
    assert enc.lengths.tolist() == [3, 16]
    assert enc.full_lengths[1] > 16  # counted before truncation
    summary = pipeline.length_summary(enc, 16)
    assert summary["truncated_share"] == 0.5
    batch = next(iter(pipeline.eval_dataset(pipeline.Encoded(
        {k: v[:1] for k, v in enc.features.items()}, enc.lengths[:1], enc.full_lengths[:1]),
        None, 4)))
    # padded to the longest row only
    assert batch["token_ids"].shape == (1, 3)


def test_trim_to_longest_cuts_the_token_columns_only():
    import tensorflow as tf

    mask = tf.constant([[True, True, False, False, False], [True, True, True, False, False]])
    features = {"token_ids": tf.constant([[5, 6, 0, 0, 0], [5, 7, 8, 0, 0]]),
                "padding_mask": mask, "segment_ids": tf.zeros([2, 5], tf.int32),
                "label_weight": tf.ones([2, 5])}  # not a token key: left whole
    out = pipeline.trim_to_longest(features)
    assert out["token_ids"].numpy().tolist() == [[5, 6, 0], [5, 7, 8]]
    assert out["padding_mask"].shape == out["segment_ids"].shape == (2, 3)
    assert out["label_weight"].shape == (2, 5)
    empty = pipeline.trim_to_longest({k: v[:0] for k, v in features.items()})
    assert empty["token_ids"].shape == (0, 1)  # not a negative width


@pytest.mark.parametrize("paired", [False, True])
def test_full_lengths_count_every_row_before_truncation(tiny_bert, paired):
    # rows shorter than, exactly at and longer than the width of 8: each row's length before
    # truncation is what the tokenizer counts, plus the special tokens
    _, pre = backbones.load(str(tiny_bert), 8)
    words = "the film was very good and really nice and the food was superb too".split()
    texts = [" ".join(words[:n]) for n in range(1, 14)]
    pairs = [" ".join(words[:n % 4]) or "good" for n in range(13)] if paired else None
    enc = pipeline.encode(pre, texts, pairs, batch_size=4)
    tokens = [len(pre.tokenizer(t)) for t in texts]
    expected = [n + 2 for n in tokens] if not paired else [
        n + len(pre.tokenizer(p)) + 3 for n, p in zip(tokens, pairs)]
    assert enc.full_lengths.tolist() == expected
    assert enc.lengths.tolist() == [min(n, 8) for n in expected]
    assert 8 in expected and min(expected) < 8 < max(expected)  # all three kinds of row
    if paired:  # each row holds its second text (segment 1), truncated or not
        assert (enc.features["segment_ids"].max(axis=1) == 1).all()


def _toy_encoded(n: int, seed: int = 0) -> pipeline.Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 30, n).astype(np.int32)
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, np.arange(n)[:, None] + 1, 0).astype(np.int32)
    return pipeline.Encoded({"token_ids": ids, "padding_mask": mask}, lengths, lengths)


def test_bucketed_epoch_sees_every_row_once_with_less_padding():
    n, batch = 1000, 16
    enc = _toy_encoded(n)
    targets = np.arange(n, dtype=np.int32)

    def epoch(bucket):
        ds = pipeline.train_dataset(enc, targets, None, batch, seed=3, bucket=bucket)
        seen, padded, steps = [], 0, 0
        for x, y in ds:
            seen.extend(y.numpy().tolist())
            padded += int(np.prod(x["token_ids"].shape))
            steps += 1
            # trimmed to the longest row
            assert x["token_ids"].shape[1] == int(x["padding_mask"].numpy().sum(axis=1).max())
        return sorted(seen), padded, steps

    seen_b, padded_b, steps_b = epoch(True)
    seen_p, padded_p, steps_p = epoch(False)
    assert seen_b == list(range(n)) and seen_p == list(range(n))
    assert steps_b == steps_p == pipeline.steps_per_epoch(n, batch)
    assert padded_b < 0.75 * padded_p
    assert padded_b >= enc.lengths.sum()


@pytest.mark.parametrize("bucket", [False, True])
def test_shuffle_is_a_function_of_seed_and_epoch(bucket):
    """Each epoch has its own order, the same on every pass (what exact resume needs)."""
    enc = _toy_encoded(100)
    targets = np.arange(100, dtype=np.int32)

    def order(seed, epoch=0):
        ds = pipeline.train_dataset(enc, targets, None, 10, seed=seed, bucket=bucket,
                                    epoch=epoch)
        return [y.numpy().tolist() for _, y in ds]

    assert order(1) == order(1) and order(1, 3) == order(1, 3)
    assert order(1) != order(2)
    assert order(1, 0) != order(1, 1)  # a new order every epoch
    ds = pipeline.train_dataset(enc, targets, None, 10, seed=1, bucket=bucket, epoch=2)
    assert [y.numpy().tolist() for _, y in ds] == [y.numpy().tolist() for _, y in ds]
    assert sorted(sum(order(1, 2), [])) == list(range(100))  # every row once


@pytest.mark.parametrize("bucket", [False, True])
def test_static_shapes_give_full_batches_of_a_few_widths(bucket):
    """data.static_shapes (TPU/XLA): every batch has batch_size rows and one of widths();
    the partial last batch is dropped and counted out of the epoch."""
    n, batch = 1000, 16
    enc = _toy_encoded(n)  # padded to 32, rows of 2..29 tokens
    targets = np.arange(n, dtype=np.int32)
    ds = pipeline.train_dataset(enc, targets, None, batch, seed=3, bucket=bucket, static=True)
    shapes, seen = set(), []
    for x, y in ds:
        shapes.add(tuple(x["token_ids"].shape))
        assert x["token_ids"].shape == x["padding_mask"].shape
        assert int(np.max(x["padding_mask"].numpy().sum(axis=1))) <= x["token_ids"].shape[1]
        seen.extend(y.numpy().tolist())
    assert shapes <= {(batch, 16), (batch, 32)}
    if bucket:  # grouped by length, short batches get the short width
        assert len(shapes) == 2
    assert len(seen) == len(set(seen)) == (n // batch) * batch
    assert pipeline.steps_per_epoch(n, batch, True) == n // batch
    assert pipeline.widths(32) == [16, 32] and pipeline.widths(128) == [16, 32, 64, 128]


def test_batch_groups_halve_the_rows_of_long_ones():
    groups = pipeline.batch_groups(np.array([5, 30, 9, 17, 40]), 4, 40)
    assert [(rows.tolist(), n) for rows, n in groups] == [([0, 2], 4), ([3], 2), ([1, 4], 1)]
    assert [(r.tolist(), n) for r, n in pipeline.batch_groups(np.array([5, 9]), 4)] == [
        ([0, 1], 4)]  # no cap: one group of every row


@pytest.mark.parametrize("bucket,static", [(False, False), (True, False), (True, True)])
def test_token_cap_bounds_every_batch_and_keeps_every_row(bucket, static):
    """data.max_batch_tokens: no batch has more than the cap's rows x width; every row is
    seen once per epoch (static: but for each group's partial batch); the batch count is
    what the training plan uses; the order is a function of seed and epoch."""
    n, batch, cap = 1000, 16, 16 * 12
    enc = _toy_encoded(n)  # rows of 2..29 tokens
    targets = np.arange(n, dtype=np.int32)

    def epoch(e=0):
        ds = pipeline.train_dataset(enc, targets, None, batch, seed=3, bucket=bucket, epoch=e,
                                    static=static, max_tokens=cap)
        out = []
        for x, y in ds:
            rows, width = x["token_ids"].shape
            assert rows * width <= cap and rows <= batch
            assert width >= int(x["padding_mask"].numpy().sum(axis=1).max())
            out.append(y.numpy().tolist())
        assert ds.cardinality() == len(out)
        return out

    batches = epoch()
    seen = sum(batches, [])
    assert len(seen) == len(set(seen))
    assert len(batches) == pipeline.batches_per_epoch(enc, batch, cap, static)
    if static:  # each group drops its partial batch
        assert len(seen) == sum(len(rows) // size * size
                                for rows, size in pipeline._capped_groups(enc, batch, cap, True))
    else:
        assert sorted(seen) == list(range(n))
    assert len(batches) > pipeline.steps_per_epoch(n, batch)  # long rows: smaller batches
    assert epoch() == batches and epoch(1) != batches


@pytest.mark.parametrize("bucket,static", [(False, False), (True, False), (True, True)])
def test_no_batch_pipeline_autotunes(bucket, static):
    """tf.data's autotuning thread held up the deletion of the training loop's iterator
    (dropped at a planned step) by up to a minute: no pipeline may turn it on."""
    enc = _toy_encoded(100)
    targets = np.arange(100, dtype=np.int32)
    for ds in (pipeline.train_dataset(enc, targets, None, 10, seed=1, bucket=bucket,
                                      static=static),
               pipeline.eval_dataset(enc, targets, 10), pipeline.eval_dataset(enc, None, 10)):
        assert ds.options().autotune.enabled is False


def test_tokenisation_iterates_no_dataset(monkeypatch):
    """No tf.data pipeline (whose autotuning thread could hold up its deletion) and no
    retracing per call: encode and seq2seq.tokenize call a function traced once per
    tokenizer, batch by batch, and keep the rows in order."""
    import tensorflow as tf

    from tfsft import seq2seq

    made = []  # every dataset iterated
    monkeypatch.setattr(tf.data.Dataset, "__iter__",
                        lambda self, it=tf.data.Dataset.__iter__: made.append(self) or it(self))
    enc = pipeline.encode(_ToyPreprocessor(), ["a bc", "def"])
    assert enc.features["token_ids"].tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]]
    traces = []

    def tokenizer(texts):
        traces.append(1)
        return tf.strings.split(texts)

    texts = ["a b", "c", "d e f", "g", "h i"]
    assert seq2seq.tokenize(tokenizer, texts, batch_size=2) == [
        [b"a", b"b"], [b"c"], [b"d", b"e", b"f"], [b"g"], [b"h", b"i"]]
    assert seq2seq.tokenize(tokenizer, texts[:1]) == [[b"a", b"b"]]
    assert seq2seq.tokenize(tokenizer, []) == []
    assert len(traces) == 1 and made == []


def test_encode_traces_once_per_preprocessor_and_keeps_batches_in_order():
    pre = _ToyPreprocessor()
    texts = [" ".join("x" * (1 + i % 4) for _ in range(1 + i % 3)) for i in range(10)]
    enc = pipeline.encode(pre, texts, batch_size=3)  # 4 batches, the last of one row
    again = pipeline.encode(pre, texts[:5], batch_size=3)
    assert pre.traces == 1
    assert enc.features["token_ids"][:, 0].tolist() == [1 + i % 4 for i in range(10)]
    assert enc.lengths.tolist() == [1 + i % 3 for i in range(10)]
    assert again.features["token_ids"].tolist() == enc.features["token_ids"][:5].tolist()
    assert len(pipeline.encode(pre, [])) == 0
    gone = weakref.ref(pre)
    del pre
    gc.collect()
    assert gone() is None  # the cache of traced functions does not keep it alive


class _ToyPreprocessor:
    """Stands in for a KerasHub preprocessor: whitespace tokens, each token's id its length
    in characters, 4 positions. `traces`: how often it was traced (or called eagerly)."""

    traces = 0

    def __init__(self):
        import tensorflow as tf

        self.tokenizer = lambda t: tf.strings.split(t)

    def __call__(self, texts):
        import tensorflow as tf

        self.traces += 1
        ids = tf.strings.length(tf.strings.split(texts)).to_tensor(shape=[None, 4])
        return {"token_ids": ids, "padding_mask": tf.cast(ids > 0, tf.int32)}
