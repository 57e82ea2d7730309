"""The NER task: CoNLL reading, tag schemes, alignment, seqeval agreement, decoding with
offsets, constrained decoding, and a run through the CLI on tiny BERT and GPT-2."""

from __future__ import annotations

import doctest
import importlib
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tfsft import data, tasks
from tfsft.errors import DataError

from conftest import FILLER, NEGATIVE, POSITIVE
from test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
TASK = tasks.load_task(REPO / "tasks" / "ner")
PKG = type(TASK).__module__.rsplit(".", 1)[0]
tags = importlib.import_module(PKG + ".tags")
align = importlib.import_module(PKG + ".align")
ner = importlib.import_module(PKG + ".task")


def conll_rows(tmp_path: Path, text: str, name: str = "t.conll") -> data.Rows:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return data.read_rows(str(path), "conll")


def test_tags_module_examples():
    assert doctest.testmod(tags).failed == 0


def test_conll_reader_sentences_docstart_extra_columns_and_lines(tmp_path):
    rows = conll_rows(tmp_path, "-DOCSTART- -X- O O\n\nAnna NNP B-PER\nsang VBD O\n\n\n"
                                "in IN O\nParis NNP B-LOC\n")
    assert rows.fields == [{"columns": [["Anna", "NNP", "B-PER"], ["sang", "VBD", "O"]]},
                           {"columns": [["in", "IN", "O"], ["Paris", "NNP", "B-LOC"]]}]
    assert rows.where == ["t.conll:3", "t.conll:7"]
    ex = TASK.examples(TASK.config_class(), rows, True)
    assert ex.words == [["Anna", "sang"], ["in", "Paris"]]
    assert ex.labels == [["B-PER", "O"], ["O", "B-LOC"]]
    with pytest.raises(DataError) as e:  # column 1 holds part-of-speech tags
        TASK.examples(TASK.config_class(tag_column=1), rows, True)
    assert "t.conll:3: tag 'NNP' is not an IOB2 tag" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("Anna B-PER\nsang\n", "t.conll:2: expected 2 whitespace-separated columns"),
    ("Anna NNP B-PER\nsang O\n", "t.conll:2: expected 3 whitespace-separated columns"),
    ("Anna\n", "t.conll:1: expected at least 2 whitespace-separated columns"),
    ("\n\n", "is empty"),
    ("-DOCSTART- O\n\n", "holds no sentences"),
])
def test_malformed_conll_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError) as e:
        conll_rows(tmp_path, text)
    assert message in str(e.value)


def test_unknown_tag_with_a_fixed_tag_set_and_bad_scheme_tags(tmp_path):
    rows = conll_rows(tmp_path, "Anna B-PER\nsang O\n\nin O\nParis B-CITY\n")
    cfg = TASK.config_class(tags=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
    with pytest.raises(DataError) as e:
        TASK.examples(cfg, rows, True)
    assert "t.conll:5: tag 'B-CITY' is not in `task.tags`" in str(e.value)
    bad = conll_rows(tmp_path, "Anna S-PER\n", "b.conll")
    with pytest.raises(DataError) as e:
        TASK.examples(TASK.config_class(), bad, True)
    assert "b.conll:1: tag 'S-PER' is not an IOB2 tag" in str(e.value)
    assert "`task.scheme`" in str(e.value)


def test_schemes_convert_to_iob2():
    assert tags.to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob1") == [
        "B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert tags.to_iob2(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "S-LOC"], "bioes") == [
        "B-PER", "B-LOC", "I-LOC", "I-LOC", "O", "B-LOC"]


def test_invalid_transitions_are_repaired_or_rejected_with_file_and_line(tmp_path, capsys):
    rows = conll_rows(tmp_path, "the O\nAnna I-PER\nin O\nParis B-LOC\nI-PER-x I-PER\n")
    repaired = TASK.examples(TASK.config_class(), rows, True)
    assert repaired.labels == [["O", "B-PER", "O", "B-LOC", "B-PER"]]
    assert "t.conll:2: invalid transition O -> I-PER" in capsys.readouterr().err
    with pytest.raises(DataError) as e:
        TASK.examples(TASK.config_class(invalid="reject"), rows, True)
    assert "t.conll:2: invalid transition O -> I-PER ('Anna')" in str(e.value)
    assert "t.conll:5: invalid transition B-LOC -> I-PER" in str(e.value)


