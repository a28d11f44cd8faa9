"""A minimal tree of the twelve datasets in their official formats,
for the loader tests and `bench.reliability`'s training-kill trials.

2-5 records per dataset, chosen so each one exercises a rule: soft scores, the minval tail, the
clean split, the 101-row detection offset (images with exactly 100 boxes), padding (images with
fewer), IoU edges (1.0, exactly 0.5, 0.45, far), the NLVR2 image pairing and the GuessWhat dialog.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from regions.store import FeatureStoreWriter, RegionRecord

DIM = 16
W, H = 640, 480


def _dump(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _jsonl(lines: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _ids(values: list[int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(values, dtype=np.int64))


def random_boxes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(200, 500, n)
    y1 = rng.uniform(200, 400, n)
    return np.stack([x1, y1, x1 + rng.uniform(5, 100, n), y1 + rng.uniform(5, 60, n)], 1).astype(np.float32)


def write_lmdb(path: Path, images: dict[str, np.ndarray], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(path, feature_dim=DIM) as w:
        for key, boxes in images.items():
            n = len(boxes)
            w.put(RegionRecord(key, H, W, boxes, rng.normal(size=(n, DIM)).astype(np.float32), n))


# Image 25 carries the IoU edge cases against the referent [0, 0, 99, 99] (area 100x100 with +1).
REF_BOX_XYWH = [0.0, 0.0, 99.0, 99.0]
IOU_EDGE_BOXES = np.array(
    [
        [0, 0, 99, 99],  # IoU 1.0
        [0, 0, 99, 49],  # IoU exactly 0.5: kept as a training target, but wrong under the strict metric
        [0, 0, 99, 44],  # IoU 0.45: zeroed
        [400, 300, 500, 400],
    ],  # IoU 0
    dtype=np.float32,
)


def build_reference_fixture(root: Path) -> Path:
    """Write the fixture tree under `root/datasets`; returns `root`."""
    d = root / "datasets"
    coco_boxes = {
        "9": random_boxes(100, 9),
        "25": IOU_EDGE_BOXES,
        "30": random_boxes(5, 30),
        "34": random_boxes(3, 34),
        "36": random_boxes(7, 36),
        "42": random_boxes(10, 42),
    }
    coco_lmdb = d / "coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb"
    write_lmdb(coco_lmdb, coco_boxes)
    write_lmdb(
        d / "coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb", {"1": random_boxes(4, 1)}
    )

    # 1. VQA
    vqa = d / "VQA"
    _json(
        {
            "questions": [
                {"image_id": 9, "question": "How many dogs?", "question_id": 90},
                {"image_id": 25, "question": "Is it red?", "question_id": 250},
            ]
        },
        vqa / "v2_OpenEnded_mscoco_train2014_questions.json",
    )
    _json(
        {
            "questions": [
                {"image_id": 30, "question": "What color?", "question_id": 300},
                {"image_id": 34, "question": "Is it big?", "question_id": 340},
            ]
        },
        vqa / "v2_OpenEnded_mscoco_val2014_questions.json",
    )
    _json(
        {"questions": [{"image_id": 1, "question": "Where?", "question_id": 10}]},
        vqa / "v2_OpenEnded_mscoco_test2015_questions.json",
    )
    _dump(
        [
            {"question_id": 250, "image_id": 25, "labels": [0], "scores": [1.0]},
            {"question_id": 90, "image_id": 9, "labels": [0, 2], "scores": [1.0, 0.3]},
        ],
        vqa / "cache/train_target.pkl",
    )
    _dump(
        [
            {"question_id": 300, "image_id": 30, "labels": [], "scores": []},
            {"question_id": 340, "image_id": 34, "labels": [1], "scores": [0.6]},
        ],
        vqa / "cache/val_target.pkl",
    )
    _dump({"yes": 0, "no": 1, "2": 2}, vqa / "cache/trainval_ans2label.pkl")
    _dump(["yes", "no", "2"], vqa / "cache/trainval_label2ans.pkl")
    _ids([25], vqa / "cache/coco_test_ids.npy")

    # 2. GQA
    gqa = d / "gqa"
    _dump(
        [
            {
                "question_id": str(q),
                "image_id": img,
                "question": f"gqa question {q}?",
                "labels": [q % 3],
                "scores": [1.0],
            }
            for q, img in [(4, "2368326"), (1, "2354786"), (2, "2368326"), (3, "2354786")]
        ],
        gqa / "cache/trainval_target.pkl",
    )
    _dump({"yes": 0, "no": 1, "left": 2}, gqa / "cache/trainval_ans2label.pkl")
    _dump(["yes", "no", "left"], gqa / "cache/trainval_label2ans.pkl")
    _json(
        {
            "201": {"imageId": "n161313", "question": "is it left?", "answer": "left"},
            "202": {"imageId": "2354786", "question": "is it?", "answer": "maybe"},
        },
        gqa / "testdev_balanced_questions.json",
    )
    _ids([2368326], gqa / "cache/genome_test_ids.npy")
    write_lmdb(
        d / "gqa/gqa_resnext152_faster_rcnn_genome.lmdb",
        {"2354786": random_boxes(6, 2), "2368326": random_boxes(4, 3), "n161313": random_boxes(3, 4)},
    )

    # 3. VG QA (val = the last 2 questions by id; 2368326 is a test image in train and in val)
    vg = d / "visual_genome"
    _dump(
        [
            {
                "question_id": q,
                "image_id": img,
                "question": f"vg question {q}?",
                "labels": lab,
                "scores": [1.0] * len(lab),
            }
            for q, img, lab in [
                (5, 2354786, [1]),
                (1, 2354786, [0]),
                (2, 2368326, [1]),
                (3, 2354786, []),
                (4, 2368326, [2]),
            ]
        ],
        vg / "cache/trainval_target.pkl",
    )
    _dump({"yes": 0, "no": 1, "2": 2}, vg / "cache/trainval_ans2label.pkl")
    _dump(["yes", "no", "2"], vg / "cache/trainval_label2ans.pkl")
    _ids([2368326], vg / "cache/genome_test_ids.npy")
    write_lmdb(
        vg / "vg_resnext152_faster_rcnn_genome.lmdb",
        {"2354786": random_boxes(6, 2), "2368326": random_boxes(4, 3)},
    )

    # 4. COCO retrieval
    cr = d / "cocoRetreival"
    _jsonl(
        [
            {
                "id": i,
                "img_path": f"COCO_train2014_{i:012d}.jpg",
                "sentences": [f"caption a of {i}", f"caption b of {i}"],
            }
            for i in (9, 25, 30, 34)
        ],
        cr / "all_data_final_train_2014.jsonline",
    )
    _jsonl(
        [
            {"id": i, "img_path": f"COCO_val2014_{i:012d}.jpg", "sentences": [f"test a {i}", f"test b {i}"]}
            for i in (36, 42, 30, 9)
        ],
        cr / "all_data_final_test_set0_2014.jsonline",
    )
    pool = np.array([[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]])
    _dump({"train_image_list": [9, 25, 30, 34], "train_hard_pool": pool}, cr / "hard_negative.pkl")
    _dump(
        {"train_image_list": [9, 25, 30], "train_hard_pool": np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])},
        cr / "hard_negative_cleaned.pkl",
    )
    _ids([34], cr / "cache/coco_test_ids.npy")

    # 5. Flickr30k retrieval (ids from `img_path`)
    fl = d / "flickr30k"
    flickr_ids = [1000092795, 10002456, 1000268201, 1000344755]
    _jsonl(
        [{"img_path": f"{i}.jpg", "sentences": [f"flickr a {i}", f"flickr b {i}"]} for i in flickr_ids],
        fl / "all_data_final_train_2014.jsonline",
    )
    _jsonl(
        [{"img_path": f"{i}.jpg", "sentences": [f"flickr test {i}"]} for i in flickr_ids[:2]],
        fl / "all_data_final_test_set0_2014.jsonline",
    )
    _dump({"train_image_list": flickr_ids, "train_hard_pool": pool}, fl / "hard_negative.pkl")
    _dump(
        {"train_image_list": flickr_ids[1:], "train_hard_pool": np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])},
        fl / "hard_negative_cleaned.pkl",
    )
    _ids([1000092795], fl / "cache/flickr_test_ids.npy")
    write_lmdb(
        fl / "flickr30k_resnext152_faster_rcnn_genome.lmdb",
        {str(i): random_boxes(5, k) for k, i in enumerate(flickr_ids)},
    )

    # 6. RefCOCO / RefCOCO+ / RefCOCOg (image 25: the IoU edge boxes; image 9: 100 detections)
    instances = {
        "images": [
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 1, "image_id": 25, "bbox": REF_BOX_XYWH, "category_id": 1},
            {"id": 2, "image_id": 25, "bbox": [400.0, 300.0, 100.0, 100.0], "category_id": 2},
            {"id": 3, "image_id": 9, "bbox": [10.0, 10.0, 50.0, 60.0], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }

    def sentence(sid: int, raw: str) -> dict:
        return {"raw": raw, "sent": raw.lower(), "tokens": raw.lower().split(), "sent_id": sid}

    for name, split_by, test_split in [
        ("refcoco", "unc", "testA"),
        ("refcoco+", "unc", "testB"),
        ("refcocog", "umd", "test"),
    ]:
        refs = [
            {
                "ref_id": 0,
                "ann_id": 1,
                "image_id": 25,
                "split": "train",
                "category_id": 1,
                "sent_ids": [10, 11],
                "sentences": [sentence(10, "Left person"), sentence(11, "the man on top")],
                "file_name": "COCO_train2014_000000000025_1.jpg",
            },
            {
                "ref_id": 1,
                "ann_id": 3,
                "image_id": 9,
                "split": "val",
                "category_id": 1,
                "sent_ids": [12],
                "sentences": [sentence(12, "person in the corner")],
                "file_name": "x.jpg",
            },
            {
                "ref_id": 2,
                "ann_id": 1,
                "image_id": 25,
                "split": test_split,
                "category_id": 1,
                "sent_ids": [13],
                "sentences": [sentence(13, "man top left")],
                "file_name": "y.jpg",
            },
        ]
        folder = d / "refcoco" / name
        _dump(refs, folder / f"refs({split_by}).p")
        _json(instances, folder / "instances.json")
        sub = d / "refcoco" / f"{name}_{split_by}"
        write_lmdb(
            sub / f"{name}_resnext152_faster_rcnn_genome.lmdb", {"25": IOU_EDGE_BOXES, "9": coco_boxes["9"]}
        )
        gt = {
            "25": np.array([[0, 0, 99, 99], [400, 300, 500, 400]], np.float32),
            "9": np.array([[10, 10, 60, 70]], np.float32),
        }
        write_lmdb(sub / f"{name}_gt_resnext152_faster_rcnn_genome.lmdb", gt)
    _ids([9], d / "refcoco/cache/coco_test_ids.npy")

    # 7. Visual7W pointing (image 111: two QA pairs sharing candidates; 444 is a test image; 222 val)
    v7 = d / "visual7w"
    box_xywh = {
        1001: [10, 10, 40, 40],
        1002: [100, 10, 40, 40],
        1003: [200, 10, 40, 40],
        1004: [300, 10, 40, 40],
        1005: [10, 200, 60, 60],
        1006: [300, 300, 50, 50],
        2001: [5, 5, 30, 30],
        2002: [100, 100, 30, 30],
        2003: [200, 200, 30, 30],
        2004: [300, 50, 30, 30],
    }
    boxes = [
        {"box_id": b, "x": v[0], "y": v[1], "width": v[2], "height": v[3], "name": f"obj{b}"}
        for b, v in box_xywh.items()
    ]
    images = [
        {
            "image_id": 111,
            "filename": "v7w_111.jpg",
            "split": "train",
            "qa_pairs": [
                {
                    "qa_id": 1,
                    "question": "Which is the red cup?",
                    "answer": 1001,
                    "multiple_choices": [1002, 1003, 1004],
                    "type": "which",
                },
                {
                    "qa_id": 2,
                    "question": "Which is the dog?",
                    "answer": 1005,
                    "multiple_choices": [1001, 1002, 1006],
                    "type": "which",
                },
            ],
        },
        {
            "image_id": 444,
            "filename": "v7w_444.jpg",
            "split": "train",
            "qa_pairs": [
                {
                    "qa_id": 4,
                    "question": "Which is it?",
                    "answer": 2001,
                    "multiple_choices": [2002, 2003, 2004],
                    "type": "which",
                }
            ],
        },
        {
            "image_id": 222,
            "filename": "v7w_222.jpg",
            "split": "val",
            "qa_pairs": [
                {
                    "qa_id": 3,
                    "question": "Which is the cat?",
                    "answer": 2002,
                    "multiple_choices": [2001, 2003, 2004],
                    "type": "which",
                }
            ],
        },
    ]
    _json({"images": images, "boxes": boxes}, v7 / "dataset_v7w_pointing.json")
    _ids([444], v7 / "cache/genome_test_ids.npy")

    def xyxy(ids: list[int]) -> np.ndarray:
        return np.array([[x, y, x + w, y + h] for x, y, w, h in (box_xywh[i] for i in ids)], np.float32)

    write_lmdb(
        v7 / "visual7w_resnext152_faster_rcnn_genome.lmdb",
        {
            "v7w_111": random_boxes(100, 111),
            "v7w_444": random_boxes(100, 444),
            "v7w_222": random_boxes(100, 222),
        },
    )
    write_lmdb(
        v7 / "visual7w_gt_resnext152_faster_rcnn_genome.lmdb",
        {
            "v7w_111": xyxy([1001, 1002, 1003, 1004, 1005, 1006]),
            "v7w_444": xyxy([2001, 2002, 2003, 2004]),
            "v7w_222": xyxy([2001, 2002, 2003, 2004]),
        },
    )

    # 8. GuessWhat (image 9: objects 101-103; image 30 is a test image)
    gw = d / "guesswhat"
    objects9 = [
        {"id": 103, "bbox": [300, 300, 50, 50], "category": "cat"},
        {"id": 101, "bbox": [10, 10, 50, 50], "category": "person"},
        {"id": 102, "bbox": [100, 100, 80, 40], "category": "dog"},
    ]
    long_qas = [
        {"question": f"is it the thing number {k} in the picture?", "answer": "No", "id": 500 + k}
        for k in range(40)
    ]
    games_train = [
        {
            "id": 7,
            "image": {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": W, "height": H},
            "qas": [
                {"question": "is it a person?", "answer": "No", "id": 1},
                {"question": "is it an animal?", "answer": "Yes", "id": 2},
            ],
            "objects": objects9,
            "object_id": 102,
            "status": "success",
        },
        {
            "id": 8,
            "image": {"id": 30, "file_name": "x.jpg", "width": W, "height": H},
            "qas": long_qas,
            "objects": [{"id": 201, "bbox": [0, 0, 10, 10]}, {"id": 202, "bbox": [20, 20, 10, 10]}],
            "object_id": 201,
            "status": "success",
        },
    ]
    _jsonl(games_train, gw / "guesswhat.train.jsonl")
    _jsonl([{**games_train[0], "id": 9, "object_id": 101}], gw / "guesswhat.valid.jsonl")
    _jsonl([{**games_train[1], "id": 10}], gw / "guesswhat.test.jsonl")
    _dump({9: {"bboxes": [103, 101, 102]}, 30: {"bboxes": [201, 202]}}, gw / "cache/image_bbox_list.pkl")
    _dump(
        {
            101: [10, 10, 60, 60],
            102: [100, 100, 180, 140],
            103: [300, 300, 350, 350],
            201: [0, 0, 10, 10],
            202: [20, 20, 30, 30],
        },
        gw / "cache/bboxes_dict.pkl",
    )
    _ids([30], gw / "cache/coco_test_ids.npy")
    write_lmdb(
        gw / "guesswhat_gt_resnext152_faster_rcnn_genome.lmdb",
        {
            "9": np.array([[10, 10, 60, 60], [100, 100, 180, 140], [300, 300, 350, 350]], np.float32),
            "30": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
        },
    )

    # 9. NLVR2 (train-1-0 carries two statements with opposite labels)
    nl = d / "nlvr2"
    _jsonl(
        [
            {
                "identifier": "train-1-0-0",
                "sentence": "There are two dogs.",
                "label": "True",
                "left_url": "a",
                "right_url": "b",
                "writer": "w",
                "synset": "dog",
                "query": "dogs",
                "directory": 1,
            },
            {"identifier": "train-1-0-1", "sentence": "There are no dogs.", "label": "False"},
            {"identifier": "train-2-1-0", "sentence": "One image has a cat.", "label": "True"},
        ],
        nl / "train.json",
    )
    _jsonl(
        [{"identifier": "dev-850-0-0", "sentence": "Both images show birds.", "label": "False"}],
        nl / "dev.json",
    )
    write_lmdb(
        nl / "nlvr2_resnext152_faster_rcnn_genome.lmdb",
        {
            k: random_boxes(100, s)
            for s, k in enumerate(
                [
                    "train-1-0-img0",
                    "train-1-0-img1",
                    "train-2-1-img0",
                    "train-2-1-img1",
                    "dev-850-0-img0",
                    "dev-850-0-img1",
                ]
            )
        },
    )

    # 10. SNLI-VE
    ve = d / "visual_entailment"
    _jsonl(
        [
            {"Flikr30kID": f"{fid}.jpg", "sentence1": "A premise.", "sentence2": hyp, "gold_label": gold}
            for fid, hyp, gold in [
                (1000092795, "A dog runs.", "contradiction"),
                (10002456, "People wait.", "neutral"),
                (1000268201, "A girl climbs.", "entailment"),
                (1000344755, "Unsure.", "-"),
            ]
        ],
        ve / "snli_ve_train.jsonl",
    )
    _jsonl(
        [{"Flikr30kID": "10002456.jpg", "sentence1": "p", "sentence2": "h", "gold_label": "neutral"}],
        ve / "snli_ve_dev.jsonl",
    )
    _jsonl(
        [{"Flikr30kID": "1000092795.jpg", "sentence1": "p", "sentence2": "h", "gold_label": "entailment"}],
        ve / "snli_ve_test.jsonl",
    )
    _ids([10002456], ve / "cache/flickr_test_ids.npy")
    return root


# Loader settings for the fixture's tiny splits (the reference tails are 3000 / 5000 / 1000 / 500).
FIXTURE_CONFIG = {
    "minval_size": 1,
    "vg_val_size": 2,
    "retrieval_eval_images": 4,
    "retrieval_eval_chunk": 2,
    "vqa_num_answers": None,
    "gqa_num_answers": None,
}
