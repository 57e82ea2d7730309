from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tfsft import config as c
from tfsft.errors import ConfigError
from tfsft.tasks import load_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cls_task():
    return load_task(REPO / "tasks" / "classification")


def test_defaults_then_file_then_config_then_override(tmp_path, cls_task):
    task_yaml = tmp_path / "task" / "config.yaml"
    task_yaml.parent.mkdir()
    task_yaml.write_text("data: {train: t.tsv}\ntrain: {epochs: 5, learning_rate: 1.0e-4}\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("train: {epochs: 2}\nmodel: {dropout: 0.2}\n")
    cfg = c.load_config(cls_task.config_class, task_yaml, [str(extra)],
                        ["train.epochs=7", "task.labels=[a,b]"], cwd=tmp_path)
    assert cfg.train.epochs == 7  # override wins
    assert cfg.model.dropout == 0.2  # --config wins over defaults
    assert cfg.train.learning_rate == 1e-4  # task config.yaml wins over defaults
    assert cfg.train.global_batch_size == c.TrainConfig().global_batch_size
    assert cfg.task.labels == ("a", "b")
    assert cfg.data.train == str((task_yaml.parent / "t.tsv").resolve())  # relative to file
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


def test_unknown_key_suggests_nearest_and_all_errors_reported(cls_task):
    with pytest.raises(ConfigError) as e:
        c.load_config(cls_task.config_class, None, [],
                      ["data.train=x.tsv", "train.learning_rat=0.1", "train.epochs=many",
                       "model.freeze=everything", "trian.seed=1"])
    text = str(e.value)
    assert len(e.value.problems) == 4
    assert "train.learning_rat" in text and "did you mean 'learning_rate'" in text
    assert "`train.epochs` must be an integer, got 'many'" in text
    assert "one of 'none', 'backbone', 'embeddings'" in text
    assert "unknown section 'trian'" in text and "did you mean 'train'" in text
    with pytest.raises(ConfigError, match=r"unknown key `train.labels` \(it is a key of "
                                          r"`task`: task.labels\)"):
        c.load_config(cls_task.config_class, None, [], ["data.train=x.tsv", "train.labels=[a,b]"])


def test_cross_field_errors_quote_keys_and_values(cls_task):
    with pytest.raises(ConfigError) as e:
        c.load_config(cls_task.config_class, None, [],
                      ["data.train=x.tsv", "train.warmup_ratio=1.5", "model.lora_rank=4",
                       "model.freeze=backbone", "data.max_length=64",
                       "data.max_batch_tokens=32"])
    text = str(e.value)
    assert "`train.warmup_ratio` (1.5)" in text
    assert "`model.lora_rank` (4)" in text and "'backbone'" in text
    assert "`data.max_batch_tokens` (32) must be 0 (no cap) or >= `data.max_length` (64)" in text


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        c.parse_override("epochs=3")
    # YAML 1.1 reads 3e-5 (no dot) as text: float fields still accept it
    assert c.parse_override("train.learning_rate=3e-5") == ("train.learning_rate", "3e-5")
    assert c.coerce("3e-5", float) == (True, 3e-5, "a finite number")
    assert c.coerce("7", int)[0] is False  # a quoted number is not silently an int
    assert c.parse_override("data.train=a=b.tsv") == ("data.train", "a=b.tsv")
    with pytest.raises(ConfigError, match=r"task.labels=\[neg, pos'.*not a valid YAML list"):
        c.parse_override("task.labels=[neg, pos")  # was the one label '[neg, pos'


def test_bad_yaml_names_file(tmp_path, cls_task):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        c.load_config(cls_task.config_class, None, [str(bad)], [])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        c.load_config(cls_task.config_class, None, [str(listy)], [])
    with pytest.raises(ConfigError, match="does not exist"):
        c.load_config(cls_task.config_class, None, [str(tmp_path / "nope.yaml")], [])


def test_backbone_name_kept_but_path_resolved(tmp_path, cls_task):
    cfg = c.load_config(cls_task.config_class, None, [],
                        ["data.train=x.tsv", "model.backbone=bert_tiny_en_uncased"], cwd=tmp_path)
    assert cfg.model.backbone == "bert_tiny_en_uncased"
    cfg = c.load_config(cls_task.config_class, None, [],
                        ["data.train=x.tsv", "model.backbone=./ckpt"], cwd=tmp_path)
    assert cfg.model.backbone == str((tmp_path / "ckpt").resolve())


def test_dump_round_trips(tmp_path, cls_task):
    cfg = c.load_config(cls_task.config_class, None, [],
                        ["data.train=/abs/x.tsv", "task.labels=[neg,pos]", "train.epochs=2"])
    path = tmp_path / "resolved.yaml"
    path.write_text(c.dump_yaml(cfg))
    again = c.load_config(cls_task.config_class, path, [], [])
    assert again == cfg


def test_reference_lists_every_key(cls_task):
    rows = c.reference({"task": cls_task.config_class, **c.SECTIONS})
    keys = {r[0] for r in rows}
    for section, cls in {"task": cls_task.config_class, **c.SECTIONS}.items():
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in keys
    assert all(r[3] for r in rows if r[0].split(".")[0] != "task"), "a key lacks its comment"


def test_reference_comments_are_read_as_python_reads_them():
    source = (
        "class Example:\n"
        "    prompt: str = \"### Q:\\n{q}\"  # Alpaca\n"
        "    longer: str = (\"# not a comment\"\n"
        "                   \"more\")  # the comment of the last line\n"
        "    # a comment line of its own belongs to no key\n"
        "    plain: int = 0\n"
        "    hashed: str = \"a#b\"\n")
    assert c._field_comments(source) == {"prompt": "Alpaca",
                                         "longer": "the comment of the last line"}


def test_readme_config_reference_is_current(cls_task):
    """The README's reference is exactly what the dataclasses generate (docs stay true).
    Fix with: python tools/config_reference.py --write"""
    import runpy

    tool = runpy.run_path(str(REPO / "tools" / "config_reference.py"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert tool["START"] + "\n" + tool["render"]() + "\n" + tool["END"] in readme
    for key, *_ in c.reference({"task": cls_task.config_class, **c.SECTIONS}):
        assert f"`{key}`" in readme, f"README config reference lacks `{key}`"


# --------------------------------------------------------------------------- robustness

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["1e-5", "-1", "nan", "tfds:x", ""]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_KEYS = st.one_of(st.sampled_from([f.name for cls in c.SECTIONS.values()
                                   for f in dataclasses.fields(cls)]
                                  + ["labels", "text_field", "threshold", "pooling"]),
                  st.text(max_size=8), st.integers())
_SECTIONS = st.one_of(st.sampled_from(["data", "model", "train", "task"]), st.text(max_size=6),
                      st.integers(), st.none())
_DOCS = st.one_of(_VALUES, st.dictionaries(_SECTIONS, st.one_of(
    _VALUES, st.dictionaries(_KEYS, _VALUES, max_size=5)), max_size=4))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=_DOCS)
def test_fuzzed_yaml_gives_config_errors_not_crashes(tmp_path, cls_task, doc):
    """Any YAML document either loads into a valid config or raises ConfigError."""
    import yaml

    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        cfg = c.load_config(cls_task.config_class, None, [str(path)], ["data.train=x.tsv"],
                            cwd=tmp_path)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
    else:
        assert isinstance(cfg, c.RunConfig)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["train.epochs", "train.learning_rate", "data.train", "task.labels",
                            "model.backbone", "task.threshold", "train.keep_best"]),
       raw=st.text(max_size=30))
