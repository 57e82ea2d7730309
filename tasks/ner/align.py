"""Word -> sub-word alignment for token classification, computed in TensorFlow.

KerasHub tokenizers give no offsets or word ids, so the words of each sentence are
tokenised one by one (flat, in one call per batch of sentences), re-nested with ragged
row lengths, concatenated into the model's token sequence, and one piece position per
word is kept (`word_starts`). The model reads each word's label off that piece; the other
pieces get no label. Which piece: the first for bidirectional encoders (BERT), the last
for causal decoders (GPT-2), whose first piece has not seen the rest of the word (measured
on tiny GPT-2: entity F1 0.21 reading the first piece, see tests/test_ner.py). Special
cases:

- a word that tokenises to nothing (e.g. a lone zero-width character) gets start 0 and
  is not trained on; it is predicted `O`;
- a word whose chosen piece falls past `max_length` (truncation) likewise: it is counted
  as cut off in the data summary and predicted `O`;
- byte-level BPE (GPT-2) encodes a word differently at the start of a text and after a
  space: every word is tokenised with a leading space, as inside running text.

Layout: one start token, the pieces, one end token, padding (both KerasHub BERT and
GPT-2 packers put exactly one token before and after the text).
"""

from __future__ import annotations

import numpy as np

BATCH = 512


def is_byte_level(tokenizer) -> bool:
    return type(tokenizer).__name__.lower().startswith(("gpt2", "bytepair"))


def _encoder(tokenizer, max_length: int, segment_ids: bool, piece: str):
    import tensorflow as tf

    start, end = tokenizer.start_token_id, tokenizer.end_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    space = is_byte_level(tokenizer)

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.string)])
    def run(words):
        flat = words.flat_values
        if space:
            flat = tf.strings.join([" ", flat])
        pieces = tokenizer(flat)  # [all words, (pieces)]
        if not isinstance(pieces, tf.RaggedTensor):
            pieces = tf.RaggedTensor.from_tensor(pieces)
        counts = tf.cast(pieces.row_lengths(), tf.int32)
        nested = tf.RaggedTensor.from_row_lengths(pieces, words.row_lengths())
        tokens = tf.cast(nested.merge_dims(1, 2), tf.int32)  # [batch, (pieces)]
        full = tf.cast(tokens.row_lengths(), tf.int32) + 2
        content = tokens[:, :max_length - 2]
        b = tf.shape(content.row_lengths())[0]
        ids = tf.concat([tf.fill([b, 1], start), content, tf.fill([b, 1], end)], axis=1)
        token_ids = ids.to_tensor(default_value=pad, shape=[None, max_length])
        kept = tf.cast(content.row_lengths(), tf.int32) + 2
        padding_mask = tf.sequence_mask(kept, max_length, dtype=tf.int32)
        per_word = tf.RaggedTensor.from_row_lengths(counts, words.row_lengths())
        first = 1 + tf.cumsum(per_word, axis=1, exclusive=True)
        chosen = first if piece == "first" else first + per_word - 1
        has_piece = per_word > 0
        inside = chosen <= max_length - 2
        starts = tf.where(has_piece & inside, chosen, tf.zeros_like(chosen))
        word_starts = starts.to_tensor(default_value=0, shape=[None, max_length])
        visible = tf.ragged.range(words.row_lengths()) < max_length  # fits word_starts
        zero_piece = tf.reduce_sum(tf.cast(~has_piece, tf.int32), axis=1)
        cut = tf.reduce_sum(tf.cast(has_piece & ~(inside & visible), tf.int32), axis=1)
        out = {"token_ids": token_ids, "padding_mask": padding_mask, "word_starts": word_starts}
        if segment_ids:
            out["segment_ids"] = tf.zeros_like(token_ids)
        return out, full, zero_piece, cut

    return run


def encode_words(tokenizer, word_lists: list[list[str]], max_length: int,
                 segment_ids: bool = True, piece: str = "first") -> dict:
    """Features of sentences given as word lists: int32 arrays [rows, max_length]
    (`token_ids`, `padding_mask`, `segment_ids` when asked, `word_starts`), plus per row
    `full_lengths` (tokens before truncation), `zero_piece` and `cut_off` word counts
    (words past the `max_length`-th are cut off too). `piece`: "first" or "last" piece
    of each word."""
    import tensorflow as tf

    if piece not in ("first", "last"):
        raise ValueError(f"piece must be 'first' or 'last', got {piece!r}")
    run = _encoder(tokenizer, max_length, segment_ids, piece)
    parts: dict[str, list] = {}
    for lo in range(0, len(word_lists), BATCH):
        chunk = word_lists[lo:lo + BATCH]
        words = tf.ragged.constant(chunk, dtype=tf.string, ragged_rank=1) if any(chunk) else \
            tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.string), [0] * len(chunk))
        x, full, zero, cut = run(words)
        for k, v in x.items():
            parts.setdefault(k, []).append(v.numpy())
        parts.setdefault("full_lengths", []).append(full.numpy())
        parts.setdefault("zero_piece", []).append(zero.numpy())
        parts.setdefault("cut_off", []).append(cut.numpy())
    if not parts:
        empty = np.zeros((0, max_length), np.int32)
        keys = ["token_ids", "padding_mask", "word_starts"] + (["segment_ids"] if segment_ids
                                                                 else [])
        return {**{k: empty for k in keys}, "full_lengths": np.zeros(0, np.int32),
                "zero_piece": np.zeros(0, np.int32), "cut_off": np.zeros(0, np.int32)}
    return {k: np.concatenate(v).astype(np.int32) for k, v in parts.items()}