def test_jsonl_rows_and_their_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"tokens": ["Anna", "sang"], "tags": ["B-PER", "O"]}\n'
                    '{"tokens": ["x"], "tags": ["O", "O"]}\n{"text": "raw"}\n')
    with pytest.raises(DataError) as e:
        TASK.examples(TASK.config_class(), data.read_rows(str(path)), True)
    assert "t.jsonl:2: 1 words but 2 tags" in str(e.value)
    assert "t.jsonl:3: no `tokens` field" in str(e.value)


def test_entity_scores_equal_seqeval_on_random_sequences():
    from seqeval.metrics import accuracy_score, classification_report

    rng = random.Random(0)
    vocab = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-LOC", "S-PER", "I-ORG",
             "B-ORG"]
    for _ in range(400):
        true = [[rng.choice(vocab) for _ in range(rng.randint(1, 9))]
                for _ in range(rng.randint(1, 5))]
        pred = [[rng.choice(vocab) for _ in s] for s in true]
        mine = tags.scores(true, pred)
        ref = classification_report(true, pred, output_dict=True, zero_division=0)
        micro = ref["micro avg"]
        assert (mine["micro"]["precision"], mine["micro"]["recall"], mine["micro"]["f1"],
                mine["micro"]["support"]) == (micro["precision"], micro["recall"],
                                              micro["f1-score"], micro["support"])
        for kind, s in mine["per_type"].items():
            r = ref[kind]
            assert (s["precision"], s["recall"], s["f1"], s["support"]) == (
                r["precision"], r["recall"], r["f1-score"], r["support"])
        assert mine["token_accuracy"] == accuracy_score(true, pred)


def test_viterbi_finds_the_best_valid_path():
    labels = ["O", "B-A", "I-A", "B-B", "I-B"]
    allowed = ner._transitions(labels)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = np.log(rng.dirichlet(np.ones(5), size=4))
        path = ner.viterbi(scores, allowed)
        valid = [p for p in itertools.product(range(5), repeat=4)
                 if allowed[-1, p[0]] and all(allowed[a, b] for a, b in zip(p, p[1:]))]
        best = max(valid, key=lambda p: sum(scores[k, t] for k, t in enumerate(p)))
        assert tuple(path) == best
        assert not tags.invalid_transitions([labels[i] for i in path])


def _tokenizer(family, request, max_length=12):
    from tfsft import backbones

    return backbones.load(str(request.getfixturevalue(family)), max_length)


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_alignment_multi_piece_zero_piece_and_truncated_words(family, request):
    _, pre = _tokenizer(family, request)
    tok = pre.tokenizer
    words = [["good", "film-good", "\u200b", "nice"], ["the"] * 14, ["bad"]]
    out = align.encode_words(tok, words, 12, segment_ids=family == "tiny_bert")
    space = " " if family == "tiny_gpt2" else ""
    for r, ws in enumerate(words):
        pieces = [len(tok(space + w)) for w in ws]
        starts = 1 + np.concatenate([[0], np.cumsum(pieces)[:-1]])
        expected = [int(s) if n and s <= 10 else 0 for s, n in zip(starts, pieces)]
        assert out["word_starts"][r, :len(ws)].tolist() == expected[:12]
        assert out["full_lengths"][r] == sum(pieces) + 2
        flat = np.concatenate([tok(space + w) for w in ws if len(tok(space + w))])
        kept = min(len(flat), 10)
        assert out["token_ids"][r, 1:1 + kept].tolist() == flat[:kept].tolist()
        assert out["padding_mask"][r].sum() == kept + 2
        cut = sum(1 for s, n in zip(starts, pieces) if n and s > 10)
        assert out["cut_off"][r] == cut + 0 and out["zero_piece"][r] == pieces.count(0)
    if family == "tiny_bert":  # WordPiece: "film-good" is 3 pieces, a zero-width char 0
        assert out["word_starts"][0, :4].tolist() == [1, 2, 0, 5]
        assert out["zero_piece"][0] == 1
    assert out["cut_off"][1] == 4  # 14 one-piece words, room for 10


