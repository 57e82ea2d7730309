"""Load generator for `tfsft serve`: requests/s and latency percentiles on loopback.

    python tools/bench_serve.py runs/sst2/export --batches 1,32 --requests 300 --seconds 60
    python tools/bench_serve.py runs/sst2/export --bfloat16   # the server's --bfloat16

Starts `python -m tfsft serve EXPORT` on a free loopback port, warms it up, then for each
batch size sends requests from `--clients` concurrent clients (each waits for its answer
before sending the next) until `--requests` are answered or `--seconds` have passed.
Texts are SST-2 validation sentences when ../shared/data is beside the checkout, else
generated sentences. Prints one JSON line per batch size, then a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sentiment" / "sst2" / "validation.tsv"


def texts() -> list[str]:
    if SST2.exists():
        lines = SST2.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[0] for line in lines if line.strip()]
    rng = random.Random(0)
    words = "the a film show was very good bad awful great dull and really it".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(500)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(export: str, port: int, max_batch: int, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tfsft", "serve", export, "--port",
                             str(port), "--name", "bench", "--max-batch", str(max_batch),
                             "--max-body-bytes", "10000000", *extra],
                            cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("the server did not start")
        if line.startswith("serving "):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc


def run(port: int, pool: list[str], batch: int, requests: int, seconds: float,
        clients: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < stop:
            with lock:
                if len(latencies) + errors[0] >= requests:
                    break
            body = json.dumps({"instances": rng.sample(pool, batch)}).encode()
            t = time.perf_counter()
            conn.request("POST", "/v1/models/bench:predict", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t
            with lock:
                if resp.status == 200:
                    latencies.append(dt)
                else:
                    errors[0] += 1
        conn.close()

    start_t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start_t
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"batch": batch, "clients": clients, "requests": len(latencies), "errors": errors[0],
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "examples_per_s": round(len(latencies) * batch / wall, 1),
            "p50_ms": round(1000 * q[49], 1), "p99_ms": round(1000 * q[98], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="export folder with saved_model/")
    ap.add_argument("--batches", default="1,32", help="instances per request (default 1,32)")
    ap.add_argument("--requests", type=int, default=300, help="per batch size (default 300)")
    ap.add_argument("--seconds", type=float, default=60, help="per batch size (default 60)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    ap.add_argument("--bfloat16", action="store_true", help="serve with --bfloat16")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    pool = texts()
    port = free_port()
    proc = start(args.export, port, max(batches), ["--bfloat16"] if args.bfloat16 else [])
    try:
        for batch in batches:  # warm-up: trace the shapes this batch size produces
            run(port, pool, batch, 10, 30, 1)
        results = [run(port, pool, b, args.requests, args.seconds, args.clients)
                   for b in batches]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for r in results:
        print(json.dumps(r))
    print(f"\n{'batch':>5} {'clients':>7} {'requests':>8} {'req/s':>8} {'ex/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r['batch']:>5} {r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>8} "
              f"{r['examples_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
