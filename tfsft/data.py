"""Readers: TSV/CSV/JSONL files and TFDS datasets -> validated rows with their origin.

Readers know nothing of tasks: they return every row as a dict of field -> value, each
with its "file:line" origin, and raise `DataError` (file, line, what was expected, what was
received, how to fix it) for rows that cannot be read at all. Tasks map fields to their
inputs and check the values. No TensorFlow import here unless a `tfds:` source is read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfsft.errors import DataError

MAX_FIELD_CHARS = 10_000_000  # csv's default limit (131,072) rejects long documents


@dataclass(frozen=True)
class Rows:
    """Rows of one split: `fields[i]` came from `where[i]` ("train.tsv:17")."""

    source: str
    fields: list[dict]
    where: list[str]

    def __len__(self) -> int:
        return len(self.fields)


def detect_format(source: str, fmt: str) -> str:
    if source.startswith("tfds:"):
        return "tfds"
    if fmt != "auto":
        return fmt
    suffix = Path(source).suffix.lower()
    known = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "tsv"}
    if suffix not in known:
        raise DataError(f"{source}: cannot tell the format from the suffix {suffix!r}; "
                        "use .tsv, .csv or .jsonl, or set `data.format`")
    return known[suffix]


def read_rows(source: str, fmt: str = "auto", quoting: str = "none", split: str = "train",
              tfds_dir: str = "", tfds_download: bool = False) -> Rows:
    """Read one split from a file or a `tfds:name[:split]` source."""
    fmt = detect_format(source, fmt)
    if fmt == "tfds":
        return read_tfds(source, split, tfds_dir, tfds_download)
    lines = read_lines(Path(source))
    if fmt == "jsonl":
        return parse_jsonl(source, lines)
    if fmt == "csv":
        return _parse_delimited(source, lines, ",", csv.QUOTE_MINIMAL)
    return _parse_delimited(source, lines, "\t",
                            csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)


def read_lines(path: Path) -> list[str]:
    """Decode a file line by line so an encoding error names its line."""
    if not path.exists():
        raise DataError(f"{path}: file not found. Check `data.train`/`data.validation`.")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a data file")
    raw = path.read_bytes()
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(f"{path} is gzip-compressed; decompress it first (gunzip {path})")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, problems = [], []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{number}: invalid UTF-8 at byte {e.start} "
                            f"({chunk[max(0, e.start - 10):e.start + 10]!r}); "
                            "re-save the file as UTF-8")
            text = ""
        if "\x00" in text:
            problems.append(f"{path}:{number}: contains a NUL byte; remove it")
        lines.append(text.rstrip("\r"))
    if problems:
        raise DataError(problems)
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path} is empty; expected a header line and at least one row")
    return lines


def _parse_delimited(source: str, lines: list[str], delimiter: str, quoting: int) -> Rows:
    """Rows of a delimited file; a quoted field may span lines (it is reported at its
    first line)."""
    name = Path(source).name
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n", newline=""),
                        delimiter=delimiter, quoting=quoting)
    sep = "TAB" if delimiter == "\t" else repr(delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(f"{source}:1: cannot parse the header ({e})") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise DataError(f"{source}:1: the header {header!r} must name each column once")
    fields, where, problems = [], [], []
    while True:
        number = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(f"{source}:{number}: cannot parse this row ({e}); check its quotes "
                            "or set `data.quoting`")
            break
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            problems.append(f"{source}:{number}: expected {len(header)} {sep}-separated fields "
                            f"({', '.join(header)}), got {len(row)}: {lines[number - 1][:80]!r}")
            continue
        fields.append(dict(zip(header, row)))
        where.append(f"{name}:{number}")
    if problems:
        raise DataError(problems)
    return Rows(source, fields, where)


def parse_jsonl(source: str, lines: list[str]) -> Rows:
    name = Path(source).name
    fields, where, problems = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{source}:{number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{source}:{number}: expected a JSON object, got "
                            f"{type(obj).__name__}")
            continue
        fields.append(obj)
        where.append(f"{name}:{number}")
    if problems:
        raise DataError(problems)
    return Rows(source, fields, where)


def read_tfds(source: str, split: str, data_dir: str, download: bool) -> Rows:
    """`tfds:glue/sst2` (split from the caller) or `tfds:glue/sst2:validation`."""
    spec = source[len("tfds:"):]
    name, _, explicit_split = spec.partition(":")
    split = explicit_split or split
    from tfsft import quiet

    quiet.import_tensorflow_quietly()
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("reading tfds: sources needs tensorflow-datasets: "
                        "pip install tensorflow-datasets") from None
    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir or None, download=download,
                             with_info=True)
    except Exception as e:  # TFDS raises many types for missing data/splits
        hint = "" if download else " Set data.tfds_download=true to download it (needs network)."
        raise DataError(f"{source}: TFDS could not load split {split!r}: {e}.{hint}") from None
    label_names = {k: f.names for k, f in info.features.items() if hasattr(f, "names")}
    fields, where = [], []
    for i, ex in enumerate(tfds.as_numpy(ds)):
        row = {}
        for k, v in ex.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8")
            elif k in label_names and np.ndim(v) == 0:
                # unlabelled splits (GLUE test) store -1: report the label as missing
                n = int(v)
                v = label_names[k][n] if 0 <= n < len(label_names[k]) else None
            elif isinstance(v, np.generic):
                v = v.item()
            row[k] = v
        fields.append(row)
        where.append(f"{source}[{split}]#{i}")
    return Rows(source, fields, where)


def fingerprint(source: str) -> dict:
    """sha256 and size of a data file (recorded in the run manifest)."""
    path = Path(source)
    if source.startswith("tfds:") or not path.is_file():
        return {"source": source}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"source": str(path), "sha256": digest, "bytes": path.stat().st_size}


def stratified_split(labels: list, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified (train_idx, validation_idx): `fraction` of each label held out."""
    rng = np.random.default_rng(seed)
    keys = np.array([str(label) for label in labels])
    held = []
    for key in sorted(set(keys.tolist())):
        idx = np.flatnonzero(keys == key)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        held.extend(idx[:n].tolist())
    held = np.array(sorted(held), dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held
