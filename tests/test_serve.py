"""SavedModel export (raw strings in) and the HTTP server, on tiny backbones."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import write_sentiment_tsv

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TEXTS = ["the film was good and great", "an awful and dull show", "fine", "bad bad bad",
         "a very nice food show, really superb!", "no known words here at all", ""]


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tfsft", *map(str, args)], cwd=REPO, env=ENV,
                          input=stdin, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=["tiny_bert", "tiny_gpt2"])
def exported(request, tmp_path_factory):
    backbone = request.getfixturevalue(request.param)
    tmp = tmp_path_factory.mktemp(f"serve_{request.param}")
    train = write_sentiment_tsv(tmp / "train.tsv", 64, 1)
    dev = write_sentiment_tsv(tmp / "dev.tsv", 24, 2)
    run = tmp / "run"
    r = cli("fit", "tasks/sentiment", f"model.backbone={backbone}", f"data.train={train}",
            f"data.validation={dev}", "data.max_length=16", "train.epochs=6",
            "train.global_batch_size=8", "train.learning_rate=2e-2", "model.dropout=0.0",
            # float32: `predict` computes in the run's precision, the SavedModel in float32
            "train.precision=float32",
            # mean pooling: CLS on this random tiny BERT can sit on the 0.693 plateau
            *(["task.pooling=mean"] if request.param == "tiny_bert" else []),
            "--output", run, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("export", run, "--format", "saved_model")
    assert r.returncode == 0, r.stderr[-3000:]
    return run, run / "export"


def test_saved_model_in_a_fresh_process_without_tfsft_matches_predict(exported):
    run, export = exported
    code = (
        "import json, sys\n"
        "import tensorflow as tf, tensorflow_text\n"
        f"m = tf.saved_model.load({str(export / 'saved_model')!r})\n"
        "out = m.signatures['serving_default'](text=tf.constant(json.loads(sys.argv[1])))\n"
        "assert 'tfsft' not in sys.modules\n"
        "print(json.dumps({k: v.numpy().tolist() if v.dtype != tf.string else "
        "[x.decode() for x in v.numpy()] for k, v in out.items()}))\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], env=ENV,
                       capture_output=True, text=True, timeout=600, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads(r.stdout.strip().splitlines()[-1])
    p = cli("predict", run, stdin="\n".join(t or " " for t in TEXTS[:-1]) + "\n")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    labels = json.loads((export / "labels.json").read_text())
    assert len(rows) == len(TEXTS) - 1
    for i, row in enumerate(rows):
        assert saved["label"][i] == row["label"]
        assert saved["label_id"][i] == labels.index(row["label"])
        for name, prob in zip(labels, saved["probabilities"][i]):
            assert prob == pytest.approx(row["scores"][name], abs=1e-5)
    assert len(saved["label"]) == len(TEXTS)  # an empty string is served too
    assert len(set(saved["label"])) == 2  # a trained model: both labels occur


def test_predict_accepts_an_export_and_the_model_card_is_complete(exported):
    run, export = exported
    p = cli("predict", export, stdin="the film was good\nawful show\n")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert [set(r) >= {"text", "label", "label_id", "probabilities", "scores"} for r in rows] \
        == [True, True]
    card = (export / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    for section in ["## Labels", "## Training data", "## Evaluation", "## Hyperparameters",
                    "## How it was made", "## Intended use and limits", "tensorflow_text"]:
        assert section in card, section
    assert f"{metrics['validation']['accuracy']:.4f}" in card
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["train"]["sha256"] in card


def test_predict_on_an_export_batches_by_length_and_keeps_file_order(exported, tmp_path):
    from tfsft import serve, workflow

    _, export = exported
    texts = [t for t in TEXTS if t]
    assert sorted(texts, key=len) != texts  # the batches are not the file's order
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    rows = list(workflow.predict_export(export, str(path), batch_size=2))
    assert [r["text"] for r in rows] == texts
    signature, labels = serve.load_export(export)
    for text, row in zip(texts, rows):  # each text alone: the same outputs
        alone = serve.predict_texts(signature, [text], labels)[0]
        assert row["label"] == alone["label"]
        assert row["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported):
    _, export = exported
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tfsft", "serve", str(export), "--port",
                             str(port), "--name", "toy", "--max-body-bytes", "2000",
                             "--max-batch", "8"], cwd=REPO, env=ENV,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        line = proc.stderr.readline()
        assert line and time.time() < deadline, "server did not start"
        if line.startswith("serving "):
            assert "http://127.0.0.1:" in line  # loopback by default
            break
    yield port
    proc.terminate()
    proc.wait(timeout=60)


def request(port, method, path, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


def test_server_answers_like_tf_serving_and_survives_bad_requests(server, exported):
    port = server
    status, data = request(port, "GET", "/v1/models/toy")
    assert status == 200 and data["model_version_status"][0]["state"] == "AVAILABLE"
    good = json.dumps({"instances": ["the film was good", {"text": "awful show"}]}).encode()
    status, data = request(port, "POST", "/v1/models/toy:predict", good)
    assert status == 200 and len(data["predictions"]) == 2
    first = data["predictions"]
    bad = {
        "malformed JSON": b'{"instances": ["unclosed',
        "not UTF-8": b'{"instances": ["\xff"]}',
        "wrong field": json.dumps({"inputs": ["x"]}).encode(),
        "wrong type": json.dumps({"instances": [1, 2]}).encode(),
        "nested list": json.dumps({"instances": [["a"]]}).encode(),
        "empty instances": json.dumps({"instances": []}).encode(),
        "too many": json.dumps({"instances": ["x"] * 9}).encode(),
        "over-limit body": json.dumps({"instances": ["x" * 3000]}).encode(),
        "not an object": b"[1, 2, 3]",
    }
    for what, body in bad.items():
        status, data = request(port, "POST", "/v1/models/toy:predict", body)
        assert status == 400 and data["error"], what
        status, data = request(port, "POST", "/v1/models/toy:predict", good)  # still serving
        assert status == 200 and data["predictions"] == first, what
    status, _ = request(port, "POST", "/v1/models/other:predict", good)
    assert status == 404


def test_concurrent_requests_each_get_their_own_answers(server):
    port = server
    bodies = [[t] for t in TEXTS] + [TEXTS[:3], TEXTS[2:5]]
    alone = []
    for texts in bodies:  # one at a time: a batch of its own each
        status, data = request(port, "POST", "/v1/models/toy:predict",
                               json.dumps({"instances": texts}).encode())
        assert status == 200
        alone.append(data["predictions"])

    def send(i):
        status, data = request(port, "POST", "/v1/models/toy:predict",
                               json.dumps({"instances": bodies[i]}).encode())
        together[i] = data["predictions"] if status == 200 else data
    for _ in range(3):  # all at once, in batches the server makes of whatever queued
        together = [None] * len(bodies)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for th in threads:
            th.start()
        _join(threads)
        for i, (got, want) in enumerate(zip(together, alone)):
            assert got is not None, i
            assert [r["label"] for r in got] == [r["label"] for r in want], i
            for g, w in zip(got, want):
                assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)


def _until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _join(threads):
    for th in threads:
        th.join(60)
        assert not th.is_alive()


def _held_first_batch(batcher_run):
    """A `run` for a Batcher whose first batch waits for `release`, so that requests
    queue behind it; `calls` records each batch's texts."""
    release, calls = threading.Event(), []

    def run(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            assert release.wait(30)
        return batcher_run(texts)
    return run, release, calls


def _queue_behind_first(batcher, calls, ask, first, later):
    """Starts `first`, waits until its batch runs, then queues each of `later` in order."""
    threads = [threading.Thread(target=ask, args=first)]
    threads[0].start()
    _until(lambda: calls)
    for args in later:
        threads.append(threading.Thread(target=ask, args=args))
        threads[-1].start()
        _until(lambda: batcher.pending() == len(threads) - 1)
    return threads


def test_batcher_answers_what_queued_during_a_batch_in_the_next_one():
    from tfsft import serve

    run, release, calls = _held_first_batch(
        lambda texts: [{"text": t, "n": len(texts)} for t in texts])
    batcher = serve.Batcher(run, max_texts=4)
    answers = {}

    def ask(name, texts):
        answers[name] = batcher(texts)
    later = [("b", ["b1", "b2"]), ("c", ["c1"]), ("d", ["d1", "d2", "d3"]), ("e", ["e1"]),
             ("f", ["f1", "f2", "f3", "f4", "f5"])]
    threads = _queue_behind_first(batcher, calls, ask, ("a", ["a1"]), later)
    release.set()
    _join(threads)
    # in arrival order, at most 4 texts, no request split; one over the limit alone
    assert calls == [["a1"], ["b1", "b2", "c1"], ["d1", "d2", "d3", "e1"],
                     ["f1", "f2", "f3", "f4", "f5"]]
    for name, texts in [("a", ["a1"]), *later]:
        assert [r["text"] for r in answers[name]] == texts
    assert answers["c"][0]["n"] == 3 and answers["e"][0]["n"] == 4


def test_batcher_gives_a_failed_batch_error_to_each_request_and_goes_on():
    from tfsft import serve

    def model(texts):
        if "boom" in texts:
            raise RuntimeError("the model failed")
        if "short" in texts:
            return [{"text": "one row only"}]
        return [{"text": t} for t in texts]

    run, release, calls = _held_first_batch(model)
    batcher = serve.Batcher(run, max_texts=8)
    answers = {}

    def ask(name, texts):
        try:
            answers[name] = batcher(texts)
        except RuntimeError as e:
            answers[name] = str(e)
    threads = _queue_behind_first(batcher, calls, ask, ("first", ["ok"]),
                                  [("boom", ["boom"]), ("beside", ["x", "y"])])
    release.set()
    _join(threads)
    assert calls == [["ok"], ["boom", "x", "y"]]
    assert answers == {"first": [{"text": "ok"}], "boom": "the model failed",
                       "beside": "the model failed"}
    with pytest.raises(RuntimeError, match="1 rows for 2 texts"):
        batcher(["short", "z"])  # rows that do not match the texts are an error, not a 200
    assert batcher(["fine"]) == [{"text": "fine"}]  # the batcher goes on
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher(["late"])


def test_bfloat16_serving_computes_in_bfloat16_or_says_why_not(exported):
    # the oneDNN pass is a process-wide setting: each precision in a process of its own
    from tfsft import precision

    _, export = exported
    code = ("import json, sys\nfrom pathlib import Path\nfrom tfsft import errors, serve\n"
            "try:\n    sig, labels = serve.load_export(Path(sys.argv[1]), sys.argv[3] == '1')\n"
            "except errors.UserError as e:\n    print(json.dumps({'error': str(e)}))\n"
            "    sys.exit(0)\n"
            "rows = serve.predict_texts(sig, json.loads(sys.argv[2]), labels)\n"
            "print(json.dumps([r['probabilities'] for r in rows]))\n")

    def probabilities(bfloat16: bool):
        r = subprocess.run([sys.executable, "-c", code, str(export), json.dumps(TEXTS),
                            str(int(bfloat16))], env=ENV, cwd=REPO, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    got = probabilities(True)
    if not precision.onednn_bf16_native():
        assert "--bfloat16 needs a CPU with AVX-512" in got["error"]
        return
    exact = probabilities(False)  # float32, as exported
    diffs = [abs(a - b) for g, e in zip(got, exact) for a, b in zip(g, e)]
    assert 0 < max(diffs) < 0.05  # bfloat16 matmuls: close to float32, not equal to it


def test_server_answers_without_waiting_for_delayed_acks(exported):
    # Nagle's algorithm would hold each response's body until the client acknowledged its
    # headers (~40 ms a request on a kept-alive connection)
    import socketserver

    from tfsft import serve

    server = serve.make_server(exported[1], port=0)
    try:
        handler = server.RequestHandlerClass
        assert issubclass(handler, socketserver.StreamRequestHandler)
        assert handler.disable_nagle_algorithm is True  # TCP_NODELAY on each connection
    finally:
        server.server_close()


def test_saved_model_stores_each_weight_once(exported):
    """keras-team/keras#23553: tracking the model in an ExportArchive stores every weight
    twice; the export must hold exactly the model's parameters."""
    import keras_hub
    import numpy as np
    import tensorflow as tf

    run, export = exported
    reader = tf.train.load_checkpoint(str(export / "saved_model" / "variables" / "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    stored = sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items()
                 if dtypes[key].is_floating)
    head = np.load(run / "model" / "head.npz", allow_pickle=False)
    params = keras_hub.models.Backbone.from_preset(str(run / "model")).count_params() + sum(
        head[k].size for k in head.files)
    assert stored == params


@pytest.mark.parametrize("side", ["right", "left"])
def test_saved_model_runs_each_request_at_its_longest_row(tiny_bert, tmp_path, side):
    # a stand-in model that returns the width it was given: right padding is cut to the
    # request's longest row (max_length 16 here); left padding is left whole
    import tensorflow as tf

    from tfsft import backbones, export

    _, pre = backbones.load(str(tiny_bert), 16)
    pre(tf.constant(["build"]))
    pre.packer.padding_side = side

    def width(features, training=False):
        ids = features["token_ids"]
        return tf.fill([tf.shape(ids)[0], 1], tf.cast(tf.shape(ids)[1], tf.float32))

    folder = export.export_saved_model(width, pre, lambda x: {"width": x}, tmp_path / "sm")
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    short, longer = ["good"], ["good", "the film was very good and really nice"]
    lengths = [len(pre.tokenizer(t)) + 2 for t in longer]
    assert lengths[0] < lengths[1] < 16
    for texts, expected in ((short, lengths[0]), (longer, lengths[1])):
        got = serve(text=tf.constant(texts))["width"].numpy()[:, 0].tolist()
        assert got == [expected if side == "right" else 16] * len(texts)


@pytest.mark.parametrize("args, said", [
    (["--port", "99999"], "--port 99999 must be in 0-65535"),
    (["--max-batch", "0"], "--max-batch and --max-body-bytes must be >= 1 (got 0 and")])
def test_serve_refuses_impossible_settings_before_loading(tmp_path, capsys, args, said):
    from tfsft import cli

    assert cli.main(["serve", str(tmp_path / "no-export"), *args]) == 2
    assert said in capsys.readouterr().err
