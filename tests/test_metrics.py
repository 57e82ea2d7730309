"""Tests for tfsft.metrics against hand-computed values (no scikit-learn)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tfsft.metrics import (
    classification_report,
    format_report,
    multilabel_report,
    plot_confusion_matrix,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["cat", "dog", "bird"]
# Confusion matrix (rows true, cols predicted): [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])

ML_NAMES = ["x", "y", "z"]
ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
ML_PRED = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0]])


def _close(block: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert block[key] == pytest.approx(value, abs=1e-12), key


def test_single_label_hand_example_per_class():
    r = classification_report(Y_TRUE, Y_PRED, NAMES)
    assert r["examples"] == 10
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["confusion_matrix"] == {
        "labels": NAMES,
        "matrix": [[2, 1, 1], [1, 2, 0], [0, 1, 2]],
    }
    # cat: tp=2, predicted 3, true 4; dog: tp=2, predicted 4, true 3; bird: 2 / 3 / 3.
    _close(r["per_class"]["cat"], {"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
    _close(r["per_class"]["dog"], {"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7})
    _close(r["per_class"]["bird"], {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert [r["per_class"][n]["support"] for n in NAMES] == [4, 3, 3]


def test_single_label_hand_example_averages():
    r = classification_report(Y_TRUE, Y_PRED, NAMES)
    _close(r["macro"], {"precision": 11 / 18, "recall": 11 / 18, "f1": 38 / 63})
    _close(r["micro"], {"precision": 0.6, "recall": 0.6, "f1": 0.6})
    # Weights 4/10, 3/10, 3/10.
    _close(r["weighted"], {"precision": 37 / 60, "recall": 0.6, "f1": 0.6})


def test_zero_division_and_class_that_never_appears():
    # "b" is never predicted, "c" never occurs at all.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = classification_report(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), ["a", "b", "c"])
    _close(r["per_class"]["a"], {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    _close(r["per_class"]["b"], {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2})
    _close(r["per_class"]["c"], {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    # Macro averages run over all three classes, including "c".
    _close(r["macro"], {"precision": 1 / 6, "recall": 1 / 3, "f1": 2 / 9})
    _close(r["weighted"], {"precision": 0.25, "recall": 0.5, "f1": 1 / 3})
    assert r["confusion_matrix"]["matrix"] == [[2, 0, 0], [2, 0, 0], [0, 0, 0]]


def test_class_predicted_but_never_true():
    r = classification_report(np.array([0, 0, 1]), np.array([0, 2, 1]), ["a", "b", "c"])
    _close(r["per_class"]["c"], {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    _close(r["per_class"]["a"], {"precision": 1.0, "recall": 0.5, "f1": 2 / 3})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_micro_equals_accuracy_for_single_label(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, size=200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 5, size=200))
    r = classification_report(t, p, [f"c{i}" for i in range(5)])
    accuracy = float((t == p).mean())
    assert 0.0 < accuracy < 1.0
    assert r["accuracy"] == pytest.approx(accuracy)
    for metric in ("precision", "recall", "f1"):
        assert r["micro"][metric] == pytest.approx(accuracy)
    # Weighted recall is also accuracy; support sums to n.
    assert r["weighted"]["recall"] == pytest.approx(accuracy)
    assert sum(c["support"] for c in r["per_class"].values()) == 200


def test_multilabel_hand_example():
    r = multilabel_report(ML_TRUE, ML_PRED, ML_NAMES)
    assert r["examples"] == 5
    assert r["accuracy"] == pytest.approx(3 / 5)  # rows 1, 3, 4 match exactly
    assert r["hamming_accuracy"] == pytest.approx(12 / 15)  # 3 wrong label decisions
    # x: tp=3 fp=0 fn=0; y: tp=1 fp=0 fn=1; z: tp=1 fp=1 fn=1.
    _close(r["per_class"]["x"], {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3})
    _close(r["per_class"]["y"], {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    _close(r["per_class"]["z"], {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    _close(r["macro"], {"precision": 5 / 6, "recall": 2 / 3, "f1": 13 / 18})
    _close(r["micro"], {"precision": 5 / 6, "recall": 5 / 7, "f1": 10 / 13})
    _close(r["weighted"], {"precision": 6 / 7, "recall": 5 / 7, "f1": 16 / 21})
    assert r["confusion_matrix"] == {
        "labels": ML_NAMES,
        "matrices": {
            "x": [[2, 0], [0, 3]],
            "y": [[3, 0], [1, 1]],
            "z": [[2, 1], [1, 1]],
        },
    }


def test_multilabel_label_never_present_or_predicted():
    t = np.array([[1, 0], [1, 0]])
    p = np.array([[1, 0], [0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = multilabel_report(t, p, ["on", "off"])
    _close(r["per_class"]["off"], {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    _close(r["macro"], {"precision": 0.5, "recall": 0.25, "f1": 1 / 3})
    assert r["confusion_matrix"]["matrices"]["off"] == [[2, 0], [0, 0]]


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="outside"):
        classification_report(np.array([0, 3]), np.array([0, 1]), NAMES)
    with pytest.raises(ValueError, match="shape"):
        classification_report(np.array([0, 1]), np.array([0]), NAMES)
    with pytest.raises(ValueError, match="integer"):
        classification_report(np.array([0.0, 1.0]), np.array([0, 1]), NAMES)
    with pytest.raises(ValueError, match="0 and 1"):
        multilabel_report(np.array([[2, 0]]), np.array([[1, 0]]), ["a", "b"])
    with pytest.raises(ValueError, match="columns"):
        multilabel_report(np.array([[1, 0]]), np.array([[1, 0]]), ["a", "b", "c"])


def test_reports_are_json_serialisable():
    for r in (
        classification_report(Y_TRUE, Y_PRED, NAMES),
        multilabel_report(ML_TRUE, ML_PRED, ML_NAMES),
    ):
        assert json.loads(json.dumps(r)) == r


def test_format_report_single_label():
    text = format_report(classification_report(Y_TRUE, Y_PRED, NAMES))
    for name in NAMES:
        assert name in text
    lines = text.splitlines()
    accuracy_line = next(line for line in lines if line.strip().startswith("accuracy"))
    assert "0.6000" in accuracy_line
    cat_line = next(line for line in lines if line.strip().startswith("cat"))
    assert cat_line.split() == ["cat", "0.6667", "0.5000", "0.5714", "4"]
    for avg in ("macro avg", "micro avg", "weighted avg"):
        assert any(line.strip().startswith(avg) for line in lines), avg
    # Fixed width: every per-class and average row has the same length.
    table_rows = [line for line in lines if line.strip() and "accuracy" not in line]
    assert len({len(line) for line in table_rows[1:]}) == 1


def test_format_report_multilabel_shows_hamming():
    text = format_report(multilabel_report(ML_TRUE, ML_PRED, ML_NAMES))
    for name in ML_NAMES:
        assert name in text
    assert "0.6000" in text  # exact-match accuracy
    assert "0.8000" in text  # hamming accuracy


def test_plot_single_label_png(tmp_path):
    path = tmp_path / "cm.png"
    plot_confusion_matrix(classification_report(Y_TRUE, Y_PRED, NAMES), str(path), "val")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def test_plot_multilabel_png(tmp_path):
    path = tmp_path / "f1.png"
    plot_confusion_matrix(multilabel_report(ML_TRUE, ML_PRED, ML_NAMES), str(path))
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def test_plot_many_classes_has_bounded_size(tmp_path):
    import matplotlib.image

    k = 50
    rng = np.random.default_rng(0)
    t = rng.integers(0, k, size=500)
    names = [f"label_{i:02d}" for i in range(k)]
    path = tmp_path / "big.png"
    plot_confusion_matrix(classification_report(t, t, names), str(path))
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert 400 <= height <= 2000 and 400 <= width <= 2100
