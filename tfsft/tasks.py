"""Task plugin contract and explicit discovery.

A task plugin is a folder `tasks/<name>/` with `task.py` defining one module-level `TASK`
object, a `config.yaml` of task defaults and a `README.md`. Folders are loaded by path;
installed plugins are found through the entry-point group `tfsft.tasks` (the entry point
names a `TASK` object). Nothing registers itself on import.

The contract (checked at load time: a missing member, a method that does not take the
arguments shown (`ARGUMENTS`), or a config_class that is not a frozen dataclass with
defaults is a `PluginError` that names the plugin and the member):

    name: str
        The task's name, used in run directory names and manifests.
    config_class: type
        A frozen dataclass: the `task:` section of the config.
    examples(task_cfg, rows: data.Rows, labelled: bool) -> Examples
        Map reader rows to the task's inputs (and labels); raise DataError naming file,
        line and field for bad rows. `Examples` supports len(), `.where`, `.take(idx)`
        and `.labels`.
    make_label_map(task_cfg, train_examples) -> list[str]
        The output classes, in id order; saved with the run.
    encode_inputs(task_cfg, preprocessor, examples) -> pipeline.Encoded
        Tokenise once into int32 arrays (usable in tf.data).
    encode_targets(task_cfg, label_names, examples) -> np.ndarray
        Training targets, validated against the label map.
    build_model(task_cfg, backbone, num_outputs, dropout) -> keras.Model
        The head on the backbone; takes the int32 features, returns logits.
    loss(task_cfg, label_smoothing) -> keras.losses.Loss
    metrics(task_cfg) -> list[keras.metrics.Metric]  (validation names: `val_<name>`)
and the outputs of a scoring task (the model's logits are the prediction):
    decode(task_cfg, label_names, logits, examples) -> list[dict]
        User-facing predictions (label names and scores), one per example.
    report(task_cfg, label_names, targets, logits, examples) -> dict
        Evaluation report of one split (accuracy, precision/recall/F1, confusion matrix).
        Optional keys the core uses: `headline` (the line logged after training), `text`
        (the printed report; default: tfsft.metrics.format_report), `per_class` (with a
        confusion matrix: plotted), `summary` (the key numbers).
or of a generative task (predictions are generated text, tfsft/generation.py):
    generate(task_cfg, model, preprocessor, examples, batch_size) -> list[dict]
        User-facing outputs (the generated text), one per example.
    evaluate_model(task_cfg, model, preprocessor, label_names, examples, encoded,
                   batch_size) -> dict
        The report of one split, as `report` (plus `samples`: a few generations, logged to
        TensorBoard as text, and `rows`: every generation, written to
        reports/generations_<split>.jsonl instead of metrics.json).

Optional:
    run_time_keys: tuple[str, ...]
        `task.` keys that may differ from the trained run's in evaluate/predict (decoding
        settings, thresholds).
    class_weights(task_cfg, targets, num_labels) -> per-example weights, used by
        `train.class_weights: balanced`.
    serving_outputs(task_cfg, label_names, logits: tf.Tensor) -> dict[str, tf.Tensor]
        The outputs of `export --format saved_model` (TensorFlow ops on a batch of
        logits); without it that format is refused for the task.
    align_targets(task_cfg, encoded, targets) -> np.ndarray
        Training targets laid out as the model's outputs, when that depends on the
        tokenisation (NER: word targets -> the model's word axis, -1 where no loss).
    pack_rows(task_cfg, encoded, max_length) -> pipeline.Encoded
        The training rows made from the encoded training split (packing several short
        examples per row, tfsft.seq2seq.pack), or `encoded` itself.
    text_fields(task_cfg) -> list[str]
        The reader fields holding text: what `data.clean` and `data.dedup` (and
        `tfsft data clean`) work on. Without it those options are refused for the task.
    augment(task_cfg, train_examples, augmenter: augment.Augmenter) -> (examples, added)
        The training examples plus augmented copies (`added`: what `Augmenter.run`
        returned for them); used by `data.augment`, refused for tasks without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

from tfsft.errors import PluginError

CONTRACT = ("name", "config_class", "examples", "make_label_map", "encode_inputs",
            "encode_targets", "build_model", "loss", "metrics")
OUTPUTS = (("decode", "report"), ("generate", "evaluate_model"))  # one pair of these
ENTRY_POINT_GROUP = "tfsft.tasks"
# the positional arguments the core passes each method (the contract above)
ARGUMENTS = {
    "examples": "task_cfg, rows, labelled", "make_label_map": "task_cfg, train_examples",
    "encode_inputs": "task_cfg, preprocessor, examples",
    "encode_targets": "task_cfg, label_names, examples",
    "build_model": "task_cfg, backbone, num_outputs, dropout",
    "loss": "task_cfg, label_smoothing", "metrics": "task_cfg",
    "decode": "task_cfg, label_names, logits, examples",
    "report": "task_cfg, label_names, targets, logits, examples",
    "generate": "task_cfg, model, preprocessor, examples, batch_size",
    "evaluate_model": "task_cfg, model, preprocessor, label_names, examples, encoded, "
                      "batch_size",
    "class_weights": "task_cfg, targets, num_labels",
    "serving_outputs": "task_cfg, label_names, logits",
    "align_targets": "task_cfg, encoded, targets",
    "pack_rows": "task_cfg, encoded, max_length", "text_fields": "task_cfg",
    "augment": "task_cfg, train_examples, augmenter"}
FOLDERS: set[Path] = set()  # folders of the plugins loaded: where their code lives


def verify(task: object, origin: str) -> object:
    """Check that `task` has every member of the contract; raise naming the missing ones."""
    missing = [m for m in CONTRACT if not hasattr(task, m)]
    if not any(all(hasattr(task, m) for m in pair) for pair in OUTPUTS):
        missing.append(" and ".join(OUTPUTS[0]) + " (or " + " and ".join(OUTPUTS[1]) + ")")
    if missing:
        raise PluginError(
            f"task plugin {origin} is missing {', '.join(missing)} "
            f"(the contract is: {', '.join(CONTRACT)}, and {' + '.join(OUTPUTS[0])} or "
            f"{' + '.join(OUTPUTS[1])}; see tfsft/tasks.py)")
    import dataclasses
    import inspect

    cls = task.config_class
    problems = []
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        problems.append(f"config_class must be a dataclass class, got {cls!r}")
    else:
        if not cls.__dataclass_params__.frozen:
            problems.append("config_class must be frozen: @dataclass(frozen=True)")
        bare = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
        if bare:
            problems.append(f"config_class field(s) {', '.join(bare)} need a default (the "
                            "task's config.yaml may override it)")
    for member, names in ARGUMENTS.items():
        method = getattr(task, member, None)
        if method is None:
            continue
        try:
            inspect.signature(method).bind(*names.split(", "))
        except TypeError:
            problems.append(f"{member} must take ({names}); it is {member}"
                            f"{inspect.signature(method)}")
        except ValueError:  # no signature to read (a builtin): called as it is
            pass
    if problems:
        raise PluginError(f"task plugin {origin}: " + "; ".join(problems))
    return task


def load_module(folder: Path):
    """Import `folder/task.py` as a package module, so plugins may import their siblings."""
    folder = Path(folder).resolve()
    task_file = folder / "task.py"
    if not task_file.is_file():
        hint = " (it holds no task.py)" if folder.is_dir() else " (no such folder)"
        raise PluginError(f"{folder} is not a task folder{hint}. Task folders look like "
                          "tasks/sentiment; run `tfsft list` to see the tasks found.")
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    pkg_name = f"tfsft_task_{folder.name.replace('-', '_')}_{digest}"
    if pkg_name + ".task" in sys.modules:
        return sys.modules[pkg_name + ".task"]
    pkg_spec = importlib.util.spec_from_file_location(
        pkg_name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(pkg_spec)
    sys.modules[pkg_name] = package
    if (folder / "__init__.py").exists():
        pkg_spec.loader.exec_module(package)
    spec = importlib.util.spec_from_file_location(pkg_name + ".task", task_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    FOLDERS.add(folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[spec.name]
        where = plugin_frame(e) or (f"{e.filename}:{e.lineno}"
                                    if isinstance(e, SyntaxError) else str(task_file))
        raise PluginError(f"task plugin {task_file} failed to import, at {where}: "
                          f"{type(e).__name__}: {e} (--debug shows the traceback)") from e
    return module


def plugin_frame(error: BaseException) -> str | None:
    """`file:line` of the innermost frame of `error`'s traceback in a loaded plugin's
    folder (not one of the tasks shipped with tfsft), or None when the error did not pass
    through such code."""
    import traceback

    shipped = Path(__file__).resolve().parents[1] / "tasks"  # ours: a bug there is tfsft's
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if any(path.is_relative_to(folder) for folder in FOLDERS) \
                and not path.is_relative_to(shipped):
            found = f"{frame.filename}:{frame.lineno}"
    return found


def load_task(folder: Path | str):
    """Load and verify the TASK of a task folder."""
    module = load_module(Path(folder))
    if not hasattr(module, "TASK"):
        raise PluginError(f"task plugin {folder}: task.py defines no module-level TASK object")
    return verify(module.TASK, str(folder))


HOMES: dict[int, Path] = {}  # id(TASK) of an entry-point plugin -> its module's folder


def installed_folder(task: object) -> Path | None:
    """The folder of the module an installed (entry-point) plugin's TASK was loaded from
    (where its config.yaml is), or None."""
    return HOMES.get(id(task))


def installed_tasks() -> dict[str, object]:
    """Entry-point plugins: {name: entry point} (not loaded until asked for)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(spec: str, search: tuple[Path, ...] = (Path("tasks"),)):
    """A task by folder path, else by installed entry-point name. Returns (task, folder|None).

    Plugin code runs only from a folder the user names (a path: `tasks/sentiment`,
    `./mytask`) or from an installed entry point: a bare name never imports a folder found
    in the current directory, it only suggests the path."""
    path = Path(spec)
    if "/" in spec or spec.startswith("."):
        return load_task(path), path.resolve()
    eps = installed_tasks()
    if spec in eps:
        task = eps[spec].load()
        module = sys.modules.get(eps[spec].value.partition(":")[0].strip())
        if getattr(module, "__file__", None):
            HOMES[id(task)] = Path(module.__file__).resolve().parent
            FOLDERS.add(HOMES[id(task)])
        return verify(task, f"entry point {spec!r}"), None
    nearby = [f"./{spec}"] if (path / "task.py").is_file() else []
    nearby += [str(root / spec) for root in search if (root / spec / "task.py").is_file()]
    if nearby:
        raise PluginError(f"no installed task {spec!r}; to run the task folder {nearby[0]}, "
                          f"name it as a path: tfsft ... {nearby[0]}")
    known = sorted(set(eps) | {str(p.parent) for r in search for p in r.glob("*/task.py")})
    raise PluginError(f"no task {spec!r}: not a folder with task.py, and no installed plugin "
                      f"of that name. Known tasks: {', '.join(known) or 'none'}")


def discover(root: Path = Path("tasks")) -> list[tuple[str, str]]:
    """(name, where) for task folders under `root` and installed entry points."""
    found = [(p.parent.name, str(p.parent)) for p in sorted(Path(root).glob("*/task.py"))]
    found += [(name, f"entry point {ep.value}") for name, ep in installed_tasks().items()]
    return found
