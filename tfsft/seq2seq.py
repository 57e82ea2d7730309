"""Prompt -> response examples for decoder-only (GPT-2) supervised fine-tuning.

One example becomes one row `[start] prompt response [end]` (GPT-2's start and end token
are both `<|endoftext|>`). The model is trained on -sum log p(y_t | context) over the
response tokens and the end token only: the target of position t is the token at t + 1
when that token is part of the response (or the end token), else -1, which the loss
ignores. The loss is therefore averaged over response tokens, exactly what per-token
weights 1 (response) / 0 (prompt, padding) with `mean_with_sample_weight` give.
`prompt_loss` trains on the prompt tokens too.

Too long for `data.max_length`: `truncation: prompt` drops prompt tokens from the left (the
start token stays; the response is whole); `truncation: response` cuts the response's end
(the end token goes first). A row with nothing left of the response, or (prompt side) whose
response alone does not fit, cannot be trained on: it is a problem named by file:line
(`too_long: error`, the default, stops before anything is written) or it is kept with no
loss and listed in the data summary (`too_long: skip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfsft.errors import DataError


@dataclass(frozen=True)
class Pairs:
    """Examples as text parts, each trained on or not: a translation is
    [(prompt, False), (target, True)]; a chat alternates (turns, False) and (assistant
    turn, True). Every trained part is followed by the end token, trained on too.
    Unlabelled examples (predict) hold the prompt part(s) only."""

    parts: list[list[tuple[str, bool]]]
    where: list[str]
    texts: list[str]  # what predict echoes per row (the source text)
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def labels(self):  # no classes: validation is carved at random
        return None

    @property
    def responses(self) -> list[str] | None:
        """The last trained part of each example: the reference of generation."""
        if not self.labelled:
            return None
        return [next(t for t, trained in reversed(p) if trained) for p in self.parts]

    @property
    def prompts(self) -> list[list[tuple[str, bool]]]:
        """The parts before the last trained one: what generation continues."""
        if not self.labelled:
            return self.parts
        out = []
        for p in self.parts:
            last = max(i for i, (_, trained) in enumerate(p) if trained)
            out.append(p[:last])
        return out

    def take(self, idx) -> "Pairs":
        return Pairs([self.parts[i] for i in idx], [self.where[i] for i in idx],
                     [self.texts[i] for i in idx], self.labelled)


def tokenize(tokenizer, texts: list[str], batch_size: int = 2048) -> list[list[int]]:
    """Token ids of every text, tokenised once (in-graph BPE is slow to rerun), by the
    tokenizer traced once and called per batch (pipeline.traced_once)."""
    import tensorflow as tf

    from tfsft import pipeline

    run = pipeline.traced_once(tokenizer, "tokenize", lambda t, batch: t(batch),
                               [tf.TensorSpec([None], tf.string)])
    out: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        out.extend(run(tf.constant(texts[start:start + batch_size], tf.string)).to_list())
    return out


def tokenize_parts(tokenizer, examples: list[list[tuple[str, bool]]]
                   ) -> list[list[tuple[list[int], bool]]]:
    """Each part tokenised on its own (so the trained/untrained boundary is exact), the
    end token appended to every trained part."""
    flat = tokenize(tokenizer, [text for parts in examples for text, _ in parts])
    end, out, k = tokenizer.end_token_id, [], 0
    for parts in examples:
        row = []
        for _, trained in parts:
            row.append((flat[k] + [end] if trained else flat[k], trained))
            k += 1
        out.append(row)
    return out


@dataclass(frozen=True)
class Layout:
    tokens: list[int]  # start token first
    trained: list[bool]  # per token: a target of the loss
    cut_left: int  # tokens cut from the left (prompt side)
    cut_right: int  # tokens cut from the right (response side)
    problem: str | None  # why nothing useful is left to train on


def layout(start: int, parts: list[tuple[list[int], bool]], max_length: int,
           truncation: str) -> Layout:
    """One row: `[start] part part ...`, cut to `max_length` from the left (after the start
    token; `prompt`) or the right (`response`)."""
    tokens = [t for ids, _ in parts for t in ids]
    trained = [flag for ids, flag in parts for _ in ids]
    over = 1 + len(tokens) - max_length
    left = right = 0
    if over > 0 and truncation == "prompt":
        left = over
    elif over > 0:
        right = over
    problem = None
    if any(trained):
        # the last untrained part before the last trained one: the prompt it answers
        last = max(i for i, (_, flag) in enumerate(parts) if flag)
        prompt_end = sum(len(ids) for ids, _ in parts[:last])
        has_prompt = any(not flag and ids for ids, flag in parts[:last])
        kept_trained = trained[left:len(trained) - right]
        if not any(kept_trained):
            problem = "nothing of the response is left"
        elif left and has_prompt and left >= prompt_end:
            problem = "the whole prompt is cut off"
    keep = slice(left, len(tokens) - right)
    return Layout([start, *tokens[keep]], [False, *trained[keep]], left, right, problem)


def encode(tokenizer, ex: Pairs, max_length: int, truncation: str = "prompt",
           prompt_loss: bool = False, too_long: str = "error"):
    """Tokenised rows (pipeline.Encoded) with per-token targets in `labels`."""
    from tfsft import pipeline

    start = tokenizer.start_token_id
    n = len(ex)
    token_ids = np.zeros((n, max_length), np.int32)
    mask = np.zeros((n, max_length), np.int32)
    labels = np.full((n, max_length), -1, np.int32)
    lengths = np.zeros(n, np.int32)
    full = np.zeros(n, np.int32)
    problems, rejected, cut_prompt, cut_response, bad = [], [], 0, 0, []
    for r, parts in enumerate(tokenize_parts(tokenizer, ex.parts)):
        row = layout(start, parts, max_length, truncation)
        full[r] = 1 + sum(len(ids) for ids, _ in parts)
        lengths[r] = len(row.tokens)
        token_ids[r, :len(row.tokens)] = row.tokens
        mask[r, :len(row.tokens)] = 1
        cut_prompt += row.cut_left > 0
        cut_response += row.cut_right > 0
        if not ex.labelled:
            continue
        if row.problem:
            sizes = ", ".join(f"{'response' if t else 'prompt'} {len(ids)}"
                              for ids, t in parts)
            msg = (f"{ex.where[r]}: {full[r]} tokens with `data.max_length` {max_length} and "
                   f"`task.truncation: {truncation}`: {row.problem} (tokens: {sizes}; a "
                   "response counts its end token). Raise `data.max_length`, shorten the "
                   "row, or set `task.too_long: skip` to leave such rows out of the loss")
            (problems if too_long == "error" else rejected).append(msg)
            bad.append(r)
            continue
        target = row.trained[1:] if not prompt_loss else [True] * (len(row.tokens) - 1)
        for t, on in enumerate(target):
            if on:
                labels[r, t] = row.tokens[t + 1]
    if problems:
        raise DataError(problems, rows=bad)
    notes = {"prompts_truncated": int(cut_prompt), "responses_truncated": int(cut_response),
             "target_tokens": int((labels >= 0).sum())}
    if rejected:
        notes.update(rows_without_loss=len(rejected), rows_without_loss_list=rejected[:100])
    return pipeline.Encoded({"token_ids": token_ids, "padding_mask": mask}, lengths, full,
                            notes, labels=labels)


def pack(enc, max_length: int):
    """Rows of several examples each (best-fit decreasing: each example, longest first,
    goes into the fullest row it fits), with `segment_ids` (1, 2, ... per example, 0 for
    padding) and `position_ids` restarting per example. Each example's targets move with
    it; its last position has none, so no example is trained to predict the next one."""
    from tfsft import pipeline

    lengths = enc.lengths.tolist()
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: dict[int, list[int]] = {}  # room left -> rows with that much room
    for i in order:
        room = next((c for c in range(lengths[i], max_length + 1) if free.get(c)), None)
        if room is None:
            rows.append([])
            row, room = len(rows) - 1, max_length
        else:
            row = free[room].pop()
        rows[row].append(i)
        free.setdefault(room - lengths[i], []).append(row)
    n = len(rows)
    out = {k: np.zeros((n, max_length), np.int32)
           for k in ("token_ids", "padding_mask", "segment_ids", "position_ids")}
    labels = np.full((n, max_length), -1, np.int32)
    for r, members in enumerate(rows):
        at = 0
        for seg, i in enumerate(members, 1):
            m = lengths[i]
            out["token_ids"][r, at:at + m] = enc.features["token_ids"][i, :m]
            out["padding_mask"][r, at:at + m] = 1
            out["segment_ids"][r, at:at + m] = seg
            out["position_ids"][r, at:at + m] = np.arange(m)
            labels[r, at:at + m] = enc.labels[i, :m]
            at += m
    packed = out["padding_mask"].sum(axis=1).astype(np.int32)
    notes = {**enc.notes, "packed_rows": n, "examples": len(lengths),
             "padding_share_unpacked": float(1 - sum(lengths) / (len(lengths) * max_length)),
             "padding_share_packed": float(1 - packed.sum() / (n * max_length))}
    return pipeline.Encoded(out, packed, packed, notes, labels=labels)


def prompt_ids(tokenizer, prompts: list[list[tuple[str, bool]]],
               max_length: int) -> tuple[list[list[int]], int]:
    """Generation inputs: `[start] prompt parts` of each row, laid out as in training and
    cut from the left only when longer than `max_length` - 1 (one new token must fit);
    returns (rows, how many were cut). Rows near the limit get fewer new tokens."""
    start = tokenizer.start_token_id
    rows, cut = [], 0
    for parts in tokenize_parts(tokenizer, prompts):
        row = layout(start, parts, max_length - 1, "prompt")
        cut += row.cut_left > 0
        rows.append(row.tokens)
    return rows, cut


def scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, default settings: 13a tokenisation, chrF2) and exact
    match, in percent, with sacrebleu's signatures so the numbers are comparable."""
    import sacrebleu

    bleu = sacrebleu.BLEU()
    chrf = sacrebleu.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    exact = np.mean([h.strip() == r.strip() for h, r in zip(hypotheses, references)]) \
        if references else 0.0
    return {"bleu": float(b.score), "chrf": float(c.score), "exact_match": 100 * float(exact),
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "bleu_detail": str(b)}
