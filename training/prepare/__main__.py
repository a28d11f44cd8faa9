"""`python -m training.prepare --task TASK ...`: a dataset in its official format -> a trainable data root.

    python -m training.prepare --task vqa --questions Q.json --annotations A.json \\
        [--val-questions VQ.json --val-annotations VA.json] --images DIR --out D \\
        --detector artifacts/detector/synthetic-detector.safetensors \\
        [--held-out-split val | --held-out-images 500|10%] [--checkpoint runs/demo/model]
    python -m training.prepare --task refcoco --refs 'refs(unc).p' --instances instances.json \\
        --images DIR --out D --detector W [--held-out-split val | --held-out-images N|P%]
    python -m training.prepare --task nlvr2 --train train.json [--dev dev.json] --images DIR \\
        --out D --detector W [--held-out-split dev | --held-out-pairs N|P%]
    python -m training.prepare --task snli_ve --train snli_ve_train.jsonl [--dev snli_ve_dev.jsonl] \\
        --images DIR --out D --detector W [--held-out-split dev | --held-out-images N|P%]

Prints which examples train and which are held out for evaluation, in numbers, before anything is
extracted; then extracts region features with the detector into the LMDB the task's loader reads,
keyed by the image ids the loader looks up (resumable; RefCOCO also gets its GT-box LMDB), writes
the task's files, the loader settings and the clean split for this task only, and checks that the
task's loader reads the training and held-out splits.  `docs/your-own-data.md` walks the whole loop.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from regions.extract import ID_MODES, resolve_detector
from training.prepare.common import (
    AUTO_IDS,
    ImageIndex,
    TrainDevSources,
    extract_features,
    file_sha256,
    parse_held_out,
    update_manifest,
    verify_loaders,
)
from training.prepare.nlvr2 import prepare_nlvr2
from training.prepare.refcoco import REFER_TASKS, ReferSources, prepare_refer
from training.prepare.snli_ve import prepare_snli_ve
from training.prepare.vqa import VqaSources, prepare_vqa
from vilbert.cli import ArgumentParser, UserError, run

TASKS = ("vqa", "refcoco", "refcoco+", "refcocog", "nlvr2", "snli_ve")
ALIASES = {"refcoco+": "refcoco_plus"}  # --task name -> task slug (what fit's tasks=[...] takes)
FINETUNE = "training/configs/finetune.yaml"
# Per format: the flags it needs, and the flags only some formats take (anything else is refused).
REQUIRED = {
    "vqa": ("questions", "annotations"),
    "refer": ("refs", "instances"),
    "nlvr2": ("train",),
    "snli_ve": ("train",),
}
ONLY = {
    "questions": ("vqa",),
    "annotations": ("vqa",),
    "val_questions": ("vqa",),
    "val_annotations": ("vqa",),
    "min_count": ("vqa",),
    "answers_from_checkpoint": ("vqa",),
    "refs": ("refer",),
    "instances": ("refer",),
    "train": ("nlvr2", "snli_ve"),
    "dev": ("nlvr2", "snli_ve"),
    "held_out_images": ("vqa", "refer", "snli_ve"),
    "held_out_pairs": ("nlvr2",),
}
HELD_OUT_SPLIT = {"vqa": "val", "refer": "val", "nlvr2": "dev", "snli_ve": "dev"}  # its own name


def format_of(task: str) -> str:
    """The file format of a task slug: refcoco, refcoco_plus and refcocog share the refer format."""
    return "refer" if task in REFER_TASKS else task


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training.prepare",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Docs: docs/your-own-data.md (prepare -> fit -> evaluate -> export -> serve).",
    )
    parser.add_argument(
        "--task",
        required=True,
        choices=TASKS,
        help="the dataset's format: VQA v2, the refer format (RefCOCO, RefCOCO+, RefCOCOg), NLVR2, SNLI-VE",
    )
    vqa = parser.add_argument_group("VQA v2 (--task vqa)")
    vqa.add_argument("--questions", type=Path, help="questions JSON in VQA v2's format")
    vqa.add_argument("--annotations", type=Path, help="annotations JSON (10 answers each)")
    vqa.add_argument("--val-questions", type=Path, help="a second pair, e.g. VQA v2's val2014 files")
    vqa.add_argument("--val-annotations", type=Path)
    refer = parser.add_argument_group("referring expressions (--task refcoco, refcoco+, refcocog)")
    refer.add_argument("--refs", type=Path, help="the refs pickle: refs(unc).p, or refs(umd).p for RefCOCOg")
    refer.add_argument("--instances", type=Path, help="the COCO instances.json the refs' ann_id point into")
    pairs = parser.add_argument_group("NLVR2 and SNLI-VE (--task nlvr2, snli_ve)")
    pairs.add_argument(
        "--train", type=Path, help="JSON lines: NLVR2's train.json or SNLI-VE's snli_ve_train.jsonl"
    )
    pairs.add_argument(
        "--dev",
        type=Path,
        help="a second file, held out for evaluation (NLVR2's dev.json, snli_ve_dev.jsonl)",
    )
    parser.add_argument("--images", type=Path, help="folder of the images, searched recursively (required)")
    parser.add_argument("--out", type=Path, help="the data root to write, training's data.root (required)")
    parser.add_argument(
        "--detector", type=Path, help="detector weights: .safetensors (ours) or a .pth release (required)"
    )
    parser.add_argument("--detector-preset", help="the preset of a .pth detector (default vg-x152-fpn)")
    held = parser.add_mutually_exclusive_group()
    held.add_argument(
        "--held-out-split",
        choices=("val", "dev"),
        help="hold out the dataset's own held-out split (the default when there is one): every "
        "question of --val-questions, the refs' val/test splits, every line of --dev",
    )
    held.add_argument(
        "--held-out-images",
        type=parse_held_out,
        metavar="N|P%",
        help="hold out N images (or P%% of them) with all their questions / expressions / hypotheses, "
        "drawn from every file given (default without a held-out split: 10%%)",
    )
    held.add_argument(
        "--held-out-pairs",
        type=lambda text: parse_held_out(text, "--held-out-pairs"),
        metavar="N|P%",
        help="NLVR2: hold out N image pairs (or P%% of them) with all their statements (default "
        "without --dev: 10%%)",
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
        "--min-count", type=int, help="VQA vocabulary: answers of >= this many questions (default 9)"
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


def check_flags(parser: ArgumentParser, args: argparse.Namespace, task: str) -> None:
    """The flags of this task's format are given and no other format's (a usage error otherwise)."""
    fmt = format_of(task)

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    needed = (*REQUIRED[fmt], "images", "out", "detector")
    missing = [flag(name) for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required for --task {args.task}: {', '.join(missing)}")
    for name, formats in ONLY.items():
        value = getattr(args, name)
        if value is not None and value is not False and fmt not in formats:
            hint = {"held_out_images": "; NLVR2 holds out image pairs: --held-out-pairs N|P%"}.get(name, "")
            takes = ", ".join(t for t in TASKS if format_of(ALIASES.get(t, t)) in formats)
            parser.error(f"{flag(name)} is for --task {takes}, not {args.task}{hint}")
    if args.held_out_split is not None and args.held_out_split != HELD_OUT_SPLIT[fmt]:
        parser.error(
            f"--held-out-split {args.held_out_split}: {args.task}'s held-out split is "
            f"{HELD_OUT_SPLIT[fmt]} (--held-out-split {HELD_OUT_SPLIT[fmt]})"
        )
    if (args.val_questions is None) != (args.val_annotations is None):
        parser.error("give both --val-questions and --val-annotations, or neither")


def check_paths(args: argparse.Namespace) -> None:
    """Every file and folder named on the command line exists (before anything is loaded)."""
    for flag in (
        "questions",
        "annotations",
        "val_questions",
        "val_annotations",
        "refs",
        "instances",
        "train",
        "dev",
        "id_map",
        "detector",
    ):
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
    parser = build_parser()
    args = parser.parse_args(argv)
    task = ALIASES.get(args.task, args.task)
    check_flags(parser, args, task)
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

    def extract(index: ImageIndex, lmdb: Path, boxes: dict | None = None) -> set[str]:
        what = "features at the annotation boxes" if boxes is not None else "region features"
        print(f"{what}: {len(index.files):,} images -> {lmdb} ({dim}-d, {extractor.preset.name})")
        return extract_features(
            extractor,
            index,
            args.images,
            lmdb,
            fingerprint,
            batch_size=args.batch_size,
            progress=not args.quiet,
            boxes=boxes,
        )

    record = prepare_task(task, args, answers, extract)
    update_manifest(args.out, task, record | {"detector": str(args.detector), **fingerprint})
    if task != "vqa":
        verify_loaders(args.out, task)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s: {record['summary']}")
    print(
        "next: python -m training.fit --config "
        f"{FINETUNE} model.init_checkpoint={args.checkpoint or 'runs/demo/model'} "
        f"tasks=[{task}] data.root={args.out} out=runs/finetune"
    )
    print(
        "then: python -m training.evaluate --checkpoint runs/finetune/model --split val  (the held-out set)"
    )
    return 0


def prepare_task(
    task: str, args: argparse.Namespace, answers: list[str] | None, extract: Callable[..., set[str]]
) -> dict[str, object]:
    """Dispatch to the task's format (`vqa.py`, `refcoco.py`, `nlvr2.py`, `snli_ve.py`)."""
    held_out_split = args.held_out_split
    match format_of(task):
        case "vqa":
            sources = VqaSources(
                args.questions,
                args.annotations,
                args.images,
                args.val_questions,
                args.val_annotations,
                held_out_split,
                args.held_out_images,
                args.seed,
                args.min_count if args.min_count is not None else 9,
                answers,
                args.ids,
                args.id_map,
            )
            return prepare_vqa(sources, args.out, extract, progress=not args.quiet)
        case "refer":
            refer = ReferSources(
                task,
                args.refs,
                args.instances,
                args.images,
                held_out_split,
                args.held_out_images,
                args.seed,
                args.ids,
                args.id_map,
            )
            return prepare_refer(refer, args.out, extract)
        case "nlvr2" | "snli_ve":
            held_out = args.held_out_pairs if task == "nlvr2" else args.held_out_images
            sources = TrainDevSources(
                args.train, args.images, args.dev, held_out_split, held_out, args.seed, args.ids, args.id_map
            )
            prepare = prepare_nlvr2 if task == "nlvr2" else prepare_snli_ve
            return prepare(sources, args.out, extract)
    raise AssertionError(task)


if __name__ == "__main__":
    run(main)
