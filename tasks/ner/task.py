"""Named-entity recognition: a tag per word, on a BERT-family or GPT-2 backbone.

Data: CoNLL files (`data.format: conll`: a token and its tag per line, blank line between
sentences) or JSONL (`{"tokens": [...], "tags": [...]}`), tags in IOB2, IOB1 or BIOES
(converted to IOB2). The head reads each word's first sub-token from the backbone's
sequence output (align.py, tfsft.layers.WordStartPooling) and scores every tag; words the
model cannot see (no sub-token, or cut off by `data.max_length`) are predicted `O` and not
trained on. Scores are entity-level (exact chunks, as the CoNLL script and seqeval count
them, tags.py). Predictions give per-word tags and entities with character offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tfsft.errors import ConfigError, DataError

from . import tags as tags_lib

WORD = re.compile(r"https?://\S+|[@#]?\w+(?:[-'’.]\w+)*|[^\w\s]")
SHOWN = 10  # repaired transitions listed


@dataclass(frozen=True)
class NerConfig:
    tokens_field: str = "tokens"  # JSONL: key of the word list
    tags_field: str = "tags"  # JSONL: key of the tag list (one per word)
    tag_column: int = -1  # CoNLL: column of the tag (0 is the word; -1: the last)
    scheme: Literal["iob2", "iob1", "bioes"] = "iob2"  # tag scheme of the data files
    tags: tuple[str, ...] = ()  # fixed tag set (any scheme); empty: the tags found in train
    invalid: Literal["repair", "reject"] = "repair"  # O -> I-X: make it B-X, or stop
    constrained: bool = False  # decode with valid IOB2 transitions only (Viterbi)
    word_piece: Literal["auto", "first", "last"] = "auto"  # auto: first (BERT), last (GPT-2)

    def __post_init__(self):
        bad = [t for t in self.tags if tags_lib.check_tag(t, self.scheme)]
        if bad:
            raise ValueError(f"`task.tags` {bad} are not {self.scheme.upper()} tags "
                             "(O, or B-/I-" + ("/E-/S-" if self.scheme == "bioes" else "")
                             + " and a type)")


@dataclass(frozen=True)
class Sentences:
    words: list[list[str]]
    labels: list[list[str]] | None  # IOB2 tags per word; None when unlabelled
    where: list[str]
    texts: list[str]  # the raw text, or the words joined by single spaces
    offsets: list[list[tuple[int, int]]]  # each word's [start, end) in `texts`

    def __len__(self) -> int:
        return len(self.words)

    def take(self, idx) -> "Sentences":
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Sentences(pick(self.words), pick(self.labels), pick(self.where),
                         pick(self.texts), pick(self.offsets))


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of raw text (URLs, @mentions, #tags, words with inner - ' . kept whole,
    other punctuation alone) with their character offsets."""
    found = [(m.group(), (m.start(), m.end())) for m in WORD.finditer(text)]
    return [w for w, _ in found], [o for _, o in found]


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), offsets


def _row(cfg: NerConfig, row: dict, where: str, labelled: bool, problems: list[str]):
    """(words, raw tags or None, text, offsets, line of each word) of one reader row."""
    name, _, line = where.rpartition(":")
    first = int(line) if line.isdigit() else None
    if "columns" in row:  # CoNLL sentence
        cols = row["columns"]
        words = [c[0] for c in cols]
        lines = [f"{name}:{first + i}" if first else where for i in range(len(cols))]
        raw = None
        if labelled:
            col = cfg.tag_column
            if not -len(cols[0]) < col < len(cols[0]) or col % len(cols[0]) == 0:
                problems.append(f"{where}: `task.tag_column` {col} is not a tag column of a "
                                f"line with {len(cols[0])} columns (0 is the word)")
                return None
            raw = [c[col] for c in cols]
        text, offsets = join_words(words)
        return words, raw, text, offsets, lines
    if cfg.tokens_field in row:
        words = row[cfg.tokens_field]
        if not isinstance(words, list) or not words or not all(
                isinstance(w, str) and w.strip() for w in words):
            problems.append(f"{where}: `{cfg.tokens_field}` must be a non-empty list of "
                            f"non-empty strings, got {str(words)[:80]}")
            return None
        raw = None
        if labelled:
            raw = row.get(cfg.tags_field)
            if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
                problems.append(f"{where}: `{cfg.tags_field}` must be a list of tag strings, "
                                f"got {str(raw)[:80]} (set `task.tags_field`)")
                return None
            if len(raw) != len(words):
                problems.append(f"{where}: {len(words)} words but {len(raw)} tags; give one "
                                "tag per word")
                return None
        text, offsets = join_words(words)
        return words, raw, text, offsets, [f"{where} word {i + 1}" for i in range(len(words))]
    if not labelled and isinstance(row.get("text"), str):
        words, offsets = split_words(row["text"])
        return words, None, row["text"], offsets, []
    problems.append(f"{where}: no `{cfg.tokens_field}` field (fields: {', '.join(row)}); NER "
                    "rows are CoNLL sentences (`data.format: conll`), JSONL with "
                    f"`{cfg.tokens_field}` and `{cfg.tags_field}`, or (predict) raw `text`")
    return None


