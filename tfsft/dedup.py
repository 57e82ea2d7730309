"""Exact and near-duplicate detection for text rows, vectorised with NumPy.

Exact duplicates compare a normalised key (Unicode NFC, case-folded, whitespace
collapsed). Near duplicates use MinHash over character 5-grams of that key with
locality-sensitive hashing (bands x rows): candidate pairs share all signature values of
one band, and are kept when their estimated Jaccard similarity reaches the threshold.
Everything runs on arrays, in chunks, so a million short texts take a few minutes on two
cores (tools/bench_dedup.py).

Example:
>>> groups = near_duplicate_groups(["the cat sat on the mat", "the cat sat on the mat!",
...                                 "a completely different sentence"], threshold=0.8)
>>> groups.tolist()
[0, 0, 2]
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

SHINGLE = 5
NUM_PERM = 64
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The comparison key: NFC, case-folded, runs of whitespace as one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text).casefold()).strip()


def exact_groups(texts: list[str]) -> np.ndarray:
    """For each row, the index of the first row with the same normalised text."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(normalise(t), i) for i, t in enumerate(texts)],
                    dtype=np.int64)


def _shingle_hashes(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every character 5-gram (UTF-8 bytes) of every key, concatenated,
    and each key's start offset. Keys shorter than 5 bytes give one shingle: themselves."""
    data = [k.encode("utf-8") or b"\0" for k in keys]
    lengths = np.array([len(d) for d in data], dtype=np.int64)
    counts = np.maximum(lengths - SHINGLE + 1, 1)
    raw = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # every shingle's start position in `raw`
    owner = np.repeat(np.arange(len(keys)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pos = starts[owner] + offset
    h = np.zeros(len(pos), dtype=np.uint64)
    for k in range(SHINGLE):  # FNV-style mix of up to 5 bytes (shorter keys: fewer)
        idx = np.minimum(pos + k, starts[owner] + lengths[owner] - 1)
        valid = (pos + k) < (starts[owner] + lengths[owner])
        h = np.where(valid, (h ^ raw[idx]) * np.uint64(0x100000001B3), h)
    h &= np.uint64(0xFFFFFFFF)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return h, offsets


def signatures(texts: list[str], num_perm: int = NUM_PERM, seed: int = 0,
               chunk: int = 2_000) -> np.ndarray:
    """MinHash signatures [rows, num_perm] (uint32) of the normalised texts.

    Each "permutation" is h -> a*h + b mod 2^32 with odd a: a bijection of 32-bit shingle
    hashes, computed in uint32 (wrapping) arithmetic, which is what makes this fast."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 1 << 32, num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for lo in range(0, len(texts), chunk):
        keys = [normalise(t) for t in texts[lo:lo + chunk]]
        h, offsets = _shingle_hashes(keys)
        perm = h.astype(np.uint32)[:, None] * a[None, :] + b[None, :]  # ~100 MB a chunk
        out[lo:lo + len(keys)] = np.minimum.reduceat(perm, offsets, axis=0)
    return out


def near_duplicate_groups(texts: list[str], threshold: float = 0.8, bands: int = 8,
                          seed: int = 0) -> np.ndarray:
    """For each row, the smallest row index of its near-duplicate group (itself if none).

    Rows join a group when their estimated Jaccard similarity (character 5-grams of the
    normalised text) with a row of it is at least `threshold`. Exact duplicates always do.
    """
    n = len(texts)
    parent = np.arange(n)
    if n < 2:
        return parent
    sig = signatures(texts, seed=seed)
    rows = sig.shape[1] // bands

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        part = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        keys = part.view(np.dtype((np.void, part.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        if not same.any():
            continue
        # star edges: each bucket member against the bucket's first member
        starts = np.flatnonzero(np.concatenate([[True], ~same]))
        bucket_of = np.cumsum(np.concatenate([[True], ~same])) - 1
        heads = order[starts[bucket_of]]
        members = order
        pick = members != heads
        left, right = heads[pick], members[pick]
        similar = (sig[left] == sig[right]).mean(axis=1) >= threshold
        for x, y in zip(left[similar].tolist(), right[similar].tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)], dtype=np.int64)
