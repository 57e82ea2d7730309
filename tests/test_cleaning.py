"""Cleaning and de-duplication (tfsft.cleaning), `tfsft data clean`, and `data.clean` /
`data.dedup` inside fit giving the same rows as the cleaned files."""

from __future__ import annotations

import doctest
import json
import random
import shlex
from pathlib import Path

import pytest

from tfsft import cleaning, workflow
from tfsft.data import Rows
from tfsft.errors import ConfigError

from test_cli import run_cli

DIRTY_TRAIN = [
    ("A &amp; B are <b>great</b> friends", "positive"),
    ("a & b are great friends", "positive"),  # same as row 1 once cleaned: exact duplicate
    ("<br/>  &nbsp; ", "negative"),  # nothing left after cleaning
    ("the plot\u200b is dull and \u00a0slow to move", "negative"),
    ("Cafe\u0301 scenes are lovely and warm all day long", "positive"),
    ("cafe\u0301 scenes are lovely and warm all day long!", "positive"),  # near duplicate
    ("<script>alert(1)</script>boring from start to end", "negative"),
    ("x < y and y > z is not markup", "negative"),
    ("a moving story told with care", "positive"),
    ("the worst film of the year", "negative"),
    ("bright funny and sharp writing", "positive"),
    ("flat characters and a weak ending", "negative"),
]


def rows_of(pairs, name="train.tsv") -> Rows:
    return Rows(name, [{"text": t, "label": y} for t, y in pairs],
                [f"{name}:{i + 2}" for i in range(len(pairs))])


def test_module_examples():
    from tfsft import augment

    for module in (cleaning, augment):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("raw, cleaned, kinds", [
    ("Tom &amp;amp; Jerry", "Tom & Jerry", ["html_entities"]),
    ("it&#39;s <i>fine</i><br>really", "it's fine really",
     ["html_entities", "html_tags", "whitespace"]),
    ("keep<!-- hidden -->this", "keep this", ["html_tags"]),
    ("<style>p {color: red}</style>text", "text", ["html_tags", "whitespace"]),
    ("x < y and y > z", "x < y and y > z", []),
    ("zero\u200bwidth\x07bell", "zerowidthbell", ["control_chars"]),
    ("e\u0301", "\u00e9", ["unicode_nfc"]),
    ("  two\t\tspaces\n", "two spaces", ["whitespace"]),
    ("already clean", "already clean", []),
])
def test_clean_text(raw, cleaned, kinds):
    assert cleaning.clean_text(raw) == (cleaned, kinds)


def test_apply_cleans_drops_and_reports_every_change_without_touching_the_input():
    train = rows_of(DIRTY_TRAIN)
    validation = rows_of([("A & B are great friends", "positive"),  # leaked: exact
                          ("the worst film of the year!", "negative"),  # leaked: near
                          ("a new sentence nobody wrote before", "positive")], "dev.tsv")
    before = json.dumps(train.fields)
    result = cleaning.apply({"train": train, "validation": validation}, ["text"],
                            cleaning.Options(clean=True, dedup="near"))
    assert json.dumps(train.fields) == before  # the input rows are not modified
    kept = [r["text"] for r in result.rows["train"].fields]
    assert kept == ["A & B are great friends", "the plot is dull and slow to move",
                    "Caf\u00e9 scenes are lovely and warm all day long",
                    "boring from start to end", "x < y and y > z is not markup",
                    "a moving story told with care", "the worst film of the year",
                    "bright funny and sharp writing", "flat characters and a weak ending"]
    assert [r["text"] for r in result.rows["validation"].fields] == [
        "a new sentence nobody wrote before"]
    c = result.counts["train"]
    assert c["rows_in"] == 12 and c["rows_out"] == 9
    assert c["dropped"] == {"empty": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert c["changes"] == {"html_entities": 2, "html_tags": 3, "control_chars": 1,
                            "unicode_nfc": 2, "whitespace": 4}
    assert result.counts["validation"]["dropped"] == {"in_train_exact": 1, "in_train_near": 1}
    drops = {(ch["where"], ch["reason"], ch.get("of")) for ch in result.changes
             if ch["action"] == "dropped"}
    assert drops == {("train.tsv:4", "empty", None),
                     ("train.tsv:3", "exact_duplicate", "train.tsv:2"),
                     ("train.tsv:7", "near_duplicate", "train.tsv:6"),
                     ("dev.tsv:2", "in_train_exact", "train.tsv:2"),
                     ("dev.tsv:3", "in_train_near", "train.tsv:11")}
    changed = [ch for ch in result.changes if ch["action"] == "changed"]
    assert changed[0] == {"split": "train", "where": "train.tsv:2", "action": "changed",
                          "field": "text", "kinds": ["html_entities", "html_tags", "whitespace"],
                          "before": DIRTY_TRAIN[0][0], "after": "A & B are great friends"}


def test_exact_dedup_keeps_near_duplicates_and_off_changes_nothing():
    train = rows_of(DIRTY_TRAIN)
    exact = cleaning.apply({"train": train}, ["text"], cleaning.Options(dedup="exact"))
    # without cleaning, row 2 differs from row 1 (entities, tags): nothing is an exact repeat
    assert exact.counts["train"]["dropped"] == {}
    cleaned = cleaning.apply({"train": train}, ["text"], cleaning.Options(True, "exact"))
    assert cleaned.counts["train"]["dropped"] == {"empty": 1, "exact_duplicate": 1}
    assert not cleaning.Options().active


def _write_tsv(path: Path, pairs) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in pairs),
                    encoding="utf-8")
    return path


