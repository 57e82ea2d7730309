"""Supervised fine-tuning of a causal LM on prompt -> response examples: the settings and
the task-plugin members that translation and instruction tasks share.

A task built on it defines its config as a subclass of `SftConfig` (its own fields plus
these) and its plugin object as a subclass of `SftTask` with `examples` (reader rows ->
seq2seq.Pairs), and takes the other contract members from here: tokenise once with
response-only targets (seq2seq.encode), pack (seq2seq.pack), the model
(causal_lm.PackedGPT2CausalLM), the loss (targets -1 ignored: the mean over response
tokens), token accuracy, generation (tfsft/generation.py) and the report (sacrebleu
BLEU/chrF, exact match, perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tfsft import seq2seq
from tfsft.errors import ConfigError


@dataclass(frozen=True)
class SftConfig:
    prompt_loss: bool = False  # true: train on the prompt tokens too
    truncation: Literal["prompt", "response"] = "prompt"  # side cut when a row is too long
    too_long: Literal["error", "skip"] = "error"  # rows with no response left: stop or skip
    packing: bool = False  # training rows hold several examples (attention kept apart)
    decoding: Literal["greedy", "beam", "top_k", "top_p"] = "greedy"  # generation
    max_new_tokens: int = 64  # generated tokens at most (the end token stops earlier)
    num_beams: int = 4  # decoding: beam
    top_k: int = 50  # decoding: top_k
    top_p: float = 0.9  # decoding: top_p (nucleus mass)
    temperature: float = 1.0  # divides the logits before sampling
    samples: int = 5  # generations shown in the report and TensorBoard
    jit_compile: bool = True  # XLA-compile generation

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.top_k < 1:
            raise ValueError("`task.max_new_tokens`, `task.num_beams` and `task.top_k` must be "
                             "at least 1")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("`task.top_p` must be in (0, 1] and `task.temperature` above 0")


# `task.` keys evaluate/predict may change on a finished run
RUN_TIME_KEYS = ("decoding", "max_new_tokens", "num_beams", "top_k", "top_p", "temperature",
                 "samples", "jit_compile")


def make_label_map(cfg, train) -> list[str]:
    return []  # no classes: the outputs are the backbone's vocabulary


def encode_inputs(cfg: SftConfig, preprocessor, ex: seq2seq.Pairs):
    return seq2seq.encode(preprocessor.tokenizer, ex, preprocessor.sequence_length,
                          cfg.truncation, cfg.prompt_loss, cfg.too_long)


def encode_targets(cfg: SftConfig, label_names, ex) -> np.ndarray:
    """Row numbers: the targets are the tokenised responses (encode_inputs' `labels`)."""
    return np.arange(len(ex), dtype=np.int32)


def align_targets(cfg: SftConfig, enc, targets: np.ndarray) -> np.ndarray:
    return enc.labels


def pack_rows(cfg: SftConfig, enc, max_length: int):
    """The training rows: packed (`task.packing`) or as encoded."""
    return seq2seq.pack(enc, max_length) if cfg.packing else enc


def build_model(cfg: SftConfig, backbone, num_outputs: int, dropout: float):
    from tfsft.causal_lm import PackedGPT2CausalLM

    if type(backbone).__name__ != "GPT2Backbone":
        raise ConfigError(f"this task needs a GPT-2 backbone (a decoder), got "
                          f"{type(backbone).__name__}; set `model.backbone` to a GPT-2 preset "
                          "(tools/new_gpt2.py makes a small one)")
    return PackedGPT2CausalLM(backbone)


def loss(cfg: SftConfig, label_smoothing: float):
    import keras

    if label_smoothing:
        raise ConfigError("`train.label_smoothing` is not supported for generation tasks; "
                          "set it to 0")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)


def metrics(cfg: SftConfig) -> list:
    return [token_accuracy()]


def options(cfg: SftConfig):
    from tfsft import generation

    return generation.Options(cfg.decoding, cfg.max_new_tokens, cfg.num_beams, cfg.top_k,
                              cfg.top_p, cfg.temperature, jit_compile=cfg.jit_compile)


def generate(cfg: SftConfig, model, preprocessor, ex, batch_size: int,
             output_field: str = "output") -> list[dict]:
    texts, notes = generate_texts(model, preprocessor, ex.prompts, options(cfg), batch_size)
    _warn(notes, preprocessor.sequence_length, cfg.max_new_tokens)
    return [{output_field: t} for t in texts]


def evaluate_model(cfg: SftConfig, model, preprocessor, label_names, ex, enc,
                   batch_size: int, output_field: str = "output") -> dict:
    hyps, notes = generate_texts(model, preprocessor, ex.prompts, options(cfg), batch_size)
    _warn(notes, preprocessor.sequence_length, cfg.max_new_tokens)
    return {**report(model, enc, batch_size, ex, hyps, cfg.decoding, cfg.samples,
                     output_field), **notes}


def token_accuracy():
    """Share of target tokens (label >= 0) the model ranks first."""
    import keras

    class TokenAccuracy(keras.metrics.Mean):
        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.cast(y_true, "int32")
            valid = keras.ops.cast(y_true >= 0, "float32")
            guess = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32")
            right = keras.ops.cast(keras.ops.equal(guess, y_true), "float32")
            return super().update_state(right, sample_weight=valid)

    return TokenAccuracy(name="token_accuracy")


