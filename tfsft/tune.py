"""Hyperparameter search: Keras Tuner picks values, each trial is a `tfsft fit` subprocess.

    python -m tfsft tune tasks/sentiment --config configs/tune-sentiment.yaml

The `tune:` section of the config files declares the search space over any config key,
the objective and the algorithm. Every trial is a complete config validated like any
other (a config error aborts the search) and trained by the same `fit` code path, in its
own process: memory cannot grow across trials (keras-tuner#873), and a diverging or
out-of-memory trial (fit's exit 3, or a kill by the OS) is marked failed while the search
goes on. Search directory (`runs/<task>-tune` or `--output`):

    search.json       the search as declared (a re-run must match it to resume)
    keras_tuner/      Keras Tuner's own state: re-running the same command resumes
    tune/<trial>/     each trial's run directory (no model/), with HParams session data
    logs/<trial>.log  each trial's output
    trials.csv, trials.md   leaderboard; best_config.yaml: the best trial's full config
    summary.json      trial counts and peak memory of the search process and the trials
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tfsft import config as config_lib
from tfsft import runs
from tfsft.errors import ConfigError, RunDirError, TrainingError, UserError

KINDS = {"log_uniform": 2, "uniform": 2, "int": 2, "choice": None}
ZERO_SEED = 2**31 - 1  # what `tune.seed: 0` is passed to Keras Tuner as


@dataclass(frozen=True)
class TuneConfig:
    """The `tune:` section."""

    objective: str = "val_accuracy"  # validation metric to optimise (val_loss, val_accuracy...)
    direction: Literal["auto", "max", "min"] = "auto"  # auto: min for losses, else max
    algorithm: Literal["random", "bayesian", "hyperband"] = "random"  # Keras Tuner oracle
    max_trials: int = 10  # trials to run (random, bayesian; hyperband's follow from its epochs)
    epochs_per_trial: int = 0  # train.epochs of each trial (0: the config's); hyperband: the most
    seed: int = 0  # seed of the search algorithm (trials use train.seed)
    space: dict = field(default_factory=dict)  # config key -> {log_uniform|uniform|int|choice}


def split_tune_section(config_files, overrides) -> tuple[dict, list[str]]:
    """The merged raw `tune:` section of the config files and `tune.*` overrides, and the
    remaining overrides (for the run config)."""
    raw: dict = {}
    for name in config_files:
        section = config_lib.read_yaml(Path(name)).get("tune") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: section 'tune' must be a mapping")
        raw.update(section)
    rest = []
    for text in overrides:
        if text.startswith("tune."):
            key, value = config_lib.parse_override(text)
            raw[key[len("tune."):]] = value
        else:
            rest.append(text)
    return raw, rest


def load_tune_config(raw: dict, check_key) -> TuneConfig:
    """Validate the `tune:` section; `check_key(key, value)` returns the config errors of
    setting one config key. Every problem is reported at once."""
    errors: list[str] = []
    tc = config_lib.build_dataclass(TuneConfig, raw, "tune", errors)
    if tc.max_trials < 1:
        errors.append(f"`tune.max_trials` ({tc.max_trials}) must be >= 1")
    if tc.epochs_per_trial < 0:
        errors.append(f"`tune.epochs_per_trial` ({tc.epochs_per_trial}) must be >= 0")
    if not 0 <= tc.seed < 2**32:  # the bayesian oracle hands it to scikit-learn's GP
        errors.append(f"`tune.seed` ({tc.seed}) must be in 0..{2**32 - 1}")
    if not tc.space:
        errors.append("`tune.space` is empty: declare at least one key to search, e.g. "
                      "train.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}")
    for key, spec in tc.space.items():
        where = f"`tune.space.{key}`"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            errors.append(f"{where} must be one of {{log_uniform: [low, high]}}, "
                          "{uniform: [low, high]}, {int: [low, high]}, {choice: [a, b, ...]}; "
                          f"got {config_lib.show(spec)}")
            continue
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args or (KINDS[kind] and len(args) != KINDS[kind]):
            errors.append(f"{where}: {kind} takes a list of "
                          f"{KINDS[kind] or 'one or more'} values, got {config_lib.show(args)}")
            continue
        if kind in ("log_uniform", "uniform"):
            # YAML 1.1 reads 1e-5 (no dot) as text; config keys accept it as a number, so here too
            spec[kind] = args = [_number(a) for a in args]
        if kind != "choice":
            numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            if not numeric or not args[0] < args[1] or (kind == "log_uniform" and args[0] <= 0):
                errors.append(f"{where}: {kind} needs numbers low < high"
                              + (" and low > 0" if kind == "log_uniform" else "")
                              + f", got {args}")
                continue
            if kind == "int" and not all(isinstance(a, int) for a in args):
                errors.append(f"{where}: int needs integer bounds, got {args}")
                continue
        for value in (args if kind == "choice" else args[:2]):
            errors.extend(f"{where} = {config_lib.show(value)}: {e}"
                          for e in check_key(key, value))
    if errors:
        raise ConfigError(errors)
    return tc


def _number(value):
    """`value`, or the float a string such as '1e-5' spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def direction(tc: TuneConfig) -> str:
    if tc.direction != "auto":
        return tc.direction
    return "min" if "loss" in tc.objective else "max"


