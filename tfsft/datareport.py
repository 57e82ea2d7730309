"""`tfsft data inspect`: what is in the data, before hours are spent training on it.

Per split: rows, label distribution and imbalance, text length in characters and tokens
(for the configured backbone) and the share truncated at `data.max_length`, exact and
near duplicates, identical texts with conflicting labels, rows without letters, rows that
are mostly markup, rows in another script than the split's majority. Across splits:
validation/test rows whose text (exactly or nearly) is also in train (leakage).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from tfsft import dedup

MARKUP = re.compile(r"<[^>\n]{1,200}>|&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
SHOWN = 10  # examples listed per finding


def script(text: str) -> str:
    """The most common Unicode script (first word of the character names) among letters."""
    counts = Counter()
    for ch in text:
        if ch.isalpha():
            try:
                counts[unicodedata.name(ch).split(" ")[0]] += 1
            except ValueError:
                counts["UNKNOWN"] += 1
    return counts.most_common(1)[0][0] if counts else ""


def _percentiles(values) -> dict:
    if not len(values):
        return {}
    p = np.percentile(values, [50, 90, 95, 99, 100])
    return {"p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]),
            "max": float(p[4])}


def _label_key(label) -> str:
    return "|".join(label) if isinstance(label, list) else str(label)


def split_report(ex, near_threshold: float) -> dict:
    """One split's findings. Near-duplicate groups are connected components (a chain of
    similar texts forms one group); each row is shown with its group's first row."""
    texts, where = ex.texts, ex.where
    labels = getattr(ex, "labels", None)
    out: dict = {"rows": len(texts)}
    if labels is not None:
        counts = Counter()
        for label in labels:
            counts.update(label if isinstance(label, list) else [label])
        out["label_distribution"] = dict(sorted(counts.items()))
        out["imbalance_ratio"] = (round(max(counts.values()) / min(counts.values()), 2)
                                  if counts else None)
    out["chars"] = _percentiles([len(t) for t in texts])
    exact = dedup.exact_groups(texts)
    dup_rows = np.flatnonzero(exact != np.arange(len(texts)))
    out["exact_duplicates"] = {"rows": int(len(dup_rows)), "examples": [
        f"{where[i]} repeats {where[exact[i]]}: {texts[i][:80]!r}" for i in dup_rows[:SHOWN]]}
    near = dedup.near_duplicate_groups(texts, near_threshold)
    near_rows = np.flatnonzero((near != np.arange(len(texts))) & (exact == np.arange(len(texts))))
    out["near_duplicates"] = {"rows": int(len(near_rows)), "threshold": near_threshold,
                              "examples": [f"{where[i]} in the group of {where[near[i]]}: "
                                           f"{texts[i][:60]!r} ~ {texts[near[i]][:60]!r}"
                                           for i in near_rows[:SHOWN]]}
    if labels is not None:
        groups: dict[int, set] = {}
        for i, g in enumerate(exact.tolist()):
            groups.setdefault(g, set()).add(_label_key(labels[i]))
        conflicts = [g for g, ls in groups.items() if len(ls) > 1]
        out["conflicting_labels"] = {"texts": len(conflicts), "examples": [
            f"{texts[g][:80]!r}: labels {sorted(groups[g])} "
            f"({', '.join(where[i] for i in np.flatnonzero(exact == g)[:4])})"
            for g in conflicts[:SHOWN]]}
    no_letters = [i for i, t in enumerate(texts) if t.strip() and not any(c.isalpha() for c in t)]
    markup = [i for i, t in enumerate(texts)
              if t and sum(len(m) for m in MARKUP.findall(t)) > 0.3 * len(t)]
    scripts = [script(t) for t in texts]
    majority = Counter(s for s in scripts if s).most_common(1)
    majority = majority[0][0] if majority else ""
    other = [i for i, s in enumerate(scripts) if s and s != majority]
    out["suspicious"] = {
        "no_letters": {"rows": len(no_letters),
                       "examples": [f"{where[i]}: {texts[i][:60]!r}" for i in no_letters[:SHOWN]]},
        "mostly_markup": {"rows": len(markup),
                          "examples": [f"{where[i]}: {texts[i][:60]!r}" for i in markup[:SHOWN]]},
        "other_script": {"rows": len(other), "majority": majority, "examples": [
            f"{where[i]} ({scripts[i]}): {texts[i][:60]!r}" for i in other[:SHOWN]]},
    }
    return out


