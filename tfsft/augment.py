"""Word-level data augmentation of the training split: deletion, swap, replacement.

Opt-in (`data.augment`), training split only (after validation is carved out, so no
edited copy of a validation row is trained on), deterministic for a seed. Each augmented
copy of a row applies one edit, picked at random from the configured ones, to
`data.augment_rate` of its words (at least one):

- delete: remove words (at least one word is always kept);
- swap: exchange the positions of two words, repeatedly;
- replace: put words drawn from the training vocabulary (by frequency) in their place.

Words flagged as protected (for NER: words inside an entity) are never deleted, moved or
replaced, so entity spans and their tags stay intact. Every edit also returns, for each
output word, the index of the input word it came from, so per-word tags follow the words.
A copy identical to its row (e.g. swapping in a one-word text) is not added.

Tasks opt in with an `augment(task_cfg, examples, augmenter)` member that splits their
texts into words, calls `Augmenter.run`, and builds the extra examples.

Example:
>>> a = Augmenter(("swap",), rate=0.5, copies=1, seed=0)
>>> [(row, edit, " ".join(words)) for row, _, edit, words, _ in a.run([["a", "b", "c", "d"]])]
[(0, 'swap', 'b a d c')]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

EDITS = ("delete", "swap", "replace")


def edit_words(words: list[str], edit: str, rate: float, rng: np.random.Generator,
               vocab: tuple[np.ndarray, np.ndarray] | None = None,
               protected: list[bool] | None = None) -> tuple[list[str], list[int]]:
    """One edit of `words`; returns (new words, index of the source word of each)."""
    free = [i for i in range(len(words)) if not (protected and protected[i])]
    index = list(range(len(words)))
    out = list(words)
    k = max(1, int(round(rate * len(free)))) if free else 0
    if edit == "delete":
        k = min(k, len(free), len(words) - 1)  # never delete every word
        if k <= 0:
            return out, index
        gone = set(rng.choice(free, size=k, replace=False).tolist())
        index = [i for i in index if i not in gone]
        return [words[i] for i in index], index
    if edit == "swap":
        if len(free) < 2:
            return out, index
        for _ in range(k):
            a, b = rng.choice(free, size=2, replace=False).tolist()
            index[a], index[b] = index[b], index[a]
        return [words[i] for i in index], index
    if edit == "replace":
        if not free or vocab is None or not len(vocab[0]):
            return out, index
        for i in rng.choice(free, size=min(k, len(free)), replace=False).tolist():
            out[i] = str(rng.choice(vocab[0], p=vocab[1]))
        return out, index
    raise ValueError(f"unknown edit {edit!r}; choose from {EDITS}")


def vocabulary(word_lists: list[list[str]], protected=None) -> tuple[np.ndarray, np.ndarray]:
    """Training words (not protected ones) and their relative frequencies."""
    counts = Counter()
    for j, words in enumerate(word_lists):
        counts.update(w for i, w in enumerate(words)
                      if not (protected and protected[j] and protected[j][i]))
    if not counts:
        return np.array([], dtype=object), np.array([])
    words, freq = zip(*sorted(counts.items()))
    freq = np.asarray(freq, dtype=np.float64)
    return np.array(words, dtype=object), freq / freq.sum()


@dataclass(frozen=True)
class Augmenter:
    edits: tuple[str, ...]
    rate: float = 0.1
    copies: int = 1
    seed: int = 42

    def run(self, word_lists: list[list[str]], protected: list[list[bool]] | None = None):
        """Augmented copies as (row, copy, edit, words, index), copy by copy, rows in order;
        copies identical to their row are left out."""
        for e in self.edits:
            if e not in EDITS:
                raise ValueError(f"unknown edit {e!r}; choose from {EDITS}")
        vocab = vocabulary(word_lists, protected) if "replace" in self.edits else None
        rng = np.random.default_rng(self.seed)
        out = []
        for copy in range(self.copies):
            for row, words in enumerate(word_lists):
                edit = self.edits[int(rng.integers(len(self.edits)))]
                new, index = edit_words(words, edit, self.rate, rng, vocab,
                                        protected[row] if protected else None)
                if new != list(words):
                    out.append((row, copy, edit, new, index))
        return out


def summary(augmenter: Augmenter, rows_before: int, added: list) -> dict:
    by_edit = Counter(edit for _, _, edit, _, _ in added)
    return {"edits": list(augmenter.edits), "rate": augmenter.rate, "copies": augmenter.copies,
            "seed": augmenter.seed, "rows_before": rows_before, "rows_added": len(added),
            "by_edit": dict(sorted(by_edit.items()))}
