"""Hyperparameter search: config validation, and a real 3-trial search on a tiny BERT
that is killed after its first trial and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfsft import config as c
from tfsft import tune
from tfsft.errors import ConfigError
from tfsft.tasks import load_task

REPO = Path(__file__).resolve().parents[1]


def _checker(task):
    def check_key(key, value):
        try:
            c.load_config(task.config_class, None, [],
                          ["data.train=x.tsv", f"{key}={tune._yaml(value)}"])
        except ConfigError as e:
            return e.problems
        return []
    return check_key


def test_tune_section_errors_are_all_reported():
    task = load_task(REPO / "tasks" / "classification")
    raw = {"max_trials": 0, "algoritm": "random", "seed": -1, "space": {
        "train.learning_rate": {"log_uniform": [0, 1e-3]},
        "train.global_batch_size": {"choice": [16, "big"]},
        "model.freeze_layers": {"int": [0.5, 3]},
        "train.nosuch": {"choice": [1]},
        "model.dropout": {"normal": [0, 1]},
    }}
    with pytest.raises(ConfigError) as e:
        tune.load_tune_config(raw, _checker(task))
    text = str(e.value)
    for fragment in ["unknown key `tune.algoritm` (did you mean 'algorithm'?)",
                     "`tune.max_trials` (0) must be >= 1",
                     "`tune.seed` (-1) must be in 0..4294967295",
                     "`tune.space.train.learning_rate`: log_uniform needs numbers low < high "
                     "and low > 0",
                     "`tune.space.train.global_batch_size` = 'big': `train.global_batch_size` "
                     "must be an integer",
                     "`tune.space.model.freeze_layers`: int needs integer bounds",
                     "unknown key `train.nosuch`",
                     "`tune.space.model.dropout` must be one of"]:
        assert fragment in text, fragment
    assert len(e.value.problems) == 8


def test_numbers_written_as_yaml_reads_them_are_numbers_in_the_space():
    """YAML 1.1 reads 1e-5 (no dot) as text; config keys take it as a number, so does the
    search space."""
    task = load_task(REPO / "tasks" / "classification")
    raw = {"space": {"train.learning_rate": {"log_uniform": ["1e-5", "3e-4"]},
                     "model.dropout": {"uniform": [0, "0.3"]}}}
    tc = tune.load_tune_config(raw, _checker(task))
    assert tc.space["train.learning_rate"] == {"log_uniform": [1e-5, 3e-4]}
    assert tc.space["model.dropout"] == {"uniform": [0, 0.3]}
    with pytest.raises(ConfigError, match="log_uniform needs numbers low < high"):
        tune.load_tune_config({"space": {"train.learning_rate": {"log_uniform": ["a", "b"]}}},
                              _checker(task))


def test_fit_ignores_the_tune_section(tmp_path):
    task = load_task(REPO / "tasks" / "classification")
    cfg = c.load_config(task.config_class, None, [str(REPO / "configs" / "tune-sentiment.yaml")],
                        ["data.train=x.tsv"])
    assert cfg.train.epochs == c.TrainConfig().epochs


def _tune_cmd(tiny_bert, toy_data, tmp_path):
    train, dev = toy_data
    spec = tmp_path / "tune.yaml"
    spec.write_text("tune:\n  max_trials: 3\n  epochs_per_trial: 4\n  seed: 3\n  space:\n"
                    "    train.learning_rate: {log_uniform: [5.0e-3, 5.0e-2]}\n"
                    "    train.global_batch_size: {choice: [8, 16]}\n")
    return [sys.executable, "-m", "tfsft", "tune", "tasks/sentiment", "--config", str(spec),
            f"model.backbone={tiny_bert}", f"data.train={train}", f"data.validation={dev}",
            "data.max_length=16", "model.dropout=0.0", "train.deterministic=true",
            "--output", str(tmp_path / "search")]


def test_search_is_killed_resumes_and_its_best_config_reproduces(tiny_bert, toy_data,
                                                                 tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = _tune_cmd(tiny_bert, toy_data, tmp_path)
    out = tmp_path / "search"
    first = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "logs" / "trial_0.json").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # Keras Tuner records the finished trial
    os.killpg(first.pid, signal.SIGKILL)  # the search and the trial running under it
    first.wait()
    finished = (out / "tune" / "trial_0" / "history.jsonl").stat().st_mtime_ns

    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the search" in resumed.stderr
    assert "trial_0:" not in resumed.stderr.split("resuming the search", 1)[1].replace(
        "best trial trial_0", "")  # not run again
    assert (out / "tune" / "trial_0" / "history.jsonl").stat().st_mtime_ns == finished

    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",COMPLETED," in r for r in rows[1:])
    assert not list((out / "tune").glob("trial_*/model"))  # trials keep no model
    objectives = {}
    for trial in sorted((out / "tune").glob("trial_*")):
        acc = event_accumulator.EventAccumulator(str(trial), size_guidance={"scalars": 0})
        acc.Reload()
        from tensorboard.plugins.hparams import plugin_data_pb2

        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert set(start.hparams) == {"train.learning_rate", "train.global_batch_size"}
        best = acc.Scalars("tune/objective_best")[0].value
        assert acc.Scalars("tune/objective_final")
        history = [json.loads(x) for x in (trial / "history.jsonl").read_text().splitlines()]
        assert best == pytest.approx(max(h["val_accuracy"] for h in history), abs=1e-6)
        objectives[trial.name] = best
    top = max(objectives, key=objectives.get)
    assert f"best trial {top}" in resumed.stderr

    refit = subprocess.run([sys.executable, "-m", "tfsft", "fit", "tasks/sentiment", "--config",
                            str(out / "best_config.yaml"), "--output", str(tmp_path / "refit"),
                            "--quiet", "--no-model"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert refit.returncode == 0, refit.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "refit" / "history.jsonl").read_text()
               .splitlines()]
    assert max(h["val_accuracy"] for h in history) == pytest.approx(objectives[top], abs=1e-6)


def _search(tiny_bert, toy_data, tmp_path, space: str, trials: int):
    train, dev = toy_data
    spec = tmp_path / "tune.yaml"
    spec.write_text(f"tune:\n  max_trials: {trials}\n  epochs_per_trial: 1\n  space:\n{space}")
    return subprocess.run(
        [sys.executable, "-m", "tfsft", "tune", "tasks/sentiment", "--config", str(spec),
         f"model.backbone={tiny_bert}", f"data.train={train}", f"data.validation={dev}",
         "data.max_length=16", "train.warmup_ratio=0", "train.clip_norm=0",
         "--output", str(tmp_path / "search")],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
        text=True, timeout=600)


def test_a_diverging_trial_fails_and_the_search_goes_on(tiny_bert, toy_data, tmp_path):
    r = _search(tiny_bert, toy_data, tmp_path,
                "    train.learning_rate: {choice: [1.0e+30, 1.0e-2]}\n", trials=2)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (tmp_path / "search" / "trials.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[1] for row in rows) == ["COMPLETED", "FAILED"]
    assert "failed (exit 3); the search goes on" in r.stderr
    best = c.read_yaml(tmp_path / "search" / "best_config.yaml")
    assert best["train"]["learning_rate"] == pytest.approx(1e-2)


def test_a_trial_with_an_invalid_config_stops_the_search(tiny_bert, toy_data, tmp_path):
    r = _search(tiny_bert, toy_data, tmp_path,
                "    train.global_batch_size: {choice: [10]}\n"
                "    train.grad_accum_steps: {choice: [4]}\n", trials=2)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "must be divisible by `train.grad_accum_steps` (4)" in r.stderr
    assert not list((tmp_path / "search").glob("tune/trial_*/history.jsonl"))


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
@pytest.mark.parametrize("seed", [None, 7])
def test_the_same_seed_repeats_the_search(algorithm, seed, tmp_path):
    """Also the default `tune.seed` of 0, which Keras Tuner would read as 'random'."""
    task = load_task(REPO / "tasks" / "classification")
    raw = {"algorithm": algorithm, "max_trials": 4, "space": {
        "train.learning_rate": {"log_uniform": [1e-5, 1e-3]},
        "model.dropout": {"uniform": [0.0, 0.3]}}}
    if seed is not None:
        raw["seed"] = seed
    tc = tune.load_tune_config(raw, _checker(task))

    def first_trials(folder):
        oracle = tune.make_search("tasks/classification", [], [], tc, folder, 3).oracle
        return [oracle.create_trial(f"tuner{i}").hyperparameters.values for i in range(2)]

    assert first_trials(tmp_path / "a") == first_trials(tmp_path / "b")


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_every_algorithm_builds_a_search_over_the_declared_space(algorithm, tmp_path):
    task = load_task(REPO / "tasks" / "classification")
    tc = tune.load_tune_config({"algorithm": algorithm, "max_trials": 4, "space": {
        "train.learning_rate": {"log_uniform": [1e-5, 1e-3]},
        "train.global_batch_size": {"choice": [16, 32]},
        "model.freeze_layers": {"int": [0, 3]},
        "model.dropout": {"uniform": [0.0, 0.3]}}}, _checker(task))
    search = tune.make_search("tasks/classification", [], [], tc, tmp_path, max_epochs=3)
    trial = search.oracle.create_trial("tuner0")
    values = trial.hyperparameters.values
    assert 1e-5 <= values["train.learning_rate"] <= 1e-3
    assert values["train.global_batch_size"] in (16, 32)
    assert 0 <= values["model.freeze_layers"] <= 3 and 0 <= values["model.dropout"] <= 0.3
    if algorithm == "hyperband":
        assert 1 <= values["tuner/epochs"] <= 3
