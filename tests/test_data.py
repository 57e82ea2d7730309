from __future__ import annotations

import gzip

import numpy as np
import pytest

from tfsft import data
from tfsft.errors import DataError


def write(path, text: str | bytes):
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def test_tsv_no_quoting_keeps_quotes(tmp_path):
    p = write(tmp_path / "a.tsv", 'text\tlabel\n"quoted" start\tpos\nplain\tneg\n')
    rows = data.read_rows(str(p))
    assert rows.fields[0]["text"] == '"quoted" start'
    assert rows.where == ["a.tsv:2", "a.tsv:3"]


def test_tsv_csv_quoting(tmp_path):
    p = write(tmp_path / "a.tsv", 'text\tlabel\n"has\ttab"\tpos\n')
    assert data.read_rows(str(p), quoting="csv").fields[0]["text"] == "has\ttab"


def test_csv_and_jsonl(tmp_path):
    p = write(tmp_path / "a.csv", 'text,label\n"a, b",pos\n')
    assert data.read_rows(str(p)).fields == [{"text": "a, b", "label": "pos"}]
    j = write(tmp_path / "a.jsonl", '{"text": "x", "label": 1}\n\n{"text": "y", "label": 0}\n')
    rows = data.read_rows(str(j))
    assert [r["label"] for r in rows.fields] == [1, 0]
    assert rows.where == ["a.jsonl:1", "a.jsonl:3"]


def test_wrong_column_count_names_file_and_line(tmp_path):
    p = write(tmp_path / "bad.tsv", "text\tlabel\nok\tpos\ntoo\tmany\tfields\nnone\n")
    with pytest.raises(DataError) as e:
        data.read_rows(str(p))
    msg = str(e.value)
    assert "bad.tsv:3: expected 2 TAB-separated fields (text, label), got 3" in msg
    assert "bad.tsv:4" in msg and "2 data errors" in msg


def test_invalid_utf8_names_line(tmp_path):
    p = write(tmp_path / "enc.tsv", b"text\tlabel\nfine\tpos\ncaf\xe9\tneg\n")
    with pytest.raises(DataError, match=r"enc.tsv:3: invalid UTF-8"):
        data.read_rows(str(p))


def test_half_a_surrogate_pair_in_json_names_line(tmp_path):
    p = write(tmp_path / "s.jsonl", b'{"text": "fine", "label": "a"}\n'
              b'{"text": "bad \\ud800 film", "label": "b"}\n')
    with pytest.raises(DataError, match=r"s.jsonl:2: a \\u escape in it is half of a UTF-16"):
        data.read_rows(str(p))


def test_a_key_twice_in_a_json_row_names_line(tmp_path):
    p = write(tmp_path / "d.jsonl", b'{"text": "ok", "label": "a"}\n'
              b'{"text": "one", "label": "a", "text": "two"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: the key 'text' appears twice"):
        data.read_rows(str(p))


def test_standard_input_is_checked_like_a_file(monkeypatch):
    import io
    import types

    from tfsft import workflow

    def stdin(raw: bytes):
        monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))

    stdin(b"good film\r\n\nbad film\n")
    rows = workflow.read_predict_input("-")
    assert [r["text"] for r in rows.fields] == ["good film", "bad film"]
    assert rows.where == ["<stdin>:1", "<stdin>:3"]
    stdin(b"fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"<stdin>:2: invalid UTF-8"):
        workflow.read_predict_input("-")
    stdin(b"a\x00b\n")
    with pytest.raises(DataError, match=r"<stdin>:1: contains a NUL byte"):
        workflow.read_predict_input("-")


def test_bom_and_crlf_are_tolerated(tmp_path):
    p = write(tmp_path / "w.tsv", b"\xef\xbb\xbftext\tlabel\r\nhello\tpos\r\n")
    rows = data.read_rows(str(p))
    assert rows.fields == [{"text": "hello", "label": "pos"}]


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "gzip", "suffix", "json"])
def test_unreadable_inputs_are_clear(tmp_path, case):
    path = tmp_path / "x.tsv"
    match = {"missing": "file not found", "directory": "is a directory", "empty": "is empty",
             "gzip": "cannot be decompressed", "suffix": "cannot tell the format",
             "json": "not valid JSON"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        write(path, "\n\n")
    elif case == "gzip":
        write(path, gzip.compress(b"text\tlabel\nfine\tpos\n")[:-6])  # truncated
    elif case == "suffix":
        path = write(tmp_path / "x.parquet", "x")
    elif case == "json":
        path = write(tmp_path / "x.jsonl", '{"text": "a"}\n{broken\n')
    with pytest.raises(DataError, match=match):
        data.read_rows(str(path))


def test_stratified_split_is_deterministic_and_stratified():
    labels = ["a"] * 80 + ["b"] * 20
    keep1, held1 = data.stratified_split(labels, 0.1, seed=3)
    keep2, held2 = data.stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(held1, held2) and np.array_equal(keep1, keep2)
    assert sorted(set(keep1) | set(held1)) == list(range(100))
    assert [labels[i] for i in held1].count("a") == 8
    assert [labels[i] for i in held1].count("b") == 2
    _, held3 = data.stratified_split(labels, 0.1, seed=4)
    assert not np.array_equal(held1, held3)


def test_fingerprint(tmp_path):
    p = write(tmp_path / "a.tsv", "text\tlabel\nx\ty\n")
    fp = data.fingerprint(str(p))
    assert len(fp["sha256"]) == 64 and fp["bytes"] == p.stat().st_size
    p.write_text("text\tlabel\nx\tz\n")
    assert data.fingerprint(str(p))["sha256"] != fp["sha256"]


def test_quoted_field_spanning_lines_keeps_newline_and_first_line(tmp_path):
    p = write(tmp_path / "q.csv", 'text,label\n"two\nlines",a\nnext,b\n')
    rows = data.read_rows(str(p))
    assert rows.fields[0]["text"] == "two\nlines"
    assert rows.where == ["q.csv:2", "q.csv:4"]


def test_unparseable_csv_row_is_a_data_error(tmp_path):
    p = write(tmp_path / "bad.csv", 'text,label\n"unterminated,a\n')
    with pytest.raises(DataError, match="bad.csv:2"):
        data.read_rows(str(p))


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        rows = data.read_rows("tfds:glue/sst2", split="train")
    assert len(rows) == 6
    assert set(rows.fields[0]) >= {"sentence", "label"}
    assert isinstance(rows.fields[0]["sentence"], str)
    assert rows.fields[0]["label"] in ("negative", "positive")
    assert rows.where[0] == "tfds:glue/sst2[train]#0"


def test_tfds_missing_without_download_is_a_data_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="data.tfds_download=true"):
        data.read_rows("tfds:glue/sst2", split="train", tfds_dir=str(tmp_path))


