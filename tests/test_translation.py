"""tasks/translation: reading pairs, bad input, and a golden run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfsft import config as config_lib
from tfsft import data, tasks
from tfsft.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "tasks" / "translation"


def task_and_cfg(*overrides):
    task = tasks.load_task(FOLDER)
    cfg = config_lib.load_config(task.config_class, FOLDER / "config.yaml", [],
                                 ["data.train=x.tsv", *overrides])
    return task, cfg


def read(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return data.read_rows(str(path))


def test_pairs_are_formatted_with_the_template(tmp_path):
    task, cfg = task_and_cfg("task.template=Source: {source} =>")
    rows = read(tmp_path, "t.tsv", "source\ttarget\nA dog.\tEin Hund.\n")
    ex = task.examples(cfg.task, rows, True)
    assert ex.parts == [[("Source: A dog. =>", False), ("Ein Hund.", True)]]
    assert ex.prompts == [[("Source: A dog. =>", False)]] and ex.responses == ["Ein Hund."]
    assert ex.where[0].endswith("t.tsv:2") and ex.texts == ["A dog."]


def test_missing_or_empty_fields_are_reported_with_file_and_line(tmp_path):
    task, cfg = task_and_cfg()
    rows = read(tmp_path, "t.jsonl",
                '{"source": "A dog.", "target": "Ein Hund."}\n'
                '{"source": "A cat."}\n'
                '{"source": "A cow.", "target": "  "}\n'
                '{"source": "", "target": "Ein Pferd."}\n')
    with pytest.raises(DataError) as e:
        task.examples(cfg.task, rows, True)
    msg = str(e.value)
    assert "t.jsonl:2: no `target` field" in msg
    assert "t.jsonl:3: `target` must be a non-empty text" in msg
    assert "t.jsonl:4: `source` must be a non-empty text" in msg
    assert e.value.rows == [1, 2, 3]


@pytest.mark.parametrize("template", ["no field", "{source} {target}", "{src}"])
def test_a_bad_template_is_a_config_error(template):
    with pytest.raises(config_lib.ConfigError, match="task.template"):
        task_and_cfg(f"task.template={template}")


def test_a_bert_backbone_is_refused(tiny_bert):
    from tfsft.errors import ConfigError

    task, cfg = task_and_cfg()
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(tiny_bert))
    with pytest.raises(ConfigError, match="needs a GPT-2 backbone"):
        task.build_model(cfg.task, backbone, 0, 0.0)


def cli(*args) -> int:
    from tfsft import cli as cli_lib

    return cli_lib.main([str(a) for a in args])


def test_golden_toy_translation_through_the_cli(toy_translation, tmp_path, capsys):
    """fit -> evaluate (beam) -> predict on word-by-word toy pairs a tiny GPT-2 learns."""
    train, dev, preset = toy_translation
    out = tmp_path / "run"
    common = [f"data.train={train}", f"data.validation={dev}", f"model.backbone={preset}",
              "data.max_length=48", "task.max_new_tokens=16", "train.epochs=30",
              "train.global_batch_size=16", "train.learning_rate=1e-2",
              "train.warmup_ratio=0.05", "train.seed=3"]
    assert cli("fit", FOLDER, *common, "--output", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"] / 4
    assert metrics["exact_match"] >= 75.0 and metrics["bleu"] >= 60.0
    generations = [json.loads(line) for line in
                   (out / "reports" / "generations_validation.jsonl").read_text().splitlines()]
    assert len(generations) == 16 and all(g["where"].startswith(str(dev)) for g in generations)
    assert "rows" not in metrics and len(metrics["samples"]) == 5
    assert list((out / "tensorboard" / "evaluation").glob("events.out.tfevents.*"))
    capsys.readouterr()

    assert cli("evaluate", out, "task.decoding=beam", "task.num_beams=3") == 0
    recorded = json.loads((out / "metrics.json").read_text())
    beam = recorded["validation [task.decoding=beam task.num_beams=3]"]
    assert beam["decoding"] == "beam" and beam["exact_match"] >= 75.0
    assert recorded["validation"] == metrics  # fit's greedy results are kept beside it

    inputs = tmp_path / "in.txt"
    inputs.write_text("the red dog is here\nthe black fish is here\n")
    capsys.readouterr()
    assert cli("predict", out, "--input", inputs) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["the red dog is here", "the black fish is here"]
    assert sum(line["translation"] == want for line, want in
               zip(lines, ["die rot hund ist hier", "die schwarz fisch ist hier"])) >= 1


def test_a_row_too_long_stops_before_anything_is_written(toy_translation, tmp_path, capsys):
    train, dev, preset = toy_translation
    bad = tmp_path / "bad.tsv"
    lines = train.read_text().splitlines()
    lines.insert(5, "the red cat is here\t" + "die rot katze " * 20)
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code = cli("fit", FOLDER, f"data.train={bad}", f"data.validation={dev}",
               f"model.backbone={preset}", "data.max_length=32", "--output", out)
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert f"{bad}:6" in err and "data.max_length" in err and "task.too_long" in err


def test_on_error_skip_drops_bad_pairs_and_lists_them(tmp_path):
    from tfsft import workflow

    train = tmp_path / "t.jsonl"
    good = [{"source": f"A dog {i}.", "target": f"Ein Hund {i}."} for i in range(30)]
    train.write_text("".join(json.dumps(r) + "\n" for r in
                             [*good[:10], {"source": "A cat."}, *good[10:]]))
    task, cfg = task_and_cfg(f"data.train={train}", "data.on_error=skip")
    splits = workflow.read_splits(task, cfg)
    assert len(splits.train) + len(splits.validation) == 30  # validation carved at random
    assert splits.skipped["train"] == [f"{train}:11: no `target` field (fields: source); "
                                       "every training row needs a translation (set "
                                       "`task.target_field`)"]
    task, cfg = task_and_cfg(f"data.train={train}")
    with pytest.raises(DataError, match="t.jsonl:11: no `target` field"):
        workflow.read_splits(task, cfg)
