"""`tfsft serve EXPORT_DIR`: a small HTTP server speaking TF Serving's REST predict API.

    POST /v1/models/<name>:predict   {"instances": ["text", ...]}  (or [{"text": ...}, ...])
      -> {"predictions": [{"label": ..., "label_id": ..., "probabilities": [...]}, ...]}
    GET  /v1/models/<name>           model status, as TF Serving reports it

Binds to 127.0.0.1 by default. Requests are bounded (body bytes, instances per request,
characters per text); anything malformed gets a 400 with an `error` message, and the
server keeps serving. Requests that arrive while a batch runs are answered together by the
next one (`Batcher`), up to 64 texts.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from tfsft.errors import RunDirError, UserError

MAX_BODY_BYTES = 1_000_000
MAX_INSTANCES = 64
MAX_TEXT_CHARS = 20_000
BATCH_TEXTS = 64  # concurrent requests answered together, up to this many texts


class BadRequest(ValueError):
    pass


def saved_model_dir(folder: Path) -> Path | None:
    """The SavedModel of an export folder (or the folder itself if it is one), or None."""
    folder = Path(folder)
    for candidate in (folder / "saved_model", folder):
        if (candidate / "saved_model.pb").exists():
            return candidate
    return None


def load_export(folder: Path, bfloat16: bool = False):
    """(serving signature, label names) of an export folder with `saved_model/`.

    `bfloat16` turns on TensorFlow's oneDNN bfloat16 pass for this process before the
    signature first runs: its matmuls then run in bfloat16, as `fit` ran them on such CPUs
    (`precision.py`); the SavedModel itself stays float32."""
    folder = Path(folder)
    saved = saved_model_dir(folder)
    if saved is None:
        raise RunDirError(f"{folder} holds no SavedModel (saved_model/saved_model.pb); "
                          "make one with: tfsft export RUN --format saved_model")
    from tfsft import precision, quiet

    if bfloat16 and not precision.onednn_bf16_native():
        raise UserError("--bfloat16 needs a CPU with AVX-512 or AMX (avx512f or "
                        "avx_ne_convert in /proc/cpuinfo); here TensorFlow would emulate "
                        "bfloat16, slower than float32: serve without --bfloat16")
    quiet.import_tensorflow_quietly()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokeniser ops the graph uses

    if bfloat16:
        precision.use_graph_pass("onednn_bfloat16")

    signature = tf.saved_model.load(str(saved)).signatures["serving_default"]
    labels_path = (saved.parent if saved != folder else folder) / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else None
    return signature, labels


def predict_texts(signature, texts: list[str], labels: list[str] | None) -> list[dict]:
    """Rows of JSON-ready outputs for a batch of texts."""
    import tensorflow as tf

    outputs = signature(text=tf.constant(texts, dtype=tf.string))
    rows = [{} for _ in texts]
    for key, tensor in outputs.items():
        values = tensor.numpy()
        for row, value in zip(rows, values):
            if isinstance(value, bytes):
                row[key] = value.decode("utf-8")
            elif isinstance(value, np.ndarray):
                row[key] = [round(float(v), 6) if value.dtype.kind == "f" else int(v)
                            for v in value]
            else:
                row[key] = float(value) if np.asarray(value).dtype.kind == "f" else int(value)
    if labels:
        for row in rows:
            if "probabilities" in row:
                row["scores"] = dict(zip(labels, row["probabilities"]))
    return rows


def parse_instances(body: bytes, max_instances: int, max_chars: int) -> list[str]:
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    if not isinstance(request, dict) or "instances" not in request:
        raise BadRequest('expected a JSON object {"instances": ["text", ...]}')
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of strings')
    if len(instances) > max_instances:
        raise BadRequest(f"{len(instances)} instances: at most {max_instances} per request")
    texts = []
    for i, item in enumerate(instances):
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise BadRequest(f"instances[{i}] must be a string (or {{\"text\": string}}), "
                             f"got {type(item).__name__}")
        if len(item) > max_chars:
            raise BadRequest(f"instances[{i}] has {len(item)} characters: at most {max_chars}")
        texts.append(item)
    return texts


class Batcher:
    """One thread runs `run(texts) -> rows` for every request, one batch at a time; the
    requests that queued while a batch ran go together into the next (in arrival order,
    up to `max_texts` texts; a request is never split, and one over the limit runs
    alone). Nothing waits for a batch to fill: one client alone is answered as soon as its
    batch runs, concurrent clients share batches. Each batch is cut to its longest text and
    the padding is masked, so a text's outputs do not depend on its batch beyond rounding
    (float32: within 1e-6 on SST-2; `--bfloat16` rounds more). On 2 cores a batch of 8
    SST-2 texts takes ~28 ms against ~6.5 ms for one (docs/performance.md). Whatever goes
    wrong in a batch is raised in each of its requests, and the thread goes on."""

    def __init__(self, run, max_texts: int):
        self._run, self._max = run, max_texts
        self._queue: deque[tuple[list[str], Future]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        threading.Thread(target=self._loop, name="tfsft-batcher", daemon=True).start()

    def __call__(self, texts: list[str]) -> list[dict]:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append((texts, future))
            self._ready.notify()
        return future.result()

    def pending(self) -> int:
        """Requests waiting for a batch."""
        with self._ready:
            return len(self._queue)

    def close(self) -> None:
        """Stops the thread after its batch; requests still queued get an error."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _next(self) -> list[tuple[list[str], Future]]:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                for _, future in self._queue:
                    future.set_exception(RuntimeError("the server is shutting down"))
                self._queue.clear()
                return []
            taken, n = [], 0
            while self._queue and (not taken or n + len(self._queue[0][0]) <= self._max):
                taken.append(self._queue.popleft())
                n += len(taken[-1][0])
            return taken

    def _loop(self) -> None:
        while taken := self._next():
            try:
                batch = [text for texts, _ in taken for text in texts]
                rows = self._run(batch)
                if len(rows) != len(batch):
                    raise RuntimeError(f"the model answered {len(rows)} rows for "
                                       f"{len(batch)} texts")
                start = 0
                for texts, future in taken:
                    future.set_result(rows[start:start + len(texts)])
                    start += len(texts)
            except BaseException as e:  # every request of the batch gets the error
                for _, future in taken:
                    if not future.done():
                        future.set_exception(e)


