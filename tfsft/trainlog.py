"""Training logs that stay exact across a restart: `history.jsonl` and TensorBoard scalars.

Records are held in memory and written when the training loop saves a resume checkpoint,
and the records not yet written travel inside that checkpoint. After a restart the event
files already on disk are read, and only the records they lack are written: no step is
written twice (no zig-zag in TensorBoard) and none is lost, wherever the process died.

Layout (what Keras' TensorBoard callback writes, so dashboards look the same):
`tensorboard/train/` holds `batch_loss`, `examples_per_second` and `learning_rate` per
update (every 10th) and `epoch_<metric>` per epoch;
`tensorboard/validation/` holds `epoch_<metric>` of the validation split.
"""

from __future__ import annotations

import json
from pathlib import Path


class Log:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.history: list[dict] = []  # one row per finished epoch
        self.pending: list[list] = []  # [writer, tag, step, value] not yet on disk
        self._writers: dict = {}
        self._on_disk: dict = {}  # {(writer, tag): highest step} in the files at a restart

    def scalar(self, writer: str, tag: str, step: int, value: float) -> None:
        # a step the event files hold already: written after the checkpoint resumed from
        # (the last epoch's, when saving the model failed); the rerun's value is the same
        if int(step) > self._on_disk.get((writer, tag), -1):
            self.pending.append([writer, tag, int(step), float(value)])

    def epoch(self, epoch: int, logs: dict) -> None:
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        for key, value in logs.items():
            if key.startswith("val_"):
                self.scalar("validation", f"epoch_{key[4:]}", epoch, value)
            elif key in ("train_seconds", "examples_per_second"):
                continue
            else:
                self.scalar("train", f"epoch_{key}", epoch, value)

    def state(self) -> dict:
        return {"history": self.history, "pending": self.pending}

    def restore(self, state: dict) -> None:
        """Take the logs of a checkpoint, minus what the event files on disk already hold."""
        self.history = list(state["history"])
        self._on_disk = logged_steps(self.run_dir / "tensorboard")
        self.pending = [r for r in state["pending"]
                        if r[2] > self._on_disk.get((r[0], r[1]), -1)]

    def flush(self) -> None:
        """Write pending scalars and the whole history (atomically)."""
        import tensorflow as tf

        from tfsft import runs

        for name, tag, step, value in self.pending:
            if name not in self._writers:
                folder = self.run_dir / "tensorboard" / name
                self._writers[name] = tf.summary.create_file_writer(str(folder))
            with self._writers[name].as_default():
                tf.summary.scalar(tag, value, step=step)
        for w in self._writers.values():
            w.flush()
        self.pending = []
        runs.write_text(self.run_dir / "history.jsonl",
                        "".join(json.dumps(row) + "\n" for row in self.history))


def logged_steps(folder: Path) -> dict:
    """{(writer, tag): highest step} over the event files under `folder` (a file cut short
    by a killed process is read up to its last whole record)."""
    import tensorflow as tf

    out: dict = {}
    for path in sorted(Path(folder).glob("*/events.out.tfevents.*")):
        writer = path.parent.name
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    key = (writer, value.tag)
                    out[key] = max(out.get(key, -1), int(event.step))
        except tf.errors.DataLossError:
            continue
    return out
