"""Throughput benchmark of a tfsft task config, optionally side by side with the peer.

For the config it measures, after warm-up: training and prediction examples/s, real and
padded tokens/s, padding share, model FLOPs utilisation (MFU) against the matmul peak it
measures on this machine (float32 and bfloat16), time to the first training step (process
start to the end of step 1: imports, data, model build, weight load), the input pipeline
alone, and peak RSS. With `--peer PYTHON` it also runs ../shared/bench/hf_peer.py (Hugging
Face Transformers on PyTorch, in its own venv) on the same rows with the same batch sizes,
in each of its configurations, alternating with tfsft's runs. One JSON line per
measurement, then a table (median [min, max] over `--repeat`) and the ratios.

    python tools/bench.py tasks/sentiment --config configs/sst2.yaml data.limit=20000
    python tools/bench.py tasks/sentiment --config configs/sst2.yaml data.limit=20000 \\
        --repeat 3 --peer ~/.venvs/hf-peer/bin/python

Run it alone on the machine (2 cores: anything else running changes the figures).
docs/performance.md explains the method and has the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PEER = REPO.parent / "shared" / "bench" / "hf_peer.py"
PEER_TRAIN = [(p, pad) for p in ("fp32", "bf16") for pad in ("dynamic", "bucket")]
PEER_PREDICT = [(p, "bucket") for p in ("fp32", "bf16")]


def process_age() -> float:
    """Seconds since this process started (Linux /proc), for time-to-first-step."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start


