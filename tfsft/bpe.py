"""Train a byte-level BPE vocabulary that KerasHub's GPT2Tokenizer reads.

Words are split exactly as the tokenizer splits them (KerasHub's own pre-split), mapped to
GPT-2's byte alphabet, and merged greedily by pair frequency (ties: the smaller pair), with
incremental pair counts and a lazy max-heap, so a few hundred thousand distinct words train
in seconds. The vocabulary starts with the special tokens (`<|pad|>` at id 0, because
GPT2Tokenizer hard-codes pad id 0 and that must not be the end token, then
`<|endoftext|>`), then the 256 byte symbols (so every text is encodable), then one token
per merge.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from pathlib import Path

PAD = "<|pad|>"
END = "<|endoftext|>"
SPECIAL = (PAD, END)


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value, in byte order."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    bs, cs = bytes_to_unicode()
    table = dict(zip((b[0] for b in bs), cs))
    return [table[i] for i in range(256)]


def count_words(texts: list[str], batch_size: int = 4096) -> Counter:
    """Pre-split words (as GPT2Tokenizer splits them, in the byte alphabet) and counts."""
    import tensorflow as tf
    from keras_hub.src.tokenizers.byte_pair_tokenizer import split_strings_for_bpe

    alphabet = byte_alphabet()
    counts: Counter = Counter()
    for start in range(0, len(texts), batch_size):
        words = split_strings_for_bpe(tf.constant(texts[start:start + batch_size]), SPECIAL)
        for w in words.flat_values.numpy().tolist():
            counts["".join(alphabet[b] for b in w)] += 1
    for token in SPECIAL:  # never merged: they are whole tokens already
        counts.pop(token, None)
    return counts


def train(texts: list[str], vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """(vocabulary, merges) of at most `vocab_size` tokens learned from `texts`."""
    base = len(SPECIAL) + 256
    if vocab_size < base:
        raise ValueError(f"vocab_size must be at least {base} (special tokens + 256 bytes)")
    counts = count_words(texts)
    words = [list(w) for w in counts]
    freq = list(counts.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    merges: list[str] = []
    while len(merges) < vocab_size - base and heap:
        n, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -n or n == 0:
            continue  # stale entry: the count changed since it was pushed
        merges.append(f"{pair[0]} {pair[1]}")
        joined = pair[0] + pair[1]
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair, ()):
            w, f = words[i], freq[i]
            for p in zip(w, w[1:]):
                pairs[p] -= f
                changed.add(p)
            k, out = 0, []
            while k < len(w):
                if k + 1 < len(w) and (w[k], w[k + 1]) == pair:
                    out.append(joined)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                changed.add(p)
                where.setdefault(p, set()).add(i)
        pairs.pop(pair, None)
        for p in changed:
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for symbol in byte_alphabet():
        vocab[symbol] = len(vocab)
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    return vocab, merges


def tokenizer(vocab: dict[str, int], merges: list[str]):
    """A GPT2Tokenizer over a trained vocabulary (its special tokens kept whole)."""
    import keras_hub

    return keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges,
                                          unsplittable_tokens=list(SPECIAL))


def write(vocab: dict[str, int], merges: list[str], folder: Path) -> None:
    """vocabulary.json and merges.txt, the files GPT2Tokenizer reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False),
                                            encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")
