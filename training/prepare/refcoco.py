"""RefCOCO / RefCOCO+ / RefCOCOg: a user's refs pickle + instances JSON (the refer format) -> a data root.

The refer format (github.com/lichengunc/refer): `refs(unc).p` (`refs(umd).p` for RefCOCOg) is a
pickled list of refs, each one referred object of one image with its expressions::

    {"ref_id": 0, "ann_id": 1710, "image_id": 42, "split": "train", "category_id": 1,
     "sent_ids": [0, 1], "sentences": [{"sent_id": 0, "raw": "the man on the left", ...}, ...]}

and `instances.json` is COCO instances (`images`, `annotations` with `bbox` [x, y, w, h],
`categories`).  The root is what the grounding loader reads (`training/datasets/grounding.py`,
paths in `layout.py`), for RefCOCO:

    D/datasets/refcoco/refcoco/refs(unc).p          the refs, split train / val / test(A|B)
    D/datasets/refcoco/refcoco/instances.json       the images used and all their annotations
    D/datasets/refcoco/refcoco_unc/refcoco_resnext152_faster_rcnn_genome.lmdb     detections
    D/datasets/refcoco/refcoco_unc/refcoco_gt_resnext152_faster_rcnn_genome.lmdb  features at
        every annotation box of the image (ordered by annotation id), which training merges
        after the detections
    D/datasets/refcoco/cache/coco_test_ids.npy      images of the held-out refs (the clean split)
    D/loader_config.json, D/prepare.json

Held out: the refs' own split fields when they have held-out splits (val, test, testA, testB: the
released splits are by image), else images drawn with every ref on them.  Training refs on a
held-out image are left out.  The loader evaluates `val` and tests on every `test*` split; where the
refs have one of the two only, the held-out refs are written again under the other name (so `fit`
validates and the export's metric gate tests on them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets.layout import LAYOUTS, TaskLayout, get_layout
from training.prepare.common import (
    ImageIndex,
    ItemSplit,
    count,
    index_images,
    log_split,
    read_json_file,
    split_items,
    update_loader_config,
    warn,
    warn_missing_images,
    write_json,
    write_pickle,
    write_test_ids,
)
from vilbert.cli import UserError
from vilbert.safe_pickle import UnsafePickleError, load_pickle

REFER_TASKS = ("refcoco", "refcoco_plus", "refcocog")
TRAIN = "train"
HELD_OUT_SPLITS = ("val", "test", "testA", "testB", "testC")  # the released refer splits beside train
FORMAT = "refer (refs pickle + instances.json)"

Ref = dict[str, Any]


@dataclass
class ReferSources:
    """The user's files and choices for one referring-expressions dataset."""

    task: str  # refcoco | refcoco_plus | refcocog
    refs: Path
    instances: Path
    images: Path
    held_out_split: str | None = None  # "val": the refs' own split fields
    held_out_images: int | float | None = None
    seed: int = 0
    ids: str = "auto"
    id_map: Path | None = None


@dataclass
class ReferFiles:
    refs: list[Ref]
    images: dict[str, dict[str, Any]]  # image id -> instances image entry (may be absent: {})
    annotations: dict[int, dict[str, Any]]  # annotation id -> annotation
    by_image: dict[str, list[dict[str, Any]]]  # image id -> its annotations, by annotation id
    header: dict[str, Any]  # the other top-level keys of instances.json (categories, info, ...)


def _sentences(ref: Ref) -> int:
    return len(ref["sentences"])