def examples(cfg: NerConfig, rows, labelled: bool = True) -> Sentences:
    """Reader rows -> sentences with IOB2 tags, collecting every bad row."""
    allowed = {tags_lib.to_iob2([t], cfg.scheme)[0] for t in cfg.tags} if cfg.tags else None
    out = {"words": [], "labels": [], "where": [], "texts": [], "offsets": []}
    problems, bad, repaired = [], [], []
    folder = rows.source.rsplit("/", 1)[0] + "/" if "/" in rows.source else ""
    for i, (row, where) in enumerate(zip(rows.fields, rows.where)):
        where = folder + where if not where.startswith(("tfds:", "<", "/")) else where
        before = len(problems)
        got = _row(cfg, row, where, labelled, problems)
        if got is not None and labelled:
            words, raw, _, _, lines = got
            for tag, at in zip(raw, lines):
                why = tags_lib.check_tag(tag, cfg.scheme)
                if why:
                    problems.append(f"{at}: {why}; set `task.scheme` to the data's scheme")
            if len(problems) == before:
                iob2 = tags_lib.to_iob2(raw, cfg.scheme)
                unknown = [(t, at) for t, at in zip(iob2, lines) if allowed and t not in allowed]
                for t, at in unknown:
                    problems.append(f"{at}: tag {t!r} is not in `task.tags` "
                                    f"({', '.join(cfg.tags)}); add it or fix the data")
                for k in tags_lib.invalid_transitions(iob2):
                    prev = iob2[k - 1] if k else "the sentence start"
                    msg = (f"{lines[k]}: invalid transition {prev} -> {iob2[k]} "
                           f"({words[k]!r}): an I- tag must continue an entity of its type")
                    if cfg.invalid == "reject":
                        problems.append(msg + "; fix the tag or set `task.invalid: repair` "
                                        "to read it as B-")
                    else:
                        repaired.append(msg)
                got = (words, tags_lib.repair(iob2), *got[2:])
        if len(problems) > before or got is None:
            bad.append(i)
            continue
        words, iob2, text, offsets, _ = got
        out["words"].append(words)
        out["labels"].append(iob2 if labelled else None)
        out["where"].append(where)
        out["texts"].append(text)
        out["offsets"].append(offsets)
    if problems:
        raise DataError(problems, rows=bad)
    if repaired:
        from tfsft.messages import log

        log(f"WARNING {rows.source}: {len(repaired)} invalid tag transition(s) read as B- "
             "(`task.invalid: repair`); the first:")
        for msg in repaired[:SHOWN]:
            log("  " + msg)
    return Sentences(out["words"], out["labels"] if labelled else None, out["where"],
                     out["texts"], out["offsets"])


def make_label_map(cfg: NerConfig, train: Sentences) -> list[str]:
    """"O", then B- and I- of each entity type in alphabetical order."""
    if cfg.tags:
        found = set(tags_lib.to_iob2(list(cfg.tags), cfg.scheme))
    else:
        found = {t for seq in train.labels for t in seq}
    kinds = sorted({tags_lib.split_tag(t)[1] for t in found if t != "O"})
    if not kinds:
        raise DataError("the training data has no entity tags (only O); NER needs at least "
                        "one entity type")
    return ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]