# --------------------------------------------------------------------------- the search


def run(task_spec: str, config_files=(), overrides=(), output: str | None = None,
        overwrite: bool = False) -> Path:
    """Run (or resume) a search; returns its directory."""
    from tfsft import quiet, workflow

    quiet.import_tensorflow_quietly()  # the task's metrics and Keras Tuner import it
    raw, base_overrides = split_tune_section(config_files, overrides)
    task, folder, cfg = workflow.load_task_and_config(task_spec, config_files, base_overrides)

    def check_key(key: str, value) -> list[str]:
        try:
            workflow.load_task_and_config(task_spec, config_files,
                                          [*base_overrides, f"{key}={_yaml(value)}"])
        except ConfigError as e:
            return e.problems
        return []

    tc = load_tune_config(raw, check_key)
    if tc.algorithm == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError("`tune.algorithm: bayesian` needs scipy and scikit-learn "
                              "(Keras Tuner's Gaussian process): pip install scipy "
                              "scikit-learn, or use random or hyperband") from None
    metric_names = ["val_loss"] + [f"val_{m.name}" for m in task.metrics(cfg.task)]
    if tc.objective not in metric_names:
        raise ConfigError(f"`tune.objective` ({tc.objective!r}) is not a validation metric of "
                          f"task {task.name!r}; choose one of {', '.join(metric_names)}")
    workflow.read_splits(task, cfg)  # bad data stops the search before its first trial
    out = Path(output) if output else Path("runs") / f"{task.name}-tune"
    declared = {"task": str(folder or task_spec), "config_files": [str(Path(f).resolve())
                                                                 for f in config_files],
                "overrides": list(base_overrides), "tune": asdict(tc)}
    _prepare_dir(out, declared, overwrite)
    with runs.locked(out):
        search = make_search(task_spec, config_files, base_overrides, tc, out,
                             max_epochs=tc.epochs_per_trial or cfg.train.epochs)
        remaining = search.remaining_trials
        log(f"search directory: {out} ({tc.algorithm}, {tc.max_trials} trials, "
            f"objective {tc.objective} ({direction(tc)}); {remaining} to run)")
        _write_hparams_config(out / "tune", tc)
        try:
            search.search(verbose=0)  # tfsft logs each trial itself
        except Exception as e:
            import keras_tuner as kt

            if isinstance(e, kt.errors.FatalError) and isinstance(e.__cause__, UserError):
                raise e.__cause__ from None
            if isinstance(e, RuntimeError) and "consecutive" in str(e):
                raise TrainingError(f"the search stopped: {e}") from None
            raise
        rows = leaderboard(search, tc, out)
    best = [r for r in rows if r["status"] == "COMPLETED"]
    rss = [r["peak_rss_mb"] for r in sorted(rows, key=lambda r: r["trial"]) if r["peak_rss_mb"]]
    summary = {"trials": len(rows), "completed": len(best),
               "failed": sum(r["status"] == "FAILED" for r in rows),
               "search_process_peak_rss_mb": round(
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "trial_peak_rss_mb": {"first": rss[0] if rss else None,
                                     "max": max(rss, default=None),
                                     "last": rss[-1] if rss else None}}
    runs.write_json(out / "summary.json", summary)
    log(f"{summary['completed']} of {summary['trials']} trials completed; peak RSS: search "
        f"process {summary['search_process_peak_rss_mb']} MB, trials up to "
        f"{summary['trial_peak_rss_mb']['max']} MB (each trial is its own process)")
    if not best:
        raise TrainingError(f"no trial of the search in {out} completed; see {out}/logs/")
    log(f"best trial {best[0]['trial']}: {tc.objective} {best[0]['objective']:.4f}; "
        f"leaderboard {out / 'trials.md'}")
    shutil.copyfile(out / "tune" / best[0]["trial"] / "config.yaml", out / "best_config.yaml")
    print(f"re-train the best config with:\n  python -m tfsft fit {task_spec} "
          f"--config {out / 'best_config.yaml'}")
    return out


def log(msg: str) -> None:
    print(f"[tfsft tune] {msg}", file=sys.stderr, flush=True)


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _prepare_dir(out: Path, declared: dict, overwrite: bool) -> None:
    """A new search, the same search resumed, or --overwrite of an earlier search."""
    spec = out / "search.json"
    if out.exists() and any(out.iterdir()):
        if not spec.exists():
            raise RunDirError(f"{out} exists and is not a tfsft search directory; choose "
                              "another --output")
        holder = runs.lock_holder(out)
        if holder:
            raise RunDirError(f"{out} is in use by another tfsft process ({holder})")
        if overwrite:
            shutil.rmtree(out)
        elif _comparable(json.loads(spec.read_text(encoding="utf-8"))) != _comparable(declared):
            raise RunDirError(f"{out} holds a different search (other task, config files, "
                              "overrides or tune section); pass --overwrite to start over, "
                              "or choose another --output")
        else:
            log(f"resuming the search in {out}")
            runs.write_json(spec, declared)
            return
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(spec, declared)


def _comparable(declared: dict) -> dict:
    """What must match to resume: everything but the trial budget (which may grow)."""
    return {**declared, "tune": {k: v for k, v in declared["tune"].items() if k != "max_trials"}}


def _hyperparameters(tc: TuneConfig):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for key, spec in tc.space.items():
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            hp.Choice(key, args)
        elif kind == "int":
            hp.Int(key, args[0], args[1])
        else:
            hp.Float(key, float(args[0]), float(args[1]),
                     sampling="log" if kind == "log_uniform" else "linear")
    return hp


def make_search(task_spec, config_files, base_overrides, tc: TuneConfig, out: Path,
                max_epochs: int):
    """A Keras Tuner BaseTuner whose trials are `tfsft fit` subprocesses."""
    import keras_tuner as kt

    objective = kt.Objective(tc.objective, direction(tc))
    # Keras Tuner reads a seed of 0 as "draw one at random" (`seed or random.randint(...)`),
    # so the default 0 gave another search every time: 0 goes in as another fixed number
    seed = tc.seed or ZERO_SEED
    common = dict(objective=objective, hyperparameters=_hyperparameters(tc), seed=seed,
                  tune_new_entries=False, allow_new_entries=False,
                  max_consecutive_failed_trials=tc.max_trials + 1)
    if tc.algorithm == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=max(max_epochs, 2), **common)
    elif tc.algorithm == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=tc.max_trials, **common)
    else:
        oracle = kt.oracles.RandomSearchOracle(max_trials=tc.max_trials, **common)

    class Search(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, **kwargs):
            return run_trial(trial, task_spec, config_files, base_overrides, tc, out)

        def save_model(self, trial_id, model, step=0):
            pass  # trials keep no model: re-train the best config with `fit`

    return Search(oracle, directory=str(out), project_name="keras_tuner")


