"""tf.data input pipelines: tokenise once, then batch padded to each batch's longest row.

Features are tokenised a single time (in-graph tokenisers are slow to rerun every epoch),
stored as int32 arrays padded to `max_length`, and every batch is trimmed to its own
longest row. With `bucket` the training order groups rows of similar length: shuffle all,
sort inside chunks of 64 batches, shuffle the batches (what Hugging Face calls
group_by_length), which removes most padding while keeping batches random.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

CHUNK_BATCHES = 64
PREFETCH = 2  # batches made ahead of the model (fixed: see fixed_buffers)
TOKEN_KEYS = ("token_ids", "padding_mask", "segment_ids",
              "position_ids")  # trimmed to each batch's longest


@dataclass(frozen=True)
class Encoded:
    """Tokenised inputs of one split: int32 arrays [rows, max_length] and token counts."""

    features: dict  # name -> np.ndarray[int32], e.g. token_ids, segment_ids, padding_mask
    lengths: np.ndarray  # tokens kept per row, special tokens included
    full_lengths: np.ndarray  # tokens before truncation, special tokens included
    notes: dict = field(default_factory=dict)  # task counts for the data summary
    # per-token training targets laid out like the features ([rows, max_length], -1: no
    # loss), e.g. a causal LM's next tokens; batches trim them with the features
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths)


def encode(preprocessor, texts: list[str], pairs: list[str] | None = None,
           batch_size: int = 1024) -> Encoded:
    """Run the KerasHub preprocessor over all texts once; returns padded int32 arrays."""
    import tensorflow as tf

    run = _encoder(preprocessor, 1 if pairs is None else 2)
    columns = (texts,) if pairs is None else (texts, pairs)
    chunks: dict[str, list] = {}
    full = []
    for start in range(0, len(texts), batch_size):
        x, n = run(*(tf.constant(c[start:start + batch_size], tf.string) for c in columns))
        for k, v in x.items():
            chunks.setdefault(k, []).append(v.numpy())
        full.append(n.numpy())
    if not full:
        return Encoded({}, np.zeros(0, np.int32), np.zeros(0, np.int32))
    features = {k: np.concatenate(v) for k, v in chunks.items()}
    lengths = features["padding_mask"].sum(axis=1).astype(np.int32)
    return Encoded(features, lengths, np.concatenate(full))


_TRACED = weakref.WeakKeyDictionary()  # layer -> {key: traced function}


def traced_once(layer, key, body, signature):
    """`body(layer, *args)` as one tf.function per (layer, key), traced once and called per
    batch. Tracing a KerasHub tokenizer takes ~0.9 s, and a tf.data map over it ~0.6 s more
    to start: mapped once per split, that was 3.9 s for SST-2's 20,000 + 872 rows; traced
    once and called per batch, 1.7 s. The cache holds `layer` weakly (so does the traced
    function: a closure over it would keep its own cache key alive)."""
    import tensorflow as tf

    traced = _TRACED.setdefault(layer, {})
    if key not in traced:
        ref = weakref.ref(layer)
        traced[key] = tf.function(lambda *args: body(ref(), *args), input_signature=signature,
                                  autograph=False)
    return traced[key]


def _encoder(preprocessor, columns: int):
    """The preprocessor and each row's token count before truncation (traced_once)."""
    import tensorflow as tf

    special = 2 if columns == 1 else 3

    def run(pre, *cols):
        # a pair goes in as `x=`: KerasHub reads a positional tuple as (x, y)
        x = pre(cols[0]) if len(cols) == 1 else pre(x=cols)
        n = sum(pre.tokenizer(c).row_lengths() for c in cols) + special
        return {k: tf.cast(v, tf.int32) for k, v in x.items()}, tf.cast(n, tf.int32)

    return traced_once(preprocessor, ("encode", columns), run,
                       [tf.TensorSpec([None], tf.string)] * columns)


def take(enc: Encoded, rows: np.ndarray) -> Encoded:
    """The rows `rows` of `enc`, in that order."""
    return Encoded({k: v[rows] for k, v in enc.features.items()}, enc.lengths[rows],
                   enc.full_lengths[rows], enc.notes,
                   None if enc.labels is None else enc.labels[rows])


def _cut(x, rest, width, token_targets: bool):
    x = {k: v[:, :width] if k in TOKEN_KEYS else v for k, v in x.items()}
    if token_targets:  # targets per token: cut like the features
        rest = (rest[0][:, :width], *rest[1:])
    return (x, *rest)


