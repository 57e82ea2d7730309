"""tools/bench.py end to end on a tiny backbone: every measurement, each repeat its own
process (the figures themselves are the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def test_bench_measures_each_repeat_in_its_own_process(tiny_bert, toy_data):
    train, dev = toy_data
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "tasks/sentiment",
         f"model.backbone={tiny_bert}", f"data.train={train}", f"data.validation={dev}",
         "data.max_length=16", "data.max_batch_tokens=32", "train.global_batch_size=8",
         "--steps", "3", "--warmup", "2", "--repeat", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    train_rows = [row for row in rows if row.get("what") == "train"]
    assert [row.get("what") for row in rows].count("pipeline") == 2 and len(train_rows) == 2
    assert [row.get("what") for row in rows].count("predict") == 2
    assert train_rows[0]["pid"] != train_rows[1]["pid"]  # each repeat a new process
    for row in train_rows:
        assert row["time_to_first_step_s"] > 1.0 and row["peak_rss_mb"] > 100
        assert row["examples_per_s"] > 0 and 0 <= row["padding_share"] < 1
        assert row["real_tokens_per_s"] <= row["padded_tokens_per_s"]
    peak = next(row for row in rows if row.get("what") == "matmul_peak")["flops_per_s"]
    assert peak["float32"] > 0 and peak["bfloat16"] > 0
    assert "time to first training step:" in r.stderr and "matmul peak:" in r.stderr


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("freeze, freeze_layers, lora", [
    ("none", 0, 0), ("embeddings", 0, 0), ("embeddings", 1, 0), ("backbone", 0, 0),
    ("none", 0, 2)])
def test_model_flops_count_only_the_work_a_step_runs(freeze, freeze_layers, lora):
    import keras_hub

    from tfsft import backbones

    h, heads, ffn, width, tokens = 16, 2, 32, 5, 3
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=40, num_layers=2, num_heads=heads, hidden_dim=h,
        intermediate_dim=ffn, max_sequence_length=16)
    backbones.set_trainable(backbone, freeze, freeze_layers, lora)
    # KerasHub's LoRA on the query and value projections: A (hidden, heads, rank) and
    # B (rank, head size); their biases train too
    lora_ab = 2 * (h * heads * lora + lora * h // heads)
    p = 4 * (h * h + h) + 2 * h * ffn + ffn + h + 2 * 2 * h + lora_ab  # one layer's weights
    qkv = 3 * (h * h + h) + lora_ab  # the projections reading the layer's input
    fwd, bwd = 2 * p + 4 * width * h, 2 * p + 8 * width * h  # forward; backward to the input
    lowest_bwd = bwd - 2 * qkv  # nothing below trains: no gradient for the layer's input
    trained = lora_ab + 2 * h if lora else p  # weights of a trained layer (gradients)
    expected = {  # (layer 0, layer 1) per real token
        ("none", 0, 0): (fwd + bwd + 2 * trained, fwd + bwd + 2 * trained),
        ("embeddings", 0, 0): (fwd + lowest_bwd + 2 * trained, fwd + bwd + 2 * trained),
        ("embeddings", 1, 0): (fwd, fwd + lowest_bwd + 2 * trained),
        ("backbone", 0, 0): (fwd, fwd),
        ("none", 0, 2): (fwd + lowest_bwd + 2 * trained, fwd + bwd + 2 * trained),
    }[(freeze, freeze_layers, lora)]
    flops = _bench_module().model_flops(backbone)
    assert flops(tokens, width) == tokens * sum(expected)


def test_peer_window_needs_enough_rows_for_warmup_and_steps(tmp_path):
    bench = _bench_module()
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"row {i}\t1\n" for i in range(100)))
    assert bench.peer_window_error(str(data), 0, 10, 4, 6) is None  # 10 batches, all timed
    assert bench.peer_window_error(str(data), 50, 10, 2, 3) is None
    short = bench.peer_window_error(str(data), 50, 10, 3, 3)  # 5 batches, 6 asked for
    assert "50 rows fill 5 batches of 10" in short and "data.limit=60 or more" in short
    over = bench.peer_window_error(str(data), 0, 10, 5, 6)  # more than the file holds
    assert f"{data} has 100 rows: lower --warmup or --steps" in over
    assert "not a file" in bench.peer_window_error("tfds:glue/sst2", 0, 10, 1, 1)
