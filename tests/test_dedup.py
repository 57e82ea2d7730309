"""Exact and near-duplicate detection."""

from __future__ import annotations

import random

from tfsft import dedup


def test_exact_groups_ignore_case_whitespace_and_unicode_form():
    texts = ["Café  au lait", "cafe\u0301 au LAIT", "café au lait ", "tea"]
    assert dedup.exact_groups(texts).tolist() == [0, 0, 0, 3]


def test_near_duplicates_join_above_the_threshold_only():
    rng = random.Random(0)
    words = [f"word{i}" for i in range(300)]
    base = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(200)]
    one_word_changed = [t.rsplit(" ", 1)[0] + " changed" for t in base[:50]]
    groups = dedup.near_duplicate_groups(base + one_word_changed, threshold=0.8)
    joined = sum(groups[200 + i] == i for i in range(50))
    assert joined >= 45  # MinHash estimates: a few borderline pairs may fall below 0.8
    assert len(set(groups[:200].tolist())) == 200  # unrelated sentences stay apart


def test_near_duplicates_are_deterministic_and_handle_short_and_empty_texts():
    texts = ["", "a", "ab", "a", "", "hello world", "hello world!"]
    first = dedup.near_duplicate_groups(texts).tolist()
    assert first == dedup.near_duplicate_groups(texts).tolist()
    assert first[3] == 1 and first[4] == 0 and first[6] == 5
    assert first[2] == 2