def _sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Learnable toy NER: POSITIVE words are `pos` entities, NEGATIVE words `neg`, "very"
    before an entity word extends it (B- then I-)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, labels = [], []
        for _ in range(rng.randint(3, 8)):
            r = rng.random()
            if r < 0.25:
                kind, pool = ("pos", POSITIVE) if rng.random() < 0.5 else ("neg", NEGATIVE)
                if rng.random() < 0.3:
                    words += ["very", rng.choice(pool)]
                    labels += [f"B-{kind}", f"I-{kind}"]
                else:
                    words.append(rng.choice(pool))
                    labels.append(f"B-{kind}")
            else:
                words.append(rng.choice([w for w in FILLER if w != "very"]))
                labels.append("O")
        out.append((words, labels))
    return out


def _write_conll(path: Path, sentences) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n"
                            for ws, ts in sentences), encoding="utf-8")
    return path


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_model_logits_padding_invariance_and_unseen_words_are_outside(family, request):
    import keras

    from tfsft import pipeline

    backbone, pre = _tokenizer(family, request, 16)
    cfg = TASK.config_class()
    sentences = _sentences(5, 3)
    # a zero-piece word and words cut off by max_length
    sentences[0] = (sentences[0][0] + ["\u200b"] + ["the"] * 20, sentences[0][1] + ["O"] * 21)
    rows = data.Rows("m.conll", [{"columns": [[w, t] for w, t in zip(ws, ts)]}
                                 for ws, ts in sentences], [f"m.conll:{i}" for i in range(5)])
    ex = TASK.examples(cfg, rows, True)
    labels = TASK.make_label_map(cfg, ex)
    assert labels == ["O", "B-neg", "I-neg", "B-pos", "I-pos"]
    enc = TASK.encode_inputs(cfg, pre, ex)
    model = TASK.build_model(cfg, backbone, len(labels), 0.1)
    batch = next(iter(pipeline.eval_dataset(enc, None, 8)))
    logits = keras.ops.convert_to_numpy(model(batch))
    assert logits.shape == (5, 16, 5) and np.isfinite(logits).all()
    alone = {k: v[1:2, :int(enc.lengths[1])] if k in pipeline.TOKEN_KEYS else v[1:2]
             for k, v in enc.features.items()}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(alone))[0], logits[1],
                               atol=1e-5)
    starts = enc.features["word_starts"]
    assert (logits[starts == 0].argmax(-1) == 0).all()  # unseen words: O
    targets = TASK.align_targets(cfg, enc, TASK.encode_targets(cfg, labels, ex))
    assert targets.shape == starts.shape and (targets[starts == 0] == -1).all()
    assert enc.notes["words_without_pieces"] >= (1 if family == "tiny_bert" else 0)
    assert enc.notes["words_cut_off"] > 0
    out = TASK.decode(cfg, labels, logits, ex)
    assert [len(o["tags"]) for o in out] == [len(w) for w in ex.words]
    rep = TASK.report(cfg, labels, targets, logits, ex)
    assert rep["examples"] == 5 and 0 <= rep["entity"]["f1"] <= 1