def run_trial(trial, task_spec, config_files, base_overrides, tc: TuneConfig, out: Path):
    """Train one trial in a subprocess; its objective, or a failed/fatal trial error."""
    import keras_tuner as kt

    values = {k: v for k, v in trial.hyperparameters.values.items()}
    overrides = [f"{k}={_yaml(v)}" for k, v in values.items() if not k.startswith("tuner/")]
    epochs = values.get("tuner/epochs") or tc.epochs_per_trial
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    name = f"trial_{trial.trial_id}"
    from tfsft import workflow

    try:  # every trial is a complete config, validated like any other
        workflow.load_task_and_config(task_spec, config_files, [*base_overrides, *overrides])
    except ConfigError as e:
        raise kt.errors.FatalError(f"{name}: invalid config") from e
    run_dir, log_file = out / "tune" / name, out / "logs" / f"{name}.log"
    if run_dir.exists():  # an attempt interrupted by a killed search: ours to redo
        shutil.rmtree(run_dir)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tfsft", "fit", task_spec,
               *[a for f in config_files for a in ("--config", str(f))],
               *base_overrides, *overrides, "--output", str(run_dir), "--quiet", "--no-model"]
    shown = " ".join(f"{k}={_yaml(v)}" for k, v in values.items() if not k.startswith("tuner/"))
    log(f"{name}: {shown}" + (f" train.epochs={epochs}" if epochs else ""))
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    seconds, rss_mb = time.time() - start, usage.ru_maxrss / 1024
    info = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss_mb), "exit_code": code}
    runs.write_json(out / "logs" / f"{name}.json", info)
    tail = _tail(log_file)
    if code == 2 or code == 1:
        cause = ConfigError if code == 2 else RuntimeError
        raise kt.errors.FatalError(f"{name} failed (exit {code})") from cause(
            f"trial {name} stopped the search (exit {code}); its log {log_file} ends:\n{tail}")
    if code != 0:
        why = f"exit {code}" if code > 0 else f"killed by signal {-code}"
        log(f"{name} failed ({why}); the search goes on. {tail.splitlines()[-1] if tail else ''}")
        raise kt.errors.FailedTrialError(f"{name} failed ({why})")
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    series = [h[tc.objective] for h in history if tc.objective in h]
    if not series or not all(math.isfinite(v) for v in series):
        raise kt.errors.FailedTrialError(f"{name} logged no finite {tc.objective}")
    best = (min if direction(tc) == "min" else max)(series)
    _write_hparams(run_dir, name, values, best, series[-1])
    log(f"{name}: {tc.objective} best {best:.4f}, final {series[-1]:.4f} ({seconds:.0f} s, "
        f"peak RSS {rss_mb:.0f} MB)")
    return {tc.objective: best}


