"""Plugin discovery and contract, and every task on tiny BERT and GPT-2 backbones."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tfsft import data, tasks
from tfsft.errors import DataError, PluginError

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(p.parent for p in (REPO / "tasks").glob("*/task.py"))
# text -> label tasks (the NER task has its own tests: test_ner.py)
CLASSIFIERS = [f for f in TASKS
               if "label_field" in tasks.load_task(f).config_class.__dataclass_fields__]


def test_discover_lists_shipped_tasks():
    names = [n for n, _ in tasks.discover(REPO / "tasks")]
    assert {"classification", "sentiment", "ner"} <= set(names)


def test_missing_member_names_plugin_and_member(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "task.py").write_text(
        "class T:\n    name = 'broken'\n    config_class = dict\n\nTASK = T()\n")
    with pytest.raises(PluginError) as e:
        tasks.load_task(folder)
    assert "broken" in str(e.value) and "examples" in str(e.value)
    assert "build_model" in str(e.value)


# the sentiment task with one thing changed: what a plugin author might get wrong
PLUGIN = """
import dataclasses
from tfsft import tasks
base = tasks.load_task({base!r})

@dataclasses.dataclass(frozen={frozen})
class Config(base.config_class.__mro__[0]):
    pass

class Task(type(base)):
    name = "mine"
    config_class = {config}
{method}
TASK = Task()
"""


@pytest.mark.parametrize("frozen, config, method, said", [
    (True, "Config", "    def examples(self, task_cfg, rows):\n        return None",
     "examples must take (task_cfg, rows, labelled); it is examples(task_cfg, rows)"),
    (True, "Config()", "", "config_class must be a dataclass class, got"),
    (True, "Config", "    def build_model(self, task_cfg, backbone):\n        return None",
     "build_model must take (task_cfg, backbone, num_outputs, dropout)"),
])
def test_plugin_mistakes_are_named_when_it_loads(tmp_path, frozen, config, method, said):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "task.py").write_text(PLUGIN.format(base=str(REPO / "tasks" / "sentiment"),
                                                  frozen=frozen, config=config, method=method))
    with pytest.raises(PluginError, match="task plugin .*mine: " + re.escape(said)):
        tasks.load_task(folder)


def test_a_plugin_config_must_be_frozen_with_defaults(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "task.py").write_text(
        "import dataclasses\nfrom tfsft import tasks\n"
        f"base = tasks.load_task({str(REPO / 'tasks' / 'sentiment')!r})\n"
        "@dataclasses.dataclass\nclass Config:\n    topics: int\n\n"
        "class Task(type(base)):\n    name = 'loose'\n    config_class = Config\n\n"
        "TASK = Task()\n")
    with pytest.raises(PluginError) as e:
        tasks.load_task(folder)
    assert "must be frozen: @dataclass(frozen=True)" in str(e.value)
    assert "field(s) topics need a default" in str(e.value)


def test_a_plugin_that_fails_to_import_or_run_is_named_not_called_a_tfsft_bug(tmp_path,
                                                                            capsys):
    from tfsft import cli

    folder = tmp_path / "oops"
    folder.mkdir()
    (folder / "task.py").write_text("x = 1\nimport no_such_helper_module\n")
    with pytest.raises(PluginError, match=r"oops/task.py failed to import, at .*task.py:2: "
                                          r"ModuleNotFoundError"):
        tasks.load_task(folder)
    (folder / "task.py").write_text(
        "from tfsft import tasks\n"
        f"base = tasks.load_task({str(REPO / 'tasks' / 'sentiment')!r})\n"
        "class Task(type(base)):\n    name = 'oops'\n"
        "    def examples(self, task_cfg, rows, labelled):\n"
        "        return {}['no such key']\n\nTASK = Task()\n")
    bundled = REPO / "tasks" / "sentiment" / "data"
    code = cli.main(["validate", str(folder), f"data.train={bundled / 'train.tsv'}",
                     f"data.validation={bundled / 'validation.tsv'}"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert re.search(r"error in the task plugin at .*oops/task.py:6 \(KeyError", err)
    assert "internal error" not in err


def test_an_error_inside_a_shipped_task_is_tfsfts_own(tmp_path):
    shipped = tasks.load_task(REPO / "tasks" / "classification")
    with pytest.raises(AttributeError) as e:
        shipped.examples(shipped.config_class(), None, True)  # inside tasks/classification
    assert tasks.plugin_frame(e.value) is None  # reported as an internal error, exit 1


def test_folder_without_task_py(tmp_path):
    with pytest.raises(PluginError, match="not a task folder"):
        tasks.load_task(tmp_path)
    with pytest.raises(PluginError, match="no task 'nosuch'"):
        tasks.resolve("nosuch", search=(REPO / "tasks",))


def test_a_bare_name_never_imports_a_folder_from_the_current_directory(tmp_path,
                                                                       monkeypatch):
    folder = tmp_path / "tasks" / "trojan"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    (folder / "task.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(PluginError, match="name it as a path"):
        tasks.resolve("trojan", search=(tmp_path / "tasks",))
    monkeypatch.chdir(tmp_path / "tasks")  # the folder right here: still only a suggestion
    with pytest.raises(PluginError, match=r"name it as a path: tfsft \.\.\. \./trojan"):
        tasks.resolve("trojan", search=())
    assert not marker.exists()
    with pytest.raises(PluginError, match="defines no module-level TASK"):
        tasks.resolve(str(folder))  # named as a path: the user asked for it
    assert marker.exists()


def test_entry_point_plugins_are_found(monkeypatch):
    classification = tasks.load_task(REPO / "tasks" / "classification")

    class EP:
        name, value = "thirdparty", "pkg.task:TASK"

        def load(self):
            return classification

    monkeypatch.setattr(tasks.metadata, "entry_points", lambda group: [EP()])
    task, folder = tasks.resolve("thirdparty", search=())
    assert task is classification and folder is None
    assert ("thirdparty", "entry point pkg.task:TASK") in tasks.discover(REPO / "tasks")
    # its defaults: the config.yaml beside the module that defines it
    from tfsft import workflow

    sentiment = tasks.load_task(REPO / "tasks" / "sentiment")
    module = next(m for m in list(sys.modules.values()) if getattr(m, "TASK", None) is sentiment)
    monkeypatch.setattr(EP, "load", lambda self: sentiment)
    monkeypatch.setattr(EP, "value", f"{module.__name__}:TASK")
    cfg = workflow.load_task_and_config("thirdparty", [], [])[2]
    assert tasks.installed_folder(sentiment) == REPO / "tasks" / "sentiment"
    assert (cfg.train.epochs, cfg.train.global_batch_size) == (4, 16)  # built-in: 3, 32
    assert cfg.data.train == str(REPO / "tasks" / "sentiment" / "data" / "train.tsv")


def rows(*pairs):
    return data.Rows("mem.tsv", [{"text": t, "label": lb} for t, lb in pairs],
                     [f"mem.tsv:{i + 2}" for i in range(len(pairs))])


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=lambda p: p.name)
def test_unknown_label_is_reported_with_fix(folder):
    task = tasks.load_task(folder)
    cfg = task.config_class(labels=("negative", "positive"))
    ex = task.examples(cfg, rows(("nice", "positive"), ("meh", "postive")), True)
    with pytest.raises(DataError) as e:
        task.encode_targets(cfg, ["negative", "positive"], ex)
    msg = str(e.value)
    assert "Label 'postive' on mem.tsv:3 is not in labels [negative, positive]" in msg
    assert "add the label to `task.labels`" in msg


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=lambda p: p.name)
def test_empty_text_and_missing_label_collected(folder):
    task = tasks.load_task(folder)
    cfg = task.config_class()
    bad = data.Rows("f.tsv", [{"text": " ", "label": "a"}, {"text": "ok"}], ["f.tsv:2", "f.tsv:3"])
    with pytest.raises(DataError) as e:
        task.examples(cfg, bad, True)
    assert "f.tsv:2: field 'text' is empty" in str(e.value)
    assert "f.tsv:3: label field 'label' is missing" in str(e.value)
    unseen = data.Rows("f.tsv", [{"text": "\u200b\u200b", "label": "a"},
                                 {"text": "\x01\x02", "label": "a"}, {"text": "ok :)",
                                                                       "label": "a"}],
                       ["f.tsv:2", "f.tsv:3", "f.tsv:4"])
    with pytest.raises(DataError) as e:
        task.examples(cfg, unseen, True)
    assert "f.tsv:2: field 'text' has no visible character (only U+200B)" in str(e.value)
    assert "f.tsv:3: field 'text' has no visible character (only U+0001, U+0002)" in str(e.value)
    assert "f.tsv:4" not in str(e.value)


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=lambda p: p.name)
def test_json_labels_are_text_or_whole_numbers(folder):
    """1 and "1" are one class; 1.0, NaN, true, null in a list, or an object are problems
    named by row, not classes of their own."""
    task = tasks.load_task(folder)
    ex = task.examples(task.config_class(), rows(("a", 1), ("b", "1"), ("c", " 0 ")), True)
    assert list(ex.labels) == ["1", "1", "0"]
    with pytest.raises(DataError) as e:
        task.examples(task.config_class(),
                      rows(("a", 1.0), ("b", float("nan")), ("c", True)), True)
    msg = str(e.value)
    assert "mem.tsv:2: label 1.0 is a float" in msg and "mem.tsv:3: label nan" in msg
    assert "mem.tsv:4: label True is a bool" in msg
    multi = task.config_class(multi_label=True)
    assert task.examples(multi, rows(("a", ["x", 2]), ("b", "x,y")), True).labels[0] == ["2", "x"]
    with pytest.raises(DataError, match=r"mem.tsv:3: label None is a NoneType"):
        task.examples(multi, rows(("a", ["x"]), ("b", ["x", None])), True)
    with pytest.raises(DataError, match=r"mem.tsv:2: label \{'neg': 1\} is a dict"):
        task.examples(multi, rows(("a", {"neg": 1}),), True)


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=lambda p: p.name)
@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_task_model_on_tiny_backbones(folder, family, request):
    """Every task builds, computes finite logits and decodes on both backbone families."""
    import keras

    from tfsft import backbones, pipeline

    task = tasks.load_task(folder)
    cfg = task.config_class()
    backbone, preprocessor = backbones.load(str(request.getfixturevalue(family)), 32)
    ex = task.examples(cfg, rows(("good film", "positive"), ("bad awful food", "negative"),
                                 ("the show was great", "positive")), True)
    labels = task.make_label_map(cfg, ex)
    assert labels == ["negative", "positive"]
    enc = task.encode_inputs(cfg, preprocessor, ex)
    model = task.build_model(cfg, backbone, len(labels), 0.1)
    batch = next(iter(pipeline.eval_dataset(enc, None, 8)))
    logits = keras.ops.convert_to_numpy(model(batch))
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    # padding must not change a row's logits (last-token pooling / attention masks)
    alone = {k: v[:1, : int(enc.lengths[0])] for k, v in enc.features.items()}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(alone))[0], logits[0],
                               atol=1e-5)
    out = task.decode(cfg, labels, logits)
    assert out[0]["label"] in labels and abs(sum(out[0]["scores"].values()) - 1) < 1e-5
    targets = task.encode_targets(cfg, labels, ex)
    report = task.report(cfg, labels, targets, logits)
    assert report["examples"] == 3


def test_multi_label_classification(tiny_bert):
    import keras

    from tfsft import backbones, pipeline

    task = tasks.load_task(REPO / "tasks" / "classification")
    cfg = task.config_class(multi_label=True)
    ex = task.examples(cfg, rows(("good", "a,b"), ("bad", "b"), ("fine", "c")), True)
    labels = task.make_label_map(cfg, ex)
    assert labels == ["a", "b", "c"]
    y = task.encode_targets(cfg, labels, ex)
    np.testing.assert_array_equal(y, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    backbone, pre = backbones.load(str(tiny_bert), 32)
    model = task.build_model(cfg, backbone, 3, 0.0)
    enc = task.encode_inputs(cfg, pre, ex)
    logits = keras.ops.convert_to_numpy(model(next(iter(pipeline.eval_dataset(enc, None, 8)))))
    out = task.decode(cfg, labels, logits)
    assert set(out[0]) == {"labels", "scores"}
    loss = task.loss(cfg, 0.0)
    probs = 1 / (1 + np.exp(-logits))
    expected = -np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs))
    assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-4)
    predicted = (probs >= cfg.threshold).astype(int)
    rep = task.report(cfg, labels, y, logits)
    assert rep["hamming_accuracy"] == pytest.approx((predicted == y).mean())


def test_label_smoothing_loss_matches_onehot_formula():
    import keras

    task = tasks.load_task(REPO / "tasks" / "classification")
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    smoothed = float(task.loss(task.config_class(), 0.3)(np.array([0]), logits))
    onehot = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3)
    assert smoothed == pytest.approx(float(onehot(np.array([[1.0, 0, 0]]), logits)), rel=1e-6)
    plain = float(task.loss(task.config_class(), 0.0)(np.array([0]), logits))
    assert smoothed != pytest.approx(plain)


def test_balanced_class_weights():
    task = tasks.load_task(REPO / "tasks" / "classification")
    w = task.class_weights(task.config_class(), np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w.mean() == pytest.approx(1.0)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_pooling_choices_ignore_padding(pooling, family, request):
    import keras

    from tfsft import backbones
    from tfsft.errors import ConfigError

    task = tasks.load_task(REPO / "tasks" / "classification")
    cfg = task.config_class(pooling=pooling)
    backbone, pre = backbones.load(str(request.getfixturevalue(family)), 32)
    if pooling == "cls" and family == "tiny_gpt2":
        with pytest.raises(ConfigError, match="'cls' needs a backbone"):
            task.build_model(cfg, backbone, 2, 0.0)
        return
    model = task.build_model(cfg, backbone, 2, 0.0)
    ex = task.examples(cfg, rows(("good", "positive"), ("the film was bad", "negative")), True)
    enc = task.encode_inputs(cfg, pre, ex)
    short = {k: v[:1, : int(enc.lengths[0])] for k, v in enc.features.items()}
    padded = {k: v[:1] for k, v in enc.features.items()}
    a = keras.ops.convert_to_numpy(model(short))
    b = keras.ops.convert_to_numpy(model(padded))
    np.testing.assert_allclose(a, b, atol=1e-5)
