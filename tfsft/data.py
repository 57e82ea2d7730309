"""Readers: TSV/CSV/JSONL files and TFDS datasets -> validated rows with their origin.

Readers know nothing of tasks: they return every row as a dict of field -> value, each
with its "file:line" origin, and raise `DataError` (file, line, what was expected, what was
received, how to fix it) for rows that cannot be read at all. Tasks map fields to their
inputs and check the values. No TensorFlow import here unless a `tfds:` source is read.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfsft.errors import DataError

MAX_FIELD_CHARS = 10_000_000  # csv's default limit (131,072) rejects long documents
MAX_LINE_CHARS = 1_000_000  # default `data.max_line_chars`
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Rows:
    """Rows of one split: `fields[i]` came from `where[i]` ("train.tsv:17"). `skipped`: one
    message per row dropped under `data.on_error: skip` (empty when raising)."""

    source: str
    fields: list[dict]
    where: list[str]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.fields)

    def drop(self, idx, reasons) -> "Rows":
        """These rows without the rows at `idx`, whose `reasons` join `skipped`."""
        bad = set(idx)
        keep = [i for i in range(len(self.fields)) if i not in bad]
        return Rows(self.source, [self.fields[i] for i in keep], [self.where[i] for i in keep],
                    self.skipped + tuple(reasons))


def detect_format(source: str, fmt: str) -> str:
    if source.startswith("tfds:"):
        return "tfds"
    if fmt != "auto":
        return fmt
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    known = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "tsv",
             ".conll": "conll"}
    if suffix not in known:
        raise DataError(f"{source}: cannot tell the format from the suffix {suffix!r}; "
                        "use .tsv, .csv or .jsonl (optionally .gz), or set `data.format`")
    return known[suffix]


def read_rows(source: str, fmt: str = "auto", quoting: str = "none", split: str = "train",
              tfds_dir: str = "", tfds_download: bool = False, on_error: str = "raise",
              max_line_chars: int = MAX_LINE_CHARS) -> Rows:
    """Read one split from a file (plain or gzip) or a `tfds:name[:split]` source.

    Problems of single rows (wrong field count, bad quoting, invalid UTF-8, NUL bytes,
    over-long lines, invalid JSON) raise one `DataError` listing them all, or with
    `on_error="skip"` drop those rows and list them in `Rows.skipped`. Problems of the
    whole file (missing, a directory, empty, unreadable header) always raise.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    fmt = detect_format(source, fmt)
    if fmt == "tfds":
        return read_tfds(source, split, tfds_dir, tfds_download)
    lines, bad = read_lines(Path(source), max_line_chars, on_error,
                            header=fmt not in ("jsonl", "conll"))
    if fmt == "jsonl":
        rows = parse_jsonl(source, lines, on_error)
    elif fmt == "conll":
        rows = parse_conll(source, lines, on_error)
    elif fmt == "csv":
        rows = _parse_delimited(source, lines, ",", csv.QUOTE_MINIMAL, on_error)
    else:
        rows = _parse_delimited(source, lines, "\t",
                                csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
                                on_error)
    return Rows(rows.source, rows.fields, rows.where, tuple(bad) + rows.skipped)


def read_lines(path: Path, max_line_chars: int = MAX_LINE_CHARS, on_error: str = "raise",
               header: bool = False) -> tuple[list[str], list[str]]:
    """Decode a file line by line so that an encoding error names its line.

    Returns (lines, skipped): with on_error="skip" a bad line becomes "" (so line numbers
    still match the file) and its message goes to `skipped`, except a bad `header` line
    (the first non-empty one), which always raises. A UTF-8 byte-order mark and
    CRLF line ends are accepted; gzip files are decompressed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path (relative paths in a YAML "
                        "file are relative to that file's folder, on the command line to the "
                        "current directory).")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a data file (.tsv, .csv, .jsonl)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    if raw.startswith(b"\x1f\x8b"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: looks gzip-compressed but cannot be decompressed ({e}); "
                            f"the file is damaged or truncated: re-create it") from None
    return decode_lines(raw, path, max_line_chars, on_error, header)


def decode_lines(raw: bytes, path, max_line_chars: int = MAX_LINE_CHARS,
                 on_error: str = "raise", header: bool = False) -> tuple[list[str], list[str]]:
    """`read_lines` of bytes already read (a file's, or standard input's: `path` names it)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, problems = [], []
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    for number, chunk in enumerate(chunks, start=1):
        problem = None
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]  # CRLF line end
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            text = ""
            problem = (f"{path}:{number}: invalid UTF-8 at byte {e.start} "
                       f"({chunk[max(0, e.start - 10):e.start + 10]!r}); re-save the file as "
                       "UTF-8 (for example: iconv -f latin1 -t utf-8)")
        if problem is None and "\x00" in text:
            problem = f"{path}:{number}: contains a NUL byte; remove it (the file may be binary)"
        if problem is None and len(text) > max_line_chars:
            problem = (f"{path}:{number}: line of {len(text):,} characters is longer than "
                       f"`data.max_line_chars` ({max_line_chars:,}); split the text or raise "
                       "the limit")
        if problem:
            if header and not any(line.strip() for line in lines):
                raise DataError(f"{problem} (this is the header line)")
            problems.append(problem)
            text = ""
        lines.append(text)
    if not any(line.strip() for line in lines) and not problems:
        raise DataError(f"{path} is empty (no non-blank lines)"
                        + ("; expected a header line and rows" if header else ""))
    if problems and on_error == "raise":
        raise DataError(problems)
    return lines, problems


