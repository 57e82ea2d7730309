"""Cleaning and de-duplication of read rows, shared by `tfsft data clean` and `fit`.

Works on reader rows (`data.Rows`), before the task maps them to examples, so the cleaned
rows can be written back in their own format and re-read by `fit` unchanged. Steps, in
order, each recorded as a change:

1. `clean`: in each text field, decode HTML entities, remove HTML tags, comments and
   script/style blocks, drop control and zero-width characters, normalise Unicode to NFC
   and runs of whitespace to one space; drop rows whose text is left empty.
2. `dedup` (`exact` or `near`): within each split keep the first row of each group of
   duplicates (dedup.exact_groups / dedup.near_duplicate_groups on the text fields
   together), then drop validation and test rows whose text is also in train.

Original files are never touched: callers get new `Rows` and the list of changes.

Example:
>>> clean_text("  Caf\\u0065\\u0301 &amp; <b>bar</b>\\n")
('Café & bar', ['html_entities', 'html_tags', 'unicode_nfc', 'whitespace'])
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field

from tfsft import dedup
from tfsft.data import Rows

DEDUP = ("off", "exact", "near")
_BLOCK = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_SPACE = re.compile(r"\s+")
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}


def clean_text(text: str) -> tuple[str, list[str]]:
    """The cleaned text and the kinds of change made (empty when none)."""
    kinds = []
    out = text
    unescaped = html.unescape(html.unescape(out))  # twice: "&amp;amp;" is common in scrapes
    if unescaped != out:
        kinds.append("html_entities")
        out = unescaped
    stripped = _TAG.sub(" ", _COMMENT.sub(" ", _BLOCK.sub(" ", out)))
    if stripped != out:
        kinds.append("html_tags")
        out = stripped
    visible = "".join(c for c in out if c not in _INVISIBLE and (
        c in "\t\n\r" or unicodedata.category(c) != "Cc"))
    if visible != out:
        kinds.append("control_chars")
        out = visible
    nfc = unicodedata.normalize("NFC", out)
    if nfc != out:
        kinds.append("unicode_nfc")
        out = nfc
    spaced = _SPACE.sub(" ", out).strip()
    if spaced != out:
        kinds.append("whitespace")
        out = spaced
    return out, kinds


@dataclass(frozen=True)
class Options:
    clean: bool = False
    dedup: str = "off"  # off | exact | near
    near_threshold: float = 0.8

    @property
    def active(self) -> bool:
        return self.clean or self.dedup != "off"


@dataclass
class Result:
    """Cleaned rows per split, every change, and counts per split."""

    rows: dict[str, Rows]
    changes: list[dict] = field(default_factory=list)
    counts: dict[str, dict] = field(default_factory=dict)

    def summary(self, options: Options) -> dict:
        return {"clean": options.clean, "dedup": options.dedup,
                "near_threshold": options.near_threshold, "splits": self.counts}


def _key(row: dict, text_fields: list[str]) -> str:
    return "\x1f".join(dedup.normalise(str(row.get(f, ""))) for f in text_fields)


def _keep(rows: Rows, keep: list[int]) -> Rows:
    return Rows(rows.source, [rows.fields[i] for i in keep], [rows.where[i] for i in keep],
                rows.skipped)


def apply(rows: dict[str, Rows], text_fields: list[str], options: Options) -> Result:
    """Clean and de-duplicate `rows` (split name -> Rows; "train" first when present)."""
    if options.dedup not in DEDUP:
        raise ValueError(f"dedup must be one of {DEDUP}, got {options.dedup!r}")
    result = Result(rows=dict(rows))
    for split in rows:
        result.counts[split] = {"rows_in": len(rows[split]), "changed": 0, "changes": {},
                                "dropped": {}}
    if options.clean:
        for split, r in rows.items():
            result.rows[split] = _clean_split(split, r, text_fields, result)
    if options.dedup != "off":
        for split in list(result.rows):
            result.rows[split] = _dedup_split(split, result.rows[split], text_fields,
                                              options, result)
        if "train" in result.rows:
            for split in [s for s in result.rows if s != "train"]:
                result.rows[split] = _drop_leaked(split, result.rows[split],
                                                  result.rows["train"], text_fields, options,
                                                  result)
    for split, r in result.rows.items():
        result.counts[split]["rows_out"] = len(r)
    return result


def _drop(result: Result, split: str, where: str, reason: str, text: str, of: str = "") -> None:
    dropped = result.counts[split]["dropped"]
    dropped[reason] = dropped.get(reason, 0) + 1
    change = {"split": split, "where": where, "action": "dropped", "reason": reason,
              "text": text}
    if of:
        change["of"] = of
    result.changes.append(change)


def _clean_split(split: str, rows: Rows, text_fields: list[str], result: Result) -> Rows:
    counts = result.counts[split]
    fields, keep = [], []
    for i, (row, where) in enumerate(zip(rows.fields, rows.where)):
        new, changed = dict(row), False
        for f in text_fields:
            value = row.get(f)
            if not isinstance(value, str):
                continue  # missing or not text: the task reports it
            cleaned, kinds = clean_text(value)
            if kinds:
                changed = True
                new[f] = cleaned
                for k in kinds:
                    counts["changes"][k] = counts["changes"].get(k, 0) + 1
                result.changes.append({"split": split, "where": where, "action": "changed",
                                       "field": f, "kinds": kinds, "before": value,
                                       "after": cleaned})
        counts["changed"] += changed
        fields.append(new)
        if any(isinstance(new.get(f), str) and not new[f] for f in text_fields):
            _drop(result, split, where, "empty", _key(row, text_fields))
        else:
            keep.append(i)
    return _keep(Rows(rows.source, fields, rows.where, rows.skipped), keep)


def _dedup_split(split: str, rows: Rows, text_fields: list[str], options: Options,
                 result: Result) -> Rows:
    keys = [_key(r, text_fields) for r in rows.fields]
    groups = (dedup.exact_groups(keys) if options.dedup == "exact"
              else dedup.near_duplicate_groups(keys, options.near_threshold))
    keep = []
    for i, g in enumerate(groups.tolist()):
        if g == i:
            keep.append(i)
            continue
        reason = "exact_duplicate" if keys[g] == keys[i] else "near_duplicate"
        _drop(result, split, rows.where[i], reason, keys[i], of=rows.where[g])
    return _keep(rows, keep)


def _drop_leaked(split: str, rows: Rows, train: Rows, text_fields: list[str],
                 options: Options, result: Result) -> Rows:
    """Drop rows of `rows` whose text is (exactly, or with `near` nearly) in train."""
    train_keys = [_key(r, text_fields) for r in train.fields]
    keys = [_key(r, text_fields) for r in rows.fields]
    first = {}
    for j, k in enumerate(train_keys):
        first.setdefault(k, j)
    near = None
    if options.dedup == "near" and keys:
        near = dedup.near_duplicate_groups(train_keys + keys, options.near_threshold)
    n, keep = len(train_keys), []
    for i, k in enumerate(keys):
        if k in first:
            _drop(result, split, rows.where[i], "in_train_exact", k, of=train.where[first[k]])
        elif near is not None and near[n + i] < n:
            _drop(result, split, rows.where[i], "in_train_near", k,
                  of=train.where[int(near[n + i])])
        else:
            keep.append(i)
    return _keep(rows, keep)


def format_summary(summary: dict) -> list[str]:
    """One line per split: rows in/out, changes by kind, drops by reason."""
    lines = []
    for split, c in summary["splits"].items():
        changes = ", ".join(f"{k} {v}" for k, v in sorted(c["changes"].items())) or "none"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(c["dropped"].items())) or "none"
        lines.append(f"{split}: {c['rows_in']} -> {c['rows_out']} rows; {c['changed']} rows "
                     f"changed ({changes}); dropped: {dropped}")
    return lines



def write(result: Result, options: Options, sources: dict[str, str], out: str,
          fmt: str = "auto", quoting: str = "none", overwrite: bool = False) -> dict:
    """`tfsft data clean`: write each split's cleaned rows to `out/<split><suffix>` in its
    own format (TFDS sources as JSONL), `changes.jsonl` (every change) and
    `clean_report.json` (counts). Never writes over a source file; other existing files
    only with `overwrite`."""
    import json
    from pathlib import Path

    from tfsft import data as data_lib
    from tfsft import runs
    from tfsft.errors import DataError, RunDirError

    emptied = [f"{split} ({sources[split]}): all {result.counts[split]['rows_in']} rows dropped "
               f"({result.counts[split]['dropped']})" for split, r in result.rows.items()
               if not len(r)]
    if emptied:
        raise DataError(["data clean would leave nothing to write:"] + emptied
                        + ["check `task.text_field` and the input with `tfsft data inspect`"])
    folder = Path(out)
    targets, formats = {}, {}
    for split, source in sources.items():
        formats[split] = data_lib.detect_format(source, fmt)
        suffix = (".jsonl" if formats[split] == "tfds"
                  else "".join(Path(source).suffixes).removesuffix(".gz") or ".tsv")
        targets[split] = folder / f"{split}{suffix}"
    reports = {"changes": folder / "changes.jsonl", "report": folder / "clean_report.json"}
    sources_resolved = {Path(s).resolve() for s in sources.values() if not s.startswith("tfds:")}
    clash = [str(p) for p in [*targets.values(), *reports.values()]
             if p.resolve() in sources_resolved]
    if clash:
        raise RunDirError(f"{', '.join(clash)} is an input file: data clean never writes over "
                          "its input; choose another --out")
    existing = [str(p) for p in [*targets.values(), *reports.values()] if p.exists()]
    if existing and not overwrite:
        raise RunDirError(f"{', '.join(existing)} already exist(s); choose another --out or "
                          "pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, path in targets.items():
        rows = result.rows[split]
        file_fmt = "jsonl" if formats[split] == "tfds" else formats[split]
        header = list(rows.fields[0]) if len(rows) else []
        runs.write_text(path, data_lib.serialise_rows(file_fmt, quoting, header, rows.fields))
        written[split] = {"source": sources[split], "path": str(path), "rows": len(rows)}
    runs.write_text(reports["changes"], "".join(json.dumps(c, ensure_ascii=False) + "\n"
                                                for c in result.changes))
    report = {**result.summary(options), "files": written,
              "changes_file": str(reports["changes"])}
    runs.write_json(reports["report"], report)
    return report