def test_fuzzed_overrides_give_config_errors_not_crashes(cls_task, tmp_path, key, raw):
    try:
        c.load_config(cls_task.config_class, None, [], ["data.train=x.tsv", f"{key}={raw}"],
                      cwd=tmp_path)
    except ConfigError as e:
        assert e.problems


@pytest.mark.parametrize("text, fragment", [
    ("train: {epochs: 99999999999999999999999}", "at most"),
    ("train: {learning_rate: .inf}", "finite number"),
    ("train: {learning_rate: .nan}", "finite number"),
    ("train: {learning_rate: 1e999}", "finite number"),
    ("train: {epochs: null}", "must be an integer"),
    ("train: {epochs: [1, 2]}", "must be an integer"),
    ("train: {seed: 3.5}", "must be an integer"),
    ("task: {labels: [[a], b]}", "a list of str"),
    ("task: {labels: {a: 1}}", "a list of str"),
    ("7: {epochs: 1}", "unknown section 7"),
    ("train: {3: 1}", "unknown key `train.3`"),
    ("train: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ntask: {labels: *c}", "a list of str"),
    ("train: !!python/object/apply:os.system ['echo pwned']", "not valid YAML"),
    ("[1, 2", "not valid YAML"),
    ("- just\n- a list", "must hold a mapping"),
    ("data: {validation: \"bad\\0path.tsv\"}", "NUL character"),
    ("train:\n  epochs: 1\n  epochs: 2\n", "found the key 'epochs' twice \\(also on line 2\\)"),
    ("train: {epochs: 1}\ntrain: {seed: 2}\n", "found the key 'train' twice"),
    ("train: {seed: -1}", "`train.seed` \\(-1\\) must be >= 0"),
])
def test_hostile_yaml_is_a_config_error(tmp_path, cls_task, text, fragment):
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        c.load_config(cls_task.config_class, None, [str(path)], ["data.train=x.tsv"],
                      cwd=tmp_path)


def test_numeric_label_names_are_accepted_as_text(cls_task, tmp_path):
    cfg = c.load_config(cls_task.config_class, None, [], ["data.train=x.tsv", "task.labels=[0, 1]"],
                        cwd=tmp_path)
    assert cfg.task.labels == ("0", "1")
