"""NLVR2: a user's statements in NLVR2's JSON-lines format and their image pairs -> a data root.

Each line of NLVR2's `train.json` / `dev.json` / `test1.json` is one statement about one image pair::

    {"identifier": "dev-850-0-0", "sentence": "There are two dogs.", "label": "True", ...}

The pair is the identifier without its last field (`dev-850-0`); its images are
`<pair>-img0.png` (left) and `<pair>-img1.png` (right), as NLVR2 releases them, and those stems
are the keys the loader reads features by (`training/datasets/verification.py`).  The root:

    D/datasets/nlvr2/train.json   the statements that train (JSON lines, as NLVR2's files)
    D/datasets/nlvr2/dev.json     the held-out statements
    D/datasets/nlvr2/nlvr2_resnext152_faster_rcnn_genome.lmdb   features of every image, by stem
    D/loader_config.json, D/prepare.json

Held out: every statement of `--dev` when given, else image pairs drawn with all their statements
(`--held-out-pairs`, default 10 %).  A training statement on a held-out pair is left out, so no pair
(and no image) is on both sides.  NLVR2 has no clean split (its images are its own).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.datasets.layout import get_layout
from training.datasets.verification import nlvr2_image_keys
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
    warn_missing_images,
    write_jsonl,
)
from vilbert.cli import UserError
from vilbert.tasks import NLVR2_LABELS

FORMAT = "NLVR2"
NAMING = (
    "name each pair's images as NLVR2 does: the identifier without its last field, then -img0 (left) "
    "and -img1 (right), e.g. dev-850-0-img0.png and dev-850-0-img1.png for dev-850-0-0"
)
Line = dict[str, Any]


def pair_of(line: Line) -> str:
    return line["identifier"].rsplit("-", 1)[0]


def read_nlvr2(path: Path, flag: str) -> list[Line]:
    """The statements of one file, checked: an identifier with a sentence field, a True/False label."""
    labels = {label.lower(): label for label in NLVR2_LABELS}
    lines = read_jsonl_file(path, flag, "NLVR2's format: identifier, sentence, label")
    seen: set[str] = set()
    out = []
    for line in lines:
        require_keys(line, ("identifier", "sentence", "label"), f"{flag} {path}", FORMAT)
        identifier = str(line["identifier"])
        if "-" not in identifier:
            raise UserError(
                f"{flag} {path}: identifier {identifier!r} has no pair and sentence fields "
                "(NLVR2's are <split>-<set>-<pair>-<sentence>, e.g. dev-850-0-0)"
            )
        if identifier in seen:
            raise UserError(f"{flag} {path}: identifier {identifier} appears twice")
        seen.add(identifier)
        label = labels.get(str(line["label"]).strip().lower())
        if label is None:
            raise UserError(
                f'{flag} {path}: {identifier} has label {line["label"]!r}; NLVR2\'s are "True" / "False"'
            )
        out.append({**line, "identifier": identifier, "label": label})
    return out


def prepare_nlvr2(
    src: TrainDevSources,
    out: Path,
    extract: Callable[..., set[str]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prepare `out` from `src`; `extract(index, lmdb)` fills the LMDB and returns the keys stored.
    Prints the split in numbers before any feature is extracted.  Returns the manifest record."""
    layout = get_layout("nlvr2")
    train = read_nlvr2(src.train, "--train")
    dev = read_nlvr2(src.dev, "--dev") if src.dev is not None else None
    clash = {line["identifier"] for line in train} & {line["identifier"] for line in dev or []}
    if clash:
        raise UserError(f"identifiers {sorted(clash)[:3]} appear in both --train and --dev")
    lines = train + (dev or [])
    wanted = {key for line in lines for key in nlvr2_image_keys(line["identifier"])}
    index = index_images(src.images, wanted, src.ids, src.id_map, naming=NAMING)
    log(f"{count(len(index.files), 'images')} found under {src.images}; {index.describe(src.images)}")

    def has_images(line: Line, available: set[str] | dict[str, Path]) -> bool:
        return all(key in available for key in nlvr2_image_keys(line["identifier"]))

    before = len(lines)
    train = [line for line in train if has_images(line, index.files)]
    dev = None if dev is None else [line for line in dev if has_images(line, index.files)]
    missing = before - len(train) - len(dev or [])
    warn_missing_images(index, missing, "statements")
    if src.held_out_split is not None and dev is None:
        raise UserError(f"--held-out-split {src.held_out_split} needs --dev FILE (NLVR2's dev.json)")
    split: ItemSplit[Line] = split_items(
        train,
        dev,
        src.held_out,
        src.seed,
        pair_of,
        given="every statement of --dev (--held-out-split dev)",
        unit="pairs",
        items="statements",
        flag="--held-out-pairs",
    )
    if missing:
        split.left_out["statements whose image files are missing"] = missing
    log_split(split, log)

    datasets = out / "datasets"
    lmdb = datasets / layout.features
    keys = {
        key
        for side in ("train", "held_out")
        for line in getattr(split, side)
        for key in nlvr2_image_keys(line["identifier"])
    }
    stored = extract(ImageIndex({k: index.files[k] for k in keys}, index.mode), lmdb)
    split.keep(lambda line: has_images(line, stored), "statements whose images could not be decoded")
    if split.left_out.get("statements whose images could not be decoded"):
        log(f"after leaving out undecodable images: {split.summary()}")
    split.require_both_sides()
    folder = layout.dir(datasets)
    write_jsonl(folder / f"{layout.train_split}.json", split.train)
    write_jsonl(folder / f"{layout.val_split}.json", split.held_out)
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
            "pairs": len(split.groups("train")),
            "statements": len(split.train),
        },
        "evaluate": {
            "split": layout.val_split,
            "pairs": len(split.groups("held_out")),
            "statements": len(split.held_out),
        },
        "left_out": split.left_out,
        "summary": split.summary(),
    }
