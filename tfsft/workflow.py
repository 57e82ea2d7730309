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
from tfsft.errors import ConfigError, DataError, RunDirError
from tfsft.messages import log


@dataclass(frozen=True)
class Splits:
    train: object
    validation: object
    test: object | None
    label_names: list[str]
    carved: bool  # validation carved from train
    targets: dict  # split name -> encoded targets, checked against the label map
    skipped: dict  # split name -> messages of rows dropped under `data.on_error: skip`
    preparation: dict | None = None  # what data.clean/dedup/augment did (counts)
    changes: tuple = ()  # every change data.clean/dedup made, one dict each


def load_task_and_config(task_spec: str, config_files=(), overrides=()):
    task, folder = tasks.resolve(task_spec)
    # an installed plugin's defaults: the config.yaml beside its module, as in a folder
    home = folder or tasks.installed_folder(task)
    task_yaml = home / "config.yaml" if home and (home / "config.yaml").is_file() else None
    cfg = config_lib.load_config(task.config_class, task_yaml, config_files, overrides)
    return task, folder, cfg


def read_rows(cfg, source: str, split: str):
    d = cfg.data
    return data_lib.read_rows(source, d.format, d.quoting, split, d.tfds_dir, d.tfds_download,
                              d.on_error, d.max_line_chars)


def read_split(task, cfg, source: str, split: str, labelled: bool = True, rows=None):
    """(examples, skipped) of one split (of `rows` when given, already read). With
    `data.on_error: skip` bad rows (the reader's and the task's) are dropped and
    `skipped` holds one message per dropped row."""
    d = cfg.data
    rows = read_rows(cfg, source, split) if rows is None else rows
    try:
        ex = task.examples(cfg.task, rows, labelled)
    except DataError as e:
        if d.on_error != "skip" or e.rows is None:
            raise
        rows = rows.drop(e.rows, e.problems)
        ex = task.examples(cfg.task, rows, labelled)
    total = len(rows) + len(rows.skipped)
    if not len(rows):
        raise DataError([f"{source}: no usable rows in split {split!r}"] + list(rows.skipped))
    if len(rows.skipped) > d.max_skipped * total:
        raise DataError([f"{source}: {len(rows.skipped)} of {total} rows are bad, more than "
                         f"`data.max_skipped` ({d.max_skipped:.0%}) allows: the file is likely "
                         "in another format (check `data.format` / `data.quoting`, the column "
                         "names) or needs cleaning. The first problems:"]
                        + list(rows.skipped[:10]))
    return ex, list(rows.skipped)


def cleaning_options(cfg):
    from tfsft import cleaning

    d = cfg.data
    return cleaning.Options(d.clean, d.dedup, d.near_threshold)


def check_preparation(task, cfg) -> None:
    """data.clean/dedup/augment need the task's optional members."""
    problems = []
    if cleaning_options(cfg).active and not hasattr(task, "text_fields"):
        problems.append(f"task {task.name!r} does not declare its text fields "
                        "(`text_fields`), so `data.clean` and `data.dedup` cannot be used")
    if cfg.data.augment and not hasattr(task, "augment"):
        problems.append(f"task {task.name!r} does not support `data.augment`")
    if problems:
        raise ConfigError(problems)


def read_prepared_rows(task, cfg) -> tuple[dict, object]:
    """Every split's reader rows, cleaned and de-duplicated as configured: the rows that
    `fit` uses and `tfsft data clean` writes. Returns (rows per split, cleaning.Result or
    None when cleaning is off)."""
    from tfsft import cleaning

    check_preparation(task, cfg)
    rows, problems = {}, []
    for split in ("train", "validation", "test"):
        source = getattr(cfg.data, split)
        if source:
            try:
                rows[split] = read_rows(cfg, source, split)
            except DataError as e:
                problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    options = cleaning_options(cfg)
    if not options.active:
        return rows, None
    result = cleaning.apply(rows, task.text_fields(cfg.task), options)
    return result.rows, result


def read_splits(task, cfg) -> Splits:
    """Read and validate every split before anything is written or loaded."""
    from tfsft import augment

    d = cfg.data
    for split in ("validation", "test"):
        source = getattr(d, split)
        if source and source == d.train:  # config paths are absolute by now
            log(f"warning: `data.{split}` is the training file ({source}): its scores will "
                "measure rows the model trained on, not how it does on new text. Give a "
                f"held-out file, or leave `data.{split}` empty"
                + (" to carve one from train" if split == "validation" else ""))
    rows, cleaned = read_prepared_rows(task, cfg)
    problems = []
    parts, skipped = {}, {}
    for split, r in rows.items():
        try:
            parts[split], skipped[split] = read_split(task, cfg, getattr(d, split), split,
                                                      rows=r)
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    preparation = cleaned.summary(cleaning_options(cfg)) if cleaned else {}
    train = parts["train"]
    if d.limit:
        train = train.take(range(min(d.limit, len(train))))
    label_names = task.make_label_map(cfg.task, train)
    validation, carved = parts.get("validation"), False
    if validation is None:
        strata = train.labels if train.labels is not None else [""] * len(train)
        keep, held = data_lib.stratified_split(strata, d.validation_fraction, cfg.train.seed)
        if not len(held):
            raise DataError(f"{d.train} has {len(train)} rows: too few to carve a validation "
                            f"split of {d.validation_fraction}; set `data.validation`")
        train, validation, carved = train.take(keep), train.take(held), True
    if d.augment:  # after carving: no edited copy of a validation row is trained on
        augmenter = augment.Augmenter(tuple(d.augment), d.augment_rate, d.augment_copies,
                                      cfg.train.seed)
        before = len(train)
        train, added = task.augment(cfg.task, train, augmenter)
        preparation["augment"] = augment.summary(augmenter, before, added)
        preparation["augment"]["examples"] = [
            f"{train.where[before + i]}: {' '.join(words)[:100]!r}"
            for i, (_, _, _, words, _) in enumerate(added[:5])]
    exs, targets = {"train": train, "validation": validation, "test": parts.get("test")}, {}
    for split, ex in exs.items():
        if ex is None:
            continue
        try:
            targets[split] = task.encode_targets(cfg.task, label_names, ex)
        except DataError as e:
            if d.on_error != "skip" or e.rows is None:
                problems.extend(e.problems)
                continue
            # rows with labels outside the label map: dropped like any other bad row
            keep = [i for i in range(len(ex)) if i not in set(e.rows)]
            exs[split] = ex.take(keep)
            skipped.setdefault(split, []).extend(e.problems)
            targets[split] = task.encode_targets(cfg.task, label_names, exs[split])
    if problems:
        raise DataError(problems)
    return Splits(exs["train"], exs["validation"], exs["test"], label_names, carved, targets,
                  skipped, preparation or None, tuple(cleaned.changes) if cleaned else ())


