"""SNLI-VE: a user's hypotheses in SNLI-VE's JSON-lines format and their Flickr30k images -> a data root.

Each line of `snli_ve_train.jsonl` / `snli_ve_dev.jsonl` / `snli_ve_test.jsonl` is one hypothesis
about one image (the premise)::

    {"Flickr30K_ID": "3416050480", "sentence2": "A man is outdoors.", "gold_label": "entailment", ...}

The image field is `Flickr30K_ID` in the SNLI-VE release and `Flikr30kID` (`3416050480.jpg`) in the
12-in-1 reference's copy, which the loader reads; either is accepted and `Flikr30kID` is written.
The loader keys features by the image's Flickr30k number (`training/datasets/verification.py`):

    D/datasets/visual_entailment/snli_ve_train.jsonl   the hypotheses that train
    D/datasets/visual_entailment/snli_ve_dev.jsonl     the held-out hypotheses
    D/datasets/visual_entailment/cache/flickr_test_ids.npy   the held-out images (the clean split)
    D/datasets/flickr30k/flickr30k_resnext152_faster_rcnn_genome.lmdb   features, by Flickr30k id
    D/loader_config.json, D/prepare.json

Held out: every hypothesis of `--dev` when given, else images drawn with all their hypotheses
(`--held-out-images`, default 10 %; SNLI-VE's own splits are by image).  A training hypothesis on a
held-out image is left out, so no image is on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.datasets.layout import get_layout
from training.prepare.common import (
    ImageIndex,
    ItemSplit,
    TrainDevSources,
    count,
    index_images,
    log_split,
    read_jsonl_file,
    require_keys,
    split_items,
    update_loader_config,
    warn,
    warn_missing_images,
    write_jsonl,
    write_test_ids,
)
from vilbert.cli import UserError
from vilbert.tasks import SNLI_VE_LABELS

FORMAT = "SNLI-VE"
IMAGE_FIELDS = ("Flikr30kID", "Flickr30kID", "Flickr30K_ID")  # the loader reads the first
NO_LABEL = "-"  # SNLI's "no majority": kept, with an all-zero target (as the loader reads it)
NAMING = "name files by their Flickr30k id (3416050480.jpg for Flickr30K_ID 3416050480)"
Line = dict[str, Any]


def image_of(line: Line) -> str:
    return line["Flikr30kID"].rsplit(".", 1)[0]


def read_snli_ve(path: Path, flag: str) -> list[Line]:
    """The hypotheses of one file, checked; each with `Flikr30kID` = `<Flickr30k number>.jpg`."""
    lines = read_jsonl_file(path, flag, "SNLI-VE's format: Flickr30K_ID, sentence2, gold_label")
    out = []
    for number, line in enumerate(lines, start=1):
        field = next((f for f in IMAGE_FIELDS if f in line), None)
        if field is None:
            raise UserError(
                f"{flag} {path}: line {number} has no image field "
                f"({' / '.join(IMAGE_FIELDS)}; SNLI-VE format)"
            )
        require_keys(line, ("sentence2", "gold_label"), f"{flag} {path}", FORMAT)
        stem = Path(str(line[field]).strip()).stem  # "3416050480", "3416050480.jpg" -> 3416050480
        if not stem.isdigit():
            raise UserError(
                f"{flag} {path}: line {number}: image {line[field]!r} is not a Flickr30k number; the SNLI-VE "
                "loader keys images by it (rename the images and ids to numbers)"
            )
        label = str(line["gold_label"])
        if label not in SNLI_VE_LABELS and label != NO_LABEL:
            raise UserError(
                f"{flag} {path}: line {number} has gold_label {label!r}; SNLI-VE's are "
                f"{', '.join(SNLI_VE_LABELS)} (or {NO_LABEL!r})"
            )
        out.append({**line, "Flikr30kID": f"{int(stem)}.jpg", "gold_label": label})
    return out


def prepare_snli_ve(
    src: TrainDevSources,
    out: Path,
    extract: Callable[..., set[str]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prepare `out` from `src`; `extract(index, lmdb)` fills the LMDB and returns the ids stored.
    Prints the split in numbers before any feature is extracted.  Returns the manifest record."""
    layout = get_layout("snli_ve")
    train = read_snli_ve(src.train, "--train")
    dev = read_snli_ve(src.dev, "--dev") if src.dev is not None else None
    lines = train + (dev or [])
    index = index_images(src.images, {image_of(line) for line in lines}, src.ids, src.id_map, naming=NAMING)
    log(f"{count(len(index.files), 'images')} found under {src.images}; {index.describe(src.images)}")
    before = len(lines)
    train = [line for line in train if image_of(line) in index.files]
    dev = None if dev is None else [line for line in dev if image_of(line) in index.files]
    missing = before - len(train) - len(dev or [])
    warn_missing_images(index, missing, "hypotheses")
    if src.held_out_split is not None and dev is None:
        raise UserError(
            f"--held-out-split {src.held_out_split} needs --dev FILE (SNLI-VE's snli_ve_dev.jsonl)"
        )
    split: ItemSplit[Line] = split_items(
        train,
        dev,
        src.held_out,
        src.seed,
        image_of,
        given="every hypothesis of --dev (--held-out-split dev)",
        items="hypotheses",
    )
    if missing:
        split.left_out["hypotheses whose image file is missing"] = missing
    log_split(split, log)
    unlabelled = sum(line["gold_label"] == NO_LABEL for line in split.train + split.held_out)
    if unlabelled:
        warn(f"{count(unlabelled, 'hypotheses')} have gold_label {NO_LABEL!r}: kept, with no target")

    datasets = out / "datasets"
    lmdb = datasets / layout.features
    used = split.groups("train") | split.groups("held_out")
    stored = extract(ImageIndex({i: index.files[i] for i in used}, index.mode), lmdb)
    split.keep(lambda line: image_of(line) in stored, "hypotheses whose image could not be decoded")
    if split.left_out.get("hypotheses whose image could not be decoded"):
        log(f"after leaving out undecodable images: {split.summary()}")
    split.require_both_sides()
    folder = layout.dir(datasets)
    write_jsonl(folder / f"snli_ve_{layout.train_split}.jsonl", split.train)
    write_jsonl(folder / f"snli_ve_{layout.val_split}.jsonl", split.held_out)
    test_ids = layout.test_ids_file(datasets)
    assert test_ids is not None
    # The clean split drops training hypotheses on these images (there are none: a held-out image
    # has no training hypothesis), and `data.clean` needs the file to exist.
    write_test_ids(test_ids, split.groups("held_out"))
    update_loader_config(out, {})  # this root's own file, so no loader_config.json above it applies
    return {
        "format": FORMAT,
        "sources": [str(p) for p in (src.train, src.dev) if p is not None],
        "images": str(src.images),
        "image_ids": index.mode,
        "features": str(lmdb.relative_to(out)),
        "held_out": split.policy,
        "train": {
            "split": layout.train_split,
            "images": len(split.groups("train")),
            "hypotheses": len(split.train),
        },
        "evaluate": {
            "split": layout.val_split,
            "images": len(split.groups("held_out")),
            "hypotheses": len(split.held_out),
        },
        "left_out": split.left_out,
        "summary": split.summary(),
    }
