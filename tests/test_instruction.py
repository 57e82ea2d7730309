"""tasks/instruction: Alpaca and chat layouts, loss on assistant turns only, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfsft import bpe, data, seq2seq, tasks
from tfsft import config as config_lib
from tfsft.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "tasks" / "instruction"
TEXTS = ["### Instruction:\nName a colour.\n\n### Response:\nRed", "<|user|>\nHi there\n",
         "<|assistant|>\nHello!", "<|system|>\nBe brief.\n", "Blue and green."] * 10


@pytest.fixture(scope="module")
def tok():
    vocab, merges = bpe.train(TEXTS, 320)
    return bpe.tokenizer(vocab, merges)


def ids(tok, text: str) -> list[int]:
    return [int(i) for i in tok(text)]


def task_and_cfg(*overrides):
    task = tasks.load_task(FOLDER)
    cfg = config_lib.load_config(task.config_class, FOLDER / "config.yaml", [],
                                 ["data.train=x.jsonl", *overrides])
    return task, cfg


def rows_of(tmp_path, objects, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return data.read_rows(str(path))


def targets_of(enc, r: int) -> list[int]:
    return [int(t) for t in enc.labels[r] if t >= 0]


def test_alpaca_rows_use_the_input_template_only_when_there_is_input(tmp_path):
    task, cfg = task_and_cfg()
    ex = task.examples(cfg.task, rows_of(tmp_path, [
        {"instruction": "Name a colour.", "output": "Red"},
        {"instruction": "Translate.", "input": "Hallo", "output": "Hello"}]), True)
    assert ex.parts[0] == [("### Instruction:\nName a colour.\n\n### Response:\n", False),
                           ("Red", True)]
    assert ex.parts[1][0][0] == ("### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n"
                                 "### Response:\n")
    assert ex.responses == ["Red", "Hello"]


def test_chat_loss_is_on_every_assistant_turn_and_nothing_else(tmp_path, tok):
    task, cfg = task_and_cfg()
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi there"},
                         {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Colours?"},
                         {"role": "assistant", "content": "Blue and green."}]}
    ex = task.examples(cfg.task, rows_of(tmp_path, [chat]), True)
    enc = seq2seq.encode(tok, ex, 96)
    end = tok.end_token_id
    assert targets_of(enc, 0) == [*ids(tok, "Hello!"), end, *ids(tok, "Blue and green."), end]
    # every other position carries no loss: the system and user turns and the headers
    row = enc.features["token_ids"][0, :enc.lengths[0]].tolist()
    expected = [tok.start_token_id, *ids(tok, "<|system|>\nBe brief.\n"),
                *ids(tok, "<|user|>\nHi there\n"), *ids(tok, "<|assistant|>\n"),
                *ids(tok, "Hello!"), end, *ids(tok, "<|user|>\nColours?\n"),
                *ids(tok, "<|assistant|>\n"), *ids(tok, "Blue and green."), end]
    assert row == expected
    # the positions whose token is a target: exactly the assistant turns and their end
    layout = [("<|system|>\nBe brief.\n", False), ("<|user|>\nHi there\n", False),
              ("<|assistant|>\n", False), ("Hello!", True), ("<|user|>\nColours?\n", False),
              ("<|assistant|>\n", False), ("Blue and green.", True)]
    want, at = [], 1
    for text, on in layout:
        n = len(ids(tok, text)) + on
        want += list(range(at, at + n)) if on else []
        at += n
    assert [t for t in range(1, len(row)) if enc.labels[0, t - 1] >= 0] == want
    # generation continues after the last assistant header; the reference is the last turn
    assert ex.prompts[0][-1] == ("<|assistant|>\n", False) and ex.responses == ["Blue and green."]


def test_prompt_loss_covers_user_turns_too(tmp_path, tok):
    task, cfg = task_and_cfg("task.prompt_loss=true")
    ex = task.examples(cfg.task, rows_of(tmp_path, [{"messages": [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}]),
        True)
    enc = seq2seq.encode(tok, ex, 64, prompt_loss=cfg.task.prompt_loss)
    n = int(enc.lengths[0])
    assert targets_of(enc, 0) == enc.features["token_ids"][0, 1:n].tolist()


def test_predicting_a_chat_appends_the_assistant_header(tmp_path):
    task, cfg = task_and_cfg()
    ex = task.examples(cfg.task, rows_of(tmp_path, [{"messages": [
        {"role": "user", "content": "Hi"}]}, {"text": "Name a colour."}]), False)
    assert ex.prompts[0] == [("<|user|>\nHi\n", False), ("<|assistant|>\n", False)]
    assert ex.prompts[1] == [("### Instruction:\nName a colour.\n\n### Response:\n", False)]
    assert ex.texts == ["Hi", "Name a colour."]


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    task, cfg = task_and_cfg()
    rows = rows_of(tmp_path, [
        {"instruction": "Fine.", "output": "Yes"},
        {"instruction": "No output."},
        {"instruction": "Empty output.", "output": " "},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hey"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": "Hi"}])
    with pytest.raises(DataError) as e:
        task.examples(cfg.task, rows, True)
    msg = str(e.value)
    assert "d.jsonl:2: no `output` field" in msg
    assert "d.jsonl:3: `output` must be a non-empty text" in msg
    assert "d.jsonl:4: message 2 has unknown role 'bot'; roles are system, user, assistant" \
        in msg
    assert "d.jsonl:5: message 2 (assistant) is empty" in msg
    assert "d.jsonl:6: has no assistant turn" in msg
    assert "d.jsonl:7: `messages` must be a non-empty list" in msg
    assert e.value.rows == [1, 2, 3, 4, 5, 6]


def test_a_bad_template_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="task.user_template"):
        task_and_cfg("task.user_template=<|user|> {text}")


def cli(*args) -> int:
    from tfsft import cli as cli_lib

    return cli_lib.main([str(a) for a in args])


def write_chats(path: Path, n: int) -> Path:
    from conftest import ANIMALS, COLOURS

    lines = []
    for i in range(n):
        c, a = sorted(COLOURS)[i % 4], sorted(ANIMALS)[(i // 4) % 4]
        lines.append({"messages": [{"role": "user", "content": f"the {c} {a}"},
                                   {"role": "assistant", "content": f"die {COLOURS[c]}"},
                                   {"role": "user", "content": "and?"},
                                   {"role": "assistant", "content": ANIMALS[a]}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_validate_shows_the_masked_layout_and_fit_trains_packed_rows(toy_translation,
                                                                      tmp_path, capsys):
    _, _, preset = toy_translation
    train, dev = write_chats(tmp_path / "t.jsonl", 48), write_chats(tmp_path / "d.jsonl", 8)
    common = [f"data.train={train}", f"data.validation={dev}", f"model.backbone={preset}",
              "data.max_length=64", "task.max_new_tokens=6",
              "task.user_template=\"U: {content}\\n\"",  # YAML values: quoted
              "task.assistant_template=\"A: \""]
    assert cli("validate", FOLDER, *common, "--show", "2") == 0
    err = capsys.readouterr().err
    assert f"--- {train}:1" in err
    assert "[[<|endoftext|>U: the black bird\nA: ]]die schwarz<|endoftext|>[[U: and?\nA: ]]" \
        "vogel<|endoftext|>" in err
    assert "truncated 0.0%" in err
    out = tmp_path / "run"
    assert cli("fit", FOLDER, *common, "task.packing=true", "train.epochs=2",
               "train.global_batch_size=4", "train.learning_rate=3e-3", "--output", out) == 0
    summary = json.loads((out / "data_summary.json").read_text())["train"]["packing"]
    assert summary["examples"] == 48 and summary["packed_rows"] < 48
    assert summary["padding_share_packed"] < summary["padding_share_unpacked"]
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    rep = json.loads((out / "metrics.json").read_text())["validation"]
    assert {"bleu", "chrf", "exact_match", "perplexity"} <= set(rep)
