"""tf.distribute: one device and MirroredStrategy over 2 logical CPUs train the same model;
strategy choice and its errors. Each run is its own process (logical devices are fixed
when TensorFlow starts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import build_tiny_bert
from test_cli import run_cli


def run_weights(run) -> dict:
    """Every array of a finished run's model: backbone (model.weights.h5) and head."""
    import h5py

    out = {}
    with h5py.File(run / "model" / "model.weights.h5", "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    with np.load(run / "model" / "head.npz") as z:
        out.update({f"head/{k}": z[k] for k in z.files})
    return out


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), dropout=0.0)


def _fit(backbone, toy_data, out, *extra):
    train, dev = toy_data
    return run_cli("fit", "tasks/sentiment", f"model.backbone={backbone}",
                   f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
                   "train.epochs=3", "train.global_batch_size=8", "train.learning_rate=2e-2",
                   "model.dropout=0.0", "train.deterministic=true", "train.precision=float32",
                   "--output", out, "--quiet", *extra)


def test_mirrored_over_two_cpus_equals_one_device(tiny_bert_no_dropout, tmp_path, toy_data):
    one = _fit(tiny_bert_no_dropout, toy_data, tmp_path / "one",
               "distribute.strategy=one_device", "train.grad_accum_steps=2")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _fit(tiny_bert_no_dropout, toy_data, tmp_path / "two",
               "distribute.strategy=mirrored", "distribute.cpu_devices=2",
               "train.grad_accum_steps=2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "MirroredStrategy over 2 replicas (CPU:0, CPU:1), 2 rows per replica" in two.stderr
    h1, h2 = ([json.loads(x) for x in (tmp_path / r / "history.jsonl").read_text().splitlines()]
              for r in ("one", "two"))
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in h1], [h[key] for h in h2], atol=1e-5,
                                   err_msg=key)
    w1, w2 = run_weights(tmp_path / "one"), run_weights(tmp_path / "two")
    assert w1.keys() == w2.keys() and len(w1) > 10
    worst = max(float(np.max(np.abs(w1[k] - w2[k]))) for k in w1)
    assert worst < 1e-5
    moved = max(float(np.max(np.abs(w1[k] - v))) for k, v in
                run_weights_initial(tiny_bert_no_dropout).items() if k in w1)
    assert moved > 1e-3  # it trained: the comparison is not of two untouched models


def run_weights_initial(preset) -> dict:
    import h5py

    out = {}
    with h5py.File(preset / "model.weights.h5", "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def test_batch_that_does_not_split_over_replicas_is_a_config_error(tiny_bert_no_dropout,
                                                                   tmp_path, toy_data):
    out = tmp_path / "run"
    r = _fit(tiny_bert_no_dropout, toy_data, out, "distribute.strategy=mirrored",
             "distribute.cpu_devices=3")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "8 rows per batch cannot be split evenly over 3 replicas" in r.stderr
    assert not out.exists()


def test_tpu_without_a_tpu_fails_at_once_with_a_clear_message(tiny_bert_no_dropout, tmp_path,
                                                              toy_data):
    out = tmp_path / "run"
    r = _fit(tiny_bert_no_dropout, toy_data, out, "distribute.strategy=tpu")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "`distribute.strategy` is 'tpu' but no TPU is attached" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_strategy_choices_are_checked_with_the_config():
    r = run_cli("validate", "tasks/sentiment", "distribute.strategy=multi_gpu",
                "distribute.cpu_devices=-1")
    assert r.returncode == 2
    assert "`distribute.strategy` must be one of" in r.stderr
    assert "`distribute.cpu_devices` (-1) must be >= 0 and at most 64" in r.stderr