def label_distribution(cfg, ex) -> dict:
    counts = Counter()
    for label in ex.labels or ():  # generative tasks have no labels
        counts.update(label if isinstance(label, list) else [label])
    return dict(sorted(counts.items()))


def summarise(cfg, splits: Splits, encoded: dict) -> dict:
    from tfsft import pipeline

    out = {"labels": splits.label_names, "validation_carved_from_train": splits.carved}
    for name, enc in encoded.items():
        ex = getattr(splits, name)
        out[name] = {"rows": len(ex), "label_distribution": label_distribution(cfg, ex),
                     **pipeline.length_summary(enc, cfg.data.max_length), **enc.notes}
        if splits.skipped.get(name):
            out[name]["skipped_rows"] = len(splits.skipped[name])
            out[name]["skipped"] = splits.skipped[name][:100]
    if splits.preparation:
        out["preparation"] = splits.preparation
    return out


def print_summary(summary: dict) -> None:
    from tfsft import cleaning

    prep = summary.get("preparation") or {}
    if "splits" in prep:
        log(f"data.clean={str(prep['clean']).lower()}, data.dedup={prep['dedup']}:")
        for line in cleaning.format_summary(prep):
            log("  " + line)
    if "augment" in prep:
        a = prep["augment"]
        log(f"data.augment {a['edits']} (rate {a['rate']}, {a['copies']} per row): added "
            f"{a['rows_added']} rows to {a['rows_before']} training rows ({a['by_edit']})")
    for name in ("train", "validation", "test"):
        s = summary.get(name)
        if not s:
            continue
        dist = ", ".join(f"{k}: {v}" for k, v in s["label_distribution"].items())
        dist = f" ({dist})" if dist else ""
        log(f"{name}: {s['rows']} rows{dist}; tokens p50 {s.get('tokens_p50', 0):.0f} "
            f"p95 {s.get('tokens_p95', 0):.0f} max {s.get('tokens_max', 0):.0f}; "
            f"truncated {100 * s.get('truncated_share', 0):.1f}%")
        if s.get("words_cut_off") or s.get("words_without_pieces"):
            log(f"WARNING {name}: {s.get('words_cut_off', 0)} of {s.get('words', 0)} words cut "
                f"off by `data.max_length` (in {s.get('sentences_cut', 0)} sentences) and "
                f"{s.get('words_without_pieces', 0)} without word pieces: predicted O")
        if s.get("prompts_truncated") or s.get("responses_truncated"):
            log(f"{name}: {s.get('prompts_truncated', 0)} prompt(s) and "
                f"{s.get('responses_truncated', 0)} response(s) cut to `data.max_length`; "
                f"{s.get('target_tokens', 0)} target tokens")
        if s.get("packing"):
            k = s["packing"]
            log(f"{name}: packed {k['examples']} examples into {k['packed_rows']} rows; "
                f"padding to data.max_length {100 * k['padding_share_unpacked']:.1f}% -> "
                f"{100 * k['padding_share_packed']:.1f}%")
        if s.get("rows_without_loss"):
            log(f"WARNING {name}: {s['rows_without_loss']} row(s) too long to train on are "
                "left out of the loss (task.too_long=skip), listed in data_summary.json; the "
                "first: " + s["rows_without_loss_list"][0])
        if s.get("skipped_rows"):
            log(f"WARNING {name}: skipped {s['skipped_rows']} bad row(s) (data.on_error=skip), "
                "listed in data_summary.json; the first: " + s["skipped"][0])


