"""Translation as supervised fine-tuning of a decoder-only model (GPT-2).

Each pair becomes `[start] prompt target [end]`, the prompt being `task.template` filled
with the source text (default "Translate: {source}\\n"). The loss is on the target tokens
and the end token only: the model learns -sum log p(y_t | source, y_<t). Evaluation
generates a translation of every row (greedy by default; beam, top-k, top-p and
temperature are settings) and scores it with sacrebleu's BLEU and chrF plus exact match.
Data: TSV/CSV or JSONL with `source` and `target` fields (names are settings), or a TFDS
translation dataset (`data.format: tfds`, fields named by language code). The shared
machinery (encoding, packing, model, generation, report) is tfsft/sft.py.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from tfsft import sft
from tfsft.errors import DataError


@dataclass(frozen=True)
class TranslationConfig(sft.SftConfig):
    source_field: str = "source"  # field of the text to translate
    target_field: str = "target"  # field of its translation
    template: str = "Translate: {source}\n"  # the prompt; {source} is the source text

    def __post_init__(self):
        super().__post_init__()
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        if fields != {"source"}:
            raise ValueError(f"`task.template` must contain {{source}} and no other field, "
                             f"got fields {sorted(fields)} in {self.template!r}")


def examples(cfg: TranslationConfig, rows, labelled: bool = True):
    """Reader rows -> prompt/target pairs; every bad row is named by file:line."""
    from tfsft.seq2seq import Pairs

    parts, where, texts, problems, bad = [], [], [], [], []
    folder = rows.source.rsplit("/", 1)[0] + "/" if "/" in rows.source else ""
    for i, (row, at) in enumerate(zip(rows.fields, rows.where)):
        at = folder + at if not at.startswith(("tfds:", "<", "/")) else at
        source = row.get(cfg.source_field, row.get("text") if not labelled else None)
        target = row.get(cfg.target_field)
        problem = None
        if not isinstance(source, str) or not source.strip():
            problem = (f"{at}: `{cfg.source_field}` must be a non-empty text, got "
                       f"{_shown(source)} (fields: {', '.join(row)}; set `task.source_field`)")
        elif labelled and target is None:
            problem = (f"{at}: no `{cfg.target_field}` field (fields: {', '.join(row)}); "
                       "every training row needs a translation (set `task.target_field`)")
        elif labelled and (not isinstance(target, str) or not target.strip()):
            problem = (f"{at}: `{cfg.target_field}` must be a non-empty text, got "
                       f"{_shown(target)}; an empty response cannot be trained on")
        if problem:
            problems.append(problem)
            bad.append(i)
            continue
        prompt = cfg.template.format(source=source)
        parts.append([(prompt, False), (target, True)] if labelled else [(prompt, False)])
        where.append(at)
        texts.append(source)
    if problems:
        raise DataError(problems, rows=bad)
    return Pairs(parts, where, texts, labelled)


def _shown(value) -> str:
    return "nothing" if value is None else repr(value)[:60]


def generate(cfg, model, preprocessor, ex, batch_size: int) -> list[dict]:
    return sft.generate(cfg, model, preprocessor, ex, batch_size, output_field="translation")


def evaluate_model(cfg, model, preprocessor, label_names, ex, enc, batch_size: int) -> dict:
    return sft.evaluate_model(cfg, model, preprocessor, label_names, ex, enc, batch_size,
                              output_field="translation")


class TranslationTask(sft.SftTask):
    """The plugin object: the contract members of tfsft/tasks.py (most from tfsft/sft.py)."""

    name = "translation"
    config_class = TranslationConfig
    examples = staticmethod(examples)
    generate = staticmethod(generate)
    evaluate_model = staticmethod(evaluate_model)


TASK = TranslationTask()
