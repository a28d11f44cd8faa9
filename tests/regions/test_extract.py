"""Extraction into the reference LMDB layout: read back, resume, explicit ids, GT-box mode, CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from regions.detector import build_detector
from regions.extract import (
    extract_directory,
    extract_feature_jobs,
    image_id_for,
    main,
    read_boxes,
    read_id_map,
)
from regions.extractor import RegionExtractor
from regions.store import FeatureStore, FeatureStoreWriter, RegionRecord
from regions.weights import save_detector
from tests.regions.conftest import tiny_synthetic_preset


@pytest.fixture(scope="module")
def extractor() -> RegionExtractor:
    torch.manual_seed(0)
    return RegionExtractor(build_detector(tiny_synthetic_preset()))


def test_extract_read_back_and_resume(mini_world: Path, tmp_path: Path, extractor: RegionExtractor) -> None:
    images = mini_world / "images" / "val"
    out = tmp_path / "val.lmdb"
    first = extract_directory(extractor, images, out, limit=2, progress=False)
    assert (first.extracted, first.skipped_existing) == (2, 0)
    second = extract_directory(extractor, images, out, progress=False)  # resumes: only the rest
    assert (second.extracted, second.skipped_existing) == (2, 2)
    third = extract_directory(extractor, images, out, progress=False)
    assert (third.extracted, third.skipped_existing) == (0, 4)

    with FeatureStore(out) as store:
        assert sorted(store.keys()) == [f"val_{i:04d}" for i in range(4)]
        rec = store.get("val_0001")
        assert rec.features.shape == (rec.num_boxes, extractor.preset.feature_dim)
        assert rec.boxes.shape == (rec.num_boxes, 4) and 0 < rec.num_boxes <= 10
        assert (rec.boxes[:, 2] <= rec.image_w + 1e-3).all() and (rec.boxes[:, 3] <= rec.image_h + 1e-3).all()
        assert rec.extra["objects"].shape == (rec.num_boxes,)
        assert set(rec.extra) >= {"objects", "object_scores", "max_conf", "attr_color", "attr_size"}
    # The raw layout is the reference one: b"keys" and pickled dicts of numpy arrays.
    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:
        keys = pickle.loads(txn.get(b"keys"))
        item = pickle.loads(txn.get(b"val_0001"))
    env.close()
    assert sorted(keys) == [f"val_{i:04d}".encode() for i in range(4)]
    assert {"image_id", "image_h", "image_w", "num_boxes", "boxes", "features"} <= set(item)
    assert item["features"].dtype == np.float32 and item["boxes"].dtype == np.float32


def test_image_ids_are_explicit(mini_world: Path, tmp_path: Path) -> None:
    root = mini_world / "images"
    path = root / "val" / "val_0003.png"
    assert image_id_for(path, root, "stem") == "val_0003"
    assert image_id_for(path, root, "number") == "3"
    assert image_id_for(path, root, "relpath") == "val/val_0003"
    with pytest.raises(ValueError, match="no trailing number"):
        image_id_for(root / "x" / "abc.png", root, "number")
    # COCO-style images list: file_name relative to the images directory given.
    coco_like = tmp_path / "ids.json"
    coco = json.loads((mini_world / "detector" / "instances_val.json").read_text())
    coco["images"] = [{**im, "file_name": im["file_name"].removeprefix("images/")} for im in coco["images"]]
    coco_like.write_text(json.dumps(coco))
    assert read_id_map(coco_like)["val/val_0002.png"] == "3"


def test_id_map_and_duplicates(mini_world: Path, tmp_path: Path, extractor: RegionExtractor) -> None:
    id_map = {"val_0000.png": "9", "val_0002.png": "25"}
    stats = extract_directory(
        extractor, mini_world / "images" / "val", tmp_path / "m.lmdb", id_map=id_map, progress=False
    )
    assert (stats.extracted, stats.skipped_unmapped) == (2, 2)
    with FeatureStore(tmp_path / "m.lmdb") as store:
        assert sorted(store.keys()) == ["25", "9"]
    with pytest.raises(ValueError, match="for both"):
        extract_directory(extractor, mini_world / "images", tmp_path / "d.lmdb", ids="number", progress=False)


def test_gt_box_mode_from_coco_annotations(
    mini_world: Path, tmp_path: Path, extractor: RegionExtractor
) -> None:
    instances = mini_world / "detector" / "instances_val.json"
    boxes = read_boxes(instances)
    id_map = read_id_map(instances)
    id_map = {k.removeprefix("images/val/"): v for k, v in id_map.items()}
    stats = extract_directory(
        extractor,
        mini_world / "images" / "val",
        tmp_path / "gt.lmdb",
        id_map=id_map,
        boxes=boxes,
        progress=False,
    )
    assert stats.extracted == len(boxes)
    coco = json.loads(instances.read_text())
    with FeatureStore(tmp_path / "gt.lmdb") as store:
        for image_id, expected in boxes.items():
            rec = store.get(image_id)
            np.testing.assert_allclose(rec.boxes, expected, atol=1e-3)  # all boxes, in annotation order
            n_ann = sum(1 for a in coco["annotations"] if str(a["image_id"]) == image_id)
            assert rec.num_boxes == n_ann
    plain = tmp_path / "b.json"
    plain.write_text(json.dumps({"7": [[1, 2, 3, 4]], "8": [[0, 0, 10, 20]]}))
    assert read_boxes(plain, "xywh")["7"].tolist() == [[1, 2, 4, 6]]


def test_cli_with_trained_weights(
    mini_world: Path, tmp_path: Path, extractor: RegionExtractor, capsys
) -> None:
    weights, _ = save_detector(extractor.detector, tmp_path / "det.safetensors")
    out = tmp_path / "cli.lmdb"
    code = main(
        [
            "--weights",
            str(weights),
            "--images",
            str(mini_world / "images" / "val"),
            "--out",
            str(out),
            "--ids",
            "number",
            "--batch-size",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    assert "extracted 4 images" in capsys.readouterr().out
    with FeatureStore(out) as store:
        assert sorted(store.keys(), key=int) == ["0", "1", "2", "3"]


def write_jobs(world: Path) -> list[dict]:
    """A feature_jobs.json as `python -m training.synthetic` writes it: two detection LMDBs sharing
    images, and a GT-box LMDB."""
    coco = json.loads((world / "detector" / "instances_val.json").read_text())
    boxes = read_boxes(world / "detector" / "instances_val.json")
    items = [
        {"key": str(im["id"]), "image": im["file_name"], "gt_boxes": None, "gt_ids": None}
        for im in coco["images"]
    ]
    gt_items = [
        {**it, "gt_boxes": boxes[it["key"]].tolist(), "gt_ids": None} for it in items if it["key"] in boxes
    ]
    jobs = [
        {"lmdb": "coco/features.lmdb", "kind": "detections", "items": items},
        {"lmdb": "refcoco/refcoco.lmdb", "kind": "detections", "items": items[:2]},
        {"lmdb": "refcoco/refcoco_gt.lmdb", "kind": "gt_boxes", "items": gt_items},
    ]
    (world / "synthetic").mkdir(exist_ok=True)
    (world / "synthetic" / "feature_jobs.json").write_text(json.dumps(jobs))
    return jobs


def test_world_feature_jobs(mini_world: Path, tmp_path: Path, extractor: RegionExtractor) -> None:
    world = tmp_path / "world"
    shutil.copytree(mini_world, world)
    jobs = write_jobs(world)
    # A placeholder record from an earlier fill must not survive a real extraction.
    with FeatureStoreWriter(world / "datasets" / "coco" / "features.lmdb") as w:
        w.put(RegionRecord("1", 10, 10, np.zeros((1, 4)), np.zeros((1, 32)), 1, {"source": "placeholder"}))

    stats = extract_feature_jobs(extractor, world, detector_id="a", progress=False)
    assert stats.fresh and not stats.failed
    assert stats.images_run == 4  # each image through the backbone once, for detections and GT boxes
    assert stats.records == {
        "coco/features.lmdb": 4,
        "refcoco/refcoco.lmdb": 2,
        "refcoco/refcoco_gt.lmdb": len(jobs[2]["items"]),
    }
    with (
        FeatureStore(world / "datasets" / "coco" / "features.lmdb") as a,
        FeatureStore(world / "datasets" / "refcoco" / "refcoco.lmdb") as b,
    ):
        assert "source" not in a.get("1").extra
        np.testing.assert_array_equal(a.get("1").features, b.get("1").features)
    with FeatureStore(world / "datasets" / "refcoco" / "refcoco_gt.lmdb") as gt:
        item = jobs[2]["items"][0]
        np.testing.assert_allclose(gt.get(item["key"]).boxes, item["gt_boxes"], atol=1e-3)

    again = extract_feature_jobs(extractor, world, detector_id="a", progress=False)
    assert not again.fresh and again.images_run == 0  # resumed: nothing left to do
    other = extract_feature_jobs(extractor, world, detector_id="b", progress=False)
    assert other.fresh and other.images_run == stats.images_run  # another detector: all afresh
