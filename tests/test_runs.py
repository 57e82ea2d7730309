"""Run directories: locking across processes, safe replacement, interrupted status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfsft import runs
from tfsft.errors import RunDirError

HOLD = """
import sys, time
from pathlib import Path
from tfsft import runs
with runs.locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _fake_run(path: Path, status: str = "finished") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    runs.write_json(path / "manifest.json", {"versions": {"tfsft": "0"}, "status": status})
    (path / "marker.txt").write_text("old run")
    return path


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/run."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield run, proc
    proc.kill()
    proc.wait()


def test_lock_held_by_another_process_is_refused_naming_it(holder):
    run, proc = holder
    with pytest.raises(RunDirError, match=f"in use by another tfsft process \\(pid {proc.pid} "):
        with runs.locked(run):
            pass
    assert runs.lock_holder(run).startswith(f"pid {proc.pid} ")


def test_lock_is_released_when_the_holder_is_killed(holder):
    run, proc = holder
    proc.kill()
    proc.wait()
    with runs.locked(run):
        assert runs.lock_holder(run).startswith(f"pid {os.getpid()} ")
    assert runs.lock_holder(run) == ""


def test_running_manifest_without_a_process_reads_as_interrupted(tmp_path):
    run = _fake_run(tmp_path / "run", status="running")
    assert runs.status(run).startswith("interrupted")
    with runs.locked(run):
        assert runs.status(run) == "running"


def test_existing_run_needs_overwrite_and_a_non_run_is_never_replaced(tmp_path):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(RunDirError, match="pass --overwrite"):
        runs.check_target(run, overwrite=False)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("x")
    with pytest.raises(RunDirError, match="not a tfsft run directory"):
        runs.check_target(other, overwrite=True)
    assert (other / "cat.jpg").exists()


def test_failed_replacement_keeps_the_old_run(tmp_path):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with runs.open_run(run, overwrite=True) as work:
            mine = f"pid {os.getpid()} "
            assert work != run  # both locked by us:
            assert runs.lock_holder(run).startswith(mine)
            assert runs.lock_holder(work).startswith(mine)
            (work / "manifest.json").write_text(json.dumps({"versions": {"tfsft": "0"},
                                                            "status": "failed"}))
            raise RuntimeError("training blew up")
    assert (run / "marker.txt").read_text() == "old run"
    assert (tmp_path / "run.new" / "manifest.json").exists()  # the failed attempt, for a look
    # the next successful replacement discards the failed attempt and swaps atomically
    with runs.open_run(run, overwrite=True) as work:
        (work / "marker.txt").write_text("new run")
    assert (run / "marker.txt").read_text() == "new run"
    assert not (tmp_path / "run.new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_replacing_a_run_in_use_is_refused(holder):
    run, _ = holder
    _fake_run(run)
    time.sleep(0.1)
    with pytest.raises(RunDirError, match="in use by another tfsft process"):
        with runs.open_run(run, overwrite=True):
            pass
    assert (run / "marker.txt").exists()


def test_default_dirs_are_the_tasks_timestamped_runs_newest_first(tmp_path):
    for name in ("sentiment-20261207-120000", "sentiment-20261207-130000", "sentiment-tune",
                 "sentiment-v2-20261207-140000", "ner-20261207-150000"):
        (tmp_path / name).mkdir()
    (tmp_path / "sentiment-20261207-160000").write_text("a file, not a run")
    assert [p.name for p in runs.default_dirs("sentiment", str(tmp_path))] == [
        "sentiment-20261207-130000", "sentiment-20261207-120000"]
    assert runs.default_dirs("sentiment", str(tmp_path / "none")) == []


def test_check_run_says_what_a_run_lacks(tmp_path):
    no_model = _fake_run(tmp_path / "metrics-only")
    with pytest.raises(RunDirError, match="finished without a model .*--no-model"):
        runs.check_run(no_model)
    partial = _fake_run(tmp_path / "copied")
    (partial / "model").mkdir()
    (partial / "model" / "head.npz").write_bytes(b"")
    with pytest.raises(RunDirError, match="incomplete: config.yaml, task.json, labels.json, "
                                          "model/config.json missing"):
        runs.check_run(partial)
