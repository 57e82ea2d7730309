"""`data inspect`: each detector on hand-built data, and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tfsft import datareport

REPO = Path(__file__).resolve().parents[1]


class Ex:
    def __init__(self, rows):
        self.texts = [t for t, _ in rows]
        self.labels = [lb for _, lb in rows]
        self.where = [f"f.tsv:{i + 2}" for i in range(len(rows))]


LONG = "the quick brown fox jumps over the lazy dog near the river bank today"
TRAIN = Ex([
    (LONG, "pos"),
    (LONG.upper() + "  ", "pos"),  # exact duplicate after normalisation
    (LONG + " again", "pos"),  # near duplicate
    ("a totally unrelated sentence about cooking pasta", "neg"),
    ("A totally unrelated sentence about cooking pasta", "pos"),  # conflicting label
    ("!!! 123 ???", "neg"),  # no letters
    ("<div><b>x</b></div>&nbsp;&amp;", "neg"),  # mostly markup
    ("Это совсем другой язык", "neg"),  # other script
    ("one more ordinary line of text here", "neg"),
])
VALID = Ex([
    ("One more ordinary line of text here", "neg"),  # exact leak
    (LONG + " indeed", "pos"),  # near leak
    ("a fresh sentence that is nowhere in train", "pos"),
])


def test_every_detector_on_hand_built_rows():
    rep = datareport.split_report(TRAIN, 0.8)
    assert rep["rows"] == 9
    assert rep["label_distribution"] == {"neg": 5, "pos": 4} and rep["imbalance_ratio"] == 1.25
    assert rep["exact_duplicates"]["rows"] == 2  # row 2, and row 5 (same text as row 4)
    assert "f.tsv:3 repeats f.tsv:2" in rep["exact_duplicates"]["examples"][0]
    assert rep["near_duplicates"]["rows"] == 1 and "f.tsv:4 in the group of f.tsv:2" in \
        rep["near_duplicates"]["examples"][0]
    assert rep["conflicting_labels"]["texts"] == 1
    assert "['neg', 'pos']" in rep["conflicting_labels"]["examples"][0]
    s = rep["suspicious"]
    assert s["no_letters"]["rows"] == 1 and "f.tsv:7" in s["no_letters"]["examples"][0]
    assert s["mostly_markup"]["rows"] == 1 and "f.tsv:8" in s["mostly_markup"]["examples"][0]
    assert s["other_script"] == {"rows": 1, "majority": "LATIN",
                                 "examples": [s["other_script"]["examples"][0]]}
    assert "CYRILLIC" in s["other_script"]["examples"][0]


def test_cross_split_leakage_exact_and_near():
    leak = datareport.leakage(TRAIN, VALID, 0.8)
    assert leak["exact"]["rows"] == 1 and "f.tsv:2" in leak["exact"]["examples"][0]
    assert leak["near"]["rows"] == 1
    assert "f.tsv:3 in the group of f.tsv:2" in leak["near"]["examples"][0]


def test_data_inspect_command_writes_json_and_histogram(tmp_path, tiny_bert):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{lb}\n" for t, lb in zip(TRAIN.texts,
                                                                              TRAIN.labels)))
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\n" + "".join(f"{t}\t{lb}\n" for t, lb in zip(VALID.texts,
                                                                            VALID.labels)))
    cmd = [sys.executable, "-m", "tfsft", "data", "inspect", "tasks/sentiment",
           f"model.backbone={tiny_bert}", f"data.train={train}", f"data.validation={dev}",
           "task.labels=[neg, pos]", "data.max_length=8", "--out", str(tmp_path / "rep")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    first = (tmp_path / "rep" / "inspect.json").read_bytes()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr, again.stderr[-3000:]
    assert (tmp_path / "rep" / "inspect.json").read_bytes() == first
    assert "leakage validation -> train: 1 exact, 1 near" in r.stdout
    report = json.loads((tmp_path / "rep" / "inspect.json").read_text())
    assert report["splits"]["train"]["conflicting_labels"]["texts"] == 1
    assert report["splits"]["train"]["truncated_share"] > 0  # max_length 8 cuts LONG
    assert (tmp_path / "rep" / "token_lengths.png").stat().st_size > 1000
