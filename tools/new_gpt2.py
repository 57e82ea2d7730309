"""Make a randomly initialised GPT-2 preset with a byte-level BPE vocabulary trained on
your data: the starting point for `tasks/translation` when no pretrained GPT-2 is at hand
(no network). The result is a KerasHub preset folder (`model.backbone: <folder>`).

    python tools/new_gpt2.py ../shared/data/translation/multi30k_en_de/train.tsv \\
        --fields source,target --vocab-size 8000 --layers 4 --hidden 256 --heads 4 \\
        --max-length 128 --out presets/gpt2-multi30k

With network, a pretrained GPT-2 is one override away instead:
`model.backbone=gpt2_base_en` on the command line (KerasHub downloads it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="training files (.tsv/.csv/.jsonl) to learn BPE on")
    p.add_argument("--fields", default="source,target",
                   help="comma-separated text fields to learn from (default: source,target)")
    p.add_argument("--out", required=True, help="preset folder to create (must not exist)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=0, help="default: 4 x hidden")
    p.add_argument("--max-length", type=int, default=128, help="the model's position limit")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from tfsft import bpe, data, quiet
    from tfsft.errors import UserError

    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose another --out (nothing was written)", file=sys.stderr)
        return 2
    bad = [f"--{name.replace('_', '-')} {value} must be >= 1" for name, value in (
        ("vocab_size", args.vocab_size), ("layers", args.layers), ("heads", args.heads),
        ("hidden", args.hidden), ("max_length", args.max_length)) if value < 1]
    if bad:
        print(f"error: {'; '.join(bad)} (nothing was written)", file=sys.stderr)
        return 2
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    texts = []
    for source in args.data:
        try:
            rows = data.read_rows(source)
        except UserError as e:
            print(f"error: {e} (nothing was written)", file=sys.stderr)
            return 2
        absent = [f for f in fields if not any(f in r for r in rows.fields)]
        if absent:
            print(f"error: {source} has no field {', '.join(map(repr, absent))} (fields: "
                  f"{', '.join(sorted({k for r in rows.fields for k in r}))}); fix --fields "
                  "(nothing was written)", file=sys.stderr)
            return 2
        for f in fields:
            texts += [r[f] for r in rows.fields if isinstance(r.get(f), str)]
    if not texts:
        print(f"error: no text in fields {fields} of {', '.join(args.data)}", file=sys.stderr)
        return 2
    quiet.import_tensorflow_quietly()
    import keras
    import keras_hub

    start = time.time()
    try:
        vocab, merges = bpe.train(texts, args.vocab_size)
    except ValueError as e:
        print(f"error: --vocab-size {args.vocab_size}: {e} (nothing was written)",
              file=sys.stderr)
        return 2
    print(f"BPE: {len(vocab)} tokens from {len(texts)} texts in {time.time() - start:.1f} s",
          file=sys.stderr)
    keras.utils.set_random_seed(args.seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.hidden, intermediate_dim=args.intermediate or 4 * args.hidden,
        dropout=args.dropout, max_sequence_length=args.max_length)
    tmp = out.with_name(f".{out.name}.tmp")
    backbone.save_to_preset(str(tmp))
    bpe.tokenizer(vocab, merges).save_to_preset(str(tmp))
    (tmp / "made_by.json").write_text(json.dumps({"tool": "tools/new_gpt2.py", **vars(args)},
                                                 indent=2))
    tmp.rename(out)
    print(f"wrote {out}: GPT-2 with {backbone.count_params():,} parameters (random init), "
          f"vocabulary {len(vocab)}, positions {args.max_length}; use it with: tfsft fit "
          f"tasks/translation (or tasks/instruction) model.backbone={out} "
          f"data.max_length={args.max_length}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