def _trim(x, *rest, token_targets: bool = False):
    """Cut a padded batch to its longest row. Outside XLA every width costs the same
    (rounding up to a multiple of 8 made 24% of SST-2's batch-32 tokens padding, not
    2.5%); an XLA step compiles once per width, which is what `data.static_shapes` is for."""
    import tensorflow as tf

    longest = tf.reduce_max(tf.reduce_sum(x["padding_mask"], axis=1))
    return _cut(x, rest, longest, token_targets)


def trim_to_longest(features: dict) -> dict:
    """Cut a batch of right-padded token features (a `padding_mask` among them) to its
    longest row, at least one column: the same outputs for models that mask padding, with
    work in proportion to the batch's real width (a serving request of one short text
    padded to `data.max_length` otherwise runs the model on every padding column)."""
    import tensorflow as tf

    rows = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1)
    longest = tf.maximum(tf.reduce_max(rows), 1)  # an empty batch reduces to int32's min
    return _cut(features, (), longest, token_targets=False)[0]


def widths(max_length: int) -> list[int]:
    """The batch widths of `static_shapes`: 16, 32, 64, ... below max_length, then it.

    >>> widths(66)
    [16, 32, 64, 66]
    """
    out, w = [], 16
    while w < max_length:
        out.append(w)
        w *= 2
    return [*out, max_length]


def _pad_to_width(x, *rest, token_targets: bool = False):
    """`static_shapes`: cut a batch to the smallest of widths() that holds its longest row
    (the features are padded to max_length already), so XLA sees a few shapes only."""
    import tensorflow as tf

    full = x["padding_mask"].shape[1]
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1))
    choices = tf.constant(widths(full), tf.int32)
    width = choices[tf.minimum(tf.searchsorted(choices, [longest])[0], len(widths(full)) - 1)]
    return _cut(x, rest, width, token_targets)


