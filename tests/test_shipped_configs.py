"""Every shipped task config and every configs/*.yaml profile validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfsft import config as c
from tfsft.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(p.parent for p in (REPO / "tasks").glob("*/task.py"))
PROFILES = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("folder", TASKS, ids=lambda p: p.name)
def test_task_config_validates(folder):
    task = load_task(folder)
    cfg = c.load_config(task.config_class, folder / "config.yaml", [], ["data.train=x.tsv"])
    assert cfg.task.__class__ is task.config_class
    assert (folder / "README.md").is_file()


def _fits(profile: Path, folder: Path) -> bool:
    """A profile is for the tasks whose config has every key of its `task:` section."""
    keys = set((c.read_yaml(profile).get("task") or {}))
    return keys <= set(load_task(folder).config_class.__dataclass_fields__)


def test_every_profile_is_for_some_task():
    for profile in PROFILES:
        assert any(_fits(profile, f) for f in TASKS), f"{profile.name} fits no task"


@pytest.mark.parametrize("profile, folder",
                         [(p, f) for p in PROFILES for f in TASKS if _fits(p, f)],
                         ids=lambda p: p.name)
def test_profile_validates_with_its_tasks(profile, folder):
    task = load_task(folder)
    raw = c.read_yaml(profile)
    needs_data = [] if "train" in (raw.get("data") or {}) else ["data.train=x.tsv"]
    cfg = c.load_config(task.config_class, folder / "config.yaml", [str(profile)], needs_data)
    assert cfg.data.train
    if "tune" in raw:  # a search profile: its space must hold valid values of real keys
        from tfsft import tune

        def check_key(key, value):
            try:
                c.load_config(task.config_class, folder / "config.yaml", [str(profile)],
                              [*needs_data, f"{key}={tune._yaml(value)}"])
            except c.ConfigError as e:
                return e.problems
            return []

        tc = tune.load_tune_config(raw["tune"], check_key)
        assert tc.space


def test_every_task_config_key_is_commented():
    for folder in TASKS:
        for line in (folder / "config.yaml").read_text().splitlines():
            if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
                assert "#" in line, f"{folder.name}/config.yaml: no comment on {line.strip()!r}"