def show_rows(ex, enc, preprocessor, n: int) -> list[str]:
    """The first `n` rows as the model reads them (`validate --show N`): the tokens decoded,
    those that are no target of the loss (prompts, padding aside) inside [[...]] when the
    task has per-token targets; else the row's text."""
    from tfsft.generation import detokenize

    blocks = []
    for r in range(min(n, len(enc))):
        length = int(enc.lengths[r])
        ids = enc.features["token_ids"][r, :length].tolist()
        if enc.labels is None:
            shown = detokenize(preprocessor.tokenizer, [ids])[0]
        else:  # token t is a target when position t - 1 predicts it
            trained = [False] + (enc.labels[r, :length - 1] >= 0).tolist()
            runs_, start = [], 0
            for t in range(1, length + 1):
                if t == length or trained[t] != trained[start]:
                    runs_.append((ids[start:t], trained[start]))
                    start = t
            texts = detokenize(preprocessor.tokenizer, [piece for piece, _ in runs_])
            shown = "".join(text if on else f"[[{text}]]"
                            for text, (_, on) in zip(texts, runs_))
        blocks.append(f"--- {ex.where[r]} ({length} tokens)\n{shown}")
    return blocks


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
    """Backbone, preprocessor and task model, built inside the strategy scope and under the
    dtype policy of `train.precision`."""
    from tfsft import backbones, precision

    mode = precision.resolve(cfg.train.precision)
    if mode != "float32":
        log(f"precision: {mode} (train.precision={cfg.train.precision})")
    precision.use_graph_pass(mode)
    policy = precision.keras_policy(mode)
    with strategy.scope(), precision.policy(policy):
        backbone, preprocessor = backbones.load(cfg.model.backbone, cfg.data.max_length,
                                                dtype=policy,
                                                dropout=cfg.model.backbone_dropout)
        check_backbone_fits(cfg, backbone)
        backbones.set_trainable(backbone, cfg.model.freeze, cfg.model.freeze_layers,
                                cfg.model.lora_rank)
        model = task.build_model(cfg.task, backbone, num_outputs, cfg.model.dropout)
    return model, backbone, preprocessor


def check_training_config(task, cfg) -> None:
    """Checks that need the task (its metric names, optional members) or the machine."""
    from tfsft import precision

    t = cfg.train
    metric_names = [m.name for m in task.metrics(cfg.task)]
    valid = ["loss", "val_loss"] + [f"val_{n}" for n in metric_names] + metric_names
    problems = []
    if t.monitor not in valid:
        problems.append(f"`train.monitor` ({t.monitor!r}) is not a metric of task "
                        f"{task.name!r}; choose one of {', '.join(valid)}")
    if t.class_weights == "balanced" and not hasattr(task, "class_weights"):
        problems.append(f"task {task.name!r} does not support `train.class_weights`")
    why = precision.unavailable(precision.resolve(t.precision))
    if why:
        problems.append(why)
    if problems:
        raise ConfigError(problems)


def compile_model(task, cfg, model, total_updates: int, strategy) -> None:
    """Optimizer (its schedule spans `total_updates`), loss and metrics, in the strategy's
    scope and with a LossScaleOptimizer under mixed_float16 (Keras' compile adds it)."""
    from tfsft import training

    t = cfg.train
    with strategy.scope():
        optimizer = training.make_optimizer(t.learning_rate, total_updates, t.warmup_ratio,
                                             t.schedule, t.weight_decay)
        model.compile(optimizer=optimizer, loss=task.loss(cfg.task, t.label_smoothing),
                      metrics=task.metrics(cfg.task))


@dataclass
class Prepared:
    """Everything `fit` builds and checks before it writes anything."""

    model: object
    backbone: object
    preprocessor: object
    strategy: object
    encoded: dict  # split name -> pipeline.Encoded (tokenised once, checked)


def prepare(task, cfg, splits: Splits, strategy=None) -> Prepared:
    from tfsft import distribute, quiet

    quiet.import_tensorflow_quietly()
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    check_training_config(task, cfg)
    if strategy is None:
        strategy = distribute.make_strategy(cfg.distribute.strategy, cfg.distribute.cpu_devices)
    replicas = strategy.num_replicas_in_sync
    batch = cfg.train.global_batch_size // cfg.train.grad_accum_steps
    if batch % replicas:
        raise ConfigError(f"`train.global_batch_size` ({cfg.train.global_batch_size}) / "
                          f"`train.grad_accum_steps` ({cfg.train.grad_accum_steps}) = {batch} "
                          f"rows per batch cannot be split evenly over {replicas} replicas; "
                          f"use a multiple of {replicas * cfg.train.grad_accum_steps}")
    if replicas > 1:
        log(f"distribute: {distribute.describe(strategy)}, {batch // replicas} rows per replica "
            f"per batch")
    model, backbone, preprocessor = build(task, cfg, len(splits.label_names), strategy)
    encoded = encode_splits(task, cfg, splits, preprocessor)  # may raise DataError
    return Prepared(model, backbone, preprocessor, strategy, encoded)


def fit(task_spec: str, config_files=(), overrides=(), output: str | None = None,
        overwrite: bool = False, verbose: int | None = None, save_model: bool = True,
        resume: bool = True) -> Path | None:
    """Train a task end to end; returns the run directory (None in a multi-worker run's
    non-chief workers, which write no run directory).

    Config, data, backbone and model are all checked before the run directory is made, so
    a mistake costs nothing and leaves nothing behind. The run directory is locked while
    the run writes to it; with `overwrite` an earlier run there is replaced only when the
    new one has finished (runs.open_run). An unfinished run of the same config and data
    (the `--output` given, else the newest run of the task under runs/) that left a resume
    checkpoint is continued where it stopped, unless `resume` is False or `overwrite`."""
    from tfsft import distribute

    task, folder, cfg = load_task_and_config(task_spec, config_files, overrides)
    strategy = early_strategy(cfg)
    if strategy is not None and not distribute.is_chief(strategy):
        return _fit_as_worker(task, cfg, strategy, output, overwrite, resume, verbose)
    previous = None if overwrite or not resume else resumable_run(task, cfg, output)
    target = previous or (Path(output) if output else runs.default_dir(task.name))
    if previous is None:
        runs.check_target(target, overwrite)  # fail fast, before minutes of loading
    splits = read_splits(task, cfg)
    prepared = prepare(task, cfg, splits, strategy)
    if previous is not None:
        opened = runs.locked(previous)
    else:
        opened = runs.open_run(target, overwrite)
    with opened as run_dir:
        log(f"run directory: {run_dir}" + (f" (replaces {target} when finished)"
                                           if run_dir != target else "")
            + (" (resuming it)" if previous is not None else ""))
        try:
            _fit_in_run(task, folder, cfg, splits, prepared, run_dir, verbose, save_model,
                        resumed=previous is not None)
        except BaseException:
            if run_dir != target:
                log(f"the earlier run at {target} is untouched; this attempt is in {run_dir}")
            raise
    return target


