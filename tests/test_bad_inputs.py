"""The malformed-input corpus (tests/bad_inputs/cases.yaml): every file gives its documented
error class and message - never another exception - and row-level problems can be skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tfsft import config as config_lib
from tfsft import errors, tasks, workflow

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))
TASK = tasks.load_task(Path(__file__).resolve().parents[1] / "tasks" / "classification")


def run_case(case: dict, extra: list[str] = ()):
    path = HERE / case["file"]
    if case["kind"] == "config":
        return config_lib.load_config(TASK.config_class, None, [str(path)],
                                      ["data.train=x.tsv", *extra], cwd=HERE)
    if case["kind"] == "predict":
        return workflow.read_predict_input(str(path))
    overrides = [f"data.train={path}", f"data.validation={HERE / 'valid' / 'validation.tsv'}",
                 *case.get("overrides", []), *extra]
    cfg = config_lib.load_config(TASK.config_class, None, [], overrides, cwd=HERE)
    return workflow.read_splits(TASK, cfg)


def test_corpus_is_large_and_every_file_has_a_case():
    files = {str(p.relative_to(HERE)) for p in HERE.rglob("*") if p.is_file()}
    files = {f.split("/.keep")[0] for f in files} - {"cases.yaml", "valid/validation.tsv"}
    named = {c["file"] for c in CASES}
    assert files <= named, f"files without a case: {sorted(files - named)}"
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_bad_input_gives_its_documented_error(case):
    expected = getattr(errors, case["error"])
    with pytest.raises(expected) as info:
        run_case(case)
    assert case["message"] in str(info.value)


ROW_CASES = [c for c in CASES if "skip_rows" in c]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c["file"] for c in ROW_CASES])
def test_row_level_problems_are_skipped_and_reported(case):
    splits = run_case(case, ["data.on_error=skip", "data.max_skipped=0.5"])
    assert len(splits.train) == case["skip_rows"]
    assert len(splits.skipped["train"]) == 1
    assert case["message"] in splits.skipped["train"][0]