# --------------------------------------------------------------------------- property-based
# Every reader, fed generated files that mix valid rows with bad lines of every kind it
# must catch, either returns exactly the valid rows (on_error=skip: and one message per bad
# line) or raises DataError (on_error=raise, when any line is bad) - never anything else.

import csv as _csv  # noqa: E402
import io as _io  # noqa: E402
import json as _json  # noqa: E402

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LIMIT = 60  # data.max_line_chars in these tests
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=20)
_BAD = ["utf8", "nul", "long", "columns"]


def _row_text(fmt: str, text: str, label: str) -> str | None:
    """One valid row in `fmt`, or None if this text cannot be a valid row of it."""
    if fmt == "jsonl":
        return _json.dumps({"text": text, "label": label}, ensure_ascii=False)
    if fmt == "tsv":
        if any(ch in text + label for ch in "\t\n\r"):
            return None
        return f"{text}\t{label}"
    buf = _io.StringIO()
    _csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n").writerow(
        [text, label])
    line = buf.getvalue()[:-1]
    if "\r" in line:
        return None
    return line


def _bad_line(fmt: str, kind: str) -> bytes:
    if kind == "utf8":
        return b"caf\xe9 latin-1\t" + (b'"label": 1' if fmt == "jsonl" else b"pos")
    if kind == "nul":
        return b"has\x00nul\tpos" if fmt != "jsonl" else b'{"text": "a\x00", "label": "p"}'
    if kind == "long":
        return b"x" * (LIMIT + 1)
    sep = {"csv": b",", "tsv": b"\t", "tsv-csv": b"\t"}.get(fmt)
    if fmt == "jsonl":
        return b'{"text": "unclosed'
    return sep.join([b"one", b"two", b"three"])


@st.composite
def _files(draw, fmt: str):
    """(bytes, expected rows, number of bad lines)."""
    entries = draw(st.lists(st.one_of(st.tuples(st.just("ok"), _TEXT, _TEXT),
                                      st.tuples(st.just("bad"), st.sampled_from(_BAD)),
                                      st.just(("blank",))), max_size=12))
    crlf = draw(st.booleans())
    bom = draw(st.booleans())
    lines, expected, bad = [], [], 0
    if fmt != "jsonl":
        lines.append(b"text" + (b"," if fmt == "csv" else b"\t") + b"label")
    for entry in entries:
        if entry[0] == "ok":
            text = _row_text(fmt, entry[1], entry[2])
            if text is None or len(text) > LIMIT or any(len(p) > LIMIT for p in text.split("\n")):
                continue
            if fmt != "jsonl" and len(entry[1].strip()) == 0 and len(entry[2].strip()) == 0:
                continue  # all-blank fields may read as a blank line
            lines.append(text.encode("utf-8"))
            expected.append({"text": entry[1], "label": entry[2]})
        elif entry[0] == "bad":
            lines.append(_bad_line(fmt, entry[1]))
            bad += 1
        else:
            lines.append(b"")
    end = b"\r\n" if crlf else b"\n"
    raw = (b"\xef\xbb\xbf" if bom else b"") + end.join(lines) + end
    return raw, expected, bad


def _check_reader(tmp_path, fmt, sample):
    raw, expected, bad = sample
    event(f"{fmt}: {'with bad lines' if bad else 'valid'}")  # --hypothesis-show-statistics
    suffix = {"tsv": ".tsv", "tsv-csv": ".tsv", "csv": ".csv", "jsonl": ".jsonl"}[fmt]
    path = tmp_path / f"gen{suffix}"
    path.write_bytes(raw)
    quoting = "csv" if fmt == "tsv-csv" else "none"
    has_rows = bool(expected) or bad
    try:
        rows = data.read_rows(str(path), quoting=quoting, on_error="skip", max_line_chars=LIMIT)
    except DataError:
        assert not expected, "skip mode raised although valid rows exist"
    else:
        assert rows.fields == expected
        assert len(rows.skipped) == bad
    try:
        rows = data.read_rows(str(path), quoting=quoting, max_line_chars=LIMIT)
    except DataError as e:
        assert bad or not has_rows, f"raised on a valid file: {e}"
    else:
        assert not bad and rows.fields == expected


@pytest.mark.parametrize("fmt", ["tsv", "tsv-csv", "csv", "jsonl"])
def test_readers_return_exactly_the_valid_rows_or_raise(tmp_path, fmt):
    @settings(max_examples=250, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(sample=_files(fmt))
    def run(sample):
        _check_reader(tmp_path, fmt, sample)

    run()
