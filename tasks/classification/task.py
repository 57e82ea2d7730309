"""Text classification: single-label multi-class, or multi-label, on BERT-family or GPT-2.

BERT-family backbones use KerasHub's own `TextClassifier` for that backbone (dropout +
dense on the pooled [CLS] output); GPT-2, which KerasHub has no classifier for, gets a head
on its last non-padding token (see heads.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import re
import unicodedata

import numpy as np

from tfsft.errors import DataError


@dataclass(frozen=True)
class ClassificationConfig:
    text_field: str = "text"  # column / JSON key holding the text
    text_pair_field: str = ""  # optional second text (sentence pairs); empty: single text
    label_field: str = "label"  # column / JSON key holding the label
    labels: tuple[str, ...] = ()  # label names in id order; empty: sorted labels of train
    multi_label: bool = False  # several labels per row (sigmoid outputs)
    label_separator: str = ","  # multi-label: separator inside one field (JSON lists also work)
    threshold: float = 0.5  # multi-label: probability above which a label is predicted
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"  # text summary fed to the head

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"`task.threshold` ({self.threshold}) must be in (0, 1)")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"`task.labels` {list(self.labels)} lists a label twice")
        if len(self.labels) == 1 and not self.multi_label:
            raise ValueError(f"`task.labels` {list(self.labels)} has one label; single-label "
                             "classification needs at least 2")
        if self.multi_label and not self.label_separator:
            raise ValueError("`task.label_separator` must not be empty")


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None  # str, or list[str] for multi-label; None when unlabelled
    where: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> "Examples":
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Examples(pick(self.texts), pick(self.pairs), pick(self.labels), pick(self.where))


def _text(row: dict, key: str, where: str, problems: list[str], fallback: str = "") -> str:
    if key not in row and fallback in row:
        key = fallback
    if key not in row:
        problems.append(f"{where}: no field {key!r} (fields: {', '.join(map(str, row))}); "
                        f"set `task.text_field`/`task.text_pair_field` to the right column")
        return ""
    value = row[key]
    if not isinstance(value, str):
        problems.append(f"{where}: field {key!r} must be text, got {value!r}")
        return ""
    if not value.strip():
        problems.append(f"{where}: field {key!r} is empty; remove the row or fill in the text")
    elif not any(unicodedata.category(ch)[0] in "LNPS" for ch in value):
        problems.append(f"{where}: field {key!r} has no visible character (only "
                        f"{', '.join(sorted({f'U+{ord(ch):04X}' for ch in value.strip()}))[:80]});"
                        " remove the row or fill in the text")
    return value


def _label_text(value, where: str, problems: list[str]) -> str | None:
    """A label as text: JSON strings and whole numbers (`1` and `"1"` are one class);
    anything else (1.5, NaN, true, null, a list or object) is a problem, not a new class."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    problems.append(f"{where}: label {value!r} is a {type(value).__name__}; labels must be "
                    "text or whole numbers (write it as a JSON string)")
    return None


def _label(cfg: ClassificationConfig, row: dict, where: str, problems: list[str]):
    value = row.get(cfg.label_field)
    if cfg.multi_label and value is not None:
        if isinstance(value, list):
            items = value
        else:
            items = value.split(cfg.label_separator) if isinstance(value, str) else [value]
        texts = [_label_text(v, where, problems) for v in items]
        if None in texts:
            return None
        return sorted({t for t in texts if t})  # may be empty
    if value is None or (isinstance(value, str) and not value.strip()):
        what = "missing" if value is None else "empty"
        problems.append(f"{where}: label field {cfg.label_field!r} is {what}; every training "
                        "and evaluation row needs a label (set `task.label_field` if it has "
                        "another name)")
        return None
    if isinstance(value, (list, dict)):
        problems.append(f"{where}: label {value!r} is a {type(value).__name__}; single-label "
                        "classification needs one label (or set `task.multi_label: true`)")
        return None
    return _label_text(value, where, problems)