def generate_texts(model, preprocessor, prompts: list[list[tuple[str, bool]]], options,
                   batch_size: int) -> tuple[list[str], dict]:
    """The generated continuation of each prompt, as text, and counts: `prompts_cut`
    (longer than `data.max_length` - 1: cut from the left, as in training) and
    `generation_limited` (room for fewer than `max_new_tokens` before `data.max_length`)."""
    from tfsft import generation

    tokenizer, limit = preprocessor.tokenizer, preprocessor.sequence_length
    rows, cut = seq2seq.prompt_ids(tokenizer, prompts, limit)
    out = generation.generate(model, rows, tokenizer.end_token_id, options, batch_size,
                              max_length=limit)
    limited = sum(len(r) + options.max_new_tokens > limit for r in rows)
    return generation.detokenize(tokenizer, out), {"prompts_cut": cut,
                                                   "generation_limited": int(limited)}


def _warn(notes: dict, max_length: int, max_new_tokens: int) -> None:
    from tfsft.messages import log

    if notes["prompts_cut"] or notes["generation_limited"]:
        log(f"WARNING generation: {notes['prompts_cut']} prompt(s) longer than "
            f"`data.max_length` ({max_length}) were cut from the left, and "
            f"{notes['generation_limited']} row(s) had room for fewer than "
            f"`task.max_new_tokens` ({max_new_tokens}) new tokens")


def target_loss(model, enc, batch_size: int) -> tuple[float, int]:
    """(mean negative log-likelihood per target token, target tokens) over a split."""
    import tensorflow as tf

    from tfsft import pipeline

    @tf.function(reduce_retracing=True, autograph=False)
    def nll(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        valid = y >= 0
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(y, 0), logits)
        return (tf.reduce_sum(tf.where(valid, ce, 0.0)),
                tf.reduce_sum(tf.cast(valid, tf.int32)))

    total, count = 0.0, 0
    for x, y in pipeline.eval_dataset(enc, enc.labels, batch_size):
        s, n = nll(x, y)
        total, count = total + float(s), count + int(n)
    return total / max(count, 1), count


def report(model, enc, batch_size: int, ex: seq2seq.Pairs, hypotheses: list[str], decoding: str,
           samples: int, output_field: str = "output") -> dict:
    """Evaluation report of one split: BLEU, chrF, exact match (sacrebleu), the target
    tokens' loss and perplexity, a few sample generations, and every generation (`rows`,
    written to reports/generations_<split>.jsonl, not to metrics.json)."""
    s = seq2seq.scores(hypotheses, ex.responses)  # the reference: each example's last response
    nll, tokens = target_loss(model, enc, batch_size)
    references = ex.responses
    shown = [{"where": ex.where[i], "source": ex.texts[i], "reference": references[i],
              output_field: hypotheses[i]} for i in range(min(samples, len(ex)))]
    rows = [{"where": w, "source": t, "reference": r, output_field: h}
            for w, t, r, h in zip(ex.where, ex.texts, references, hypotheses)]
    text = [f"BLEU {s['bleu']:.2f}  chrF {s['chrf']:.2f}  exact match {s['exact_match']:.1f}% "
            f"over {len(ex)} examples ({decoding} decoding)",
            f"target-token loss {nll:.4f}, perplexity {float(np.exp(nll)):.2f} "
            f"({tokens} tokens)", f"sacrebleu: {s['bleu_signature']} | {s['chrf_signature']}",
            f"{s['bleu_detail']}", ""]
    for sample in shown:
        text += [f"{sample['where']}", f"  source:     {sample['source']}",
                 f"  reference:  {sample['reference']}",
                 f"  {output_field + ':':<11} {sample[output_field]}"]
    return {"examples": len(ex), **s, "target_loss": nll, "perplexity": float(np.exp(nll)),
            "target_tokens": tokens, "decoding": decoding, "samples": shown, "rows": rows,
            "text": "\n".join(text) + "\n",
            "summary": {"bleu": s["bleu"], "chrf": s["chrf"], "exact_match": s["exact_match"],
                        "perplexity": float(np.exp(nll))},
            "headline": f"BLEU {s['bleu']:.2f}, chrF {s['chrf']:.2f}, exact match "
                        f"{s['exact_match']:.1f}%, perplexity {float(np.exp(nll)):.2f}"}


class SftTask:
    """The members a prompt -> response task takes from here; a task subclasses it and sets
    `name`, `config_class` and `examples` (and may wrap `generate` / `evaluate_model` to
    name its output field)."""

    run_time_keys = RUN_TIME_KEYS
    make_label_map = staticmethod(make_label_map)
    encode_inputs = staticmethod(encode_inputs)
    encode_targets = staticmethod(encode_targets)
    align_targets = staticmethod(align_targets)
    pack_rows = staticmethod(pack_rows)
    build_model = staticmethod(build_model)
    loss = staticmethod(loss)
    metrics = staticmethod(metrics)
    generate = staticmethod(generate)
    evaluate_model = staticmethod(evaluate_model)
