"""`data split`: ratios, stratification, duplicates kept together, determinism, safety."""

from __future__ import annotations

import json
import random

import pytest

from tfsft import cli, data, dedup, splitting
from tfsft.errors import ConfigError


def _file(tmp_path, rows=400):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    lines = ["text\tlabel"]
    for i in range(rows):
        label = "pos" if i % 4 == 0 else "neg"  # 25% / 75%
        lines.append(f"{' '.join(rng.choice(words) for _ in range(12))}\t{label}")
    text3, label3 = lines[3].split("\t")
    lines += [lines[1], lines[2].upper().replace("\tNEG", "\tneg"), f"{text3} extra\t{label3}"]
    path = tmp_path / "all.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_keeps_ratios_strata_and_duplicate_groups(tmp_path, capsys):
    path = _file(tmp_path)
    assert cli.main(["data", "split", str(path), "--stratify", "label", "--out",
                     str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    parts = {n: data.read_rows(info["path"]) for n, info in result["splits"].items()}
    sizes = {n: len(r) for n, r in parts.items()}
    assert sum(sizes.values()) == 403
    assert abs(sizes["train"] - 322) <= 3 and abs(sizes["test"] - 40) <= 3
    for rows in parts.values():
        pos = sum(r["label"] == "pos" for r in rows.fields) / len(rows)
        assert pos == pytest.approx(0.25, abs=0.03)
    where = {dedup.normalise(r["text"]): n for n, rows in parts.items() for r in rows.fields}
    lines = path.read_text().splitlines()
    assert where[dedup.normalise(lines[1].split("\t")[0])] == \
        where[dedup.normalise(lines[2].split("\t")[0])]  # exact duplicate, same split
    texts = {n: [r["text"] for r in rows.fields] for n, rows in parts.items()}
    src, copy = lines[3].split("\t")[0], lines[3].split("\t")[0] + " extra"
    assert [n for n, t in texts.items() if src in t] == [n for n, t in texts.items() if copy in t]


def test_split_is_deterministic_and_never_overwrites(tmp_path, capsys):
    path = _file(tmp_path)
    a = splitting.split_file(str(path), [0.8, 0.2], seed=3, out=str(tmp_path / "a"))
    b = splitting.split_file(str(path), [0.8, 0.2], seed=3, out=str(tmp_path / "b"))
    for name in ("train", "validation"):
        assert (tmp_path / "a" / f"{name}.tsv").read_text() == \
            (tmp_path / "b" / f"{name}.tsv").read_text()
    assert set(a["splits"]) == {"train", "validation"} and a["rows"] == b["rows"] == 403
    before = (tmp_path / "a" / "train.tsv").read_text()
    assert cli.main(["data", "split", str(path), "--ratios", "0.8,0.2", "--seed", "4",
                     "--out", str(tmp_path / "a")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "a" / "train.tsv").read_text() == before
    # the file being split is never a target, even with --overwrite
    source = (tmp_path / "a" / "train.tsv")
    assert cli.main(["data", "split", str(source), "--out", str(tmp_path / "a"),
                     "--overwrite"]) == 2
    assert "is the file being split" in capsys.readouterr().err
    assert source.read_text() == before


@pytest.mark.parametrize("ratios", ["0.8,0.3", "1", "0.5,0.2,0.2,0.1", "a,b", "0,0.5,0.5",
                                    "0.8,0.2,0"])
def test_bad_ratios_are_config_errors(ratios):
    with pytest.raises(ConfigError, match="--ratios"):
        splitting.parse_ratios(ratios)


def test_a_split_that_would_be_empty_is_refused(tmp_path):
    path = tmp_path / "three.tsv"
    path.write_text("text\tlabel\n" + "".join(f"row {i}\tpos\n" for i in range(3)))
    with pytest.raises(ConfigError, match=r"the validation and test split\(s\) would be empty"):
        splitting.split_file(str(path), [0.8, 0.1, 0.1], out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
