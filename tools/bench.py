"""Throughput benchmark of a tfsft task config: training and prediction examples/s, real and
padded tokens/s, padding share, model FLOPs utilisation against the matmul peak measured
here (float32 and bfloat16), time to the first training step, input-pipeline rate alone,
and peak RSS. One JSON line per measurement, then a table (median, min, max of --repeat).

    python tools/bench.py tasks/sentiment --config configs/sst2.yaml data.limit=8000
    python tools/bench.py tasks/sentiment --config configs/sst2.yaml data.limit=8000 \\
        train.precision=mixed_bfloat16 --repeat 3

Run it alone on the machine (2 cores: anything else running changes the figures). The
peer to compare with is ../shared/bench/hf_peer.py (same data, batch size and model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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


def flops_per_batch(backbone, real_tokens: int, batch: int, width: int) -> float:
    """Training FLOPs of one batch counted on real tokens: 6 x non-embedding parameters
    per token (forward + backward) plus attention scores and values (12 x layers x width
    x hidden per token)."""
    params = sum(int(w.numpy().size) for w in backbone.weights)
    embed = sum(int(w.numpy().size) for w in backbone.weights
                if "embedding" in w.path and "layer_norm" not in w.path)
    layers = getattr(backbone, "num_layers", 0)
    hidden = getattr(backbone, "hidden_dim", 0)
    return 6 * (params - embed) * real_tokens + 12 * layers * width * hidden * real_tokens


def measure(args, cfg_overrides) -> list[dict]:
    from tfsft import pipeline, precision, quiet, workflow

    quiet.import_tensorflow_quietly()
    task, _, cfg = workflow.load_task_and_config(args.task, args.config, cfg_overrides)
    splits = workflow.read_splits(task, cfg)
    prepared = workflow.prepare(task, cfg, splits)
    model, t = prepared.model, cfg.train
    enc = prepared.encoded
    targets = workflow.model_targets(task, cfg, enc["train"], splits.targets["train"])
    batch = t.global_batch_size // t.grad_accum_steps
    workflow.compile_model(task, cfg, model, 10_000, prepared.strategy)
    ds = pipeline.train_dataset(enc["train"], targets, None, batch, t.seed,
                                cfg.data.bucket_by_length)
    policy = precision.resolve(t.precision)
    base = {"task": args.task, "config": args.config, "overrides": cfg_overrides,
            "precision": policy, "batch": batch, "bucket": cfg.data.bucket_by_length}
    out = []

    # the input pipeline alone
    start, n = time.perf_counter(), 0
    for i, (x, _y) in enumerate(ds):
        n += int(x["padding_mask"].shape[0])
        if i + 1 >= args.steps + args.warmup:
            break
    out.append({**base, "what": "pipeline", "examples_per_s": n / (time.perf_counter() - start)})

    # training with tfsft's own step (training.make_train_step, what `fit` runs): first
    # step (time since process start), warm-up, then timed steps. The step pulls its
    # batches from `it`; `shadow` replays the same (deterministic) order for token counts.
    from tfsft import training

    strategy = prepared.strategy
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
        metrics = task.metrics(cfg.task)
    step = training.make_train_step(model, model.optimizer, task.loss(cfg.task, 0.0), metrics,
                                    strategy, t.clip_norm)
    it = iter(strategy.experimental_distribute_dataset(ds.repeat()))
    shadow = iter(ds.repeat())
    next(shadow)
    float(step(it, 1)[0])
    first_step = process_age()
    for _ in range(args.warmup - 1):
        next(shadow)
        float(step(it, 1)[0])
    real = padded = examples = 0
    flops = 0.0
    elapsed = 0.0
    for _ in range(args.steps):
        x, _y = next(shadow)
        mask = x["padding_mask"].numpy()
        t0 = time.perf_counter()
        float(step(it, 1)[0])
        elapsed += time.perf_counter() - t0
        real += int(mask.sum())
        padded += int(mask.size)
        examples += mask.shape[0]
        flops += flops_per_batch(prepared.backbone, int(mask.sum()), mask.shape[0],
                                 mask.shape[1])
    out.append({**base, "what": "train", "examples_per_s": examples / elapsed,
                "real_tokens_per_s": real / elapsed, "padded_tokens_per_s": padded / elapsed,
                "padding_share": 1 - real / padded, "model_flops_per_s": flops / elapsed,
                "time_to_first_step_s": first_step})

    # prediction on the validation split, in file order
    eval_ds = pipeline.eval_dataset(enc["validation"], None, t.eval_batch_size)
    batches = list(eval_ds)
    model.predict_on_batch(batches[0])
    t0, n, real, padded = time.perf_counter(), 0, 0, 0
    for x in batches:
        model.predict_on_batch(x)
        mask = x["padding_mask"].numpy()
        n, real, padded = n + mask.shape[0], real + int(mask.sum()), padded + int(mask.size)
    dt = time.perf_counter() - t0
    out.append({**base, "what": "predict", "examples_per_s": n / dt,
                "real_tokens_per_s": real / dt, "padding_share": 1 - real / padded})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in out:
        row["peak_rss_mb"] = rss
    return out


def table(rows: list[dict], peaks: dict) -> str:
    lines = [f"{'what':<9} {'precision':<15} {'ex/s (median [min, max])':<28} "
             f"{'real tok/s':>10} {'padding':>8} {'MFU bf16':>9} {'MFU fp32':>9}"]
    keys = sorted({(r["what"], r["precision"]) for r in rows})
    for what, prec in keys:
        group = [r for r in rows if r["what"] == what and r["precision"] == prec]
        eps = [r["examples_per_s"] for r in group]
        tok = statistics.median(r.get("real_tokens_per_s", 0) for r in group)
        pad = statistics.median(r.get("padding_share", 0) for r in group)
        mf = statistics.median(r.get("model_flops_per_s", 0) for r in group)
        mfu = (f"{100 * mf / peaks['bfloat16']:>8.1f}% {100 * mf / peaks['float32']:>8.1f}%"
               if mf else f"{'':>9} {'':>9}")
        lines.append(f"{what:<9} {prec:<15} {statistics.median(eps):>8.1f} "
                     f"[{min(eps):.1f}, {max(eps):.1f}]{'':<8} {tok:>10.0f} {pad:>7.1%} {mfu}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--steps", type=int, default=40, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_intermixed_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfsft import quiet

    quiet.import_tensorflow_quietly()
    rows = []
    for _ in range(args.repeat):  # first, so time-to-first-step counts only tfsft's work
        rows.extend(measure(args, list(args.overrides)))
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    print(json.dumps({"what": "matmul_peak", "flops_per_s": peaks}), flush=True)
    for row in rows:
        if "model_flops_per_s" in row:
            row["mfu_bf16"] = row["model_flops_per_s"] / peaks["bfloat16"]
            row["mfu_fp32"] = row["model_flops_per_s"] / peaks["float32"]
        print(json.dumps(row), flush=True)
    print(f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 "
          f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s", file=sys.stderr)
    print(table(rows, peaks), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