def early_strategy(cfg):
    """The strategy, when it must exist before TensorFlow runs anything: multi-worker
    (collectives are set up at start) and logical CPU devices. Otherwise None: prepare()
    makes it after the fast checks."""
    from tfsft import distribute

    d = cfg.distribute
    if not distribute.wants_multi_worker(d.strategy) and d.cpu_devices <= 1:
        return None
    from tfsft import quiet

    quiet.import_tensorflow_quietly()
    return distribute.make_strategy(d.strategy, d.cpu_devices)


def _fit_as_worker(task, cfg, strategy, output, overwrite, resume, verbose) -> None:
    """A non-chief worker of a multi-worker run: trains in step with the chief (same data,
    same resume checkpoint, read from the chief's run directory), writes only to its own
    temporary directory, which is deleted at the end. The chief writes the run."""
    import tempfile

    from tfsft import distribute

    if not output:
        raise ConfigError("a multi-worker run needs --output: every worker must name the same "
                          "run directory (on a filesystem all workers share)")
    previous = None
    if resume and not overwrite:
        previous = resumable_run(task, cfg, output, check_lock=False)
    splits = read_splits(task, cfg)
    prepared = prepare(task, cfg, splits, strategy)
    role = distribute.cluster() or {"type": "worker", "index": 0}
    with tempfile.TemporaryDirectory(prefix=f"tfsft-{role['type']}{role['index']}-") as tmp:
        log(f"{role['type']} {role['index']}: training in step with the chief; scratch "
            f"files in {tmp} (removed at the end)")
        _train_and_evaluate(task, cfg, splits, prepared, Path(tmp), verbose, save_model=False,
                            chief=False,
                            resume_from=previous / RESUME_FILE if previous else None)


RESUME_FILE = Path("checkpoints") / "resume.npz"


def resumable_run(task, cfg, output: str | None, check_lock: bool = True) -> Path | None:
    """The unfinished run to continue: `output` when given (an error if it holds an
    unfinished run of another config or data), else the newest run of this task under
    runs/ when its config and data are this run's; None when there is none."""
    if output:
        candidates = [Path(output)]
    else:
        candidates = runs.default_dirs(task.name)[:1]
    for run_dir in candidates:
        if not (run_dir / RESUME_FILE).exists() or not runs.is_run(run_dir):
            continue
        if runs.read_json(run_dir / "manifest.json").get("status") == "finished":
            continue
        holder = runs.lock_holder(run_dir) if check_lock else ""
        if holder:
            raise RunDirError(f"{run_dir} is in use by another tfsft process ({holder}); wait "
                              "for it to finish or choose another --output")
        differences = _run_differences(run_dir, cfg)
        if not differences:
            return run_dir
        if output:
            raise RunDirError(
                f"{run_dir} holds an unfinished run with a resume checkpoint, but "
                f"{'; '.join(differences)}. Run the same config on the same data to resume it, "
                "pass --overwrite to replace it, or choose another --output")
    return None


def _run_differences(run_dir: Path, cfg) -> list[str]:
    """What stops `run_dir` from being resumed with `cfg`: changed keys or data files."""
    before = (run_dir / "config.yaml").read_text(encoding="utf-8").splitlines()
    now = config_lib.dump_yaml(cfg).splitlines()
    out = []
    if before != now:
        changed = sorted(set(now) ^ set(before))
        shown = ", ".join(line.strip() for line in changed[:6])
        out.append(f"its config differs ({shown})")
    recorded = runs.read_json(run_dir / "manifest.json").get("data", {})
    for split, info in recorded.items():
        source = getattr(cfg.data, split, "")
        if source and "sha256" in info:
            if data_lib.fingerprint(source).get("sha256") != info["sha256"]:
                out.append(f"the {split} data ({source}) changed since it started")
    return out