def examples(cfg: ClassificationConfig, rows, labelled: bool = True) -> Examples:
    """Map reader rows to texts (+pairs) and labels, collecting every bad row."""
    texts, pairs, labels, problems, wheres, bad = [], [], [], [], [], []
    folder = rows.source.rsplit("/", 1)[0] + "/" if "/" in rows.source else ""
    for i, (row, where) in enumerate(zip(rows.fields, rows.where)):
        where = folder + where if not where.startswith(("tfds:", "<", "/")) else where
        wheres.append(where)
        before = len(problems)
        # unlabelled input (predict) may be plain text lines, read as the field `text`
        texts.append(_text(row, cfg.text_field, where, problems,
                           fallback="" if labelled else "text"))
        if cfg.text_pair_field:
            pairs.append(_text(row, cfg.text_pair_field, where, problems))
        if labelled:
            labels.append(_label(cfg, row, where, problems))
        if len(problems) > before:
            bad.append(i)
    if problems:
        raise DataError(problems, rows=bad)
    return Examples(texts, pairs if cfg.text_pair_field else None,
                    labels if labelled else None, wheres)


def text_fields(cfg: ClassificationConfig) -> list[str]:
    """The fields `data.clean` / `data.dedup` work on."""
    return [cfg.text_field] + ([cfg.text_pair_field] if cfg.text_pair_field else [])


def augment(cfg: ClassificationConfig, ex: Examples, augmenter) -> tuple[Examples, list]:
    """Training rows plus augmented copies of their text (for pairs, the first text only:
    editing the second can change what the pair means)."""
    added = augmenter.run([t.split() for t in ex.texts])
    rows = [row for row, *_ in added]
    pick = lambda xs: None if xs is None else xs + [xs[i] for i in rows]  # noqa: E731
    return Examples(ex.texts + [" ".join(words) for *_, words, _ in added], pick(ex.pairs),
                    pick(ex.labels),
                    ex.where + [f"{ex.where[r]} (augmented, copy {c + 1}: {e})"
                                for r, c, e, _, _ in added]), added


def make_label_map(cfg: ClassificationConfig, train: Examples) -> list[str]:
    if cfg.labels:
        return list(cfg.labels)
    seen = set()
    for label in train.labels:
        seen.update(label if cfg.multi_label else [label])
    if len(seen) < 2 and not cfg.multi_label:
        raise DataError(f"training data has {len(seen)} distinct label(s) {sorted(seen)}; "
                        "classification needs at least 2")
    variants: dict[str, list[str]] = {}
    for label in seen:
        variants.setdefault(label.casefold(), []).append(label)
    clashes = [sorted(v) for v in variants.values() if len(v) > 1]
    if clashes:
        raise DataError([f"labels {' and '.join(map(repr, v))} differ only in case: make them "
                         "the same in the data, or list the label names in `task.labels`"
                         for v in sorted(clashes)])

    def order(s: str):  # numeric labels in numeric order ("2" before "10"), then text
        numeric = re.fullmatch(r"-?[0-9]+", s) is not None
        return (not numeric, int(s) if numeric else 0, s)

    return sorted(seen, key=order)


def encode_inputs(cfg: ClassificationConfig, preprocessor, ex: Examples):
    from tfsft import pipeline

    import keras_hub

    takes_pairs = isinstance(preprocessor, keras_hub.models.TextClassifierPreprocessor)
    if ex.pairs is not None and not takes_pairs:
        raise DataError("`task.text_pair_field` is set, but this backbone's preprocessor takes "
                        "one text per example (GPT-2); join the texts into one field")
    return pipeline.encode(preprocessor, ex.texts, ex.pairs)


def encode_targets(cfg: ClassificationConfig, label_names: list[str], ex: Examples) -> np.ndarray:
    """Label ids (single-label) or multi-hot rows; unknown labels are errors naming the row."""
    index = {name: i for i, name in enumerate(label_names)}
    folded = {name.casefold(): name for name in label_names}
    problems, bad = [], []

    def lookup(label, where, row):
        if label not in index:
            near = folded.get(label.casefold())
            hint = (f" (it differs from {near!r} only in case)" if near else "")
            problems.append(f"Label {label!r} on {where} is not in labels "
                            f"[{', '.join(label_names)}]{hint}. Fix the row or add the label "
                            "to `task.labels`.")
            bad.append(row)
            return 0
        return index[label]

    if cfg.multi_label:
        y = np.zeros((len(ex), len(label_names)), np.float32)
        for i, (labels, where) in enumerate(zip(ex.labels, ex.where)):
            for label in labels:
                y[i, lookup(label, where, i)] = 1.0
    else:
        y = np.array([lookup(lb, w, i) for i, (lb, w) in enumerate(zip(ex.labels, ex.where))],
                     np.int32)
    if problems:
        raise DataError(problems, rows=bad)
    return y