def test_launch_multiworker_two_workers_match_one_device(tiny_bert_no_dropout, tmp_path,
                                                         toy_data):
    """tools/launch_multiworker.sh 2: MultiWorkerMirroredStrategy over 127.0.0.1; both
    workers log the same epochs, only the chief writes the run (one TensorBoard run, one
    model), and the model equals a one-device run's."""
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO

    train, dev = toy_data
    args = ["fit", "tasks/sentiment", f"model.backbone={tiny_bert_no_dropout}",
            f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
            "train.epochs=3", "train.global_batch_size=8", "train.learning_rate=2e-2",
            "model.dropout=0.0", "train.deterministic=true", "task.pooling=mean",
            "train.precision=float32", "--quiet"]
    one = run_cli(*args, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHON=sys.executable, TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", "tools/launch_multiworker.sh", "2", "--", *args,
                        "--output", str(tmp_path / "mw")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "MultiWorkerMirroredStrategy over 2 replicas (2 workers; this is worker 1)" in out
    epochs = {i: re.findall(rf"\[worker {i}\] \d+/\d+ .*?loss: ([\d.]+) .*val_loss: ([\d.]+)", out)
              for i in (0, 1)}
    assert len(epochs[0]) == 3 and epochs[0] == epochs[1]  # the workers agree
    assert "worker finished; the chief wrote the run" in out
    mw = tmp_path / "mw"
    for writer in ("train", "validation"):
        assert len(list((mw / "tensorboard" / writer).glob("events.out.tfevents.*"))) == 1
    assert (mw / "model" / "head.npz").exists()
    assert not list(tmp_path.glob("tfsft-worker*"))  # the worker's scratch dir is gone
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["mw", "one"]
    w1, w2 = run_weights(tmp_path / "one"), run_weights(mw)
    assert max(float(np.max(np.abs(w1[k] - w2[k]))) for k in w1) < 1e-5
    h1, h2 = ([json.loads(x) for x in (tmp_path / d / "history.jsonl").read_text().splitlines()]
              for d in ("one", "mw"))
    np.testing.assert_allclose([h["val_loss"] for h in h1], [h["val_loss"] for h in h2],
                               atol=1e-5)


def test_multi_worker_without_or_with_a_broken_tf_config_is_a_clear_error(
        tiny_bert_no_dropout, tmp_path, toy_data, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    r = _fit(tiny_bert_no_dropout, toy_data, out, "distribute.strategy=multi_worker")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "'multi_worker' but TF_CONFIG is not set" in r.stderr
    assert "tools/launch_multiworker.sh" in r.stderr and not out.exists()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    r = _fit(tiny_bert_no_dropout, toy_data, out)
    assert r.returncode == 2 and "the TF_CONFIG environment variable is not valid" in r.stderr
    assert not out.exists()


def test_tpu_profile_compiles_its_step_with_xla_on_cpu(tiny_bert_no_dropout, tmp_path,
                                                       toy_data):
    """configs/tpu.yaml as shipped (static shapes, bf16, XLA), on one CPU device instead
    of a TPU: the step is XLA-compiled and trains like the uncompiled step."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    train, dev = toy_data
    common = ["fit", "tasks/sentiment", "--config", "configs/tpu.yaml",
              "distribute.strategy=one_device", f"model.backbone={tiny_bert_no_dropout}",
              f"data.train={train}", f"data.validation={dev}", "data.max_length=32",
              "train.global_batch_size=8", "train.eval_batch_size=8", "train.epochs=3",
              "train.learning_rate=2e-2", "model.dropout=0.0", "task.pooling=mean",
              "train.deterministic=true", "--quiet"]
    # TensorFlow names every function XLA compiles at this log level. The one-replica
    # optimizer update and the fused GELU are compiled either way; the step only with jit.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=2")
    runs = {}
    for jit in ("true", "false"):
        out = tmp_path / f"jit_{jit}"
        r = subprocess.run([sys.executable, "-m", "tfsft", *common, f"train.jit_compile={jit}",
                            "--output", str(out)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("Signature: __inference_replica_step" in r.stderr) == (jit == "true")
        runs[jit] = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    compiled, plain = runs["true"], runs["false"]
    assert len(compiled) == 3 and compiled[-1]["loss"] < compiled[0]["loss"]
    # bfloat16 both ways; XLA fuses differently, so equal up to bf16 rounding
    np.testing.assert_allclose([h["loss"] for h in compiled], [h["loss"] for h in plain],
                               atol=0.05)