def leakage(train, other, near_threshold: float) -> dict:
    """Rows of `other` whose text is also in `train`: exactly, or nearly."""
    keys = {dedup.normalise(t) for t in train.texts}
    exact = [i for i, t in enumerate(other.texts) if dedup.normalise(t) in keys]
    texts = list(train.texts) + list(other.texts)
    groups = dedup.near_duplicate_groups(texts, near_threshold)
    n = len(train.texts)
    exact_set = set(exact)
    near = [i for i in range(len(other.texts))
            if groups[n + i] < n and i not in exact_set]
    return {"exact": {"rows": len(exact), "examples": [
                f"{other.where[i]}: {other.texts[i][:80]!r}" for i in exact[:SHOWN]]},
            "near": {"rows": len(near), "threshold": near_threshold, "examples": [
                f"{other.where[i]} in the group of {train.where[groups[n + i]]}: "
                f"{other.texts[i][:60]!r}"
                for i in near[:SHOWN]]}}


def inspect(splits: dict, encoded: dict | None, max_length: int,
            near_threshold: float = 0.8) -> dict:
    """The whole report: per split (with token lengths when `encoded` is given) and the
    leakage of each non-train split into train."""
    from tfsft import pipeline

    report: dict = {"splits": {}, "leakage": {}}
    for name, ex in splits.items():
        rep = split_report(ex, near_threshold)
        if encoded and name in encoded:
            summary = pipeline.length_summary(encoded[name], max_length)
            rep["tokens"] = {k[len("tokens_"):]: v for k, v in summary.items()
                             if k.startswith("tokens_")}
            rep["truncated_share"] = summary.get("truncated_share", 0.0)
        report["splits"][name] = rep
    for name, ex in splits.items():
        if name != "train" and "train" in splits:
            report["leakage"][f"{name}_in_train"] = leakage(splits["train"], ex, near_threshold)
    return report


def format_report(report: dict) -> str:
    lines = []
    for name, rep in report["splits"].items():
        lines.append(f"== {name}: {rep['rows']} rows")
        if "label_distribution" in rep:
            dist = ", ".join(f"{k} {v}" for k, v in rep["label_distribution"].items())
            lines.append(f"  labels: {dist} (imbalance {rep['imbalance_ratio']}x)")
        c = rep["chars"]
        lines.append(f"  characters: p50 {c.get('p50', 0):.0f}, p95 {c.get('p95', 0):.0f}, "
                     f"max {c.get('max', 0):.0f}")
        if "tokens" in rep:
            t = rep["tokens"]
            lines.append(f"  tokens: p50 {t['p50']:.0f}, p95 {t['p95']:.0f}, max {t['max']:.0f};"
                         f" truncated {100 * rep['truncated_share']:.1f}%")
        findings = [("exact duplicates", rep["exact_duplicates"]),
                    (f"near duplicates (>= {rep['near_duplicates']['threshold']})",
                     rep["near_duplicates"])]
        if "conflicting_labels" in rep:
            findings.append(("texts with conflicting labels",
                             {"rows": rep["conflicting_labels"]["texts"],
                              "examples": rep["conflicting_labels"]["examples"]}))
        s = rep["suspicious"]
        findings += [("rows without letters", s["no_letters"]),
                     ("rows mostly markup", s["mostly_markup"]),
                     (f"rows not in the majority script ({s['other_script']['majority']})",
                      s["other_script"])]
        for title, f in findings:
            lines.append(f"  {title}: {f['rows']}")
            lines.extend(f"    {e}" for e in f["examples"][:3])
    for name, leak in report["leakage"].items():
        lines.append(f"== leakage {name.replace('_in_train', '')} -> train: "
                     f"{leak['exact']['rows']} exact, {leak['near']['rows']} near")
        lines.extend(f"    {e}" for e in (leak["exact"]["examples"] + leak["near"]["examples"])[:5])
    return "\n".join(lines)


def plot_token_lengths(encoded: dict, max_length: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(int(e.full_lengths.max()) for e in encoded.values() if len(e))
    bins = np.arange(0, top + 2, max(1, (top + 1) // 60))
    for name, enc in encoded.items():
        ax.hist(enc.full_lengths, bins=bins, alpha=0.5, density=True, label=name)
    ax.axvline(max_length, color="k", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example (before truncation)")
    ax.set_ylabel("share of rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