def encode_inputs(cfg: NerConfig, preprocessor, ex: Sentences):
    from tfsft import pipeline

    from . import align

    tokenizer = preprocessor.tokenizer
    causal = align.is_byte_level(tokenizer)  # the GPT-2 family
    piece = cfg.word_piece if cfg.word_piece != "auto" else ("last" if causal else "first")
    arrays = align.encode_words(tokenizer, ex.words, preprocessor.sequence_length,
                                segment_ids=not causal, piece=piece)
    features = {k: arrays[k] for k in ("token_ids", "padding_mask", "segment_ids",
                                        "word_starts") if k in arrays}
    words = sum(len(w) for w in ex.words)
    notes = {"words": int(words), "words_cut_off": int(arrays["cut_off"].sum()),
             "words_without_pieces": int(arrays["zero_piece"].sum()),
             "sentences_cut": int((arrays["cut_off"] > 0).sum())}
    return pipeline.Encoded(features, features["padding_mask"].sum(axis=1).astype(np.int32),
                            arrays["full_lengths"], notes)


def encode_targets(cfg: NerConfig, label_names: list[str], ex: Sentences) -> np.ndarray:
    """Tag ids per word, [rows, longest sentence], -1 after each sentence's end."""
    index = {t: i for i, t in enumerate(label_names)}
    width = max((len(w) for w in ex.words), default=0)
    out = np.full((len(ex), max(width, 1)), -1, dtype=np.int32)
    problems, bad = [], []
    for r, seq in enumerate(ex.labels):
        for k, tag in enumerate(seq):
            if tag not in index:
                problems.append(f"{ex.where[r]}: word {k + 1} ({ex.words[r][k]!r}) has tag "
                                f"{tag!r}, which the training data does not have (tags: "
                                f"{', '.join(label_names)})")
                bad.append(r)
                break
            out[r, k] = index[tag]
    if problems:
        raise DataError(problems, rows=bad)
    return out


def align_targets(cfg: NerConfig, enc, targets: np.ndarray) -> np.ndarray:
    """Training targets matching the model's word axis (`word_starts`' width): -1 (no
    loss) for padding and for words the model cannot see."""
    starts = enc.features["word_starts"]
    out = np.full(starts.shape, -1, dtype=np.int32)
    width = min(starts.shape[1], targets.shape[1])
    out[:, :width] = targets[:, :width]
    out[starts == 0] = -1
    return out


def build_model(cfg: NerConfig, backbone, num_outputs: int, dropout: float):
    from . import heads

    return heads.build(backbone, num_outputs, dropout)


def loss(cfg: NerConfig, label_smoothing: float):
    import keras

    if label_smoothing:
        raise ConfigError("`train.label_smoothing` is not supported by the ner task; "
                          "set it to 0")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)


def metrics(cfg: NerConfig) -> list:
    from . import heads

    return [heads.WordAccuracy(name="accuracy")]


def _transitions(label_names: list[str]) -> np.ndarray:
    """allowed[i, j]: tag j may follow tag i in IOB2 (row len(label_names): the start)."""
    n = len(label_names)
    allowed = np.ones((n + 1, n), dtype=bool)
    for j, tag in enumerate(label_names):
        prefix, kind = tags_lib.split_tag(tag)
        if prefix == "I":
            for i, prev in enumerate(label_names + ["<start>"]):
                allowed[i, j] = prev in (f"B-{kind}", f"I-{kind}")
    return allowed


