"""`python -m vilbert.convert --official PATH.bin --out DIR`: released 12-in-1 weights -> our format.

Exits non-zero with a message naming the key on any missing, unexpected or mis-shaped key.
Optionally attaches the reference answer vocabularies (`trainval_label2ans.pkl` lists).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from vilbert.checkpoint import CheckpointError, load_official, save_checkpoint
from vilbert.config import ViLBERTConfig, base


def read_label2ans(path: Path) -> list[str]:
    """The reference's `trainval_label2ans.pkl`: a pickled list of answer strings.

    Plain `pickle` is only used on a list of strings the user points at; anything else is refused.
    """
    with open(path, "rb") as fh:
        obj = pickle.load(fh)
    if not isinstance(obj, list) or not all(isinstance(a, str) for a in obj):
        raise ValueError(f"{path}: expected a pickled list of answer strings")
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vilbert.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="multi_task_model.bin (PyTorch pickle)")
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    parser.add_argument("--config", type=Path, help="official JSON config (default: the base preset)")
    parser.add_argument("--vqa-answers", type=Path, help="VQA trainval_label2ans.pkl")
    parser.add_argument("--gqa-answers", type=Path, help="GQA trainval_label2ans.pkl")
    args = parser.parse_args(argv)
    try:
        cfg = ViLBERTConfig.from_official_json(args.config) if args.config else base()
        model = load_official(args.official, cfg)
        answers = {}
        if args.vqa_answers:
            answers["vqa"] = read_label2ans(args.vqa_answers)
        if args.gqa_answers:
            answers["gqa"] = read_label2ans(args.gqa_answers)
        save_checkpoint(args.out, model, answers, meta={"source": f"official:{args.official.name}"})
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.official} -> {args.out} ({n:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