class _Server(ThreadingHTTPServer):
    batcher: Batcher | None = None

    def server_close(self) -> None:
        super().server_close()
        if self.batcher is not None:
            self.batcher.close()


def make_server(folder: Path, host: str = "127.0.0.1", port: int = 8501, name: str = "",
                max_body: int = MAX_BODY_BYTES, max_instances: int = MAX_INSTANCES,
                max_chars: int = MAX_TEXT_CHARS, bfloat16: bool = False) -> ThreadingHTTPServer:
    signature, labels = load_export(folder, bfloat16)
    name = name or Path(folder).resolve().name
    predict_texts(signature, ["warm up"], labels)  # trace and load before the first request
    batcher = Batcher(lambda texts: predict_texts(signature, texts, labels), BATCH_TEXTS)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # A response is two writes (headers, body). With Nagle's algorithm on, the body
        # waits for the client's delayed ACK of the headers on a kept-alive connection:
        # ~40 ms added to every request (docs/performance.md).
        disable_nagle_algorithm = True

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # one line per request on stderr
            sys.stderr.write(f"[tfsft serve] {self.address_string()} {fmt % args}\n")

        def do_GET(self):
            if self.path.rstrip("/") != f"/v1/models/{name}":
                return self._send(404, {"error": f"unknown path {self.path}; the model is "
                                                 f"/v1/models/{name}"})
            self._send(200, {"model_version_status": [{
                "version": "1", "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]})

        def do_POST(self):
            if self.path != f"/v1/models/{name}:predict":
                self._drain()
                return self._send(404, {"error": f"unknown path {self.path}; POST to "
                                                 f"/v1/models/{name}:predict"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                return self._send(400, {"error": "a Content-Length header is required"})
            if length > max_body:
                self.close_connection = True  # do not read an oversized body
                return self._send(400, {"error": f"body of {length} bytes: at most "
                                                 f"{max_body}"})
            body = self.rfile.read(length)
            try:
                texts = parse_instances(body, max_instances, max_chars)
            except BadRequest as e:
                return self._send(400, {"error": str(e)})
            try:
                rows = batcher(texts)
            except Exception as e:  # keep serving; report what failed
                return self._send(500, {"error": f"prediction failed: {type(e).__name__}: {e}"})
            self._send(200, {"predictions": rows})

        def _drain(self):
            try:
                length = min(int(self.headers.get("Content-Length", "0")), max_body)
            except ValueError:
                length = 0
            if length:
                self.rfile.read(length)

    try:
        server = _Server((host, port), Handler)
    except OSError as e:
        batcher.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another "
                        "--port") from None
    server.daemon_threads = True
    server.batcher = batcher
    server.model_name = name
    return server