def class_weights(cfg: ClassificationConfig, targets: np.ndarray, n: int) -> np.ndarray:
    """Per-example weights ~ 1/frequency of the example's class, mean 1 (single-label only)."""
    if cfg.multi_label:
        raise DataError("`train.class_weights: balanced` is for single-label classification")
    counts = np.bincount(targets, minlength=n).astype(np.float64)
    per_class = np.where(counts > 0, len(targets) / (n * np.maximum(counts, 1)), 0.0)
    return per_class[targets].astype(np.float32)


def build_model(cfg: ClassificationConfig, backbone, num_outputs: int, dropout: float):
    from . import heads

    return heads.build(backbone, num_outputs, dropout, cfg.pooling)


def loss(cfg: ClassificationConfig, label_smoothing: float):
    import keras

    if cfg.multi_label:
        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    if label_smoothing:
        from tfsft.layers import SparseSmoothedCrossentropy

        return SparseSmoothedCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics(cfg: ClassificationConfig) -> list:
    import keras

    if cfg.multi_label:
        # per-label accuracy on logits: threshold p on probabilities is logit(p)
        logit = float(np.log(cfg.threshold / (1 - cfg.threshold)))
        return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=logit)]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def probabilities(cfg: ClassificationConfig, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    if cfg.multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def decode(cfg: ClassificationConfig, label_names: list[str], logits: np.ndarray,
           ex: Examples | None = None) -> list[dict]:
    probs = probabilities(cfg, logits)
    out = []
    for p in probs:
        scores = {name: round(float(s), 6) for name, s in zip(label_names, p)}
        if cfg.multi_label:
            out.append({"labels": [n for n, s in zip(label_names, p) if s >= cfg.threshold],
                        "scores": scores})
        else:
            out.append({"label": label_names[int(np.argmax(p))], "score": float(p.max()),
                        "scores": scores})
    return out


def serving_outputs(cfg: ClassificationConfig, label_names: list[str], logits) -> dict:
    """The SavedModel's outputs, as graph ops on the logits (see tfsft/export.py)."""
    import tensorflow as tf

    if cfg.multi_label:
        probs = tf.sigmoid(logits)
        return {"probabilities": probs,
                "predicted": tf.cast(probs >= cfg.threshold, tf.int32)}  # multi-hot
    probs = tf.nn.softmax(logits, axis=-1)
    ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
    return {"probabilities": probs, "label_id": ids,
            "label": tf.gather(tf.constant(label_names), ids)}


def report(cfg: ClassificationConfig, label_names: list[str], targets: np.ndarray,
           logits: np.ndarray, ex: Examples | None = None) -> dict:
    from tfsft import metrics as m

    probs = probabilities(cfg, logits)
    if cfg.multi_label:
        return m.multilabel_report(targets.astype(int), (probs >= cfg.threshold).astype(int),
                                   label_names)
    return m.classification_report(targets, probs.argmax(axis=1), label_names)


class ClassificationTask:
    """The classification plugin; `sentiment` reuses it with other defaults."""

    name = "classification"
    config_class = ClassificationConfig
    examples = staticmethod(examples)
    make_label_map = staticmethod(make_label_map)
    encode_inputs = staticmethod(encode_inputs)
    encode_targets = staticmethod(encode_targets)
    class_weights = staticmethod(class_weights)
    build_model = staticmethod(build_model)
    loss = staticmethod(loss)
    metrics = staticmethod(metrics)
    decode = staticmethod(decode)
    report = staticmethod(report)
    serving_outputs = staticmethod(serving_outputs)
    text_fields = staticmethod(text_fields)
    augment = staticmethod(augment)

    def __init__(self, name: str = "classification"):
        self.name = name


TASK = ClassificationTask()
