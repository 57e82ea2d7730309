"""The model card (`README.md`) written into every export, from the run's own records."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tfsft import config as config_lib


def _read(path: Path, default):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def render(run_dir: Path, task_name: str, cfg, label_names: list[str],
           written: list[Path]) -> str:
    run_dir = Path(run_dir)
    manifest = _read(run_dir / "manifest.json", {})
    metrics = _read(run_dir / "metrics.json", {})
    summary = _read(run_dir / "data_summary.json", {})
    lines = [f"# {task_name}: fine-tuned `{Path(cfg.model.backbone).name}` (tfsft)", "",
             f"A text model for **{task_name}**, fine-tuned with tfsft from the backbone "
             f"`{cfg.model.backbone}`. Inputs are truncated to {cfg.data.max_length} tokens."]
    if label_names:  # generative tasks have none: the outputs are text
        lines += ["", "## Labels", ""] + [f"{i}. `{name}`" for i, name in enumerate(label_names)]
    lines += ["", "## Training data", "", "| split | source | rows | sha256 |",
              "|---|---|---|---|"]
    for split, info in manifest.get("data", {}).items():
        lines.append(f"| {split} | `{info.get('source', '')}` | {info.get('rows', '')} | "
                     f"`{info.get('sha256', 'n/a')}` |")
    dist = {k: v.get("label_distribution") for k, v in summary.items()
            if isinstance(v, dict) and v.get("label_distribution")}
    if dist:
        lines += ["", "Label distribution: " + "; ".join(
            f"{split}: " + ", ".join(f"{k} {n}" for k, n in d.items())
            for split, d in dist.items())]
    if summary.get("validation_carved_from_train"):
        lines += ["", f"The validation split is {cfg.data.validation_fraction:.0%} of the "
                  "training file, held out stratified by label."]
    lines += ["", "## Evaluation", ""]
    if metrics:
        from tfsft.workflow import key_metrics

        names = list(key_metrics(next(iter(metrics.values()))))
        lines += ["| split | examples | " + " | ".join(n.replace("_", " ") for n in names)
                  + " |", "|---" * (len(names) + 2) + "|"]
        for split, rep in metrics.items():
            values = key_metrics(rep)
            lines.append(f"| {split} | {rep.get('examples', '')} | "
                         + " | ".join(_num(values.get(n)) for n in names) + " |")
    else:
        lines.append("No evaluation is recorded in the run.")
    lines += ["", "## Hyperparameters", "", "```yaml",
              config_lib.dump_yaml(cfg).strip(), "```", ""]
    command = manifest.get("command")
    lines += ["## How it was made", ""]
    if command:
        lines += ["```bash", f"cd {shlex.quote(manifest.get('cwd', '.'))}",
                  " ".join(shlex.quote(c) for c in ["python", "-m", "tfsft", *command[1:]]),
                  "```", ""]
    versions = manifest.get("versions", {})
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
        lines.append("")
    lines += ["## Use", ""]
    names = {p.name for p in written}
    if "saved_model" in names:
        lines += ["```python", "import tensorflow as tf",
                  "import tensorflow_text  # registers the tokeniser ops; needed to load",
                  'model = tf.saved_model.load("saved_model")',
                  'out = model.signatures["serving_default"](text=tf.constant(["some text"]))',
                  "```", "",
                  "Or serve it over HTTP (TF Serving's REST format): "
                  "`tfsft serve <this folder>`.",
                  ""]
    if "model.keras" in names:
        lines += ["`model.keras`: `import keras, keras_hub, tfsft.layers; "
                  'keras.saving.load_model("model.keras")` (takes token ids).', ""]
    if "preset" in names:
        lines += ["`preset/`: a KerasHub preset (`keras_hub.models.Backbone.from_preset`).", ""]
    lines += ["## Intended use and limits", "",
              f"- Made for {task_name} on text like the training data above; accuracy on other "
              "domains, styles or languages is unknown and likely lower.",
              f"- Text beyond {cfg.data.max_length} tokens is cut off before the model sees it.",
              "- The figures above come from the splits listed; no fairness, robustness or "
              "calibration evaluation was done. Check it on your own data before relying on it.",
              "- Predictions are probabilities from one model; they are not explanations.", ""]
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""
