"""`train.precision`: the choice of mode, the oneDNN bfloat16 graph pass, and runs in both
bfloat16 modes that train, save float32 weights and predict after reloading."""

from __future__ import annotations

import json

import pytest

from tfsft import cli, precision

from test_cli import REPO, _fit_tiny, run_cli


def test_cpu_flags_decide_auto():
    assert precision.cpu_has_bf16("processor: 0\nflags\t: fpu sse avx512f avx512_bf16\n")
    assert precision.cpu_has_bf16("flags : amx_bf16 amx_tile\n")
    assert not precision.cpu_has_bf16("flags\t: fpu sse avx2 avx512f\n")
    assert precision.resolve("auto") in ("float32", "onednn_bfloat16")  # no TPU or GPU here
    assert precision.keras_policy("onednn_bfloat16") == "float32"
    assert precision.resolve("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError):
        precision.resolve("bf16")


def test_onednn_mode_needs_avx512():
    assert precision.onednn_bf16_native("flags\t: fpu sse avx2 avx512f\n")
    assert precision.onednn_bf16_native("flags\t: fpu avx2 avx_ne_convert\n")
    assert not precision.onednn_bf16_native("flags\t: fpu sse avx2 fma\n")
    why = precision.unavailable("onednn_bfloat16", "flags\t: fpu sse avx2 fma\n")
    assert "train.precision" in why and "avx512f" in why and "auto" in why
    assert precision.unavailable("onednn_bfloat16", "flags\t: avx512f avx512_bf16\n") is None
    assert precision.unavailable("float32", "flags\t: fpu sse avx2\n") is None
    assert precision.unavailable("mixed_bfloat16", "flags\t: fpu sse avx2\n") is None


def test_onednn_mode_is_refused_where_the_pass_cannot_run(monkeypatch, capsys, tiny_bert,
                                                          tmp_path, toy_data):
    # TensorFlow emulates bfloat16 under the pass on such a CPU (an AMD EPYC with AVX2 only:
    # slower than float32), or skips it without a word with oneDNN off: the run must stop
    # before it writes anything
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    train, dev = toy_data
    out = tmp_path / "run"
    code = cli.main(["fit", str(REPO / "tasks/sentiment"), f"model.backbone={tiny_bert}",
                     f"data.train={train}", f"data.validation={dev}", "data.max_length=16",
                     "train.precision=onednn_bfloat16", "--output", str(out)])
    assert code != 0
    err = capsys.readouterr().err
    assert "onednn_bfloat16" in err and "avx512f" in err and "train.precision=auto" in err
    assert not out.exists()


def test_policy_is_restored_after_the_block():
    import keras

    before = keras.config.dtype_policy().name
    with precision.policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
    assert keras.config.dtype_policy().name == before
    assert layer.dtype_policy.compute_dtype == "bfloat16"


@pytest.mark.parametrize("mode", ["mixed_bfloat16", "onednn_bfloat16"])
def test_bfloat16_run_trains_and_reloads(mode, tiny_bert, tmp_path, toy_data):
    if precision.unavailable(mode):
        pytest.skip(f"{mode} cannot run on this CPU (no AVX-512); the refusal is tested by "
                    "test_onednn_mode_is_refused_where_the_pass_cannot_run")
    out = tmp_path / "run"
    # 20 epochs: in bfloat16 the tiny model leaves its initial plateau later than the 4
    # epochs float32 needs (measured: still at loss 0.69 after 6 epochs, 1.0 accuracy at 20)
    proc = _fit_tiny(tiny_bert, toy_data, out, f"train.precision={mode}", "train.epochs=20")
    assert proc.returncode == 0, proc.stderr
    assert f"precision: {mode}" in proc.stderr
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"]  # it learns in bfloat16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.75
    pred = run_cli("predict", out, stdin="the food was lovely\n")
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["label"] in ("positive", "negative")


def test_onednn_graph_pass_rounds_matmuls_to_bfloat16_where_it_runs_and_turns_off():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.normal(size=(64, 64)).astype(np.float32)) for _ in range(2))
    exact = (a.numpy().astype(np.float64) @ b.numpy().astype(np.float64))
    try:
        precision.use_graph_pass("onednn_bfloat16")
        rewritten = tf.function(lambda x, y: tf.linalg.matmul(x, y))(a, b).numpy()
    finally:
        precision.use_graph_pass("float32")
    plain = tf.function(lambda x, y: tf.linalg.matmul(x, y))(a, b).numpy()
    assert np.abs(plain - exact).max() < 1e-4  # float32
    from tensorflow.python.util import _pywrap_util_port

    if not _pywrap_util_port.IsMklEnabled():
        # oneDNN off (TF_ENABLE_ONEDNN_OPTS=0): TensorFlow skips the pass, the matmul stays
        # float32 (measured on an AMD EPYC with AVX2 only: 7e-6 off)
        assert np.abs(rewritten - exact).max() < 1e-4
        return
    # oneDNN on (tfsft's default): bfloat16, natively or emulated (AVX2 only: 0.15 off)
    assert np.abs(rewritten - exact).max() > 1e-2  # bfloat16 inputs: ~3 significant digits
    np.testing.assert_allclose(rewritten, exact, rtol=0.05, atol=0.2)
