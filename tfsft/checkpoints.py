"""Weight files that are either the old complete file or the new complete file, never half.

Every save writes a temporary file beside the target, flushes it to disk, then renames it
over the target (`os.replace` is atomic on POSIX), so a crash, SIGKILL or full disk in the
middle of a save leaves the previous checkpoint loadable. A failed save raises
`TrainingError` naming the file and saying the previous one is intact.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np

from tfsft.errors import TrainingError


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_weights(model, path: Path) -> Path:
    """`model.save_weights(path)` atomically. `path` must end in `.weights.h5`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}.tmp{os.getpid()}.weights.h5")
    return _atomically(path, tmp, lambda: model.save_weights(str(tmp)))


def save_state(path: Path, arrays: list, meta: dict) -> Path:
    """A resume checkpoint: `arrays` (every variable's value, in a fixed order) and `meta`
    (JSON: position, plan, pending logs) in one `.npz` file, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")

    def write():
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)),
                     **{f"v{i:05d}": a for i, a in enumerate(arrays)})

    return _atomically(path, tmp, write)


def load_state(path: Path, expected: int | None = None) -> tuple[list, dict]:
    """(arrays, meta) of a resume checkpoint holding `expected` arrays (None: any number),
    or TrainingError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = [z[f"v{i:05d}"] for i in range(len(z.files) - 1)]
    except (OSError, ValueError, KeyError) as e:
        raise TrainingError(f"cannot read the resume checkpoint {path}: {e}. Delete it to "
                            "start the run over (or use --overwrite)") from None
    if expected is not None and len(arrays) != expected:
        raise TrainingError(f"{path} holds {len(arrays)} variables, but this model and "
                            f"optimizer have {expected}: it was written for another model. "
                            "Delete it to start over (or use --overwrite)")
    return arrays, meta


def _atomically(path: Path, tmp: Path, write) -> Path:
    try:
        write()
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        previous = (f"the previous {path.name} is intact" if path.exists()
                    else f"no earlier {path.name} existed")
        raise TrainingError(
            f"could not write checkpoint {path}: {e.strerror or e}; {previous}. "
            + ("Free disk space" if full else "Check the run directory's disk and permissions")
            + " and run again.") from e
    return path
