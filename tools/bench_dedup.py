"""Near-duplicate detection at scale: `python tools/bench_dedup.py --rows 1000000`.

Generates synthetic rows (random sentences of 5-30 words from a 20,000-word vocabulary),
injects exact duplicates and near duplicates (one word replaced), then times
`tfsft.dedup.exact_groups` and `near_duplicate_groups` and reports how many injected
pairs were found. Prints one JSON line and a summary.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tfsft import dedup  # noqa: E402


def synthetic(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:05d}" for i in range(20_000)])
    n_exact, n_near = rows // 50, rows // 20
    n_base = rows - n_exact - n_near
    lengths = rng.integers(5, 31, n_base)
    words = vocab[rng.integers(0, len(vocab), lengths.sum())]
    cuts = np.cumsum(lengths)[:-1]
    base = [" ".join(w) for w in np.split(words, cuts)]
    near_src = rng.integers(0, n_base, n_near)
    near = []
    for i in near_src.tolist():
        parts = base[i].split(" ")
        parts[rng.integers(0, len(parts))] = "changed"
        near.append(" ".join(parts))
    exact_src = rng.integers(0, n_base, n_exact)
    texts = base + near + [base[i] for i in exact_src.tolist()]
    return texts, near_src, exact_src, n_base


def jaccard(x: str, y: str) -> float:
    def grams(s):
        s = dedup.normalise(s)
        return {s[i:i + dedup.SHINGLE] for i in range(max(len(s) - dedup.SHINGLE + 1, 1))}

    a, b = grams(x), grams(y)
    return len(a & b) / len(a | b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    t = time.perf_counter()
    texts, near_src, exact_src, n_base = synthetic(args.rows)
    made = time.perf_counter() - t
    t = time.perf_counter()
    exact = dedup.exact_groups(texts)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    near = dedup.near_duplicate_groups(texts, args.threshold)
    t_near = time.perf_counter() - t
    n_near = len(near_src)
    near_rows = np.arange(n_base, n_base + n_near)
    found = near[near_rows] == near[near_src]
    # recall where it is defined: injected pairs whose true 5-gram Jaccard >= threshold
    sample = np.random.default_rng(1).choice(n_near, min(n_near, 5000), replace=False)
    true_j = np.array([jaccard(texts[n_base + i], texts[near_src[i]]) for i in sample])
    above = true_j >= args.threshold
    recall = float(found[sample][above].mean()) if above.any() else float("nan")
    false_pos = float(found[sample][true_j < args.threshold - 0.1].mean()) \
        if (true_j < args.threshold - 0.1).any() else 0.0
    found = float(found.mean())
    exact_found = float(np.mean(exact[n_base + n_near:] == exact[exact_src]))
    groups = len(np.unique(near))
    result = {"rows": len(texts), "threshold": args.threshold, "seconds_generate": round(made, 1),
              "seconds_exact": round(t_exact, 1), "seconds_near": round(t_near, 1),
              "injected_exact_found": exact_found, "injected_near_found": round(found, 4),
              "recall_true_jaccard_above_threshold": round(recall, 4),
              "grouped_with_true_jaccard_below_threshold_minus_0.1": round(false_pos, 4),
              "near_groups": groups,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(result))
    print(f"{len(texts):,} rows: exact duplicates in {t_exact:.1f} s, near duplicates in "
          f"{t_near:.1f} s; injected exact pairs found {100 * exact_found:.1f}%; injected "
          f"one-word-changed pairs found {100 * found:.1f}% overall, {100 * recall:.1f}% of "
          f"those whose true Jaccard is >= {args.threshold}; peak RSS "
          f"{result['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
