"""Evaluation metrics in pure NumPy: reports as JSON-ready dicts, text tables and plots.

Precision, recall and F1 follow scikit-learn's ``zero_division=0`` convention: a ratio
whose denominator is zero is reported as 0.0. Macro averages run over every class in
``label_names``, including classes that never occur.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AVERAGES = ("macro", "micro", "weighted")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den, with 0.0 where den == 0 (and no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 from true-positive, false-positive, false-negative counts."""
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _summary(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, names: list[str]) -> dict:
    """Build the per-class block and the macro / micro / weighted averages of a report."""
    per = _scores(tp, fp, fn)
    support = tp + fn
    total = support.sum()
    weights = support / total if total else np.zeros_like(support, dtype=np.float64)
    micro = _scores(tp.sum(), fp.sum(), fn.sum())
    return {
        "macro": {m: float(v.mean()) for m, v in per.items()},
        "micro": {m: float(v) for m, v in micro.items()},
        "weighted": {m: float((v * weights).sum()) for m, v in per.items()},
        "per_class": {
            name: {**{m: float(per[m][i]) for m in per}, "support": int(support[i])}
            for i, name in enumerate(names)
        },
    }


def _check_names(label_names: Sequence[str]) -> list[str]:
    """Return the label names as strings; reject an empty or duplicated list."""
    names = [str(n) for n in label_names]
    if not names:
        raise ValueError("label_names must not be empty")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names has duplicates: {names}")
    return names


def _int_array(values: np.ndarray, what: str, ndim: int) -> np.ndarray:
    """Return ``values`` as an int64 array of ``ndim`` dimensions, or raise ValueError."""
    arr = np.asarray(values)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != ndim or arr.dtype.kind not in "iub":
        raise ValueError(f"{what} must be a {ndim}-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Single-label multi-class report: accuracy, averages, per-class scores, confusion matrix.

    ``y_true`` and ``y_pred`` hold class ids in ``[0, len(label_names))``. Confusion matrix
    rows are true classes, columns predicted classes.
    """
    names = _check_names(label_names)
    k = len(names)
    t = _int_array(y_true, "y_true", 1)
    p = _int_array(y_pred, "y_pred", 1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    for what, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise ValueError(f"{what} has class ids outside [0, {k}) for {k} label names")
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    n = int(t.size)
    return {
        "examples": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        **_summary(tp, fp, fn, names),
        "confusion_matrix": {"labels": names, "matrix": cm.tolist()},
    }


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Multi-label report from 0/1 arrays of shape [n, k].

    ``accuracy`` is exact-match (subset) accuracy, ``hamming_accuracy`` the share of correct
    label decisions; micro averages pool counts over all classes. Each class gets a 2x2
    confusion matrix ``[[tn, fp], [fn, tp]]``.
    """
    names = _check_names(label_names)
    t = _int_array(y_true, "y_true", 2)
    p = _int_array(y_pred, "y_pred", 2)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    if t.shape[1] != len(names):
        raise ValueError(f"arrays have {t.shape[1]} columns but there are {len(names)} labels")
    for what, arr in (("y_true", t), ("y_pred", p)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must contain only 0 and 1")
    tp = (t & p).sum(axis=0)
    fp = ((1 - t) & p).sum(axis=0)
    fn = (t & (1 - p)).sum(axis=0)
    tn = ((1 - t) & (1 - p)).sum(axis=0)
    n = int(t.shape[0])
    matrices = {
        name: [[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i, name in enumerate(names)
    }
    return {
        "examples": n,
        "accuracy": float((t == p).all(axis=1).mean()) if n else 0.0,
        "hamming_accuracy": float((t == p).mean()) if n else 0.0,
        **_summary(tp, fp, fn, names),
        "confusion_matrix": {"labels": names, "matrices": matrices},
    }


def format_report(report: dict, digits: int = 4) -> str:
    """Fixed-width text table in the style of scikit-learn's classification_report."""
    names = list(report["per_class"])
    width = max([len("weighted avg"), *(len(n) for n in names)])
    col = max(len("precision"), digits + 2)
    head = f"{'':>{width}}" + "".join(
        f" {h:>{col}}" for h in ("precision", "recall", "f1-score", "support")
    )

    def row(name: str, scores: dict, support: int) -> str:
        vals = "".join(f" {scores[m]:>{col}.{digits}f}" for m in ("precision", "recall", "f1"))
        return f"{name:>{width}}{vals} {support:>{col}}"

    n = int(report["examples"])

    def single(name: str, value: float) -> str:
        return f"{name:>{width}}{'':>{2 * (col + 1)}} {value:>{col}.{digits}f} {n:>{col}}"

    total = sum(c["support"] for c in report["per_class"].values())
    lines = [head, ""]
    lines += [row(name, c, c["support"]) for name, c in report["per_class"].items()]
    lines.append("")
    lines.append(single("accuracy", report["accuracy"]))
    if "hamming_accuracy" in report:
        lines.append(single("hamming acc", report["hamming_accuracy"]))
    lines += [row(f"{avg} avg", report[avg], total) for avg in AVERAGES]
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(report: dict, path: str, title: str = "") -> None:
    """Write a PNG: a confusion matrix (single-label) or per-class F1 bars (multi-label)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(report["confusion_matrix"]["labels"])
    k = len(names)
    rotate = k > 8 or max(len(n) for n in names) > 6
    if "matrix" in report["confusion_matrix"]:
        side = min(max(4.0, 0.3 * k + 2.5), 20.0)
        fig = Figure(figsize=(side + 1.0, side))
        _draw_matrix(fig, np.asarray(report["confusion_matrix"]["matrix"]), names, rotate)
    else:
        fig = Figure(figsize=(min(max(5.0, 0.3 * k + 2.0), 20.0), 4.5))
        _draw_f1_bars(fig, report, names, rotate)
    if title:
        fig.axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _draw_matrix(fig, cm: np.ndarray, names: list[str], rotate: bool) -> None:
    """Heat map of counts with every cell annotated (rows true, columns predicted)."""
    from matplotlib.ticker import MaxNLocator

    k = len(names)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=names, rotation=90 if rotate else 0)
    ax.set_yticks(ticks, labels=names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    cell_points = fig.get_figheight() * 72 * 0.75 / k
    fontsize = max(5.0, min(10.0, 0.35 * cell_points))
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            color = "white" if cm[i, j] > threshold else "black"
            text = str(int(cm[i, j]))
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)


def _draw_f1_bars(fig, report: dict, names: list[str], rotate: bool) -> None:
    """Bar chart of per-class F1, with the macro and micro F1 as reference lines."""
    ax = fig.add_subplot(1, 1, 1)
    f1 = [report["per_class"][n]["f1"] for n in names]
    x = np.arange(len(names))
    ax.bar(x, f1, color="tab:blue")
    ax.axhline(report["macro"]["f1"], color="tab:orange", linestyle="--", label="macro F1")
    ax.axhline(report["micro"]["f1"], color="tab:green", linestyle=":", label="micro F1")
    ax.set_xticks(x, labels=names, rotation=90 if rotate else 0)
    ax.set_ylim(0.0, 1.15)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel("F1")
    ax.set_xlabel("Label")
    ax.legend(loc="upper right", ncol=2, fontsize="small")
