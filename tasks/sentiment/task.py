"""Sentiment analysis: the classification task with its own defaults and bundled data.

The model, loss, metrics and outputs are those of `tasks/classification`, loaded from
its folder by path (explicit, no registry); what makes this task is `config.yaml`
(labels, the embedded MiniLM backbone, training settings) and `data/`.
"""

from pathlib import Path

from tfsft.tasks import load_module

_classification = load_module(Path(__file__).resolve().parent.parent / "classification")

TASK = _classification.ClassificationTask(name="sentiment")
