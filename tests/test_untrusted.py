"""No code path deserialises untrusted data into code: a scan of tfsft's own sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*REPO.glob("tfsft/**/*.py"), *REPO.glob("tasks/**/*.py"),
                  *REPO.glob("tools/**/*.py")])
FORBIDDEN = {
    r"\bimport pickle\b|\bfrom pickle\b|\bcPickle\b|\bdill\b|\bjoblib\b": "pickle",
    r"allow_pickle\s*=\s*True": "NumPy pickles",
    r"\byaml\.(load|unsafe_load|full_load)\(|yaml\.Loader\b|UnsafeLoader": "unsafe YAML",
    r"safe_mode\s*=\s*False|enable_unsafe_deserialization": "Keras unsafe loading",
    r"(?<![\w.])(eval|exec)\(": "eval/exec",
    r"shell\s*=\s*True": "shell commands",
}


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_no_unsafe_deserialisation(path):
    text = path.read_text(encoding="utf-8")
    for pattern, what in FORBIDDEN.items():
        hits = [n for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)]
        assert not hits, f"{path.name}:{hits}: {what}"
    for n, line in enumerate(text.splitlines(), 1):
        if "np.load(" in line:
            assert "allow_pickle=False" in line, f"{path.name}:{n}: np.load without it"


def test_the_scan_sees_the_sources():
    assert any(p.name == "workflow.py" for p in SOURCES) and len(SOURCES) > 15
