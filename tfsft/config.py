"""Typed, frozen run configuration: defaults -> task config.yaml -> --config files -> overrides.

Every key has one home: a field of a frozen dataclass below (or of the task plugin's own
config class, under `task:`). Loading is strict: unknown keys, wrong types and bad values
are collected and reported together in one `ConfigError`, with the nearest valid key
suggested for typos. Relative paths in a YAML file are resolved against that file's folder;
paths given as command-line overrides are resolved against the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tfsft.errors import ConfigError

MAX_INT = 2**31 - 1  # TensorFlow counts steps, sizes and seeds in 32 bits
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
PATH = {"path": True}  # field metadata: value is a file path (or a `tfds:` source)
MAYBE_PATH = {"maybe_path": True}  # a path if it looks like one, else a preset name


Precision = Literal["float32", "auto", "onednn_bfloat16", "mixed_bfloat16", "mixed_float16"]


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are batched."""

    train: str = field(default="", metadata=PATH)  # TSV/CSV/JSONL file or tfds:name[:split]
    validation: str = field(default="", metadata=PATH)  # empty: carved from train
    test: str = field(default="", metadata=PATH)  # optional held-out split
    format: Literal["auto", "tsv", "csv", "jsonl", "conll", "tfds"] = "auto"  # auto: by suffix
    quoting: Literal["none", "csv"] = "none"  # TSV quoting: none (GLUE style) or csv rules
    validation_fraction: float = 0.1  # share of train carved out (stratified) when no validation
    max_length: int = 128  # tokens per example including special tokens; longer is truncated
    limit: int = 0  # use only the first N training rows (0: all)
    bucket_by_length: bool = True  # group similar lengths into batches (less padding)
    static_shapes: bool = False  # TPU/XLA: widths 16, 32, 64.. max_length; no partial last batch
    max_batch_tokens: int = 0  # 0: off; else rows x width cap of a train batch (long rows: fewer)
    tfds_dir: str = field(default="", metadata=PATH)  # TFDS data_dir (empty: TFDS default)
    tfds_download: bool = False  # allow TFDS to download (needs network)
    on_error: Literal["raise", "skip"] = "raise"  # bad rows: stop with all errors, or skip them
    max_skipped: float = 0.1  # on_error=skip: still stop if more than this share of a split is bad
    max_line_chars: int = 1_000_000  # longer lines are bad rows (catches a missing line end)
    clean: bool = False  # strip HTML, control chars; NFC; one space; drop empty rows
    dedup: Literal["off", "exact", "near"] = "off"  # drop repeats; eval rows found in train
    near_threshold: float = 0.8  # dedup=near: 5-gram Jaccard similarity limit
    augment: tuple[Literal["delete", "swap", "replace"], ...] = ()  # word edits, train only
    augment_rate: float = 0.1  # share of words each edit touches (at least one word)
    augment_copies: int = 1  # augmented copies added per training row (originals are kept)


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained backbone and what of it is trained."""

    backbone: str = field(default="all-minilm-l6-v2", metadata=MAYBE_PATH)  # see `tfsft list`
    dropout: float = 0.1  # dropout before the classification head
    backbone_dropout: float = -1.0  # dropout inside the backbone (-1: as the checkpoint has it)
    freeze: Literal["none", "backbone", "embeddings"] = "none"  # what to keep fixed
    freeze_layers: int = 0  # also freeze the first k transformer layers
    lora_rank: int = 0  # >0: train LoRA adapters of this rank instead of the backbone


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. `global_batch_size` is across all replicas."""

    epochs: int = 3  # full passes over the training data
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    global_batch_size: int = 32  # examples per optimizer update, all replicas together
    learning_rate: float = 5e-5  # peak learning rate after warmup
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.1  # share of total steps spent warming up linearly from 0
    weight_decay: float = 0.01  # AdamW decay; never applied to biases or LayerNorm
    clip_norm: float = 1.0  # global gradient norm clip (0: off)
    grad_accum_steps: int = 1  # accumulate gradients over this many batches per update
    label_smoothing: float = 0.0  # spread this much target mass over the other classes
    class_weights: Literal["none", "balanced"] = "none"  # balanced: weight ~ 1/frequency
    monitor: str = "val_accuracy"  # metric for early stopping and keep-best
    early_stopping_patience: int = 0  # epochs without improvement before stopping (0: off)
    keep_best: bool = True  # restore the best epoch's weights (by `monitor`) at the end
    seed: int = 42  # seeds Python, NumPy, TensorFlow and Keras; also shuffling and splits
    deterministic: bool = False  # TF op determinism: bit-identical reruns, somewhat slower
    eval_batch_size: int = 64  # batch size for validation, evaluate and predict
    precision: Precision = "auto"  # compute dtype; auto: bf16 matmuls where the hardware has them
    checkpoint_every: int = 500  # optimizer steps between resume checkpoints (0: epoch ends only)
    jit_compile: bool = False  # XLA-compile the training step (TPUs compile it in any case)
    steps_per_execution: int = 1  # optimizer steps per call of the step (TPU: fewer host trips)


