"""Text generation with a KerasHub causal LM: greedy, beam, top-k, top-p, temperature.

Runs the model's own cached `generate_step` (one compiled function per batch shape) on
token ids we lay out ourselves, so prompts are tokenised exactly as in training. Batches are
formed from prompts of similar length (less wasted decoding) and widths rounded up to a
multiple of 16 (few compiles), and results come back in input order. Generation stops at
the end token or after `max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDTH_MULTIPLE = 16
DECODINGS = ("greedy", "beam", "top_k", "top_p")


@dataclass(frozen=True)
class Options:
    decoding: str = "greedy"  # greedy | beam | top_k | top_p
    max_new_tokens: int = 64
    num_beams: int = 4
    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    jit_compile: bool = True


def sampler(options: Options):
    from keras_hub import samplers

    t = options.temperature
    if options.decoding == "greedy":
        return samplers.GreedySampler(temperature=t)
    if options.decoding == "beam":
        return samplers.BeamSampler(num_beams=options.num_beams, temperature=t)
    if options.decoding == "top_k":
        return samplers.TopKSampler(k=options.top_k, seed=options.seed, temperature=t)
    if options.decoding == "top_p":
        return samplers.TopPSampler(p=options.top_p, seed=options.seed, temperature=t)
    raise ValueError(f"unknown decoding {options.decoding!r}; one of {', '.join(DECODINGS)}")


def generate(model, rows: list[list[int]], end_id: int, options: Options,
             batch_size: int = 32, max_length: int | None = None) -> list[list[int]]:
    """The generated token ids after each prompt row (the end token not included)."""
    import tensorflow as tf

    limit = max_length or model.backbone.max_sequence_length
    model.sampler = sampler(options)
    spec = {"token_ids": tf.TensorSpec([None, None], tf.int32),
            "padding_mask": tf.TensorSpec([None, None], tf.bool)}

    def run(inputs):  # shapes left open: the beam sampler's loop needs a free batch size
        return model.generate_step(inputs, stop_token_ids=(end_id,))

    step = tf.function(run, jit_compile=options.jit_compile, input_signature=[spec])
    order = np.argsort([len(r) for r in rows], kind="stable")
    out: list[list[int]] = [[] for _ in rows]
    for first in range(0, len(rows), batch_size):
        idx = order[first:first + batch_size]
        longest = max(len(rows[i]) for i in idx)
        width = min(limit, -(-(longest + options.max_new_tokens) // WIDTH_MULTIPLE)
                    * WIDTH_MULTIPLE)
        ids = np.zeros((len(idx), width), np.int32)
        mask = np.zeros((len(idx), width), bool)
        for j, i in enumerate(idx):
            ids[j, :len(rows[i])] = rows[i]
            mask[j, :len(rows[i])] = True
        result = step({"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)})
        tokens = result["token_ids"].numpy()
        for j, i in enumerate(idx):
            new = tokens[j, len(rows[i]):len(rows[i]) + options.max_new_tokens].tolist()
            out[i] = new[:new.index(end_id)] if end_id in new else new
    return out


def detokenize(tokenizer, rows: list[list[int]]) -> list[str]:
    """Token id rows as text (bytes that are not valid UTF-8 are replaced)."""
    if not rows:
        return []
    texts = tokenizer.detokenize(rows)
    return [t if isinstance(t, str) else t.decode("utf-8", "replace") for t in texts]
