"""Model files: the run's final model (no optimizer state), and `.keras` / preset exports.

A run's `model/` folder is a KerasHub preset of the fine-tuned backbone and its
preprocessor (so `keras_hub.models.Backbone.from_preset(run/model)` works), plus
`head.npz`: the weights of every task layer outside the backbone, in layer order.
No optimizer state is saved anywhere: with AdamW it would triple the size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from tfsft.errors import RunDirError


def head_layers(model, backbone) -> list:
    """The task's own layers with weights: not the backbone, nor a backbone layer the task
    calls again (a causal LM's tied output layer is the backbone's token embedding)."""
    inside = {id(layer) for layer in backbone.layers}
    return [layer for layer in model.layers
            if layer is not backbone and id(layer) not in inside and layer.weights]


@contextlib.contextmanager
def written_atomically(folder: Path):
    """Yield a temporary folder beside `folder`; when the body completes, the temporary
    folder (flushed to disk) replaces `folder`. A full disk or a crash in the body leaves
    `folder` as it was and no partial copy."""
    from tfsft import checkpoints

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as handle:
                    os.fsync(handle.fileno())
        if folder.exists():  # an export being replaced (--overwrite)
            old = folder.with_name(f".{folder.name}.old{os.getpid()}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
        checkpoints.fsync_dir(folder.parent)
    except OSError as e:
        raise RunDirError(f"could not write {folder}: {e.strerror or e}; nothing partial was "
                          "left there. Free disk space (or fix permissions) and run again.") \
            from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_final(model, backbone, preprocessor, folder: Path) -> None:
    """Write backbone + preprocessor as a KerasHub preset, and the head weights, never
    leaving a half-written `folder`."""
    with written_atomically(folder) as tmp:
        backbone.save_to_preset(str(tmp))
        preprocessor.save_to_preset(str(tmp))
        arrays = {}
        for i, layer in enumerate(head_layers(model, backbone)):
            for j, w in enumerate(layer.get_weights()):
                arrays[f"{i:03d}/{j:03d}/{type(layer).__name__}"] = w
        np.savez(tmp / "head.npz", **arrays)


def load_backbone(folder: Path, max_length: int | None = None):
    """(backbone, preprocessor) from a run's `model/` preset (offline)."""
    from tfsft import backbones

    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    preprocessor = backbones.load_preprocessor(str(folder), backbone, max_length or 128)
    if max_length:
        preprocessor.sequence_length = max_length
    return backbone, preprocessor


def load_head(model, backbone, path: Path) -> None:
    """Set the head layers' weights from `head.npz`, checking layer types and shapes."""
    head = np.load(path, allow_pickle=False)
    saved: dict[int, list] = {}
    kinds: dict[int, str] = {}
    for key in sorted(head.files):
        i, _, kind = key.split("/")
        saved.setdefault(int(i), []).append(head[key])
        kinds[int(i)] = kind
    layers = head_layers(model, backbone)
    built = [(type(lyr).__name__, [tuple(w.shape) for w in lyr.weights]) for lyr in layers]
    found = [(kinds[i], [a.shape for a in saved[i]]) for i in sorted(saved)]
    if built != found:
        raise RunDirError(f"{path} holds head layers {found} but the task builds {built}: was "
                          "the run made with other task settings (pooling, labels, multi-label)?")
    for i, layer in enumerate(layers):
        layer.set_weights(saved[i])


def load_final(folder: Path, task, task_cfg, num_outputs: int, max_length: int,
               dropout: float):
    """Rebuild the task model from a run's `model/` folder: (model, backbone, preprocessor)."""
    folder = Path(folder)
    backbone, preprocessor = load_backbone(folder, max_length)
    model = task.build_model(task_cfg, backbone, num_outputs, dropout)
    load_head(model, backbone, folder / "head.npz")
    return model, backbone, preprocessor


def export_keras(model, path: Path) -> Path:
    """A single `.keras` file of the task model (architecture + weights, no optimizer)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"could not write {path}: {e.strerror or e}; nothing partial was "
                          "left there") from e
    return path


def export_preset(model, backbone, preprocessor, folder: Path) -> Path:
    """A KerasHub preset. Where KerasHub has a task class (BERT: `TextClassifier`), the
    preset is a full task preset: `keras_hub.models.TextClassifier.from_preset(folder)`
    reloads it with its preprocessor. Otherwise (GPT-2 head) the preset holds backbone and
    preprocessor, and the head weights sit beside them in `head.npz`."""
    import keras_hub

    folder = Path(folder)
    if isinstance(model, keras_hub.models.Task):
        # a twin of the model with the preprocessor attached, sharing the same backbone
        twin = type(model)(backbone=backbone, preprocessor=preprocessor,
                           **{k: v for k, v in model.get_config().items()
                              if k in ("num_classes", "activation", "dropout")})
        for mine, theirs in zip(head_layers(twin, backbone), head_layers(model, backbone)):
            mine.set_weights(theirs.get_weights())
        twin.save_to_preset(str(folder))
    else:
        save_final(model, backbone, preprocessor, folder)
    return folder


def export_saved_model(model, preprocessor, outputs_fn, folder: Path) -> Path:
    """A SavedModel whose `serving_default` signature takes a batch of raw strings
    (`text`: tf.string [batch]) and returns `outputs_fn(logits)`, with tokenisation inside
    the graph: TF Serving or `tf.saved_model.load` need no tfsft code, only the
    `tensorflow_text` ops (`import tensorflow_text` before loading). No optimizer state."""
    import keras
    import tensorflow as tf

    from tfsft import pipeline

    folder = Path(folder)
    built = preprocessor(tf.constant(["build"]))  # builds it (and its tables) for tracking
    built = built[0] if isinstance(built, tuple) else built
    # Each request runs at its longest text's width, not at data.max_length: one SST-2
    # text padded to 66 tokens ran the model on ~6x its tokens (docs/performance.md).
    # Only when padding goes on the right, where cutting columns keeps every real token.
    mask = np.asarray(built["padding_mask"])[0]
    trim = bool(mask[0]) and not np.any(np.diff(mask.astype(np.int8)) > 0)
    archive = keras.export.ExportArchive()
    # Only the preprocessor (its tokenizer's lookup tables) is tracked explicitly: the
    # endpoint captures the model's variables itself, and tracking the model as well
    # stores every weight twice (keras-team/keras#23553: 2x size and 2x RAM when loaded).
    archive.track(preprocessor)

    def serve(text):
        features = preprocessor(text)
        if isinstance(features, tuple):  # (x, y, sample_weight) packing
            features = features[0]
        if trim:
            features = pipeline.trim_to_longest(features)
        logits = model(features, training=False)
        return outputs_fn(logits)

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    with written_atomically(folder) as tmp:
        shutil.rmtree(tmp)  # write_out makes the folder itself
        archive.write_out(str(tmp), verbose=False)
    return folder
