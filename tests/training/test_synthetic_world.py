"""The synthetic world: official formats, every task through the same loaders, the clean split."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
from PIL import Image

from training.datasets import build_dataset, collate, split_names
from training.datasets.base import read_jsonl
from training.datasets.regions import iou_plus_one
from vilbert.tasks import TASKS

LOCATION_WORDS = re.compile(r"\b(left|right|top|bottom|middle|above|below)\b")


def test_all_twelve_tasks_load_and_collate(small_world):
    root = small_world[0]
    for task in TASKS:
        for split in filter(None, split_names(task).values()):
            ds = build_dataset(task, root, split)
            assert len(ds) > 0, (task.slug, split)
            batch = collate([ds[i] for i in range(min(4, len(ds)))])
            P = batch.pairs_per_example
            assert batch.input_ids.shape[0] == batch.batch_size * P
            assert batch.input_ids.shape[1] <= task.max_text_tokens
            assert batch.region_features.shape[1] <= task.max_regions
            assert batch.region_features.shape[2] == 32
            assert (batch.region_locations[:, 0] == batch.region_locations.new_tensor([0, 0, 1, 1, 1])).all()
            assert batch.task_ids.eq(task.task_id).all()


def test_clean_split_removes_training_images(small_world):
    root, _rows, shrink, _ = small_world
    removed = {r.task: r.images_before - r.images_after for r in shrink if "train" in r.split}
    assert sum(removed.values()) > 0
    for task in ("vqa", "gqa", "retrieval_coco", "guesswhat", "vg_qa"):
        assert removed[task] > 0, task
    # The reported numbers are what the loaders see.
    vqa = build_dataset("vqa", root, "trainval")
    vqa_row = next(r for r in shrink if r.task == "vqa")
    assert len(vqa) == vqa_row.examples_after < vqa_row.examples_before
    test_ids = set(np.load(root / "datasets/VQA/cache/coco_test_ids.npy").tolist())
    assert not {int(e.image_id) for e in vqa.entries} & test_ids
    # COCO test images reach the VG id space through image_data.json.
    image_data = json.loads((root / "datasets/visual_genome/image_data.json").read_text())
    coco_to_vg = {d["coco_id"]: d["image_id"] for d in image_data if d["coco_id"]}
    genome = set(np.load(root / "datasets/gqa/cache/genome_test_ids.npy").tolist())
    assert {coco_to_vg[c] for c in test_ids if c in coco_to_vg} <= genome


def test_summary_written_with_baselines(small_world):
    root, rows, _, _ = small_world
    summary = json.loads((root / "summary.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == [t.slug for t in TASKS]
    assert "| vqa |" in (root / "summary.md").read_text()
    by_task = {r.task: r for r in rows}
    # NLVR2 statements are true on one pair and false on the other: text alone is at chance.
    assert by_task["nlvr2"].majority == 50.0 and by_task["nlvr2"].text_prior == 50.0
    for slug in ("vqa", "gqa", "snli_ve"):
        assert by_task[slug].majority < 50.0


def test_vqa_in_official_format_with_disagreeing_annotators(small_world):
    vqa = small_world[0] / "datasets/VQA"
    anns = json.loads((vqa / "v2_mscoco_train2014_annotations.json").read_text())["annotations"]
    assert all(len(a["answers"]) == 10 for a in anns)
    assert any(len({x["answer"] for x in a["answers"]}) > 1 for a in anns)
    yes_no = [a["multiple_choice_answer"] for a in anns if a["answer_type"] == "yes/no"]
    assert 0.25 < yes_no.count("yes") / len(yes_no) < 0.75  # existence questions ask both ways
    with (vqa / "cache/train_target.pkl").open("rb") as f:
        targets = pickle.load(f)
    scores = {s for t in targets for s in t["scores"]}
    assert 1.0 in scores and scores <= {0.3, 0.6, 0.9, 1.0}


def test_referring_expression_styles(small_world):
    root = small_world[0] / "datasets/refcoco"

    def sentences(name: str, split_by: str) -> list[str]:
        with (root / name / f"refs({split_by}).p").open("rb") as f:
            return [s["raw"] for r in pickle.load(f) for s in r["sentences"]]

    plus = sentences("refcoco+", "unc")
    assert plus and not any(LOCATION_WORDS.search(s) for s in plus)
    assert any(LOCATION_WORDS.search(s) for s in sentences("refcoco", "unc"))
    assert np.mean([len(s.split()) for s in sentences("refcocog", "umd")]) > np.mean(
        [len(s.split()) for s in plus]
    )


def test_guesswhat_dialogs_single_out_the_target(small_world):
    root = small_world[0]
    scenes = {s["ids"].get("coco"): s for s in json.loads((root / "synthetic/scenes.json").read_text())}
    for game in read_jsonl(root / "datasets/guesswhat/guesswhat.train.jsonl"):
        scene = scenes[str(game["image"]["id"])]
        assert {o["id"] for o in game["objects"]} == {o["id"] for o in scene["objects"]}
        assert all(qa["answer"] in ("Yes", "No") for qa in game["qas"]) and game["qas"]


def test_visual7w_and_detector_annotations(small_world):
    root = small_world[0]
    v7w = json.loads((root / "datasets/visual7w/dataset_v7w_pointing.json").read_text())
    assert all(
        len(qa["multiple_choices"]) == 3 and qa["question"].startswith("Which")
        for img in v7w["images"]
        for qa in img["qa_pairs"]
    )
    det = json.loads((root / "detector/instances_train.json").read_text())
    assert det["attribute_names"]["color"] and det["attribute_names"]["size"] == ["small", "medium", "large"]
    image = det["images"][0]
    with Image.open(root / image["file_name"]) as im:
        assert im.size == (image["width"], image["height"]) and min(im.size) >= 160 and max(im.size) <= 320
    ann = next(a for a in det["annotations"] if a["image_id"] == image["id"])
    x, _y, w, _h = ann["bbox"]
    assert x >= 0 and x + w <= image["width"] and {"color", "size"} <= set(ann["attributes"])


def test_hard_negative_pools_from_features(small_world):
    root = small_world[0] / "datasets/cocoRetreival"
    with (root / "hard_negative.pkl").open("rb") as f:
        pool = pickle.load(f)
    table = np.asarray(pool["train_hard_pool"])
    assert (table[:, 0] == np.arange(len(table))).all()  # every image is its own first neighbour
    with (root / "hard_negative_cleaned.pkl").open("rb") as f:
        cleaned = pickle.load(f)
    test_ids = set(np.load(root / "cache/coco_test_ids.npy").tolist())
    assert not set(cleaned["train_image_list"]) & test_ids
    assert len(cleaned["train_image_list"]) < len(pool["train_image_list"])


def test_placeholder_boxes_are_the_scene_objects(small_world):
    root = small_world[0]
    ds = build_dataset("refcoco", root, "val")
    ex = ds[0]
    # Each referent is an object of the scene, so a placeholder detection overlaps it well.
    assert iou_plus_one(ex.region_boxes[0, 1:], ex.ref_box).max() > 0.8
