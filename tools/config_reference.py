"""The README's config reference, generated from the dataclasses (keeps docs true).

    python tools/config_reference.py            # print it
    python tools/config_reference.py --write    # replace it in README.md, between markers
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tfsft import config, tune  # noqa: E402
from tfsft.tasks import load_task  # noqa: E402


def table(classes: dict) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, comment in config.reference(classes):
        shown = list(default) if isinstance(default, tuple) else default
        comment = comment.replace("|", "\\|")  # a pipe would split the table cell
        lines.append(f"| `{key}` | {kind} | `{shown!r}` | {comment} |")
    return "\n".join(lines)


START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render() -> str:
    task_cls = load_task(REPO / "tasks" / "classification").config_class
    return "\n".join([
        table(config.SECTIONS), "",
        "`task:` keys of `tasks/classification` (and `tasks/sentiment`, which reuses them):",
        "", table({"task": task_cls}), "",
        "`task:` keys of `tasks/ner` (see [tasks/ner/README.md](tasks/ner/README.md)):",
        "", table({"task": load_task(REPO / "tasks" / "ner").config_class}), "",
        "`task:` keys of `tasks/translation` (see "
        "[tasks/translation/README.md](tasks/translation/README.md)):",
        "", table({"task": load_task(REPO / "tasks" / "translation").config_class}), "",
        "`task:` keys of `tasks/instruction` (see "
        "[tasks/instruction/README.md](tasks/instruction/README.md)):",
        "", table({"task": load_task(REPO / "tasks" / "instruction").config_class}), "",
        "`tune:` keys, read by `tfsft tune` only "
        "(see [Hyperparameter search](#hyperparameter-search)):",
        "", table({"tune": tune.TuneConfig})])


if __name__ == "__main__":
    text = render()
    if "--write" in sys.argv:
        readme = REPO / "README.md"
        body = readme.read_text(encoding="utf-8")
        head, rest = body.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
    else:
        print(text)
