"""Tag schemes and entity-level scores for token classification (NER).

Internally every sequence is IOB2 (`B-X` starts an entity, `I-X` continues it, `O` is
outside). IOB1 (`I-X` starts an entity unless it follows another `X` entity; `B-X` only
separates two adjacent `X` entities) and BIOES (`S-X` single-word entity, `E-X` last word)
are converted on reading. After conversion, an `I-X` that follows `O`, the start of the
sentence or an entity of another type is an invalid transition: it is reported with its
file:line, then repaired to `B-X` or rejected, per config.

Entities are chunks found as the CoNLL evaluation script (conlleval) finds them, so that
scores equal seqeval's default mode exactly: precision, recall and F1 over exact
(type, start, end) matches, micro-averaged and per type, plus token accuracy.

Example:
>>> to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], "iob1")
['B-PER', 'I-PER', 'O', 'B-LOC', 'B-LOC']
>>> chunks(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"])
[('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4)]
"""

from __future__ import annotations

SCHEMES = ("iob2", "iob1", "bioes")


def split_tag(tag: str) -> tuple[str, str]:
    """('B', 'PER') for 'B-PER'; ('O', '') for 'O'."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def check_tag(tag: str, scheme: str) -> str | None:
    """Why `tag` is not a tag of `scheme`, or None when it is."""
    if tag == "O":
        return None
    prefix, kind = split_tag(tag)
    allowed = "BI" if scheme in ("iob1", "iob2") else "BIES"
    if len(prefix) != 1 or prefix not in allowed or not kind:
        examples = "B-PER, I-PER" + (", E-PER, S-PER" if scheme == "bioes" else "")
        return (f"tag {tag!r} is not an {scheme.upper()} tag (expected O or a prefix "
                f"{'/'.join(allowed)}, a hyphen and a type, e.g. {examples})")
    return None


def to_iob2(tags: list[str], scheme: str) -> list[str]:
    """The same entities in IOB2 (tags must be valid for `scheme`)."""
    if scheme == "iob2":
        return list(tags)
    out = []
    prev_kind = ""
    for tag in tags:
        prefix, kind = split_tag(tag)
        if scheme == "bioes":
            prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        elif prefix == "I" and prev_kind != kind:  # iob1: I-X opening an entity
            prefix = "B"
        out.append("O" if prefix == "O" else f"{prefix}-{kind}")
        prev_kind = kind
    return out


def invalid_transitions(tags: list[str]) -> list[int]:
    """Positions of IOB2 `I-X` tags that do not continue an `X` entity."""
    bad = []
    prev_kind = ""
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == "I" and prev_kind != kind:
            bad.append(i)
        prev_kind = kind
    return bad


def repair(tags: list[str]) -> list[str]:
    """IOB2 tags with each invalid `I-X` turned into `B-X` (it opens an entity)."""
    out = list(tags)
    for i in invalid_transitions(tags):
        out[i] = "B-" + split_tag(tags[i])[1]
    return out


# conlleval: which (previous prefix, prefix) pairs end / start a chunk
_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def chunks(tags: list[str], offset: int = 0) -> list[tuple[str, int, int]]:
    """Entities (type, first, last) of one tag sequence, as conlleval reads them; any of
    IOB1/IOB2/BIOES prefixes are understood."""
    found = []
    prev_prefix, prev_kind, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = (tag[0], tag[1:].split("-", 1)[-1] or "_") if tag else ("O", "_")
        ends = (prev_prefix in ("E", "S") or (prev_prefix, prefix) in _ENDS
                or (prev_prefix not in ("O", ".") and prev_kind != kind))
        if ends:
            found.append((prev_kind, offset + begin, offset + i - 1))
        starts = (prefix in ("B", "S") or (prev_prefix, prefix) in _STARTS
                  or (prefix not in ("O", ".") and prev_kind != kind))
        if starts:
            begin = i
        prev_prefix, prev_kind = prefix, kind
    return found


def _prf(correct: int, predicted: int, true: int) -> dict:
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": true}


def scores(true: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro and per-type precision/recall/F1 and token accuracy of
    sentence-aligned tag sequences."""
    if len(true) != len(pred) or any(len(t) != len(p) for t, p in zip(true, pred)):
        raise ValueError("true and predicted tag sequences must have the same lengths")
    gold, guess, offset = set(), set(), 0
    for t, p in zip(true, pred):
        gold.update(chunks(t, offset))
        guess.update(chunks(p, offset))
        offset += len(t) + 1
    kinds = sorted({k for k, _, _ in gold} | {k for k, _, _ in guess})
    per_type = {k: _prf(len({e for e in gold & guess if e[0] == k}),
                        sum(e[0] == k for e in guess), sum(e[0] == k for e in gold))
                for k in kinds}
    tokens = sum(len(t) for t in true)
    same = sum(a == b for t, p in zip(true, pred) for a, b in zip(t, p))
    return {"micro": _prf(len(gold & guess), len(guess), len(gold)), "per_type": per_type,
            "token_accuracy": same / tokens if tokens else 0.0}