def _batches(parts, rows: int, batch_size: int, seed: int, bucket: bool, static: bool):
    """Shuffled (optionally length-grouped) batches of `parts`, features untrimmed."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(parts)
    ds = ds.shuffle(rows, seed=seed, reshuffle_each_iteration=False)
    if not bucket:
        return ds.batch(batch_size, drop_remainder=static)

    # The functions tf.data traces here and below have no Python control flow on tensors:
    # AutoGraph's conversion (parsing their source) cost ~0.35 s of every run's start.
    @tf.autograph.experimental.do_not_convert
    def sort_chunk(*chunk):
        order = tf.argsort(tf.reduce_sum(chunk[0]["padding_mask"], axis=1), stable=True)
        chunk = tf.nest.map_structure(lambda t: tf.gather(t, order), chunk)
        return tf.data.Dataset.from_tensor_slices(chunk).batch(batch_size, drop_remainder=static)

    ds = ds.batch(batch_size * CHUNK_BATCHES).flat_map(sort_chunk)
    ds = ds.shuffle(CHUNK_BATCHES, seed=seed + 1, reshuffle_each_iteration=False)
    # chunks are whole multiples of the batch size, so the batch count is exact
    return ds.apply(tf.data.experimental.assert_cardinality(
        steps_per_epoch(rows, batch_size, static)))


def batch_groups(lengths: np.ndarray, batch_size: int,
                 max_tokens: int = 0) -> list[tuple[np.ndarray, int]]:
    """Training rows grouped by the rows per batch their length allows: (rows, size) pairs.
    `max_tokens` (0: no cap) caps a batch's rows x width, the memory of a step at the
    widest batches: rows too long for `batch_size` of them go in batches of half as many,
    or a quarter, ... (a few groups, so a few partial batches). The grouping depends on
    the lengths only, so every epoch has the same number of batches."""
    if not max_tokens:
        return [(np.arange(len(lengths)), batch_size)]
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    widest = np.array([max_tokens // n for n in sizes])  # rising as the size falls
    group = np.minimum(np.searchsorted(widest, lengths), len(sizes) - 1)
    return [(np.flatnonzero(group == g), n) for g, n in enumerate(sizes) if np.any(group == g)]


def _capped_groups(enc: Encoded, batch_size: int, max_tokens: int, static: bool):
    """batch_groups by the widths batches will have: with `static`, those of widths()."""
    lengths = enc.lengths
    if static and max_tokens and len(enc):
        choices = np.array(widths(enc.features["padding_mask"].shape[1]))
        lengths = choices[np.minimum(np.searchsorted(choices, lengths), len(choices) - 1)]
    return batch_groups(lengths, batch_size, max_tokens)


def batches_per_epoch(enc: Encoded, batch_size: int, max_tokens: int = 0,
                      static: bool = False) -> int:
    """The training batches of one epoch of train_dataset(...)."""
    return sum(steps_per_epoch(len(rows), n, static)
               for rows, n in _capped_groups(enc, batch_size, max_tokens, static))


def train_dataset(enc: Encoded, targets: np.ndarray, weights: np.ndarray | None,
                  batch_size: int, seed: int, bucket: bool, epoch: int = 0,
                  static: bool = False, max_tokens: int = 0):
    """Shuffled, optionally length-grouped training batches of one epoch. The order is a
    pure function of (seed, epoch): a resumed run skips the batches it has done and sees
    the rest in the same order as an uninterrupted run. `static`: every batch has its
    group's full rows (partial batches are dropped) and one of widths(). `max_tokens`:
    see batch_groups; the groups' batches are interleaved in a seeded random order."""
    import tensorflow as tf

    parts = (enc.features, targets) if weights is None else (enc.features, targets, weights)
    seed = seed + 7919 * epoch
    groups = _capped_groups(enc, batch_size, max_tokens, static)
    if len(groups) == 1 and len(groups[0][0]) == len(enc):  # every row: no cap, or none hit
        ds = _batches(parts, len(enc), groups[0][1], seed, bucket, static)
    else:
        sets, counts = [], []
        for g, (rows, n) in enumerate(groups):
            group = tf.nest.map_structure(lambda a, rows=rows: a[rows], parts)
            sets.append(_batches(group, len(rows), n, seed + 104729 * g, bucket, static))
            counts.append(steps_per_epoch(len(rows), n, static))
        order = np.repeat(np.arange(len(groups), dtype=np.int64), counts)
        order = np.random.default_rng(seed).permutation(order)
        ds = tf.data.Dataset.choose_from_datasets(sets, tf.data.Dataset.from_tensor_slices(order))
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(order)))
    shape = _pad_to_width if static else _trim
    per_token = enc.labels is not None
    ds = ds.map(tf.autograph.experimental.do_not_convert(
        lambda *b: shape(*b, token_targets=per_token)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(PREFETCH).with_options(fixed_buffers())


def _shard_by_data():
    """Multi-worker: each worker takes its share of every batch (DATA). The files are read
    whole by every worker, so FILE sharding would not apply; OFF would feed every worker
    the same rows."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def eval_dataset(enc: Encoded, targets: np.ndarray | None, batch_size: int):
    """Batches in file order (predictions line up with rows), each trimmed to its longest."""
    import tensorflow as tf

    parts = enc.features if targets is None else (enc.features, targets)
    ds = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)
    if targets is None:
        ds = ds.map(tf.autograph.experimental.do_not_convert(lambda x: _trim(x)[0]))
    else:
        per_token = enc.labels is not None
        ds = ds.map(tf.autograph.experimental.do_not_convert(
            lambda x, y: _trim(x, y, token_targets=per_token)))
    return ds.prefetch(PREFETCH).with_options(fixed_buffers())


def fixed_buffers():
    """The pipelines' options: DATA sharding (_shard_by_data), tf.data's autotuning off.
    The autotuning's model thread can hold up the deletion of an iterator until its next
    wake-up, up to a minute: the training loop drops each epoch's iterator at a planned
    step, and full SST-2 runs stalled 16-55 s there (7 of 23 runs, with the CPU idle; gdb
    showed the deletion waiting on that thread). Deleting a finished evaluation iterator
    waited ~1 s in 3 of 8 prediction passes. Batches are cheap to make here: fixed
    buffers are as fast (docs/performance.md). Maps keep `num_parallel_calls=AUTOTUNE`:
    without autotuning, that is a fixed count from the machine's cores."""
    options = _shard_by_data()
    options.autotune.enabled = False
    return options


def steps_per_epoch(rows: int, batch_size: int, drop_remainder: bool = False) -> int:
    return rows // batch_size if drop_remainder else -(-rows // batch_size)


def length_summary(enc: Encoded, max_length: int) -> dict:
    """Token length percentiles (before truncation) and the share of truncated rows."""
    if not len(enc):
        return {"rows": 0}
    p = np.percentile(enc.full_lengths, [50, 90, 95, 99, 100])
    return {
        "rows": int(len(enc)), "tokens": int(enc.lengths.sum()),
        "tokens_p50": float(p[0]), "tokens_p90": float(p[1]), "tokens_p95": float(p[2]),
        "tokens_p99": float(p[3]), "tokens_max": float(p[4]),
        "truncated_share": float(np.mean(enc.full_lengths > max_length)),
        "padding_share_fixed": float(1 - enc.lengths.sum() / (len(enc) * max_length)),
    }