def _dirty_files(tmp_path: Path) -> dict[str, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = random.Random(7)
    words = ("river stone cloud quiet lamp orange piano winter garden metal paper chair "
             "window forest yellow engine silver bottle market candle ocean pencil").split()
    filler = [(" ".join(rng.sample(words, 6)), "positive" if i % 2 else "negative")
              for i in range(24)]
    return {"train": _write_tsv(raw / "train.tsv", DIRTY_TRAIN + filler),
            "validation": _write_tsv(raw / "dev.tsv", [
                ("A &amp; B are great friends", "positive"), ("a fresh line", "negative"),
                (filler[3][0] + "!", "positive"),
                ("another fresh line", "positive")]),
            "test": _write_tsv(raw / "test.tsv", [("the worst film of the year", "negative"),
                                                  ("something else", "positive"),
                                                  ("more new text", "negative")])}


def _splits(overrides):
    task, _, cfg = workflow.load_task_and_config("tasks/classification", (), overrides)
    return workflow.read_splits(task, cfg)


def _as_data(splits) -> dict:
    out = {}
    for name in ("train", "validation", "test"):
        ex = getattr(splits, name)
        if ex is not None:
            out[name] = (ex.texts, ex.labels, splits.targets[name].tolist())
    return out


@pytest.mark.parametrize("case", ["all_splits_near", "carved_exact_augmented"])
def test_data_clean_output_read_by_fit_equals_clean_inside_fit(tmp_path, case):
    files = _dirty_files(tmp_path)
    if case == "all_splits_near":
        given = {s: files[s] for s in files}
        options = ["data.dedup=near"]
    else:  # validation carved from the cleaned train rows; augmentation after carving
        given = {"train": files["train"]}
        options = ["data.dedup=exact", "data.augment=[delete,swap,replace]",
                   "data.augment_rate=0.3", "data.augment_copies=2"]
    sources = [f"data.{s}={p}" for s, p in given.items()]
    out = tmp_path / "clean"
    proc = run_cli("data", "clean", "tasks/classification", *sources, *options, "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["files"]) == set(given)
    # the command it suggests runs as printed: the user's options kept, the new files named
    said = shlex.split(proc.stderr.split("train on them with: ")[1].splitlines()[0])
    assert said[:5] == ["python", "-m", "tfsft", "fit", "tasks/classification"]
    assert set(options) <= set(said) and f"data.train={out / 'train.tsv'}" in said
    assert not [w for w in said if w.startswith("data.train=") and "clean" not in w]
    inside_fit = _splits(sources + options + ["data.clean=true"])
    from_files = _splits([f"data.{s}={out / (s + '.tsv')}" for s in given]
                         + [o for o in options if "augment" in o])
    assert _as_data(inside_fit) == _as_data(from_files)
    counts = inside_fit.preparation["splits"]["train"]
    assert counts["rows_out"] < counts["rows_in"] == len(DIRTY_TRAIN) + 24
    if case == "all_splits_near":
        assert "A & B are great friends" in inside_fit.train.texts
        assert inside_fit.validation.texts == ["a fresh line", "another fresh line"]
        assert inside_fit.test.texts == ["something else", "more new text"]
    else:
        aug = inside_fit.preparation["augment"]
        assert aug["rows_added"] > 0 and set(aug["by_edit"]) == {"delete", "swap", "replace"}
        originals = set(inside_fit.validation.texts)
        assert not originals & set(inside_fit.train.texts)  # no validation text trained on
    # the input files are untouched, the change log lists every change
    assert files["train"].read_text(encoding="utf-8").startswith("text\tlabel\nA &amp; B")
    logged = [json.loads(line) for line in (out / "changes.jsonl").read_text().splitlines()]
    assert len(logged) == len(inside_fit.changes) > 0


def test_data_clean_never_overwrites_inputs_or_earlier_output(tmp_path):
    files = _dirty_files(tmp_path)
    out = tmp_path / "clean"
    args = ["data", "clean", "tasks/classification", f"data.train={files['train']}"]
    assert run_cli(*args, "--out", out).returncode == 0
    first = (out / "train.tsv").read_text()
    again = run_cli(*args, "data.dedup=near", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "train.tsv").read_text() == first
    onto_input = run_cli(*args, "--out", files["train"].parent, "--overwrite")
    assert onto_input.returncode == 2 and "never writes over its input" in onto_input.stderr
    assert files["train"].read_text().startswith("text\tlabel\nA &amp; B")
    no_out = run_cli(*args)
    assert no_out.returncode == 2 and "--out" in no_out.stderr
    markup = _write_tsv(tmp_path / "markup.tsv", [("<p></p>", "a"), ("<br>", "b")])
    emptied = run_cli("data", "clean", "tasks/classification", f"data.train={markup}",
                      "--out", tmp_path / "empty")
    assert emptied.returncode == 2 and "all 2 rows dropped" in emptied.stderr
    assert not (tmp_path / "empty").exists()


def test_fit_records_preparation_in_manifest_and_summary(tiny_bert, tmp_path):
    files = _dirty_files(tmp_path)
    out = tmp_path / "run"
    proc = run_cli("fit", "tasks/classification", f"model.backbone={tiny_bert}",
                   f"data.train={files['train']}", f"data.validation={files['validation']}",
                   "data.clean=true", "data.dedup=exact", "data.augment=[swap]",
                   "data.max_length=16", "train.epochs=1", "train.global_batch_size=8",
                   "--output", out, "--quiet", "--no-model")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    prep = manifest["data_preparation"]
    assert prep["clean"] is True and prep["dedup"] == "exact"
    assert prep["splits"]["train"]["dropped"] == {"empty": 1, "exact_duplicate": 1}
    assert prep["splits"]["validation"]["dropped"] == {"in_train_exact": 1}
    assert prep["augment"]["edits"] == ["swap"] and prep["augment"]["rows_added"] > 0
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["preparation"] == prep
    assert summary["train"]["rows"] == (prep["splits"]["train"]["rows_out"]
                                        + prep["augment"]["rows_added"])
    changes = (out / "data_changes.jsonl").read_text().splitlines()
    assert any('"exact_duplicate"' in line for line in changes)
    assert "data.clean=true, data.dedup=exact" in proc.stderr


def test_preparation_options_are_checked():
    with pytest.raises(ConfigError) as e:
        workflow.load_task_and_config("tasks/classification", (), [
            "data.augment=[delete,shuffle]", "data.augment_rate=0.9", "data.dedup=fuzzy",
            "data.near_threshold=0"])
    text = str(e.value)
    for key in ("data.augment", "data.augment_rate", "data.dedup", "data.near_threshold"):
        assert f"`{key}`" in text

    class NoText:
        name = "no_text"

    _, _, cfg = workflow.load_task_and_config("tasks/classification", (), [
        "data.train=t.tsv", "data.clean=true", "data.augment=[swap]"])
    with pytest.raises(ConfigError) as e:
        workflow.check_preparation(NoText(), cfg)
    assert "text_fields" in str(e.value) and "data.augment" in str(e.value)
