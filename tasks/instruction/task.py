"""Instruction tuning (prompt -> response SFT) of a decoder-only model (GPT-2), on JSONL in
the two common formats:

- Alpaca: `{"instruction": ..., "input": ..., "output": ...}` (`input` optional), laid out
  with `task.prompt_template` (or `task.input_template` when `input` is not empty); the
  loss is on `output` and the end token.
- Chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`,
  multi-turn; each turn is laid out with its role's template, and the loss is on every
  assistant turn (its content and the end token after it), never on system or user turns
  or the role headers.

The role markers are plain text (`<|user|>` etc. are tokenised like any text, so no
special tokens need adding to a pretrained vocabulary). Evaluation generates the last
assistant turn (the reference) from everything before it. Shared machinery: tfsft/sft.py.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

from tfsft import sft
from tfsft.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class InstructionConfig(sft.SftConfig):
    format: Literal["auto", "alpaca", "chat"] = "auto"  # auto: chat when a row has messages
    instruction_field: str = "instruction"  # Alpaca: the task
    input_field: str = "input"  # Alpaca: optional context of the task
    output_field: str = "output"  # Alpaca: the response trained on
    messages_field: str = "messages"  # chat: list of {role, content}
    prompt_template: str = "### Instruction:\n{instruction}\n\n### Response:\n"  # Alpaca
    input_template: str = ("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                           "### Response:\n")  # Alpaca rows with a non-empty input
    system_template: str = "<|system|>\n{content}\n"  # chat: a system turn (no loss)
    user_template: str = "<|user|>\n{content}\n"  # chat: a user turn (no loss)
    assistant_template: str = "<|assistant|>\n"  # chat: header before each assistant turn

    def __post_init__(self):
        super().__post_init__()
        wanted = {"prompt_template": {"instruction"}, "input_template": {"instruction", "input"},
                  "system_template": {"content"}, "user_template": {"content"},
                  "assistant_template": set()}
        problems = []
        for key, fields in wanted.items():
            value = getattr(self, key)
            found = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            if found != fields:
                problems.append(f"`task.{key}` must contain "
                                f"{', '.join('{' + f + '}' for f in sorted(fields)) or 'no field'}"
                                f" and no other, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))


def _alpaca(cfg: InstructionConfig, row: dict, labelled: bool):
    """(parts, echoed text) or a problem."""
    instruction = row.get(cfg.instruction_field, row.get("text") if not labelled else None)
    context = row.get(cfg.input_field, "")
    output = row.get(cfg.output_field)
    if not isinstance(instruction, str) or not instruction.strip():
        return f"`{cfg.instruction_field}` must be a non-empty text, got {_shown(instruction)}"
    if not isinstance(context, str):
        return f"`{cfg.input_field}` must be a text (or absent), got {_shown(context)}"
    if labelled and output is None:
        return (f"no `{cfg.output_field}` field (fields: {', '.join(row)}); every training "
                f"row needs a response (set `task.output_field`)")
    if labelled and (not isinstance(output, str) or not output.strip()):
        return (f"`{cfg.output_field}` must be a non-empty text, got {_shown(output)}; an "
                "empty response cannot be trained on")
    prompt = (cfg.input_template.format(instruction=instruction, input=context)
              if context.strip() else cfg.prompt_template.format(instruction=instruction))
    parts = [(prompt, False)] + ([(output, True)] if labelled else [])
    return parts, instruction + (f"\n{context}" if context.strip() else "")


def _chat(cfg: InstructionConfig, row: dict, labelled: bool):
    messages = row.get(cfg.messages_field)
    if not isinstance(messages, list) or not messages:
        return (f"`{cfg.messages_field}` must be a non-empty list of {{\"role\", \"content\"}}"
                f" objects, got {_shown(messages)}")
    parts, last_user = [], ""
    for k, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f"message {k} must be an object with a text `content`, got {_shown(m)}"
        role = m.get("role")
        if role not in ROLES:
            return (f"message {k} has unknown role {_shown(role)}; roles are "
                    f"{', '.join(ROLES)}")
        if role == "assistant":
            if not m["content"].strip():
                return f"message {k} (assistant) is empty; an empty response cannot be trained on"
            parts += [(cfg.assistant_template, False), (m["content"], True)]
        else:
            template = cfg.system_template if role == "system" else cfg.user_template
            parts.append((template.format(content=m["content"]), False))
            last_user = m["content"] if role == "user" else last_user
    if labelled and not any(trained for _, trained in parts):
        return "has no assistant turn: nothing to train on"
    if not labelled:  # predict: the assistant answers what came last
        parts = [(t, False) for t, _ in parts] + [(cfg.assistant_template, False)]
    return parts, last_user


def examples(cfg: InstructionConfig, rows, labelled: bool = True):
    """Reader rows -> examples; every bad row is named by file:line."""
    from tfsft.seq2seq import Pairs

    parts, where, texts, problems, bad = [], [], [], [], []
    folder = rows.source.rsplit("/", 1)[0] + "/" if "/" in rows.source else ""
    for i, (row, at) in enumerate(zip(rows.fields, rows.where)):
        at = folder + at if not at.startswith(("tfds:", "<", "/")) else at
        chat = cfg.format == "chat" or (cfg.format == "auto" and cfg.messages_field in row)
        got = _chat(cfg, row, labelled) if chat else _alpaca(cfg, row, labelled)
        if isinstance(got, str):
            problems.append(f"{at}: {got}")
            bad.append(i)
            continue
        parts.append(got[0])
        where.append(at)
        texts.append(got[1])
    if problems:
        raise DataError(problems, rows=bad)
    return Pairs(parts, where, texts, labelled)


def _shown(value) -> str:
    return "nothing" if value is None else repr(value)[:60]


class InstructionTask(sft.SftTask):
    """The plugin object: the contract members of tfsft/tasks.py (most from tfsft/sft.py)."""

    name = "instruction"
    config_class = InstructionConfig
    examples = staticmethod(examples)


TASK = InstructionTask()