def _fit_in_run(task, folder, cfg, splits: Splits, prepared: Prepared, run_dir: Path,
                verbose, save_model: bool = True, resumed: bool = False) -> None:
    """Write the run's files, train, evaluate; the manifest records how it ended."""
    files = {s: data_lib.fingerprint(getattr(cfg.data, s)) for s in ("train", "validation", "test")
             if getattr(cfg.data, s)}
    for s in files:
        files[s]["rows"] = len(getattr(splits, s))
    manifest = runs.manifest(cfg.train.seed, files)
    if resumed:
        earlier = runs.read_json(run_dir / "manifest.json")
        manifest["started"] = earlier.get("started")
        manifest["resumed"] = [*earlier.get("resumed", []), runs.now()]
    if splits.preparation:
        manifest["data_preparation"] = splits.preparation
    runs.write_json(run_dir / "manifest.json", manifest)
    if splits.changes:
        runs.write_text(run_dir / "data_changes.jsonl", "".join(
            json.dumps(c, ensure_ascii=False) + "\n" for c in splits.changes))
    runs.write_text(run_dir / "config.yaml", config_lib.dump_yaml(cfg))
    runs.write_json(run_dir / "task.json", {"name": task.name,
                                            "folder": str(folder) if folder else None})
    runs.write_json(run_dir / "labels.json", splits.label_names)
    try:
        result = _train_and_evaluate(task, cfg, splits, prepared, run_dir, verbose, save_model)
    except BaseException as e:
        manifest["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        manifest["error"] = f"{type(e).__name__}: {e}"[:2000]
        runs.write_json(run_dir / "manifest.json", manifest)
        raise
    manifest.update(status="finished", **result)
    runs.write_json(run_dir / "manifest.json", manifest)


def _train_and_evaluate(task, cfg, splits: Splits, prepared: Prepared, run_dir: Path,
                        verbose, save_model: bool = True, chief: bool = True,
                        resume_from: Path | None = None) -> dict:
    from tfsft import export, pipeline, training

    model, t, encoded = prepared.model, cfg.train, prepared.encoded
    summary = summarise(cfg, splits, encoded)
    train_enc = encoded["train"]
    if hasattr(task, "pack_rows"):  # several short examples per training row, or as is
        train_enc = task.pack_rows(cfg.task, train_enc, cfg.data.max_length)
        if train_enc is not encoded["train"]:
            summary["train"]["packing"] = {k: train_enc.notes[k] for k in (
                "examples", "packed_rows", "padding_share_unpacked", "padding_share_packed")}
    runs.write_json(run_dir / "data_summary.json", summary)
    print_summary(summary)
    targets = model_targets(task, cfg, train_enc, splits.targets["train"])
    weights = None
    if t.class_weights == "balanced":
        weights = task.class_weights(cfg.task, targets, len(splits.label_names))
    batch = t.global_batch_size // t.grad_accum_steps
    loss = task.loss(cfg.task, t.label_smoothing)
    val_targets = model_targets(task, cfg, encoded["validation"], splits.targets["validation"])
    if prepared.strategy.num_replicas_in_sync == 1 and not hasattr(task, "evaluate_model"):
        val = LogitsValidation(model, encoded["validation"], val_targets, t.eval_batch_size,
                               loss, task.metrics(cfg.task))
    else:  # replicas validate their share of each batch, in step
        val = pipeline.eval_dataset(encoded["validation"], val_targets, t.eval_batch_size)
    cap = cfg.data.max_batch_tokens
    plan = training.plan(len(train_enc), batch, t.epochs, t.max_steps, t.grad_accum_steps,
                         cfg.data.static_shapes,
                         pipeline.batches_per_epoch(train_enc, batch, cap, cfg.data.static_shapes))
    compile_model(task, cfg, model, plan.total_updates, prepared.strategy)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log(f"training {model.count_params():,} parameters ({trainable:,} trainable) on "
        f"{len(train_enc)} rows: {plan.total_updates} optimizer steps of "
        f"{t.global_batch_size} rows ({plan.batches_per_epoch} batches of {batch}"
        f"{f' rows or {cap} tokens' if cap else ''}/epoch, {plan.epochs} epoch(s))")

    def epoch_data(epoch: int):
        return pipeline.train_dataset(train_enc, targets, weights, batch, t.seed,
                                      cfg.data.bucket_by_length, epoch=epoch,
                                      static=cfg.data.static_shapes, max_tokens=cap)

    result = training.train(
        model, epoch_data, val, loss=loss,
        metrics=lambda: task.metrics(cfg.task), strategy=prepared.strategy, plan=plan,
        settings=training.Settings(
            batch_size=batch, grad_accum_steps=t.grad_accum_steps, clip_norm=t.clip_norm,
            monitor=t.monitor, patience=t.early_stopping_patience, keep_best=t.keep_best,
            checkpoint_every=t.checkpoint_every, jit_compile=t.jit_compile,
            steps_per_execution=t.steps_per_execution,
            log_every=max(10, t.steps_per_execution)),
        run_dir=run_dir, resume_from=resume_from,
        verbose=verbose if verbose is not None else (1 if sys.stderr.isatty() else 2),
        advice=f"Try a lower `train.learning_rate` (now {t.learning_rate:g}), keep "
               f"`train.clip_norm` above 0 (now {t.clip_norm:g}), a longer "
               f"`train.warmup_ratio` (now {t.warmup_ratio:g}), and check the training data "
               "with `tfsft validate`.")
    if not chief:
        return {}
    if save_model:
        export.save_final(model, prepared.backbone, prepared.preprocessor, run_dir / "model")
    training.discard_checkpoints(run_dir)  # only now: a failed save can still resume
    metrics = {}
    for split in ("validation", "test"):
        if split in encoded:
            logits = None  # the last epoch's validation logits, when the model holds its weights
            if split == "validation" and isinstance(val, LogitsValidation) \
                    and not result.restored_best:
                logits = val.logits
            metrics[split] = evaluate_split(task, cfg, prepared, splits, split,
                                            encoded[split], run_dir, logits)
    runs.write_json(run_dir / "metrics.json", metrics)
    for split, rep in metrics.items():
        log(f"{split}: {headline(rep)}")
    return {"train_seconds": round(result.seconds, 2), "optimizer_steps": result.steps,
            "best_epoch": result.best_epoch, "history": result.history}


def headline(rep: dict) -> str:
    """One line of a split's report: the task's own, or accuracy and macro F1."""
    if "headline" in rep:
        return f"{rep['headline']} ({rep['examples']} examples)"
    return (f"accuracy {rep['accuracy']:.4f}, macro F1 {rep['macro']['f1']:.4f} "
            f"({rep['examples']} examples)")


def key_metrics(rep: dict) -> dict:
    """The few numbers that summarise a split's report: the task's `summary`, or accuracy
    and macro F1."""
    if "summary" in rep:
        return dict(rep["summary"])
    return {"accuracy": rep.get("accuracy"), "macro_f1": rep.get("macro", {}).get("f1")}


def report_text(rep: dict) -> str:
    from tfsft import metrics as metrics_lib

    return rep["text"] if "text" in rep else metrics_lib.format_report(rep)


def write_report_files(rep: dict, folder: Path, stem: str, title: str) -> None:
    """reports/: the text report, the confusion-matrix PNG where the task has one, every
    generation of a generative task (`rows`, taken out of `rep`: metrics.json keeps the
    few `samples`), and those samples as TensorBoard text."""
    from tfsft import metrics as metrics_lib

    folder.mkdir(exist_ok=True)
    rows = rep.pop("rows", None)
    if rows is not None:
        runs.write_text(folder / f"generations_{stem}.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rep.get("samples"):
        write_text_summary(folder.parent / "tensorboard" / "evaluation", f"{stem}/generations",
                           rep["samples"])
    if "per_class" in rep:
        metrics_lib.plot_confusion_matrix(rep, str(folder / f"confusion_{stem}.png"),
                                          title=title)
    runs.write_text(folder / f"report_{stem}.txt", report_text(rep))


def write_text_summary(folder: Path, tag: str, samples: list[dict]) -> None:
    """A few generations as a TensorBoard text summary (one markdown table)."""
    import tensorflow as tf

    keys = list(samples[0])
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    table = "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                      + ["| " + " | ".join(cell(s[k]) for k in keys) + " |" for s in samples])
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        tf.summary.text(tag, table, step=0)
    writer.close()


def model_targets(task, cfg, enc, targets: np.ndarray) -> np.ndarray:
    """Targets as the model's outputs are laid out (tasks with `align_targets` map their
    per-word targets onto the encoded inputs)."""
    if hasattr(task, "align_targets"):
        return task.align_targets(cfg.task, enc, targets)
    return targets


PREDICT_BATCHES_PER_CALL = 2  # forward passes run side by side: see predict_logits


def predict_logits(model, enc, batch_size: int) -> np.ndarray:
    """The model's outputs for every row, in order. Rows are batched by length (each batch
    padded to its own longest row) and put back in order after. A plain `tf.function` of
    the model outside `strategy.run`: no collective ops, so under any strategy one process
    can predict alone (Keras' `predict` would wait for the other workers). It is traced
    once per model and input structure, for any batch size and width.

    Each call runs two batches: a forward pass is a chain of ops that each wait for the
    last, which leaves a 2-core CPU half idle; two independent chains in one graph keep
    both busy (872 SST-2 rows: ~800 against ~600 rows/s, docs/performance.md). An odd
    last batch is paired with its own first row, whose output is dropped."""
    import tensorflow as tf

    from tfsft import pipeline

    order = np.argsort(enc.lengths, kind="stable")
    batches = pipeline.eval_dataset(pipeline.take(enc, order), None, batch_size)
    # every dimension unknown: one trace serves every batch (a trace per new shape would
    # re-run the graph optimisers, about a second each)
    spec = tf.nest.map_structure(lambda s: tf.TensorSpec([None] * len(s.shape), s.dtype),
                                 batches.element_spec)
    # the model traced once and called once per batch inside the function of a pair
    # (TensorFlow inlines the calls: the same graph); tracing it per batch took longer
    # (MiniLM, a first call on 4 rows: 1.43 -> 1.16 s, medians of 4; docs/performance.md)
    key = repr(spec)
    one = pipeline.traced_once(model, ("forward", key), lambda m, x: m(x, training=False),
                               [spec])
    forward = pipeline.traced_once(model, ("forward pair", key),
                                   lambda m, *xs: [one(x) for x in xs],
                                   [spec] * PREDICT_BATCHES_PER_CALL)
    out, group = [], []
    for x in batches:
        group.append(x)
        if len(group) == PREDICT_BATCHES_PER_CALL:
            out.extend(np.asarray(o) for o in forward(*group))
            group = []
    if group:  # filled up with one-row slices of the last batch, their outputs dropped
        spare = tf.nest.map_structure(lambda t: t[:1], group[-1])
        n = len(group)
        group += [spare] * (PREDICT_BATCHES_PER_CALL - n)
        out.extend(np.asarray(o) for o in forward(*group)[:n])
    if not out:
        return np.zeros((0,))
    by_length = np.concatenate(out)
    logits = np.empty_like(by_length)
    logits[order] = by_length  # back in input order
    return logits


class LogitsValidation:
    """A one-replica run's validation, called by the training loop at each epoch's end:
    the model's logits from `predict_logits` (batched by length, two batches per call, one
    trace for the run), scored with the task's loss and metrics. The last logits are kept:
    the validation report after training reuses them while the model holds those weights,
    so the epoch log and metrics.json come from one forward pass (two passes, batched
    differently, differed by an example in bfloat16) and the validation split is predicted
    once, not twice. SST-2's 872 rows, AVX2-only 2-core EPYC: the loop's batch-by-batch
    validation took 10.5-10.7 s, `predict_logits` 5.8-6.7 s (docs/performance.md)."""

    def __init__(self, model, enc, targets: np.ndarray, batch_size: int, loss, metrics: list):
        self.model, self.enc, self.targets, self.batch_size = model, enc, targets, batch_size
        self.loss, self.metrics = loss, metrics
        self.logits: np.ndarray | None = None

    def __call__(self) -> dict:
        from tfsft import training

        self.logits = predict_logits(self.model, self.enc, self.batch_size)
        pred = self.logits.astype(np.float32, copy=False)
        total, count = training.loss_terms(self.loss, self.targets, pred)
        scores = {"loss": float(total) / max(float(count), 1.0)}
        for m in self.metrics:
            m.reset_state()
            m.update_state(self.targets, pred)
            scores[m.name] = float(m.result())
        return scores


def split_report(task, cfg, model, preprocessor, label_names, ex, targets, enc,
                 logits: np.ndarray | None = None) -> dict:
    """The report of one split: the task scores the model's logits (`logits`, or predicted
    now), or (a generative task) generates and scores the text."""
    if hasattr(task, "evaluate_model"):
        return task.evaluate_model(cfg.task, model, preprocessor, label_names, ex, enc,
                                   cfg.train.eval_batch_size)
    if logits is None:
        logits = predict_logits(model, enc, cfg.train.eval_batch_size)
    return task.report(cfg.task, label_names, targets, logits, ex)


def evaluate_split(task, cfg, prepared: Prepared, splits: Splits, split: str, enc,
                   run_dir: Path, logits: np.ndarray | None = None) -> dict:
    rep = split_report(task, cfg, prepared.model, prepared.preprocessor, splits.label_names,
                       getattr(splits, split), splits.targets[split], enc, logits)
    write_report_files(rep, run_dir / "reports", split, f"{task.name}: {split}")
    return rep


# --------------------------------------------------------------------------- run reuse


RUN_TIME_TASK_KEYS = ("threshold", "constrained")  # may differ from the trained run's


def check_same_model(task, run_dir: Path, cfg) -> None:
    """Overrides on a finished run may change data and evaluation settings, not the model."""
    import dataclasses

    trained = config_lib.load_config(task.config_class, run_dir / "config.yaml")
    changed = [f"model.{f.name}" for f in dataclasses.fields(cfg.model)
               if getattr(cfg.model, f.name) != getattr(trained.model, f.name)]
    changed += [f"task.{f.name}" for f in dataclasses.fields(cfg.task)
                if f.name not in RUN_TIME_TASK_KEYS + tuple(getattr(task, "run_time_keys", ()))
                and getattr(cfg.task, f.name) != getattr(trained.task, f.name)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} cannot change after training (the model was "
                          f"built with them); train a new run with `tfsft fit` instead")


def load_run(run_dir: Path, config_files=(), overrides=()):
    """(task, cfg, label_names, model, preprocessor) of a finished run."""
    from tfsft import quiet

    run_dir = runs.check_run(Path(run_dir))
    quiet.import_tensorflow_quietly()
    info = runs.read_json(run_dir / "task.json")
    task = tasks.load_task(info["folder"]) if info.get("folder") else tasks.resolve(info["name"])[0]
    cfg = config_lib.load_config(task.config_class, run_dir / "config.yaml", config_files,
                                 overrides)
    check_same_model(task, run_dir, cfg)
    label_names = runs.read_json(run_dir / "labels.json")
    from tfsft import export, precision

    precision.use_graph_pass(precision.resolve(cfg.train.precision))

    try:
        model, _, preprocessor = export.load_final(run_dir / "model", task, cfg.task,
                                                   len(label_names), cfg.data.max_length,
                                                   cfg.model.dropout)
    except (ValueError, KeyError, EOFError) as e:  # a damaged file in model/
        raise RunDirError(f"{run_dir / 'model'} cannot be loaded, a file in it is damaged or "
                          f"not tfsft's ({type(e).__name__}: {str(e)[:200]}). Restore the run "
                          "directory, or fit again") from None
    return task, cfg, label_names, model, preprocessor


def evaluate(run_dir: Path, split: str = "validation", config_files=(), overrides=()) -> dict:
    """Evaluate a finished run on a split name (validation/test) or a data file."""
    run_dir = Path(run_dir)
    if split not in ("train", "validation", "test") and not Path(split).exists():
        raise ConfigError(f"--split {split!r} is neither validation, test nor an existing "
                          "data file; check the name or the path")
    task, cfg, label_names, model, preprocessor = load_run(run_dir, config_files, overrides)
    if split in ("train", "validation", "test"):
        if not getattr(cfg.data, split) and split != "validation":
            raise ConfigError(f"the run has no `data.{split}`; pass a data file instead "
                              f"(tfsft evaluate {run_dir} --split path/to/file.tsv)")
        # re-reads train too: a carved validation split is carved again, identically
        ex, name = getattr(read_splits(task, cfg), split), split
    else:
        ex, name = read_split(task, cfg, split, "test")[0], f"file:{Path(split).resolve()}"
    # the run's own records (fit's split results) are replaced only by the same evaluation;
    # other data or settings are kept under their own name beside them
    variant = [*(f"--config {c}" for c in config_files), *overrides]
    if variant:
        name += f" [{' '.join(variant)}]"
    targets = task.encode_targets(cfg.task, label_names, ex)
    rep = split_report(task, cfg, model, preprocessor, label_names, ex, targets,
                       task.encode_inputs(cfg.task, preprocessor, ex))
    with runs.locked(run_dir):  # one writer of metrics.json at a time
        path = run_dir / "metrics.json"
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing[name] = rep
        runs.write_json(path, existing)
        stem = report_stem(name)
        write_report_files(rep, run_dir / "reports", stem, f"{task.name}: {name}")
    log(f"results in {path} under {name!r}, reports in {run_dir / 'reports'} as *_{stem}.*")
    return rep


def report_stem(name: str) -> str:
    """The report files' name part for a metrics.json key: the split itself, else the
    file's or split's name and a short hash of the whole key (one file each, no clash)."""
    import hashlib

    if name in ("train", "validation", "test"):
        return name
    base = name.split(" [", 1)[0]
    base = f"file_{Path(base[5:]).name}" if base.startswith("file:") else base
    return f"{base}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def read_predict_input(stream_or_path: str) -> data_lib.Rows:
    """A data file (.tsv/.csv/.jsonl), or text lines: one text per line, or JSONL objects
    (detected by a leading `{`); `-` reads standard input."""
    if stream_or_path == "-":  # bytes, checked as a file's are (UTF-8, NUL, line length)
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read() if stream is not None else \
            sys.stdin.read().encode("utf-8", "surrogatepass")
        source, lines = "<stdin>", data_lib.decode_lines(raw, "<stdin>")[0]
    else:
        path = Path(stream_or_path)
        if path.suffix.lower() in (".tsv", ".csv", ".jsonl"):
            return data_lib.read_rows(str(path))
        source, lines = str(path), data_lib.read_lines(path)[0]
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    if not numbered:
        raise DataError(f"{source}: no input text")
    if numbered[0][1].lstrip().startswith("{"):
        return data_lib.parse_jsonl(source, lines)
    name = Path(source).name if source != "<stdin>" else source
    return data_lib.Rows(source, [{"text": ln} for _, ln in numbered],
                         [f"{name}:{i}" for i, _ in numbered])


def predict(run_dir: Path, input_path: str = "-", config_files=(), overrides=()):
    """Yield one output dict per input row."""
    task, cfg, label_names, model, preprocessor = load_run(run_dir, config_files, overrides)
    ex = task.examples(cfg.task, read_predict_input(input_path), False)
    if hasattr(task, "generate"):
        outputs = task.generate(cfg.task, model, preprocessor, ex, cfg.train.eval_batch_size)
    else:
        logits = predict_logits(model, task.encode_inputs(cfg.task, preprocessor, ex),
                                cfg.train.eval_batch_size)
        outputs = task.decode(cfg.task, label_names, logits, ex)
    for text, out in zip(ex.texts, outputs):
        yield {"text": text, **out}


def predict_export(folder: Path, input_path: str = "-", batch_size: int = 64):
    """Yield one output dict per input row, from an export's SavedModel (no task plugin:
    the input is text lines, or JSONL / a data file with a `text` field)."""
    from tfsft import serve

    signature, labels = serve.load_export(Path(folder))
    rows = read_predict_input(input_path)
    texts, problems = [], []
    for fields, where in zip(rows.fields, rows.where):
        text = fields.get("text")
        if not isinstance(text, str):
            problems.append(f"{where}: needs a `text` field holding a string")
        texts.append(text)
    if problems:
        raise DataError(problems)
    # Batches of similar lengths (characters stand in for tokens: the tokenizer is inside
    # the SavedModel, which runs each batch at its longest text's width), rows in file order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = serve.predict_texts(signature, [texts[i] for i in chunk], labels)
        for i, out in zip(chunk, rows):
            outputs[i] = out
    for text, out in zip(texts, outputs):
        yield {"text": text, **out}


def export_run(run_dir: Path, out: Path | None, formats: list[str], overwrite: bool = False,
               config_files=(), overrides=()):
    """Write the chosen formats and a model card (README.md) into `out` (default RUN/export)."""
    from tfsft import export, modelcard

    task, cfg, label_names, model, preprocessor = load_run(run_dir, config_files, overrides)
    out = Path(out) if out else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; choose another --out")
    replacing = out.exists() and any(out.iterdir())
    if replacing and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose --out or pass --overwrite")
    if replacing and not (out / "export.json").is_file():
        raise RunDirError(f"{out} is not a tfsft export (it has no export.json), and "
                          "--overwrite replaces only an export; move it away or choose "
                          "another --out")
    if "saved_model" in formats:
        if not hasattr(task, "serving_outputs"):
            raise ConfigError(f"task {task.name!r} does not define serving outputs; export it "
                              "with --format keras,preset")
        if getattr(cfg.task, "text_pair_field", ""):
            raise ConfigError("--format saved_model takes one text per example; sentence-pair "
                              "models (`task.text_pair_field`) export with --format keras,preset")
    written = []
    with runs.locked(Path(run_dir)):  # no fit may replace the run while it is exported
        # written beside `out`, then swapped in: an old export is replaced whole (never
        # mixed with the new one's files), and only once the new one is complete
        with export.written_atomically(out) as work:
            if "saved_model" in formats:
                written.append(export.export_saved_model(
                    model, preprocessor,
                    lambda logits: task.serving_outputs(cfg.task, label_names, logits),
                    work / "saved_model"))
            if "keras" in formats:
                written.append(export.export_keras(model, work / "model.keras"))
            if "preset" in formats:
                written.append(export.export_preset(model, model_backbone(model),
                                                    preprocessor, work / "preset"))
            runs.write_json(work / "labels.json", label_names)
            runs.write_json(work / "export.json", {"task": task.name, "formats": formats,
                                                   "run": str(Path(run_dir).resolve()),
                                                   "max_length": cfg.data.max_length})
            card = work / "README.md"
            runs.write_text(card, modelcard.render(Path(run_dir), task.name, cfg,
                                                   label_names, written))
            written.append(card)
    return [out / p.relative_to(work) for p in written]


def model_backbone(model):
    import keras_hub

    for layer in model.layers:
        if isinstance(layer, keras_hub.models.Backbone):
            return layer
    raise RuntimeError("task model holds no KerasHub backbone")
