"""tools/bench.py end to end on a tiny backbone: every measurement, each repeat its own
process (the figures themselves are the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
