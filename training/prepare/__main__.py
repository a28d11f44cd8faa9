"""`python -m training.prepare --task vqa ...`: a dataset in its official format -> a trainable data root.

    python -m training.prepare --task vqa --questions Q.json --annotations A.json \\
        [--val-questions VQ.json --val-annotations VA.json] --images DIR --out D \\
        --detector artifacts/detector/synthetic-detector.safetensors \\
        [--held-out-split val | --held-out-images 500|10%] [--checkpoint runs/demo/model]

Prints which questions train and which are held out for evaluation, in numbers, before anything is
extracted; then extracts region features with the detector into the LMDB the loaders read, keyed
by the annotation files' image ids (resumable), and writes the answer vocabulary, the loader
settings and the clean split for this task only.  `docs/your-own-data.md` walks the whole loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from regions.extract import ID_MODES, resolve_detector
from training.prepare.common import (
    AUTO_IDS,
    ImageIndex,
    extract_features,
    file_sha256,
    parse_held_out,
    update_manifest,
)
from training.prepare.vqa import VqaSources, prepare_vqa
from vilbert.cli import ArgumentParser, UserError, run

TASKS = ("vqa",)
FINETUNE = "training/configs/finetune.yaml"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training.prepare",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Docs: docs/your-own-data.md (prepare -> fit -> evaluate -> export -> serve).",
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="the dataset's format (VQA v2)")
    parser.add_argument("--questions", required=True, type=Path, help="questions JSON in VQA v2's format")
    parser.add_argument("--annotations", required=True, type=Path, help="annotations JSON (10 answers each)")
    parser.add_argument("--val-questions", type=Path, help="a second pair, e.g. VQA v2's val2014 files")
    parser.add_argument("--val-annotations", type=Path)
    parser.add_argument(
        "--images", required=True, type=Path, help="folder of the images (searched recursively)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="the data root to write (training's data.root)"
    )
    parser.add_argument(
        "--detector", required=True, type=Path, help="detector weights: .safetensors (ours) or a .pth release"
    )
    parser.add_argument("--detector-preset", help="the preset of a .pth detector (default vg-x152-fpn)")
    held = parser.add_mutually_exclusive_group()
    held.add_argument(
        "--held-out-split",
        choices=("val",),
        help="hold out every question of --val-questions for evaluation (the default when given)",
    )
    held.add_argument(
        "--held-out-images",
        type=parse_held_out,
        metavar="N|P%",
        help="hold out N images (or P%% of them) with all their questions, drawn from every file given "
        "(default without val files: 10%%)",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the held-out images")
    parser.add_argument(
        "--ids",
        choices=(AUTO_IDS, *ID_MODES),
        default=AUTO_IDS,
        help="how an image file's name gives the image_id the annotation files use: number = its "
        "trailing number (COCO_val2014_000000000042.jpg -> 42), stem = the name without extension, "
        "relpath = the path under --images; auto (default) takes the one that finds the most ids",
    )
    parser.add_argument(
        "--id-map", type=Path, help="JSON {relative path: image id}, or a COCO-style images list"
    )
    parser.add_argument(
        "--min-count", type=int, default=9, help="vocabulary: answers of >= this many questions"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="the model you will fine-tune: its region feature size is checked before extracting",
    )
    parser.add_argument(
        "--answers-from-checkpoint",
        action="store_true",
        help="use --checkpoint's VQA answer list as the vocabulary, so its answer head is kept",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per detector call")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def checkpoint_facts(path: Path | None, want_answers: bool) -> tuple[int | None, list[str] | None]:
    """(region feature size, VQA answer list) of the checkpoint to fine-tune, when one is given."""
    if path is None:
        if want_answers:
            raise UserError("--answers-from-checkpoint needs --checkpoint DIR")
        return None, None
    from vilbert.checkpoint import ANSWERS_DIR, CONFIG_FILE
    from vilbert.config import ViLBERTConfig

    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"--checkpoint {path}: not a checkpoint ({CONFIG_FILE} is missing)")
    answers = None
    if want_answers:
        vocab = path / ANSWERS_DIR / "vqa.json"
        if not vocab.is_file():
            raise UserError(
                f"--checkpoint {path} has no VQA answer list ({vocab}); drop --answers-from-checkpoint"
            )
        answers = [str(a) for a in json.loads(vocab.read_text())]
    return ViLBERTConfig.load(path / CONFIG_FILE).v_feature_size, answers


def check_paths(args: argparse.Namespace) -> None:
    """Every file and folder named on the command line exists (before anything is loaded)."""
    for flag in ("questions", "annotations", "val_questions", "val_annotations", "id_map", "detector"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            hint = (
                " (make serve writes artifacts/detector/synthetic-detector.safetensors)"
                if flag == "detector"
                else ""
            )
            raise UserError(f"--{flag.replace('_', '-')} {path}: no such file{hint}")
    if not args.images.is_dir():
        raise UserError(f"--images {args.images}: no such directory")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_paths(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    feature_size, answers = checkpoint_facts(args.checkpoint, args.answers_from_checkpoint)
    extractor, _ = resolve_detector(args.detector_preset, args.detector)
    dim = extractor.preset.feature_dim
    if feature_size is not None and feature_size != dim:
        raise UserError(
            f"--detector gives {dim}-d region features but --checkpoint {args.checkpoint} reads "
            f"{feature_size}-d; use the detector the model was trained with"
        )
    fingerprint = {
        "detector_sha256": file_sha256(args.detector),
        "preset": extractor.preset.name,
        "feature_dim": dim,
    }
    started = time.perf_counter()

    def extract(index: ImageIndex, lmdb: Path) -> set[str]:
        print(f"region features: {len(index.files):,} images -> {lmdb} ({dim}-d, {extractor.preset.name})")
        return extract_features(
            extractor,
            index,
            args.images,
            lmdb,
            fingerprint,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )

    sources = VqaSources(
        args.questions,
        args.annotations,
        args.images,
        args.val_questions,
        args.val_annotations,
        args.held_out_split,
        args.held_out_images,
        args.seed,
        args.min_count,
        answers,
        args.ids,
        args.id_map,
    )
    record = prepare_vqa(sources, args.out, extract, progress=not args.quiet)
    update_manifest(args.out, args.task, record | {"detector": str(args.detector), **fingerprint})
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s: {record['summary']}")
    print(
        "next: python -m training.fit --config "
        f"{FINETUNE} model.init_checkpoint={args.checkpoint or 'runs/demo/model'} "
        f"tasks=[{args.task}] data.root={args.out} out=runs/finetune"
    )
    print(
        "then: python -m training.evaluate --checkpoint runs/finetune/model --split val  (the held-out set)"
    )
    return 0


if __name__ == "__main__":
    run(main)