def test_predict_entities_have_character_offsets_into_the_input():
    cfg = TASK.config_class()
    text = "Visit  New-York's  @museum today, said Dr. O'Neil #art https://x.org/a?b"
    rows = data.Rows("<stdin>", [{"text": text}], ["<stdin>:1"])
    ex = TASK.examples(cfg, rows, False)
    words = ex.words[0]
    assert [text[s:e] for s, e in ex.offsets[0]] == words
    assert "New-York's" in words and "@museum" in words and "https://x.org/a?b" in words
    labels = ["O", "B-loc", "I-loc", "B-per", "I-per"]
    wanted = {"New-York's": 1, "@museum": 2, "Dr": 3, ".": 4, "O'Neil": 4}
    logits = np.zeros((1, len(words), 5))
    for k, w in enumerate(words):
        logits[0, k, wanted.get(w, 0)] = 5.0
    out = TASK.decode(cfg, labels, logits, ex)[0]
    ents = [(e["text"], e["type"]) for e in out["entities"]]
    assert ents == [("New-York's  @museum", "loc"), ("Dr. O'Neil", "per")]
    for e in out["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]


def test_entity_preserving_augmentation_keeps_tags_with_their_words():
    from tfsft import augment

    sentences = _sentences(40, 5)
    rows = data.Rows("a.conll", [{"columns": [[w, t] for w, t in zip(ws, ts)]}
                                 for ws, ts in sentences], [f"a.conll:{i}" for i in range(40)])
    ex = TASK.examples(TASK.config_class(), rows, True)
    out, added = TASK.augment(TASK.config_class(), ex,
                              augment.Augmenter(("delete", "swap", "replace"), 0.4, 2, 1))
    assert len(out) == 40 + len(added) > 40
    for k, (row, *_rest) in enumerate(added):
        new_words, new_tags = out.words[40 + k], out.labels[40 + k]
        ents = [(w, t) for w, t in zip(new_words, new_tags) if t != "O"]
        assert ents == [(w, t) for w, t in zip(ex.words[row], ex.labels[row]) if t != "O"]
        assert not tags.invalid_transitions(new_tags)
        assert [out.texts[40 + k][s:e] for s, e in out.offsets[40 + k]] == new_words


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_fit_evaluate_predict_through_the_cli(family, request, tmp_path):
    backbone = request.getfixturevalue(family)
    train = _write_conll(tmp_path / "train.conll", _sentences(480, 1))
    dev = _write_conll(tmp_path / "dev.conll", _sentences(40, 2))
    out = tmp_path / "run"
    proc = run_cli("fit", "tasks/ner", f"model.backbone={backbone}", f"data.train={train}",
                   f"data.validation={dev}", f"data.test={dev}", "data.max_length=64",
                   "train.epochs=8", "train.global_batch_size=16", "train.learning_rate=1e-2",
                   "model.dropout=0.0", "train.deterministic=true", "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # measured: tiny BERT 0.90, tiny GPT-2 0.81 (causal: it reads each word's last piece)
    floor = 0.8 if family == "tiny_bert" else 0.7
    assert metrics["validation"]["entity"]["f1"] > floor, metrics["validation"]["headline"]
    assert set(metrics["test"]["per_type"]) == {"neg", "pos"}
    assert "validation: entity F1" in proc.stderr
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["train"]["words"] > 0 and "words_cut_off" in summary["train"]
    assert json.loads((out / "labels.json").read_text()) == [
        "O", "B-neg", "I-neg", "B-pos", "I-pos"]
    text = "the film was very good and the food awful"
    pred = run_cli("predict", out, stdin=text + "\n")
    assert pred.returncode == 0, pred.stderr
    row = json.loads(pred.stdout.splitlines()[0])
    assert row["text"] == text and len(row["tags"]) == 9
    for e in row["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
    assert {e["type"] for e in row["entities"]} <= {"pos", "neg"}
    refused = run_cli("export", out)  # no SavedModel signature for NER yet
    assert refused.returncode == 2 and "--format keras,preset" in refused.stderr
    exported = run_cli("export", out, "--format", "keras,preset")
    assert exported.returncode == 0, exported.stderr
    assert (out / "export" / "model.keras").is_file()
    evaluated = run_cli("evaluate", out, "--split", "test", "task.constrained=true")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "micro" in evaluated.stdout and "constrained decoding: yes" in evaluated.stdout
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["test [task.constrained=true]"]["constrained_decoding"]
    assert not recorded["test"]["constrained_decoding"]  # fit's own result is kept


def test_malformed_conll_through_the_cli_exits_2_naming_file_and_line(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("Anna B-PER\nsang O\n\nParis\n", encoding="utf-8")
    proc = run_cli("validate", "tasks/ner", f"data.train={train}", "data.format=conll")
    assert proc.returncode == 2
    assert f"{train}:4: expected 2 whitespace-separated columns" in proc.stderr
