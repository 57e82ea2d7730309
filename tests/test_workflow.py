"""workflow: predictions in input order from one trace, fit end to end in-process, which
run a fit resumes, and what a failed model save leaves to resume from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfsft import backbones, pipeline, workflow


# 7 rows: 7, 4, 3 and 1 batches; the forward runs two batches per call, so an odd count
# fills its last call with a spare row that must not reach the output
@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_predictions_come_back_in_input_order(tiny_bert, batch_size):
    import keras

    backbone, pre = backbones.load(str(tiny_bert), 16)
    texts = ["good", "the film was good and nice", "bad", "a b c d e f g h i j k", "ok",
             "the food was lovely", "nice"]
    enc = pipeline.encode(pre, texts)
    # the [CLS] summary: the same whatever padding follows a row
    model = keras.Model(backbone.input, backbone.output["pooled_output"])
    got = workflow.predict_logits(model, enc, batch_size=batch_size)
    assert got.shape[0] == len(texts)
    for i in range(len(texts)):  # each row alone, trimmed to its own length
        n = int(enc.lengths[i])
        one = {k: v[i:i + 1, :n] for k, v in enc.features.items()}
        np.testing.assert_allclose(got[i], model(one, training=False).numpy()[0], atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in got}) == len(texts)  # rows differ


def test_one_trace_serves_every_batch_shape_and_later_calls(tiny_bert):
    import keras

    backbone, pre = backbones.load(str(tiny_bert), 16)
    enc = pipeline.encode(pre, ["good", "the film was good and nice", "bad", "a b c d e f"])
    model = keras.Model(backbone.input, backbone.output["pooled_output"])
    first = workflow.predict_logits(model, enc, batch_size=3)  # widths 3 and 8, 3 and 1 rows
    again = workflow.predict_logits(model, enc, batch_size=1)  # four more shapes
    (forward,) = [f for k, f in pipeline._TRACED[model].items() if k[0] == "forward pair"]
    assert forward.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_the_trace_cache_does_not_keep_a_model_alive(tiny_bert):
    import gc
    import weakref

    import keras

    backbone, pre = backbones.load(str(tiny_bert), 16)
    enc = pipeline.encode(pre, ["good", "bad film"])
    model = keras.Model(backbone.input, backbone.output["pooled_output"])
    workflow.predict_logits(model, enc, batch_size=2)
    alive = weakref.ref(model)
    del model, backbone
    gc.collect()
    assert alive() is None




def test_fit_with_a_token_cap_trains_every_row_in_the_planned_steps(tiny_bert, tmp_path,
                                                                    capsys):
    """data.max_batch_tokens: long rows get smaller batches, the plan counts them, and one
    epoch trains on every row once (the loop would stop short, or fail on an exhausted
    iterator, if the plan and the pipeline disagreed)."""
    import json
    import random
    import re

    from conftest import FILLER, NEGATIVE, POSITIVE

    rng = random.Random(0)
    lines = ["text\tlabel"]
    for i in range(48):  # 2 to 9 words: rows of ~4 to ~11 tokens
        label, words = ("positive", POSITIVE) if i % 2 else ("negative", NEGATIVE)
        lines.append(" ".join(rng.sample(FILLER, 1 + i % 8) + [rng.choice(words)]) + f"\t{label}")
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    workflow.fit("tasks/sentiment", [],
                 [f"model.backbone={tiny_bert}", f"data.train={data}",
                  f"data.validation={data}", "data.max_length=16", "data.max_batch_tokens=48",
                  "train.global_batch_size=8", "train.epochs=1"], output=str(out), verbose=0)
    said = re.search(r"(\d+) optimizer steps of 8 rows \((\d+) batches of 8 rows or 48 tokens",
                     capsys.readouterr().err)
    assert said and int(said[1]) == int(said[2]) > 48 // 8  # long rows: smaller batches
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    rows = history[-1]["examples_per_second"] * history[-1]["train_seconds"]
    assert round(rows) == 48


@pytest.mark.parametrize("restored", [False, True])
def test_the_validation_report_reuses_the_last_epochs_logits(tiny_bert, tmp_path,
                                                             monkeypatch, restored):
    """A one-replica fit validates through predict_logits at each epoch's end and reports
    the validation split from the last epoch's logits: one pass per epoch, none after, and
    metrics.json says what the epoch log said. When the model holds an earlier (best)
    epoch's weights instead, the report predicts again."""
    import dataclasses
    import json

    from conftest import write_sentiment_tsv

    from tfsft import training

    calls = []
    predict = workflow.predict_logits
    monkeypatch.setattr(workflow, "predict_logits",
                        lambda *a, **k: calls.append(1) or predict(*a, **k))
    if restored:  # as if keep_best had restored an earlier epoch
        train = training.train
        monkeypatch.setattr(training, "train", lambda *a, **k: dataclasses.replace(
            train(*a, **k), restored_best=True))
    data = write_sentiment_tsv(tmp_path / "train.tsv", 40, seed=1)
    val = write_sentiment_tsv(tmp_path / "val.tsv", 23, seed=2)
    out = tmp_path / "run"
    workflow.fit("tasks/sentiment", [],
                 [f"model.backbone={tiny_bert}", f"data.train={data}", f"data.validation={val}",
                  "data.max_length=16", "train.global_batch_size=8", "train.epochs=2",
                  "train.eval_batch_size=4", "train.keep_best=false"],
                 output=str(out), verbose=0)
    assert len(calls) == 2 + restored
    last = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    report = json.loads((out / "metrics.json").read_text())["validation"]
    assert report["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-6)


def test_resume_looks_at_the_tasks_runs_not_its_tune_folder(tmp_path, monkeypatch):
    """Without --output, the newest unfinished `runs/<task>-<time>` is resumed even when a
    `runs/<task>-tune` search folder (which sorts after it) is there."""
    from tfsft import config as config_lib
    from tfsft import runs

    task, _, cfg = workflow.load_task_and_config("tasks/sentiment", [], [])
    monkeypatch.chdir(tmp_path)
    for name in ("sentiment-20261207-120000", "sentiment-tune"):
        run = tmp_path / "runs" / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "resume.npz").write_bytes(b"")
        runs.write_json(run / "manifest.json", {"versions": {"tfsft": "0"},
                                                "status": "interrupted"})
        (run / "config.yaml").write_text(config_lib.dump_yaml(cfg))
    assert workflow.resumable_run(task, cfg, None) == Path("runs/sentiment-20261207-120000")


