"""The fit / validate / evaluate / predict / export paths, top to bottom.

fit: config -> data (read + validate, before anything is written) -> run directory ->
strategy -> backbone -> task model -> tokenise -> training.train -> save -> evaluate.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfsft import config as config_lib
from tfsft import data as data_lib
from tfsft import runs, tasks
from tfsft.errors import ConfigError, DataError


def log(msg: str) -> None:
    print(f"[tfsft] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Splits:
    train: object
    validation: object
    test: object | None
    label_names: list[str]
    carved: bool  # validation carved from train


def load_task_and_config(task_spec: str, config_files=(), overrides=()):
    task, folder = tasks.resolve(task_spec)
    task_yaml = folder / "config.yaml" if folder else None
    cfg = config_lib.load_config(task.config_class, task_yaml, config_files, overrides)
    return task, folder, cfg


def read_split(task, cfg, source: str, split: str, labelled: bool = True):
    d = cfg.data
    rows = data_lib.read_rows(source, d.format, d.quoting, split, d.tfds_dir, d.tfds_download)
    if not len(rows):
        raise DataError(f"{source}: no rows in split {split!r}")
    return task.examples(cfg.task, rows, labelled)


def read_splits(task, cfg) -> Splits:
    """Read and validate every split before anything is written or loaded."""
    d = cfg.data
    problems = []
    parts = {}
    for split in ("train", "validation", "test"):
        source = getattr(d, split)
        if not source:
            continue
        try:
            parts[split] = read_split(task, cfg, source, split)
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    train = parts["train"]
    if d.limit:
        train = train.take(range(min(d.limit, len(train))))
    label_names = task.make_label_map(cfg.task, train)
    validation, carved = parts.get("validation"), False
    if validation is None:
        keep, held = data_lib.stratified_split(train.labels, d.validation_fraction, cfg.train.seed)
        if not len(held):
            raise DataError(f"{d.train} has {len(train)} rows: too few to carve a validation "
                            f"split of {d.validation_fraction}; set `data.validation`")
        train, validation, carved = train.take(keep), train.take(held), True
    for split, ex in [("train", train), ("validation", validation), ("test", parts.get("test"))]:
        if ex is not None:
            try:
                task.encode_targets(cfg.task, label_names, ex)
            except DataError as e:
                problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    return Splits(train, validation, parts.get("test"), label_names, carved)


def label_distribution(cfg, ex) -> dict:
    counts = Counter()
    for label in ex.labels:
        counts.update(label if isinstance(label, list) else [label])
    return dict(sorted(counts.items()))


def summarise(cfg, splits: Splits, encoded: dict) -> dict:
    from tfsft import pipeline

    out = {"labels": splits.label_names, "validation_carved_from_train": splits.carved}
    for name, enc in encoded.items():
        ex = getattr(splits, name)
        out[name] = {"rows": len(ex), "label_distribution": label_distribution(cfg, ex),
                     **pipeline.length_summary(enc, cfg.data.max_length)}
    return out


def print_summary(summary: dict) -> None:
    for name in ("train", "validation", "test"):
        s = summary.get(name)
        if not s:
            continue
        dist = ", ".join(f"{k}: {v}" for k, v in s["label_distribution"].items())
        log(f"{name}: {s['rows']} rows ({dist}); tokens p50 {s.get('tokens_p50', 0):.0f} "
            f"p95 {s.get('tokens_p95', 0):.0f} max {s.get('tokens_max', 0):.0f}; "
            f"truncated {100 * s.get('truncated_share', 0):.1f}%")


def encode_splits(task, cfg, splits: Splits, preprocessor) -> dict:
    encoded = {}
    for name in ("train", "validation", "test"):
        ex = getattr(splits, name)
        if ex is not None:
            encoded[name] = task.encode_inputs(cfg.task, preprocessor, ex)
    return encoded


def check_backbone_fits(cfg, backbone) -> None:
    from tfsft import backbones

    limit = backbones.max_sequence_length(backbone)
    if limit and cfg.data.max_length > limit:
        raise ConfigError(f"`data.max_length` ({cfg.data.max_length}) exceeds the backbone's "
                          f"max_sequence_length ({limit}); lower it to at most {limit}")


def build(task, cfg, num_outputs: int, strategy):
    """Backbone, preprocessor and task model, built inside the strategy scope."""
    from tfsft import backbones

    with strategy.scope():
        backbone, preprocessor = backbones.load(cfg.model.backbone, cfg.data.max_length)
        check_backbone_fits(cfg, backbone)
        backbones.set_trainable(backbone, cfg.model.freeze, cfg.model.freeze_layers,
                                cfg.model.lora_rank)
        model = task.build_model(cfg.task, backbone, num_outputs, cfg.model.dropout)
    return model, backbone, preprocessor


def compile_model(task, cfg, model, total_steps: int, strategy) -> None:
    from tfsft import training

    t = cfg.train
    with strategy.scope():
        optimizer = training.make_optimizer(t.learning_rate, total_steps, t.warmup_ratio,
                                             t.schedule, t.weight_decay, t.clip_norm,
                                             t.grad_accum_steps)
        model.compile(optimizer=optimizer, loss=task.loss(cfg.task, t.label_smoothing),
                      metrics=task.metrics(cfg.task))


def fit(task_spec: str, config_files=(), overrides=(), output: str | None = None,
        overwrite: bool = False, verbose: int | None = None) -> Path:
    """Train a task end to end; returns the run directory."""
    from tfsft import backbones

    task, folder, cfg = load_task_and_config(task_spec, config_files, overrides)
    splits = read_splits(task, cfg)
    backbones.resolve_source(cfg.model.backbone)  # a missing package fails before any write
    run_dir = runs.create(Path(output) if output else runs.default_dir(task.name), overwrite)
    log(f"run directory: {run_dir}")
    files = {s: data_lib.fingerprint(getattr(cfg.data, s)) for s in ("train", "validation", "test")
             if getattr(cfg.data, s)}
    for s in files:
        files[s]["rows"] = len(getattr(splits, s))
    manifest = runs.manifest(cfg.train.seed, files)
    runs.write_json(run_dir / "manifest.json", manifest)
    (run_dir / "config.yaml").write_text(config_lib.dump_yaml(cfg), encoding="utf-8")
    runs.write_json(run_dir / "task.json", {"name": task.name,
                                            "folder": str(folder) if folder else None})
    runs.write_json(run_dir / "labels.json", splits.label_names)
    try:
        result = _fit_in_run(task, cfg, splits, run_dir, verbose)
    except BaseException as e:
        manifest["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        manifest["error"] = f"{type(e).__name__}: {e}"[:2000]
        runs.write_json(run_dir / "manifest.json", manifest)
        raise
    manifest.update(status="finished", **result)
    runs.write_json(run_dir / "manifest.json", manifest)
    return run_dir


def _fit_in_run(task, cfg, splits: Splits, run_dir: Path, verbose) -> dict:
    from tfsft import quiet

    quiet.import_tensorflow_quietly()
    import keras

    from tfsft import distribute, export, pipeline, training

    keras.utils.set_random_seed(cfg.train.seed)
    strategy = distribute.make_strategy()
    n = len(splits.label_names)
    model, backbone, preprocessor = build(task, cfg, n, strategy)
    encoded = encode_splits(task, cfg, splits, preprocessor)
    summary = summarise(cfg, splits, encoded)
    runs.write_json(run_dir / "data_summary.json", summary)
    print_summary(summary)
    t = cfg.train
    targets = task.encode_targets(cfg.task, splits.label_names, splits.train)
    weights = None
    if t.class_weights == "balanced":
        if not hasattr(task, "class_weights"):
            raise ConfigError(f"task {task.name!r} does not support `train.class_weights`")
        weights = task.class_weights(cfg.task, targets, n)
    batch = t.global_batch_size // t.grad_accum_steps
    if batch * t.grad_accum_steps != t.global_batch_size:
        raise ConfigError(f"`train.global_batch_size` ({t.global_batch_size}) must be divisible "
                          f"by `train.grad_accum_steps` ({t.grad_accum_steps})")
    train_ds = pipeline.train_dataset(encoded["train"], targets, weights, batch, t.seed,
                                      cfg.data.bucket_by_length)
    val_targets = task.encode_targets(cfg.task, splits.label_names, splits.validation)
    val_ds = pipeline.eval_dataset(encoded["validation"], val_targets, t.eval_batch_size)
    steps = pipeline.steps_per_epoch(len(splits.train), batch)
    updates = steps * t.epochs // t.grad_accum_steps
    if t.max_steps:
        updates = min(updates, t.max_steps // t.grad_accum_steps)
    compile_model(task, cfg, model, max(updates, 1), strategy)
    log(f"training {model.count_params():,} parameters "
        f"({sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} trainable) on "
        f"{len(splits.train)} rows, {steps} steps/epoch, batch {batch}")
    result = training.train(
        model, train_ds, val_ds, epochs=t.epochs, steps_per_epoch=steps, max_steps=t.max_steps,
        batch_size=batch, run_dir=run_dir, monitor=t.monitor,
        patience=t.early_stopping_patience, keep_best=t.keep_best,
        verbose=verbose if verbose is not None else (1 if sys.stderr.isatty() else 2))
    export.save_final(model, backbone, preprocessor, run_dir / "model")
    metrics = {}
    for split in ("validation", "test"):
        if split in encoded:
            metrics[split] = evaluate_split(task, cfg, model, splits, split, encoded[split],
                                            run_dir)
    runs.write_json(run_dir / "metrics.json", metrics)
    for split, rep in metrics.items():
        log(f"{split}: accuracy {rep['accuracy']:.4f}, macro F1 {rep['macro']['f1']:.4f} "
            f"({rep['examples']} examples)")
    return {"train_seconds": round(result.seconds, 2), "optimizer_steps": result.steps,
            "best_epoch": result.best_epoch, "history": result.history}


def predict_logits(model, enc, batch_size: int) -> np.ndarray:
    from tfsft import pipeline

    return np.asarray(model.predict(pipeline.eval_dataset(enc, None, batch_size), verbose=0))


def evaluate_split(task, cfg, model, splits: Splits, split: str, enc, run_dir: Path) -> dict:
    from tfsft import metrics as metrics_lib

    ex = getattr(splits, split)
    targets = task.encode_targets(cfg.task, splits.label_names, ex)
    logits = predict_logits(model, enc, cfg.train.eval_batch_size)
    rep = task.report(cfg.task, splits.label_names, targets, logits)
    (run_dir / "reports").mkdir(exist_ok=True)
    metrics_lib.plot_confusion_matrix(rep, str(run_dir / "reports" / f"confusion_{split}.png"),
                                      title=f"{task.name}: {split}")
    return rep


# --------------------------------------------------------------------------- run reuse


def load_run(run_dir: Path, config_files=(), overrides=()):
    """(task, cfg, label_names, model, preprocessor) of a finished run."""
    from tfsft import quiet

    run_dir = runs.check_run(Path(run_dir))
    quiet.import_tensorflow_quietly()
    info = runs.read_json(run_dir / "task.json")
    task = tasks.load_task(info["folder"]) if info.get("folder") else tasks.resolve(info["name"])[0]
    cfg = config_lib.load_config(task.config_class, run_dir / "config.yaml", config_files,
                                 overrides)
    label_names = runs.read_json(run_dir / "labels.json")
    from tfsft import export

    model, _, preprocessor = export.load_final(run_dir / "model", task, cfg.task,
                                               len(label_names), cfg.data.max_length)
    return task, cfg, label_names, model, preprocessor


def evaluate(run_dir: Path, split: str = "validation", config_files=(), overrides=()) -> dict:
    """Evaluate a finished run on a split name (validation/test) or a data file."""
    from tfsft import metrics as metrics_lib

    run_dir = Path(run_dir)
    task, cfg, label_names, model, preprocessor = load_run(run_dir, config_files, overrides)
    source = getattr(cfg.data, split, None) if split in ("train", "validation", "test") else split
    if not source:
        raise ConfigError(f"the run has no `data.{split}`; pass a data file instead "
                          f"(tfsft evaluate {run_dir} --split path/to/file.tsv)")
    ex = read_split(task, cfg, source, split if split in ("train", "validation", "test")
                    else "test")
    targets = task.encode_targets(cfg.task, label_names, ex)
    logits = predict_logits(model, task.encode_inputs(cfg.task, preprocessor, ex),
                            cfg.train.eval_batch_size)
    rep = task.report(cfg.task, label_names, targets, logits)
    name = split if split in ("train", "validation", "test") else Path(split).stem
    path = run_dir / "metrics.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[name] = rep
    runs.write_json(path, existing)
    (run_dir / "reports").mkdir(exist_ok=True)
    metrics_lib.plot_confusion_matrix(rep, str(run_dir / "reports" / f"confusion_{name}.png"),
                                      title=f"{task.name}: {name}")
    (run_dir / "reports" / f"report_{name}.txt").write_text(metrics_lib.format_report(rep))
    return rep


def read_predict_input(stream_or_path: str) -> data_lib.Rows:
    """One text per line, or JSONL objects (detected by a leading `{`)."""
    if stream_or_path == "-":
        lines = sys.stdin.read().splitlines()
        source = "<stdin>"
    else:
        path = Path(stream_or_path)
        if path.suffix.lower() in (".tsv", ".csv"):
            return data_lib.read_rows(str(path))
        lines = data_lib._read_lines(path)
        source = str(path)
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise DataError(f"{source}: no input text")
    if lines[0].lstrip().startswith("{"):
        fields, where = [], []
        for i, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}:{i}: not valid JSON ({e.msg})") from None
            fields.append(obj)
            where.append(f"{source}:{i}")
        return data_lib.Rows(source, fields, where)
    return data_lib.Rows(source, [{"text": ln} for ln in lines],
                         [f"{source}:{i}" for i in range(1, len(lines) + 1)])


def predict(run_dir: Path, input_path: str = "-", config_files=(), overrides=()):
    """Yield one output dict per input row."""
    task, cfg, label_names, model, preprocessor = load_run(run_dir, config_files, overrides)
    ex = task.examples(cfg.task, read_predict_input(input_path), False)
    logits = predict_logits(model, task.encode_inputs(cfg.task, preprocessor, ex),
                            cfg.train.eval_batch_size)
    for text, out in zip(ex.texts, task.decode(cfg.task, label_names, logits)):
        yield {"text": text, **out}


def export_run(run_dir: Path, out: Path | None, formats: list[str], overwrite: bool = False):
    from tfsft import export

    task, cfg, label_names, model, preprocessor = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "export"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "keras" in formats:
        written.append(export.export_keras(model, out / "model.keras"))
    if "preset" in formats:
        written.append(export.export_preset(model, model_backbone(model), preprocessor,
                                            out / "preset"))
    runs.write_json(out / "labels.json", label_names)
    return written


def model_backbone(model):
    import keras_hub

    for layer in model.layers:
        if isinstance(layer, keras_hub.models.Backbone):
            return layer
    raise RuntimeError("task model holds no KerasHub backbone")