Strategy = Literal["auto", "one_device", "mirrored", "multi_worker", "tpu"]


@dataclass(frozen=True)
class DistributeConfig:
    """Where the training step runs (tf.distribute); see the README's distributed section."""

    strategy: Strategy = "auto"  # auto: TPU, else TF_CONFIG workers, else all GPUs, else one device
    cpu_devices: int = 0  # split the CPU into N logical devices (mirrored tests without GPUs)


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved configuration of one run."""

    task: Any  # the task plugin's config dataclass
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
            "distribute": DistributeConfig}


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping (plain YAML keeps the
    last silently: a section or key given twice would lose the first's settings)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # unhashable: the base class reports it
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {show(key)} twice (also on line {first + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """One YAML document, read by the safe loader that refuses repeated keys."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    """Read one YAML mapping with the safe loader; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read as UTF-8 text: {e}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a tfsft config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=3e-5` -> ("train.learning_rate", 3e-05). Values parse as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or "." not in key:
        raise ConfigError(
            f"override {text!r} is not of the form section.key=value "
            "(for example train.epochs=1)"
        )
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError) as e:
        if raw.lstrip().startswith(("[", "{")):  # meant as a list or mapping: not text
            problem = str(e).splitlines()[0] if isinstance(e, yaml.YAMLError) else "too deep"
            raise ConfigError(f"override {text!r}: the value is not a valid YAML list or "
                              f"mapping ({problem}); write it like task.labels=[neg,pos]"
                              ) from None
        value = raw
    return key.strip(), value


def _is_pathlike(value: str) -> bool:
    return "/" in value and "://" not in value or value.startswith(("~", "."))


def _resolve_paths(raw: dict, cls: type, base: Path) -> dict:
    """Make relative path values absolute against `base` (the YAML file's folder or cwd)."""
    out = dict(raw)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if not isinstance(value, str) or not value or value.startswith("tfds:") or "\x00" in value:
            continue  # (a NUL byte is reported by cross_check)
        if f.metadata.get("path") or (f.metadata.get("maybe_path") and _is_pathlike(value)):
            p = Path(os.path.expanduser(value))
            out[f.name] = str(p if p.is_absolute() else (base / p).resolve())
    return out


IGNORED_SECTIONS = ("tune",)  # read by `tfsft tune` (tfsft/tune.py), ignored by the others


def _merge_layer(merged: dict, layer: dict, origin: str, base: Path, classes: dict,
                 errors: list[str]) -> None:
    """Merge one layer of `{section: {key: value}}` into `merged`, resolving its paths."""
    for section, values in layer.items():
        if section in IGNORED_SECTIONS:
            continue
        if section not in classes:
            hint = _suggest(str(section), classes)
            errors.append(f"{origin}: unknown section {show(section)}{hint}; sections are "
                          f"{', '.join([*classes, *IGNORED_SECTIONS])}")
            continue
        if values is None:  # a section whose keys are all commented out
            continue
        if not isinstance(values, dict):
            errors.append(f"{origin}: section {section!r} must be a mapping, "
                          f"got {type(values).__name__} {show(values)}")
            continue
        merged.setdefault(section, {}).update(_resolve_paths(values, classes[section], base))


def load_config(task_config_class: type, task_yaml: Path | None = None,
                config_files: list[str] | tuple = (), overrides: list[str] | tuple = (),
                cwd: Path | None = None) -> RunConfig:
    """Resolve a RunConfig from the four layers and validate it, reporting every error."""
    classes = dict(SECTIONS, task=task_config_class)
    cwd = Path(cwd or os.getcwd())
    merged: dict[str, dict] = {}
    errors: list[str] = []
    layers: list[tuple[dict, str, Path]] = []
    if task_yaml is not None and Path(task_yaml).exists():
        layers.append((read_yaml(task_yaml), str(task_yaml), Path(task_yaml).resolve().parent))
    for name in config_files:
        layers.append((read_yaml(Path(name)), str(name), Path(name).resolve().parent))
    override_layer: dict[str, dict] = {}
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            errors.extend(e.problems)
            continue
        section, _, rest = key.partition(".")
        if "." in rest:
            errors.append(f"override {text!r}: keys are section.key, one level deep")
            continue
        override_layer.setdefault(section, {})[rest] = value
    layers.append((override_layer, "command line", cwd))
    for layer, origin, base in layers:
        _merge_layer(merged, layer, origin, base, classes, errors)
    values = {}
    for section, cls in classes.items():
        others = {f.name: other for other, c in classes.items() if other != section
                  for f in dataclasses.fields(c)}
        values[section] = build_dataclass(cls, merged.get(section, {}), section, errors, others)
    errors.extend(cross_check(values["data"], values["train"], values["model"]))
    if not 0 <= values["distribute"].cpu_devices <= 64:
        errors.append(f"`distribute.cpu_devices` ({values['distribute'].cpu_devices}) must be "
                      ">= 0 and at most 64")
    if errors:
        raise ConfigError(errors)
    return RunConfig(**values)


def cross_check(data: DataConfig, train: TrainConfig, model: ModelConfig) -> list[str]:
    """Constraints that involve more than one key, quoting each key and value."""
    errors = []
    if not data.train:
        errors.append("`data.train` is empty: set it to a TSV/CSV/JSONL file or tfds:name")
    for name, value in [("data.train", data.train), ("data.validation", data.validation),
                        ("data.test", data.test), ("data.tfds_dir", data.tfds_dir),
                        ("model.backbone", model.backbone)]:
        if "\x00" in value:
            errors.append(f"`{name}` ({value!r}) contains a NUL character; fix the path")
    if train.epochs < 1 and train.max_steps < 1:
        errors.append(f"`train.epochs` ({train.epochs}) and `train.max_steps` "
                      f"({train.max_steps}) leave nothing to train: set one of them >= 1")
    if not 0.0 <= train.warmup_ratio < 1.0:
        errors.append(f"`train.warmup_ratio` ({train.warmup_ratio}) must be in [0, 1)")
    if not 0.0 <= data.max_skipped < 1.0:
        errors.append(f"`data.max_skipped` ({data.max_skipped}) must be in [0, 1)")
    if not 0.0 < data.near_threshold <= 1.0:
        errors.append(f"`data.near_threshold` ({data.near_threshold}) must be in (0, 1]")
    if not 0.0 < data.augment_rate <= 0.5:
        errors.append(f"`data.augment_rate` ({data.augment_rate}) must be in (0, 0.5]")
    if data.augment and not 1 <= data.augment_copies <= 20:
        errors.append(f"`data.augment_copies` ({data.augment_copies}) must be in 1..20")
    if len(set(data.augment)) != len(data.augment):
        errors.append(f"`data.augment` {list(data.augment)} lists an edit twice")
    if not 0.0 < data.validation_fraction < 1.0:
        errors.append(f"`data.validation_fraction` ({data.validation_fraction}) must be in (0, 1)")
    if not 0.0 <= model.dropout < 1.0:
        errors.append(f"`model.dropout` ({model.dropout}) must be in [0, 1)")
    if not (model.backbone_dropout == -1.0 or 0.0 <= model.backbone_dropout < 1.0):
        errors.append(f"`model.backbone_dropout` ({model.backbone_dropout}) must be in [0, 1), "
                      "or -1 to keep the checkpoint's own")
    if not 0.0 <= train.label_smoothing < 1.0:
        errors.append(f"`train.label_smoothing` ({train.label_smoothing}) must be in [0, 1)")
    for name, value, low in [("train.global_batch_size", train.global_batch_size, 1),
                             ("train.grad_accum_steps", train.grad_accum_steps, 1),
                             ("train.eval_batch_size", train.eval_batch_size, 1),
                             ("train.steps_per_execution", train.steps_per_execution, 1),
                             ("data.max_length", data.max_length, 8),
                             ("data.max_line_chars", data.max_line_chars, 1),
                             ("train.learning_rate", train.learning_rate, 1e-12)]:
        if value < low:
            errors.append(f"`{name}` ({value}) must be >= {low}")
    for name, value in [("train.max_steps", train.max_steps), ("data.limit", data.limit),
                        ("model.freeze_layers", model.freeze_layers),
                        ("data.max_batch_tokens", data.max_batch_tokens),
                        ("model.lora_rank", model.lora_rank), ("train.clip_norm", train.clip_norm),
                        ("train.weight_decay", train.weight_decay),
                        ("train.early_stopping_patience", train.early_stopping_patience),
                        ("train.checkpoint_every", train.checkpoint_every),
                        ("train.seed", train.seed)]:
        if value < 0:
            errors.append(f"`{name}` ({value}) must be >= 0")
    if model.lora_rank and (model.freeze != "none" or model.freeze_layers):
        errors.append(f"`model.lora_rank` ({model.lora_rank}) already freezes the backbone; "
                      f"`model.freeze` ({model.freeze!r}) must then be 'none' and "
                      f"`model.freeze_layers` ({model.freeze_layers}) 0")
    if 0 < data.max_batch_tokens < data.max_length:
        errors.append(f"`data.max_batch_tokens` ({data.max_batch_tokens}) must be 0 (no cap) or "
                      f">= `data.max_length` ({data.max_length}), so that a batch holds a row")
    if train.global_batch_size % max(train.grad_accum_steps, 1):
        errors.append(f"`train.global_batch_size` ({train.global_batch_size}) must be divisible "
                      f"by `train.grad_accum_steps` ({train.grad_accum_steps})")
    for split in ("train", "validation", "test"):
        source = getattr(data, split)
        if data.format == "tfds" and source and not source.startswith("tfds:"):
            errors.append(f"`data.format` is 'tfds' but `data.{split}` ({source!r}) does not "
                          "start with tfds: (write tfds:name, e.g. tfds:glue/sst2)")
    return errors


# --------------------------------------------------------------------------- validation


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 3, 6, 6, 80


def show(value: Any) -> str:
    """A bounded repr for messages: YAML aliases can make a small file a huge structure."""
    return _SHORT.repr(value)


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_dataclass(cls: type, raw: dict, prefix: str, errors: list[str],
                    elsewhere: dict[str, str] | None = None):
    """Build `cls` from a flat dict, appending every problem to `errors`; `elsewhere`:
    {key: its section} of the other sections, to point at a key put in the wrong one."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            name = key if isinstance(key, str) and len(key) <= 80 else show(key)
            home = (elsewhere or {}).get(key) if isinstance(key, str) else None
            hint = (f" (it is a key of `{home}`: {home}.{key})" if home
                    else _suggest(str(key), names))
            errors.append(f"unknown key `{prefix}.{name}`{hint}; valid "
                          f"keys in `{prefix}`: {', '.join(sorted(names))}")
            continue
        ok, converted, expected = coerce(value, hints[key])
        if ok:
            kwargs[key] = converted
        else:
            errors.append(f"`{prefix}.{key}` must be {expected}, got {show(value)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a task's own __post_init__ check
        errors.append(f"`{prefix}`: {e}")
        return cls()


def coerce(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """Check `value` against a type hint; returns (ok, converted value, expected-description)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True, value, "anything"
    if origin is Literal:
        return value in args, value, "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None, "null"
        descriptions = []
        for arg in args:
            if arg is type(None):
                continue
            ok, converted, desc = coerce(value, arg)
            if ok:
                return True, converted, desc
            descriptions.append(desc)
        return False, value, " or ".join(descriptions + ["null"])
    if origin is tuple:
        item = args[0] if args else Any
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value, f"a list of {_name(item)}"
        out = []
        for v in value:
            if item is str and isinstance(v, int) and not isinstance(v, bool):
                v = str(v)  # numeric label names: labels: [0, 1]
            ok, c, _ = coerce(v, item)
            if not ok:
                return False, value, f"a list of {_name(item)}"
            out.append(c)
        return True, tuple(out), f"a list of {_name(item)}"
    if hint is bool:
        return isinstance(value, bool), value, "true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) > MAX_INT:
            return False, value, f"an integer of at most {MAX_INT} in size"
        return ok, value, "an integer"
    if hint is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-5 (no dot) as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an integer too big for a float
                ok = False
        ok = ok and math.isfinite(value)
        return ok, value, "a finite number"
    if hint is str:
        return isinstance(value, str), value, "a string"
    return isinstance(value, hint), value, _name(hint)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------- output


def to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain data (the form written to `config.yaml` in a run)."""
    out = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(section).items()}
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def reference(classes: dict[str, type]) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, comment) for every key: the source of the README reference."""
    import inspect

    rows = []
    for section, cls in classes.items():
        # comments of inherited fields come from the base class (the class's own win)
        comments = {}
        for c in reversed(cls.__mro__):
            if dataclasses.is_dataclass(c):
                comments.update(_field_comments(inspect.getsource(c)))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section}.{f.name}", _type_text(hints[f.name]), default,
                         comments.get(f.name, "")))
    return rows


def _field_comments(source: str) -> dict[str, str]:
    """{field: the comment ending its line} of a class body's `name: type = ...` lines,
    read with Python's tokenizer: a `#` inside a string is not a comment, and the comment of
    a statement that spans lines is the one on its last line."""
    import io
    import textwrap
    import tokenize

    out, line = {}, []
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline):
        if tok.type == tokenize.NEWLINE:  # the end of a statement
            code = [t for t in line if t.type != tokenize.COMMENT]
            notes = [t.string for t in line if t.type == tokenize.COMMENT]
            if notes and len(code) > 1 and code[0].type == tokenize.NAME \
                    and code[1].string == ":":
                out[code[0].string] = notes[-1].lstrip("#").strip()
            line = []
        elif tok.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT) and (
                line or tok.type != tokenize.COMMENT):  # not a comment on a line of its own
            line.append(tok)
    return out


def _type_text(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_text(typing.get_args(hint)[0])}"
    return _name(hint)