def test_a_failed_model_save_keeps_the_checkpoints_to_resume_from(tiny_bert, tmp_path,
                                                                  monkeypatch, capsys):
    import json

    import tensorflow as tf
    from conftest import write_sentiment_tsv

    from tfsft import export

    data = write_sentiment_tsv(tmp_path / "train.tsv", 40, seed=1)
    out = tmp_path / "run"
    overrides = [f"model.backbone={tiny_bert}", f"data.train={data}", f"data.validation={data}",
                 "data.max_length=16", "train.global_batch_size=8", "train.epochs=2"]
    save = export.save_final

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_final", full_disk)
    with pytest.raises(OSError, match="No space left"):
        workflow.fit("tasks/sentiment", [], overrides, output=str(out), verbose=0)
    assert (out / "checkpoints" / "resume.npz").is_file() and not (out / "model").exists()
    monkeypatch.setattr(export, "save_final", save)
    capsys.readouterr()
    workflow.fit("tasks/sentiment", [], overrides, output=str(out), verbose=0)
    assert "(resuming it)" in capsys.readouterr().err
    assert (out / "model").is_dir() and not (out / "checkpoints").exists()
    # the second epoch ran again: its history line and scalars are there once
    epochs = [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    for writer in ("train", "validation"):
        seen = [(v.tag, e.step) for f in (out / "tensorboard" / writer).glob("events.*")
                for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value]
        assert seen and len(seen) == len(set(seen)), writer


def test_validation_on_the_training_file_is_warned_about(tmp_path, capsys):
    from conftest import write_sentiment_tsv

    data = write_sentiment_tsv(tmp_path / "train.tsv", 40, seed=1)
    task, _, cfg = workflow.load_task_and_config(
        "tasks/sentiment", [], [f"data.train={data}", f"data.validation={data}"])
    workflow.read_splits(task, cfg)
    assert f"warning: `data.validation` is the training file ({data})" in capsys.readouterr().err
    other = write_sentiment_tsv(tmp_path / "dev.tsv", 12, seed=2)
    task, _, cfg = workflow.load_task_and_config(
        "tasks/sentiment", [], [f"data.train={data}", f"data.validation={other}"])
    workflow.read_splits(task, cfg)
    assert "warning" not in capsys.readouterr().err
