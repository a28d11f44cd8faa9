"""`python -m vilbert.convert`: the released 12-in-1 files -> our checkpoint format.

Three sources, one per flag:

    --official multi_task_model.bin --out DIR [--vqa-answers PKL --gqa-answers PKL] [--config JSON]
        the multi-task model alone; without answer lists it converts, warns on stderr and records
        `answers_missing` in checkpoint.json (the server then reports it on GET /tasks)
    --release RELEASE_DIR --out DIR [--no-detector] [--detector-preset NAME|JSON] [--config JSON]
        the model, its answer lists, the region detector and its label vocabularies together
        (`vilbert.release`: the layout, the checks, per-step input digests)
    --pretrained pretrained_model.bin --out DIR [--config JSON] [--seed N]
        the Conceptual Captions pretrained ViLBERT: the trunk, strictly; `cls.*` dropped; task
        tokens and the six heads freshly initialised — the start of `training.fit` with
        `model.init_checkpoint: DIR`

Any missing, unexpected or mis-shaped key or file stops with exit status 2 and a message naming it.
Answer pickles are read with the restricted unpickler (`vilbert.safe_pickle`), weights with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vilbert.checkpoint import CheckpointError, save_checkpoint
from vilbert.cli import ArgumentParser, UserError, run
from vilbert.config import ViLBERTConfig, answer_widths, base
from vilbert.release import ANSWER_FILES, ReleaseError, read_answer_vocabulary
from vilbert.safe_pickle import UnsafePickleError

_RULE = "=" * 88


def read_label2ans(path: Path, expected: int | None = None, vocab: str = "") -> list[str]:
    """A reference `trainval_label2ans.pkl` (restricted unpickler; see `vilbert.release`)."""
    return read_answer_vocabulary(path, expected, vocab)


def missing_answers_warning(missing: list[str], widths: dict[str, int]) -> str:
    """The stderr block `--official` prints when answer lists are not given."""
    flags = {"vqa": "--vqa-answers", "gqa": "--gqa-answers"}
    tasks = {"vqa": "VQA and VG QA", "gqa": "GQA"}
    lines = [
        _RULE,
        f"WARNING: no answer list for {', '.join(missing)} "
        f"({', '.join(flags[v] for v in missing)} not given).",
        f"  {' and '.join(tasks[v] for v in missing)} will answer with indices (answer_<i>), not words.",
        "  checkpoint.json records this (answers_missing) and the server reports it on GET /tasks.",
        "  The release ships the lists as:",
        *(f"    {ANSWER_FILES[v][0]}  ({widths[v]} answers)  -> {flags[v]}" for v in missing),
        "  or convert the whole release directory: python -m vilbert.convert --release DIR --out OUT",
        _RULE,
    ]
    return "\n".join(lines)


def convert_official(args, cfg: ViLBERTConfig) -> int:
    from vilbert.checkpoint import load_official

    widths = answer_widths(cfg)
    given = {"vqa": args.vqa_answers, "gqa": args.gqa_answers}
    # The lists are checked before the (1 GB) weights are read.
    answers = {v: read_label2ans(p, widths[v], v) for v, p in given.items() if p is not None}
    missing = [v for v in ("vqa", "gqa") if v not in answers]
    meta: dict = {"source": f"official:{args.official.name}"}
    if missing:
        warning = missing_answers_warning(missing, widths)
        print(warning, file=sys.stderr, flush=True)
        meta["answers_missing"] = missing
        meta["warnings"] = [f"no answer list for {', '.join(missing)}: answers are served as answer_<index>"]
    model = load_official(args.official, cfg)
    save_checkpoint(args.out, model, answers, meta=meta)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.official} -> {args.out} ({n:,} parameters)")
    if missing:
        print(warning, file=sys.stderr, flush=True)  # again at the end, where it is seen
    return 0


def convert_pretrained(args, cfg: ViLBERTConfig) -> int:
    from vilbert.checkpoint import load_pretrained

    model, fresh = load_pretrained(args.pretrained, cfg, seed=args.seed)
    groups = sorted({".".join(name.split(".")[:2]) for name in fresh})
    meta = {
        "source": f"pretrained:{args.pretrained.name}",
        "pretrained": {
            "fresh_parameters": fresh,
            "seed": args.seed,
            "note": "task tokens and task heads are freshly initialised (N(0, 0.02)); fine-tune with "
            "training.fit model.init_checkpoint",
        },
    }
    save_checkpoint(args.out, model, {}, meta=meta)
    n = sum(p.numel() for p in model.parameters())
    n_fresh = sum(p.numel() for name, p in model.named_parameters() if name in set(fresh))
    print(
        f"converted {args.pretrained} -> {args.out} ({n:,} parameters: {n - n_fresh:,} from the file, "
        f"{n_fresh:,} freshly initialised in {', '.join(groups)})"
    )
    return 0


def convert_release_dir(args, cfg: ViLBERTConfig) -> int:
    from vilbert.release import convert_release, plan_release

    print(f"checking the release in {args.release} ...")
    plan = plan_release(
        args.release, cfg, detector=not args.no_detector, detector_preset=args.detector_preset
    )
    manifest = convert_release(plan, args.out)
    for note in manifest.get("notes", []):
        print(f"  note: {note}")
    steps = manifest.get("steps", {})
    print(f"converted {args.release} -> {args.out} ({', '.join(steps)})")
    model = Path(args.out) / "model"
    detector = steps.get("detector", {}).get("weights")
    print(
        f"next: python -m export --checkpoint {model} --out model_repository"
        + (f" --detector {Path(args.out) / detector}" if detector else "")
        + " --skip-metric"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m vilbert.convert",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official", type=Path, help="multi_task_model.bin (PyTorch pickle)")
    source.add_argument("--release", type=Path, help="a release directory (see vilbert/release.py)")
    source.add_argument("--pretrained", type=Path, help="pretrained_model.bin (Conceptual Captions)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--config", type=Path, help="official JSON config (default: the base preset)")
    parser.add_argument("--vqa-answers", type=Path, help="--official: VQA trainval_label2ans.pkl")
    parser.add_argument("--gqa-answers", type=Path, help="--official: GQA trainval_label2ans.pkl")
    parser.add_argument("--no-detector", action="store_true", help="--release: convert the model alone")
    parser.add_argument(
        "--detector-preset",
        default=None,
        help="--release: detector preset name or JSON (default vg-x152-fpn)",
    )
    parser.add_argument("--seed", type=int, default=0, help="--pretrained: seed of the fresh heads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.official and (args.vqa_answers or args.gqa_answers):
        parser.error("--vqa-answers/--gqa-answers go with --official (--release finds the lists itself)")
    if not args.release and (args.no_detector or args.detector_preset):
        parser.error("--no-detector/--detector-preset go with --release")
    for flag in ("official", "release", "pretrained", "config", "vqa_answers", "gqa_answers"):
        path = getattr(args, flag)
        if path is not None and not path.exists():  # before any work or warning about what is missing
            raise UserError(f"--{flag.replace('_', '-')} {path}: no such file or directory")
    try:
        cfg = ViLBERTConfig.from_official_json(args.config) if args.config else base()
        if args.official:
            return convert_official(args, cfg)
        if args.pretrained:
            return convert_pretrained(args, cfg)
        return convert_release_dir(args, cfg)
    except (CheckpointError, ReleaseError, UnsafePickleError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    run(main)