def matmul_peak(dtype: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of an n x n matmul in `dtype` on this machine."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.linalg.matmul(x, x))
    f(a).numpy()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            out = f(a)
        out.numpy()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def model_flops(backbone):
    """Training FLOPs of a batch, counted on its real tokens and on the work a step runs,
    per transformer layer: the forward pass (2 x its parameters per token, plus 4 x width x
    hidden for the attention scores and values); the backward pass to its input where it
    or anything below it trains (as much again, and twice the attention term), except the
    query/key/value projections' input gradient when nothing below trains; 2 x its
    trainable parameters for their gradients. All trained, that is 6 x parameters + 12 x
    width x hidden per token. Not counted: embedding lookups, and the weights outside the
    stack (embedding LayerNorm, pooler), elementwise or on one token per row."""
    trained = {id(w) for w in backbone.trainable_weights}
    below = any(id(w) in trained for w in backbone.weights if "embedding" in w.path)
    hidden = getattr(backbone, "hidden_dim", 0)

    def count(weights) -> int:
        return sum(math.prod(w.shape) for w in weights)

    per_token, per_token_width = 0, 0  # FLOPs per real token: fixed, and x padded width
    for layer in getattr(backbone, "transformer_layers", []):
        size = count(layer.weights)
        own = count(w for w in layer.weights if id(w) in trained)
        qkv = count(w for w in layer.weights if {"query", "key", "value"} & set(w.path.split("/")))
        per_token += 2 * size + 2 * own
        per_token_width += 4 * hidden
        if below or own:  # the backward pass runs through this layer
            per_token += 2 * (size if below else size - qkv)
            per_token_width += 8 * hidden
        below = below or own > 0

    def flops(real_tokens: int, width: int) -> float:
        return (per_token + per_token_width * width) * real_tokens

    return flops


def measure(args, overrides) -> list[dict]:
    """tfsft in this process: the input pipeline, training steps, prediction."""
    from tfsft import pipeline, quiet, training, workflow

    quiet.import_tensorflow_quietly()
    task, _, cfg = workflow.load_task_and_config(args.task, args.config, overrides)
    splits = workflow.read_splits(task, cfg)
    prepared = workflow.prepare(task, cfg, splits)
    model, t, enc, strategy = prepared.model, cfg.train, prepared.encoded, prepared.strategy
    targets = workflow.model_targets(task, cfg, enc["train"], splits.targets["train"])
    batch = t.global_batch_size // t.grad_accum_steps
    workflow.compile_model(task, cfg, model, 10_000, strategy)
    ds = pipeline.train_dataset(enc["train"], targets, None, batch, t.seed,
                                cfg.data.bucket_by_length, static=cfg.data.static_shapes,
                                max_tokens=cfg.data.max_batch_tokens)
    base = {"tool": "tfsft", "task": args.task, "config": args.config, "overrides": overrides,
            "precision": t.precision, "batch": batch, "eval_batch": t.eval_batch_size,
            "pid": os.getpid()}
    out = []

    # training with tfsft's own step (training.make_train_step, what `fit` runs): first
    # step (time since process start), warm-up, then timed steps. The step pulls its
    # batches from `it`; `shadow` replays the same (deterministic) order for token counts.
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
        metrics = task.metrics(cfg.task)
    step = training.make_train_step(model, model.optimizer, task.loss(cfg.task, 0.0), metrics,
                                    strategy, t.clip_norm, t.jit_compile)
    it = iter(strategy.experimental_distribute_dataset(ds.repeat()))
    shadow = iter(ds.repeat())
    next(shadow)
    float(step(it, 1)[0])
    first_step = process_age()
    for _ in range(args.warmup - 1):
        next(shadow)
        float(step(it, 1)[0])
    flops = model_flops(prepared.backbone)
    real = padded = examples = 0
    total_flops = elapsed = 0.0
    for _ in range(args.steps):
        x, _y = next(shadow)
        mask = x["padding_mask"].numpy()
        t0 = time.perf_counter()
        float(step(it, 1)[0])
        elapsed += time.perf_counter() - t0
        real += int(mask.sum())
        padded += int(mask.size)
        examples += mask.shape[0]
        total_flops += flops(int(mask.sum()), mask.shape[1])
    out.append({**base, "what": "train", "examples_per_s": examples / elapsed,
                "real_tokens_per_s": real / elapsed, "padded_tokens_per_s": padded / elapsed,
                "padding_share": 1 - real / padded, "model_flops_per_s": total_flops / elapsed,
                "time_to_first_step_s": first_step})

    # the input pipeline alone (after training: `fit` does not run it before its first step)
    start, n = time.perf_counter(), 0
    for i, (x, _y) in enumerate(ds.repeat()):
        n += int(x["padding_mask"].shape[0])
        if i + 1 >= args.steps + args.warmup:
            break
    out.append({**base, "what": "pipeline", "examples_per_s": n / (time.perf_counter() - start)})

    # prediction of the validation split as `evaluate`/`predict` run it (batched by
    # length, results in file order): one untimed pass (tracing), then a timed one
    val = enc["validation"]
    workflow.predict_logits(model, val, t.eval_batch_size)
    t0 = time.perf_counter()
    workflow.predict_logits(model, val, t.eval_batch_size)
    dt = time.perf_counter() - t0
    real = int(val.lengths.sum())
    out.append({**base, "what": "predict", "examples_per_s": len(val) / dt,
                "real_tokens_per_s": real / dt})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in out:
        row["peak_rss_mb"] = rss
    return out


# Runs every repeat's processes, tfsft's and the peer's. Started before TensorFlow is
# imported: a process forked from this one once it holds TensorFlow would inherit its peak
# RSS (Linux counts the parent's pages in a forked child's ru_maxrss).
LAUNCHER = """
import json, subprocess, sys
for line in sys.stdin:
    r = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps([r.returncode, r.stdout, r.stderr[-3000:]]), flush=True)
"""


def start_launcher():
    return subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def peer(args, cfg, launcher, mode: str, prec: str, padding: str) -> dict:
    """One run of hf_peer.py (its own process and venv) on the same rows and batch size."""
    d = cfg.data
    cmd = [args.peer, str(PEER), mode, "--precision", prec, "--padding", padding,
           "--max-length", str(d.max_length)]
    if mode == "train":
        cmd += ["--data", d.train, "--batch", str(cfg.train.global_batch_size),
                "--warmup-steps", str(args.warmup), "--steps", str(args.steps)]
        if d.limit:
            cmd += ["--limit", str(d.limit)]
    else:
        cmd += ["--data", d.validation, "--batch", str(cfg.train.eval_batch_size)]
    row = launch(launcher, cmd, "peer")[-1]
    return {**row, "tool": "peer", "what": mode, "precision": f"{prec} {padding}"}


def peer_window_error(train: str, limit: int, batch: int, warmup: int,
                      steps: int) -> str | None:
    """Why hf_peer.py cannot time `steps` batches after `warmup` on these rows, or None.
    It makes one pass over the rows (no repeat): asked for more batches than they fill, it
    would time fewer batches than tfsft does, or none and fail with a ZeroDivisionError."""
    if not Path(train).is_file():
        return f"the peer reads a TSV file; data.train is {train!r}, not a file"
    with open(train, encoding="utf-8") as f:
        total = sum(1 for _ in f) - 1  # a header line, then a row a line (as hf_peer reads)
    rows = min(total, limit) if limit else total
    if warmup + steps <= -(-rows // batch):
        return None
    need = (warmup + steps) * batch
    fix = (f"set data.limit={need} or more, or lower" if need <= total
           else f"{train} has {total} rows: lower")
    return (f"the peer (hf_peer.py) makes one pass over its rows, and {rows} rows fill "
            f"{-(-rows // batch)} batches of {batch}, fewer than --warmup {warmup} + --steps "
            f"{steps}: {fix} --warmup or --steps")


def ours(args, launcher) -> list[dict]:
    """One repeat of measure() in a process of its own, like the peer's: every repeat
    counts its own imports in the time to first step, and its own peak RSS (in one process,
    repeats grew it: 2,576, 2,986, 3,258 MB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), args.task, *args.overrides,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--one-repeat"]
    for path in args.config:
        cmd += ["--config", path]
    return launch(launcher, cmd, "tfsft")


def launch(launcher, cmd: list[str], name: str) -> list[dict]:
    """Run `cmd` from the launcher; its JSON lines on stdout."""
    launcher.stdin.write(json.dumps(cmd) + "\n")
    launcher.stdin.flush()
    code, out, err = json.loads(launcher.stdout.readline())
    rows = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    if code or not rows:
        raise SystemExit(f"{name} failed ({' '.join(cmd)}):\n{err}")
    return rows


def table(rows: list[dict], peaks: dict) -> str:
    lines = [f"{'tool':<6} {'what':<9} {'precision':<16} {'ex/s median [min, max]':<26} "
             f"{'real tok/s':>10} {'padding':>8} {'MFU bf16':>9} {'MFU fp32':>9} {'RSS MB':>7}"]
    keys = []
    for r in rows:
        if (r["tool"], r["what"], r["precision"]) not in keys:
            keys.append((r["tool"], r["what"], r["precision"]))
    for tool, what, prec in keys:
        group = [r for r in rows if (r["tool"], r["what"], r["precision"]) == (tool, what, prec)]
        eps = [r["examples_per_s"] for r in group]
        tok = statistics.median(r.get("real_tokens_per_s", 0) for r in group)
        pad = [r["padding_share"] for r in group if "padding_share" in r]
        mf = statistics.median(r.get("model_flops_per_s", 0) for r in group)
        mfu = (f"{100 * mf / peaks['bfloat16']:>8.1f}% {100 * mf / peaks['float32']:>8.1f}%"
               if mf else f"{'':>9} {'':>9}")
        rss = max(r.get("peak_rss_mb", 0) for r in group)  # the highest repeat's
        span = f"{statistics.median(eps):.1f} [{min(eps):.1f}, {max(eps):.1f}]"
        lines.append(f"{tool:<6} {what:<9} {prec:<16} {span:<26} {tok:>10.0f} "
                     f"{f'{statistics.median(pad):.1%}' if pad else '':>8} {mfu} {rss:>7.0f}")
    for what in ("train", "predict"):
        ours = [r["examples_per_s"] for r in rows if r["tool"] == "tfsft" and r["what"] == what]
        best = {}
        for r in rows:
            if r["tool"] == "peer" and r["what"] == what:
                best.setdefault(r["precision"], []).append(r["examples_per_s"])
        if ours and best:
            name, vals = max(best.items(), key=lambda kv: statistics.median(kv[1]))
            lines.append(f"{what}: tfsft {statistics.median(ours):.1f} ex/s = "
                         f"{statistics.median(ours) / statistics.median(vals):.2f}x the peer's "
                         f"best ({name}, {statistics.median(vals):.1f} ex/s), medians")
    first = [r["time_to_first_step_s"] for r in rows if "time_to_first_step_s" in r]
    if first:
        lines.append(f"time to first training step: {statistics.median(first):.1f} s "
                     f"[{min(first):.1f}, {max(first):.1f}]")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--steps", type=int, default=40, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--peer", metavar="PYTHON",
                    help="python of hf_peer.py's venv: also run the peer, alternating")
    ap.add_argument("--peer-configs", default=",".join(f"{p}:{pad}" for p, pad in PEER_TRAIN),
                    help="the peer's training configurations, precision:padding, "
                         "comma-separated (default: all four); its prediction runs in the "
                         "precisions named here, by length")
    ap.add_argument("--one-repeat", action="store_true",
                    help=argparse.SUPPRESS)  # internal: one repeat of tfsft, JSON lines
    args = ap.parse_intermixed_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.one_repeat:
        for row in measure(args, list(args.overrides)):
            print(json.dumps(row), flush=True)
        return 0
    launcher = start_launcher()
    peer_train = [tuple(c.split(":")) for c in args.peer_configs.split(",")]
    # a precision left out of training is left out of prediction too (bf16 on a CPU without
    # AVX-512 runs emulated: one of the peer's training repeats took over 18 minutes)
    peer_predict = [(p, pad) for p, pad in PEER_PREDICT if p in {c[0] for c in peer_train}]
    from tfsft import precision, quiet, workflow

    quiet.import_tensorflow_quietly()
    cfg = workflow.load_task_and_config(args.task, args.config, args.overrides)[2]
    if args.peer and not PEER.exists():
        raise SystemExit(f"{PEER} not found: the peer needs ../shared beside the checkout")
    if args.peer:
        problem = peer_window_error(cfg.data.train, cfg.data.limit, cfg.train.global_batch_size,
                                    args.warmup, args.steps)
        if problem:
            raise SystemExit(f"bench.py: {problem}")
    rows = []

    def emit(new):
        for row in new:
            print(json.dumps(row), flush=True)
        rows.extend(new)

    for _ in range(args.repeat):
        emit(ours(args, launcher))
        if args.peer:
            emit([peer(args, cfg, launcher, "train", p, pad) for p, pad in peer_train])
            emit([peer(args, cfg, launcher, "predict", p, pad) for p, pad in peer_predict])
    precision.use_graph_pass("float32")  # the peaks are of plain float32/bfloat16 matmuls
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    print(json.dumps({"what": "matmul_peak", "flops_per_s": peaks}), flush=True)
    for row in rows:
        if "model_flops_per_s" in row:
            row["mfu_bf16"] = row["model_flops_per_s"] / peaks["bfloat16"]
            row["mfu_fp32"] = row["model_flops_per_s"] / peaks["float32"]
            print(json.dumps({"what": "mfu", "precision": row["precision"],
                              "mfu_bf16": row["mfu_bf16"], "mfu_fp32": row["mfu_fp32"]}))
    print(f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 "
          f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s", file=sys.stderr)
    print(table(rows, peaks), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