def viterbi(scores: np.ndarray, allowed: np.ndarray) -> list[int]:
    """Best tag path under the transition mask (scores: [words, tags] log-probabilities)."""
    n, t = scores.shape
    if n == 0:
        return []
    penalty = np.where(allowed, 0.0, -np.inf)
    best = scores[0] + penalty[-1]
    back = np.zeros((n, t), dtype=np.int64)
    for k in range(1, n):
        total = best[:, None] + penalty[:-1]
        back[k] = np.argmax(total, axis=0)
        best = total[back[k], np.arange(t)] + scores[k]
    path = [int(np.argmax(best))]
    for k in range(n - 1, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


def predict_tags(cfg: NerConfig, label_names: list[str], logits: np.ndarray,
                 ex: Sentences) -> list[list[str]]:
    """Per-word tags; words past the model's word axis are O."""
    allowed = _transitions(label_names) if cfg.constrained else None
    out = []
    for r, words in enumerate(ex.words):
        z = logits[r, :len(words)]
        logp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
        ids = viterbi(logp, allowed) if allowed is not None else np.argmax(z, -1).tolist()
        out.append([label_names[i] for i in ids] + ["O"] * (len(words) - len(ids)))
    return out


def decode(cfg: NerConfig, label_names: list[str], logits: np.ndarray,
           ex: Sentences | None = None) -> list[dict]:
    if ex is None:
        raise ValueError("the ner task decodes with its examples (words and offsets)")
    results = []
    for r, seq in enumerate(predict_tags(cfg, label_names, logits, ex)):
        entities = []
        for kind, first, last in tags_lib.chunks(seq):
            start, end = ex.offsets[r][first][0], ex.offsets[r][last][1]
            entities.append({"text": ex.texts[r][start:end], "type": kind, "start": start,
                             "end": end})
        results.append({"words": ex.words[r], "tags": seq, "entities": entities})
    return results


def report(cfg: NerConfig, label_names: list[str], targets: np.ndarray, logits: np.ndarray,
           ex: Sentences | None = None) -> dict:
    if ex is None:
        raise ValueError("the ner task reports with its examples (gold tags per word)")
    pred = predict_tags(cfg, label_names, logits, ex)
    s = tags_lib.scores(ex.labels, pred)
    m = s["micro"]
    lines = [f"{'':>16} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for name, r in [*s["per_type"].items(), ("", None), ("micro avg", m)]:
        lines.append("" if r is None else f"{name:>16} {r['precision']:>9.4f} "
                     f"{r['recall']:>9.4f} {r['f1']:>9.4f} {r['support']:>9}")
    lines += ["", f"token accuracy {s['token_accuracy']:.4f} over "
              f"{sum(len(w) for w in ex.words)} words; constrained decoding: "
              f"{'yes' if cfg.constrained else 'no'}"]
    return {"examples": len(ex), "words": sum(len(w) for w in ex.words),
            "text": "\n".join(lines) + "\n",
            "entity": m, "per_type": s["per_type"], "token_accuracy": s["token_accuracy"],
            "constrained_decoding": cfg.constrained,
            "summary": {"entity_f1": m["f1"], "entity_precision": m["precision"],
                        "entity_recall": m["recall"], "token_accuracy": s["token_accuracy"]},
            "headline": f"entity F1 {m['f1']:.4f} (precision {m['precision']:.4f}, recall "
                        f"{m['recall']:.4f}, {m['support']} entities), token accuracy "
                        f"{s['token_accuracy']:.4f}"}


def augment(cfg: NerConfig, ex: Sentences, augmenter) -> tuple[Sentences, list]:
    """Entity-preserving augmentation: words inside entities are never edited."""
    protected = [[t != "O" for t in seq] for seq in ex.labels]
    added = augmenter.run(ex.words, protected)
    words, labels, where, texts, offsets = [], [], [], [], []
    for row, copy, edit, new, index in added:
        words.append(new)
        labels.append([ex.labels[row][j] for j in index])
        where.append(f"{ex.where[row]} (augmented, copy {copy + 1}: {edit})")
        text, offs = join_words(new)
        texts.append(text)
        offsets.append(offs)
    return Sentences(ex.words + words, ex.labels + labels, ex.where + where, ex.texts + texts,
                     ex.offsets + offsets), added


class NerTask:
    """The plugin object: the contract members of tfsft/tasks.py."""

    name = "ner"
    config_class = NerConfig
    examples = staticmethod(examples)
    make_label_map = staticmethod(make_label_map)
    encode_inputs = staticmethod(encode_inputs)
    encode_targets = staticmethod(encode_targets)
    align_targets = staticmethod(align_targets)
    build_model = staticmethod(build_model)
    loss = staticmethod(loss)
    metrics = staticmethod(metrics)
    decode = staticmethod(decode)
    report = staticmethod(report)
    augment = staticmethod(augment)


TASK = NerTask()
