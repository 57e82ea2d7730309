"""`tfsft data split FILE`: deterministic train/validation/test files from one data file.

Rows that are exact or near duplicates of each other (tfsft.dedup) form one group and
always land in the same split, so no text leaks from train into evaluation. With a
stratify field, every label is spread over the splits in the given ratios. The same file,
ratios and seed always give the same splits. Existing output files are never replaced
unless asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfsft import data as data_lib
from tfsft import dedup
from tfsft.errors import ConfigError, RunDirError

NAMES = ("train", "validation", "test")


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--ratios {text!r}: expected numbers like 0.8,0.1,0.1") from None
    if len(ratios) not in (2, 3) or any(r <= 0 for r in ratios) \
            or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"--ratios {text!r}: give 2 or 3 shares above 0 (train first) that "
                          "add up to 1, e.g. 0.8,0.1,0.1 (or 0.9,0.1 for no test split)")
    return ratios


def assign(groups: np.ndarray, strata: list[str] | None, ratios: list[float],
           seed: int) -> np.ndarray:
    """Split index per row: whole groups are placed, per stratum, on the split furthest
    below its target share (groups in seeded random order)."""
    rng = np.random.default_rng(seed)
    heads = np.unique(groups)
    rng.shuffle(heads)
    size = {h: 0 for h in heads.tolist()}
    for g in groups.tolist():
        size[g] += 1
    stratum_of = {h: (strata[h] if strata else "") for h in heads.tolist()}
    split_of: dict[int, int] = {}
    filled: dict[str, np.ndarray] = {}
    target = np.asarray(ratios, dtype=np.float64)
    for h in heads.tolist():
        s = stratum_of[h]
        have = filled.setdefault(s, np.zeros(len(ratios)))
        total = have.sum() + size[h]
        need = target * total - have  # rows each split is short of, counting this group
        k = int(np.argmax(need))
        split_of[h] = k
        have[k] += size[h]
    return np.array([split_of[g] for g in groups.tolist()], dtype=np.int64)


def split_file(path: str, ratios: list[float], seed: int = 42, stratify: str = "",
               text_field: str = "text", out: str | None = None, overwrite: bool = False,
               quoting: str = "none", near_threshold: float = 0.8) -> dict:
    """Write the splits; returns {split: {"path", "rows"}} plus group counts."""
    from tfsft import runs

    source = Path(path)
    fmt = data_lib.detect_format(str(source), "auto")
    if fmt == "tfds":
        raise ConfigError("data split takes a file; TFDS datasets come split already")
    rows = data_lib.read_rows(str(source), fmt, quoting)
    if not len(rows):
        raise ConfigError(f"{source}: no rows to split")
    missing = [f for f in [text_field, stratify] if f and f not in rows.fields[0]]
    if missing:
        raise ConfigError(f"{source}: no field {missing[0]!r} (fields: "
                          f"{', '.join(rows.fields[0])}); set --text-field / --stratify")
    texts = [str(r.get(text_field, "")) for r in rows.fields]
    groups = dedup.near_duplicate_groups(texts, near_threshold)
    strata = [json.dumps(r.get(stratify), sort_keys=True) for r in rows.fields] \
        if stratify else None
    which = assign(groups, strata, ratios, seed)
    empty = [NAMES[k] for k in range(len(ratios)) if not np.any(which == k)]
    if empty:
        raise ConfigError(f"{source}: the {' and '.join(empty)} split(s) would be empty ("
                          f"{len(rows)} rows in {len(np.unique(groups))} duplicate groups, "
                          f"ratios {','.join(f'{r:g}' for r in ratios)}); use more rows or "
                          "larger shares for them (nothing was written)")
    folder = Path(out) if out else source.parent / f"{source.name.split('.')[0]}_splits"
    suffix = "".join(source.suffixes).removesuffix(".gz") or ".tsv"
    targets = {NAMES[k]: folder / f"{NAMES[k]}{suffix}" for k in range(len(ratios))}
    clash = [str(p) for p in targets.values() if p.exists() and p.samefile(source)]
    if clash:
        raise RunDirError(f"{clash[0]} is the file being split: writing the splits there "
                          "would replace it; choose another --out")
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise RunDirError(f"{', '.join(existing)} already exist(s); choose --out or pass "
                          "--overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    header = list(rows.fields[0])
    result = {"source": str(source), "ratios": ratios, "seed": seed, "stratify": stratify,
              "groups": int(len(np.unique(groups))), "rows": len(rows), "splits": {}}
    for k, (name, target) in enumerate(targets.items()):
        chosen = [rows.fields[i] for i in np.flatnonzero(which == k)]
        runs.write_text(target, data_lib.serialise_rows(fmt, quoting, header, chosen))
        result["splits"][name] = {"path": str(target), "rows": len(chosen)}
    return result