def read_refer_files(refs_path: Path, instances_path: Path) -> ReferFiles:
    """Read and check the pair: every ref's `ann_id` is an annotation of its image, sentences have
    `raw` and a unique `sent_id`, splits are the refer ones."""
    if not refs_path.is_file():
        raise UserError(f"--refs {refs_path}: no such file")
    try:
        refs = load_pickle(refs_path)
    except UnsafePickleError as exc:
        raise UserError(f"--refs {refs_path}: {exc}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise UserError(f"--refs {refs_path}: expected the refer format, a pickled list of ref dicts")
    data = read_json_file(instances_path, "--instances")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise UserError(
            f'--instances {instances_path}: expected COCO instances, an object with an "annotations" list'
        )
    annotations: dict[int, dict[str, Any]] = {}
    for a in data["annotations"]:
        if not isinstance(a, dict) or not {"id", "image_id", "bbox"} <= set(a):
            raise UserError(
                f"--instances {instances_path}: an annotation lacks id / image_id / bbox: "
                f"{json.dumps(a)[:120]}"
            )
        annotations[int(a["id"])] = a
    by_image: dict[str, list[dict[str, Any]]] = {}
    for a in sorted(annotations.values(), key=lambda a: int(a["id"])):
        by_image.setdefault(str(a["image_id"]), []).append(a)
    images = {str(im["id"]): im for im in data.get("images", []) if isinstance(im, dict) and "id" in im}
    sent_ids: set[object] = set()
    kept: list[Ref] = []
    for ref in refs:
        missing = [k for k in ("image_id", "ann_id", "sentences") if k not in ref]
        if missing:
            raise UserError(
                f"--refs {refs_path}: a ref lacks {', '.join(missing)} ({FORMAT}): {str(ref)[:120]}"
            )
        split = str(ref.get("split", TRAIN))
        if split != TRAIN and split not in HELD_OUT_SPLITS:
            raise UserError(
                f"--refs {refs_path}: ref {ref.get('ref_id', ref['ann_id'])} has split {split!r}; "
                f"the refer splits are {TRAIN}, {', '.join(HELD_OUT_SPLITS)}"
            )
        ann = annotations.get(int(ref["ann_id"]))
        if ann is None:
            raise UserError(
                f"--refs {refs_path}: ann_id {ref['ann_id']} is not in --instances {instances_path} "
                "(give the instances.json of the same dataset)"
            )
        if str(ann["image_id"]) != str(ref["image_id"]):
            raise UserError(
                f"ann_id {ref['ann_id']}: image {ref['image_id']} in {refs_path.name} but "
                f"{ann['image_id']} in {instances_path.name}"
            )
        for sent in ref["sentences"]:
            if not isinstance(sent, dict) or "raw" not in sent or "sent_id" not in sent:
                raise UserError(
                    f"--refs {refs_path}: ref {ref.get('ref_id', ref['ann_id'])} has a sentence without "
                    f"raw / sent_id: {str(sent)[:120]}"
                )
            if sent["sent_id"] in sent_ids:
                raise UserError(f"--refs {refs_path}: sent_id {sent['sent_id']} appears twice")
            sent_ids.add(sent["sent_id"])
        if ref["sentences"]:
            kept.append({**ref, "split": split})
    if not kept:
        raise UserError(f"--refs {refs_path}: no ref with a sentence")
    header = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    return ReferFiles(kept, images, annotations, by_image, header)


def split_refs(
    files: ReferFiles, held_out_split: str | None, held_out_images: int | float | None, seed: int
) -> ItemSplit[Ref]:
    """The refs' own held-out splits (`held_out_split="val"`, the default when they have any), or
    `held_out_images` images drawn from all refs (default 10 %) with every ref on them."""
    own = [r for r in files.refs if r["split"] != TRAIN]
    if held_out_split is not None and not own:
        raise UserError(
            f"--held-out-split {held_out_split}: every ref is in split train; "
            "drop it to hold out 10% of the images, or pass --held-out-images N|P%"
        )
    use_own = held_out_images is None and bool(own)
    return split_items(
        [r for r in files.refs if r["split"] == TRAIN] if use_own else files.refs,
        own if use_own else None,
        None if use_own else held_out_images,
        seed,
        lambda r: str(r["image_id"]),
        given="the refs' own val / test splits (--held-out-split val)",
        items="expressions",
        size=_sentences,
    )


def held_out_refs(split: ItemSplit[Ref]) -> list[Ref]:
    """The held-out refs as written: their own split when it is a refer one (drawn refs: val), and
    again under the other name where only val or only test splits are held out."""
    refs = [{**r, "split": r["split"] if r["split"] != TRAIN else "val"} for r in split.held_out]
    has_val = any(r["split"] == "val" for r in refs)
    has_test = any("test" in r["split"] for r in refs)
    if has_val and not has_test:
        refs += [{**r, "split": "test"} for r in refs if r["split"] == "val"]
    elif has_test and not has_val:
        refs += [{**r, "split": "val"} for r in refs if "test" in r["split"]]
    return refs


def refer_folder(datasets: Path, layout: TaskLayout) -> Path:
    return layout.dir(datasets) / layout.refer_name


def refs_file(datasets: Path, layout: TaskLayout) -> Path:
    return refer_folder(datasets, layout) / f"refs({layout.refer_split_by}).p"


def gt_boxes(files: ReferFiles, image_ids: set[str]) -> dict[str, np.ndarray]:
    """Image id -> every annotation box of the image, x1,y1,x2,y2, in annotation-id order."""
    out = {}
    for image_id in image_ids:
        rows = [[float(v) for v in a["bbox"]] for a in files.by_image[image_id]]
        out[image_id] = np.asarray([[x, y, x + w, y + h] for x, y, w, h in rows], np.float32).reshape(-1, 4)
    return out


def clean_ids(
    datasets: Path, task: str, split: ItemSplit[Ref] | None = None
) -> tuple[set[str], dict[str, int]]:
    """The refer datasets of this root share `refcoco/cache/coco_test_ids.npy`: the images of every
    held-out ref of each of them.  Returns those and, per dataset, its training expressions on
    them (what the loader's clean split leaves out of training).  `split`: `task`'s refs as they
    are about to be written (before they are), else its file is read as the others are."""
    refs: dict[str, list[Ref]] = {}
    for slug in REFER_TASKS:
        path = refs_file(datasets, LAYOUTS[slug])
        if slug == task and split is not None:
            refs[slug] = [{**r, "split": TRAIN} for r in split.train] + held_out_refs(split)
        elif path.is_file():
            refs[slug] = load_pickle(path)
    held = {str(r["image_id"]) for rs in refs.values() for r in rs if r["split"] != TRAIN}
    cleaned = {
        slug: sum(_sentences(r) for r in rs if r["split"] == TRAIN and str(r["image_id"]) in held)
        for slug, rs in refs.items()
    }
    return held, {slug: n for slug, n in cleaned.items() if n}


def write_refer(datasets: Path, task: str, split: ItemSplit[Ref], files: ReferFiles) -> Path:
    layout = get_layout(task)
    folder = refer_folder(datasets, layout)
    refs = [{**r, "split": TRAIN} for r in split.train] + held_out_refs(split)
    used = {str(r["image_id"]) for r in refs}
    images = [files.images.get(i, {"id": int(i) if i.isdigit() else i}) for i in sorted(used, key=_order)]
    annotations = [a for i in sorted(used, key=_order) for a in files.by_image[i]]
    write_json(folder / "instances.json", {**files.header, "images": images, "annotations": annotations})
    write_pickle(refs_file(datasets, layout), refs)
    return folder


def _order(image_id: str) -> tuple[int, int | str]:
    return (0, int(image_id)) if image_id.isdigit() else (1, image_id)


ExtractFn = Callable[..., set[str]]  # (index, lmdb, boxes=None) -> ids stored


def prepare_refer(
    src: ReferSources,
    out: Path,
    extract: ExtractFn,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prepare `out` from `src`; `extract(index, lmdb, boxes=None)` fills an LMDB (GT boxes when
    given) and returns the ids stored.  Prints the split in numbers before any extraction."""
    layout = get_layout(src.task)
    files = read_refer_files(src.refs, src.instances)
    wanted = {str(r["image_id"]) for r in files.refs}
    index = index_images(src.images, wanted, src.ids, src.id_map)
    log(f"{count(len(index.files), 'images')} found under {src.images}; {index.describe(src.images)}")
    before = sum(_sentences(r) for r in files.refs)
    files.refs = [r for r in files.refs if str(r["image_id"]) in index.files]
    missing = before - sum(_sentences(r) for r in files.refs)
    warn_missing_images(index, missing, "expressions")
    split = split_refs(files, src.held_out_split, src.held_out_images, src.seed)
    if missing:
        split.left_out["expressions whose image file is missing"] = missing
    log_split(split, log)

    datasets = out / "datasets"
    # The refer datasets of one root share their clean split: another one's held-out images leave
    # this one's training, and this one's leave theirs (prepare.json keeps their old numbers).
    for slug, n in clean_ids(datasets, src.task, split)[1].items():
        whose = src.task if slug == src.task else f"{slug} (prepared into {out} before)"
        warn(
            f"clean split: {count(n, 'training expressions')} of {whose} are on images another refer "
            "dataset of this root holds out; the loader leaves them out of training (data.clean; the "
            "refer datasets of one root share refcoco/cache/coco_test_ids.npy)"
        )

    used = split.groups("train") | split.groups("held_out")
    chosen = ImageIndex({i: index.files[i] for i in used}, index.mode)
    stored = extract(chosen, datasets / layout.features)
    split.keep(lambda r: str(r["image_id"]) in stored, "expressions whose image could not be decoded")
    stored_gt = extract(
        ImageIndex({i: index.files[i] for i in used if i in stored}, index.mode),
        datasets / layout.gt_features,
        boxes=gt_boxes(files, used & stored),
    )
    split.keep(lambda r: str(r["image_id"]) in stored_gt, "expressions whose image could not be decoded")
    if split.left_out.get("expressions whose image could not be decoded"):
        log(f"after leaving out undecodable images: {split.summary()}")
    split.require_both_sides()
    write_refer(datasets, src.task, split, files)
    held, cleaned = clean_ids(datasets, src.task)
    test_ids = layout.test_ids_file(datasets)
    assert test_ids is not None
    write_test_ids(test_ids, held)
    update_loader_config(out, {})  # this root's own file, so no loader_config.json above it applies
    written = held_out_refs(split)
    return {
        "format": FORMAT,
        "sources": [f"{src.refs} + {src.instances}"],
        "images": str(src.images),
        "image_ids": index.mode,
        "features": str((datasets / layout.features).relative_to(out)),
        "gt_features": str((datasets / layout.gt_features).relative_to(out)),
        "held_out": split.policy,
        "train": {
            "split": layout.train_split,
            "images": len(split.groups("train")),
            "expressions": split.examples("train"),
        },
        "evaluate": {
            "split": layout.val_split,
            "images": len(split.groups("held_out")),
            "expressions": sum(_sentences(r) for r in written if r["split"] == "val"),
        },
        "test": {"expressions": sum(_sentences(r) for r in written if "test" in r["split"])},
        "left_out": split.left_out,
        "clean_split": {"images": len(held), "training_expressions_left_out": cleaned},
        "summary": split.summary(),
    }