def parse_conll(source: str, lines: list[str], on_error: str = "raise") -> Rows:
    """Sentences of a CoNLL file: one token per line as whitespace-separated columns (the
    token first, then tags or other annotations), a blank line between sentences,
    `-DOCSTART-` lines skipped. Row: {"columns": [[token, col2, ...] per token]}, at the
    line of its first token (token i is on the line i after it). A line with one column,
    or with another number of columns than the file's first token line, is a bad row (the
    whole sentence under `on_error: skip`)."""
    name = Path(source).name
    fields, where, problems = [], [], []
    width = None
    sentence, start, broken = [], 0, False

    def close():
        if sentence and not broken:
            fields.append({"columns": list(sentence)})
            where.append(f"{name}:{start}")

    for number, line in enumerate(lines + [""], start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            close()
            sentence, broken = [], False
            continue
        if not sentence and not broken:
            start = number
        width = width or (len(parts) if len(parts) >= 2 else None)
        if len(parts) < 2 or len(parts) != width:
            expected = (f"{width} whitespace-separated columns like the file's first token "
                        "line" if width else "at least 2 whitespace-separated columns (a "
                        "token, then its tag)")
            problems.append(f"{source}:{number}: expected {expected}, got {len(parts)}: "
                            f"{line[:80]!r}; a token may not contain spaces, and sentences "
                            "are separated by blank lines")
            broken = True
            continue
        sentence.append(parts)
    if not fields and not problems:
        raise DataError(f"{source} holds no sentences (only blank or -DOCSTART- lines)")
    if problems and on_error == "raise":
        raise DataError(problems)
    return Rows(source, fields, where, tuple(problems))


def _parse_delimited(source: str, lines: list[str], delimiter: str, quoting: int,
                     on_error: str = "raise") -> Rows:
    """Rows of a delimited file; a quoted field may span lines (it is reported at its
    first line)."""
    name = Path(source).name
    csv.field_size_limit(MAX_FIELD_CHARS)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"{source} has no readable lines; expected a header line and rows")
    reader = csv.reader(io.StringIO("\n".join(lines[first:]) + "\n", newline=""),
                        delimiter=delimiter, quoting=quoting, strict=quoting != csv.QUOTE_NONE)
    sep = "TAB" if delimiter == "\t" else repr(delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(f"{source}:{first + 1}: cannot parse the header ({e})") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise DataError(f"{source}:{first + 1}: the header {header!r} must name each column "
                        "once; the first non-empty line of the file is its header")
    fields, where, problems = [], [], []
    while True:
        number = first + reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            hint = ("a quote opened on this line is never closed" if "end of data" in str(e)
                    else "check its quotes")
            problems.append(f"{source}:{number}: cannot parse this row ({e}): {hint}; or set "
                            "`data.quoting: none` if quotes are part of the text")
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            problems.append(f"{source}:{number}: expected {len(header)} {sep}-separated fields "
                            f"({', '.join(header)}), got {len(row)}: {lines[number - 1][:80]!r}")
            continue
        fields.append(dict(zip(header, row)))
        where.append(f"{name}:{number}")
    if problems and on_error == "raise":
        raise DataError(problems)
    return Rows(source, fields, where, tuple(problems))


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def parse_jsonl(source: str, lines: list[str], on_error: str = "raise") -> Rows:
    name = Path(source).name
    fields, where, problems = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            problems.append(f"{source}:{number}: not valid JSON ({e.msg} at column {e.colno}); "
                            "each line must be one JSON object")
            continue
        except _RepeatedKey as e:
            problems.append(f"{source}:{number}: the key {e.args[0]!r} appears twice in one "
                            "object (JSON readers keep either); keep one")
            continue
        except RecursionError:
            problems.append(f"{source}:{number}: JSON nested too deeply")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{source}:{number}: expected a JSON object ({{\"text\": ...}}), "
                            f"got {type(obj).__name__}")
            continue
        try:  # a \ud800-style escape decodes to half a character, which no text can hold
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{source}:{number}: a \\u escape in it is half of a UTF-16 "
                            "surrogate pair (\\ud800-\\udfff) with no other half; fix or "
                            "remove it")
            continue
        fields.append(obj)
        where.append(f"{name}:{number}")
    if problems and on_error == "raise":
        raise DataError(problems)
    return Rows(source, fields, where, tuple(problems))


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
    # labels too rare to give one held-out row (e.g. each sentence's tag sequence in NER)
    # are pooled into one stratum, so they are still sampled
    values, counts = np.unique(keys, return_counts=True)
    rare = set(values[counts * fraction < 0.5].tolist())
    if len(rare) > 1:
        keys = np.array(["\x00rare" if k in rare else k for k in keys.tolist()])
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


def serialise_rows(fmt: str, quoting: str, header: list[str], rows: list[dict]) -> str:
    """Rows as the text of a file in `fmt` (the inverse of `read_rows` for files)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    if fmt == "tsv" and quoting == "none":
        buf.write("\t".join(header) + "\n")
        buf.writelines("\t".join(str(r[h]) for h in header) + "\n" for r in rows)
        return buf.getvalue()
    writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[r[h] for h in header] for r in rows])
    return buf.getvalue()
