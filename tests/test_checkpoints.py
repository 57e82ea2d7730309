"""Checkpoints are atomic: SIGKILL or a full disk in mid-write leaves the previous one."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfsft import checkpoints
from tfsft.errors import TrainingError

WRITER = """
import os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras, numpy as np
sys.path.insert(0, sys.argv[2])
from checkpoint_model import make
from tfsft import checkpoints
model = make()
i = 1
while True:
    for w in model.weights:
        w.assign(np.full(w.shape, float(i), "float32"))
    checkpoints.save_weights(model, sys.argv[1])
    print(i, flush=True)
    i += 1
"""

MODEL = """
import keras
def make():
    # ~5 MB of weights: a save takes long enough to be killed in the middle of it
    return keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024),
                             keras.layers.Dense(1024)])
"""


def _model(folder):
    sys.path.insert(0, str(folder))
    try:
        from checkpoint_model import make
    finally:
        sys.path.remove(str(folder))
    return make()


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    (tmp_path / "checkpoint_model.py").write_text(MODEL)
    path = tmp_path / "last.weights.h5"
    rng = random.Random(0)
    model = _model(tmp_path)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        saved = [int(proc.stdout.readline())]
        for _ in range(rng.randint(0, 3)):
            saved.append(int(proc.stdout.readline()))
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere inside the next save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # saves the writer finished (and reported) while we slept: a fast disk fits several
        saved += [int(line) for line in proc.stdout.read().split()]
        model.load_weights(str(path))  # a truncated HDF5 file would raise here
        values = {float(v) for w in model.weights for v in np.unique(w.numpy())}
        assert len(values) == 1, f"attempt {attempt}: mixed weights {values}"
        # the last reported save, or the one after it (done, killed before it reported)
        assert saved[-1] <= values.pop() <= saved[-1] + 1


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "best.weights.h5"
    for w in model.weights:
        w.assign(np.ones(w.shape, "float32"))
    checkpoints.save_weights(model, path)

    def half_written(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # the start of a file, then:
        raise OSError(errno.ENOSPC, "No space left on device")

    for w in model.weights:
        w.assign(np.full(w.shape, 2.0, "float32"))
    monkeypatch.setattr(model, "save_weights", half_written)
    with pytest.raises(TrainingError, match="No space left on device; the previous "
                                            "best.weights.h5 is intact. Free disk space"):
        checkpoints.save_weights(model, path)
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    fresh.load_weights(str(path))
    assert all(np.all(w.numpy() == 1.0) for w in fresh.weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]  # no debris