def _tail(path: Path, lines: int = 8) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- TensorBoard


def _write_event(folder: Path, summary) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def _write_hparams_config(folder: Path, tc: TuneConfig) -> None:
    """The experiment's HParams: the searched keys and the two objective metrics."""
    from tensorboard.plugins.hparams import summary_v2 as hp_api

    folder.mkdir(parents=True, exist_ok=True)
    if list(folder.glob("events.out.tfevents.*")):
        return
    params = []
    for key, spec in tc.space.items():
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            params.append(hp_api.HParam(key, hp_api.Discrete(list(args))))
        elif kind == "int":
            params.append(hp_api.HParam(key, hp_api.IntInterval(args[0], args[1])))
        else:
            params.append(hp_api.HParam(key, hp_api.RealInterval(float(args[0]),
                                                                  float(args[1]))))
    metrics = [hp_api.Metric("tune/objective_best", display_name=f"{tc.objective} (best)"),
               hp_api.Metric("tune/objective_final", display_name=f"{tc.objective} (final)")]
    _write_event(folder, hp_api.hparams_config_pb(params, metrics))


def _write_hparams(run_dir: Path, name: str, values: dict, best: float, final: float) -> None:
    """The trial's HParams session and its best and final objective, in its run dir."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp_api

    shown = {k: v for k, v in values.items() if not k.startswith("tuner/")}
    _write_event(run_dir, hp_api.hparams_pb(shown, trial_id=name))
    _write_event(run_dir, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="tune/objective_best", simple_value=best),
        summary_pb2.Summary.Value(tag="tune/objective_final", simple_value=final)]))


# --------------------------------------------------------------------------- results


def leaderboard(search, tc: TuneConfig, out: Path) -> list[dict]:
    """trials.csv and trials.md, best first; returns the rows."""
    keys = list(tc.space)
    rows = []
    for trial in search.oracle.trials.values():
        name = f"trial_{trial.trial_id}"
        info_path = out / "logs" / f"{name}.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        series = []
        history = out / "tune" / name / "history.jsonl"
        if history.exists():
            series = [json.loads(x).get(tc.objective) for x in history.read_text().splitlines()]
        rows.append({"trial": name, "status": trial.status,
                     "objective": trial.score if trial.score is not None else float("nan"),
                     "final": series[-1] if series and series[-1] is not None else float("nan"),
                     "seconds": info.get("seconds"), "peak_rss_mb": info.get("peak_rss_mb"),
                     **{k: trial.hyperparameters.values.get(k) for k in keys}})
    sign = -1 if direction(tc) == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "COMPLETED",
                             sign * r["objective"] if math.isfinite(r["objective"]) else 0,
                             r["trial"]))
    columns = ["trial", "status", "objective", "final", "seconds", "peak_rss_mb", *keys]
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    header = ["trial", "status", f"{tc.objective} (best)", "final", "seconds", "peak RSS MB",
              *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["trial"], r["status"], _num(r["objective"]), _num(r["final"]),
                 r["seconds"], r["peak_rss_mb"], *[_num(r[k]) for k in keys]]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    runs.write_text(out / "trials.md", "\n".join(lines) + "\n")
    return rows


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
