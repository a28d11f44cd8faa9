"""PLACEHOLDER region features for the synthetic world, until `regions.extract` supplies real ones.

`python -m training.synthetic.placeholder_features --data D [--dim 64]` fills every LMDB listed in
`D/synthetic/feature_jobs.json` with the keys the loaders query.  Boxes are the scene's object boxes
(jittered a little, like a detector's) plus a few random background boxes; GT-box LMDBs get exactly
the listed boxes in the listed order.  Features are hand-made, NOT detector output: one-hot shape,
colour and size plus the box geometry in the first 20 dimensions, small noise elsewhere (background
boxes carry noise only).  Every record is marked `extra["source"] = "placeholder"`.
Then it (re)builds the retrieval hard-negative pools from these features.
"""

from __future__ import annotations

import argparse
import json
import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from regions.store import FeatureStoreWriter, RegionRecord
from training.synthetic.scene import COLOURS, SHAPES, SIZES

ATTRIBUTE_DIMS = len(SHAPES) + len(COLOURS) + len(SIZES) + 4  # one-hots + cx, cy, w, h
NOISE = 0.05


def _object_vector(obj: dict, width: int, height: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(0, NOISE, dim).astype(np.float32)
    v[SHAPES.index(obj["shape"])] += 1
    v[len(SHAPES) + list(COLOURS).index(obj["colour"])] += 1
    v[len(SHAPES) + len(COLOURS) + SIZES.index(obj["size"])] += 1
    x1, y1, x2, y2 = obj["box"]
    v[ATTRIBUTE_DIMS - 4 : ATTRIBUTE_DIMS] += [
        (x1 + x2) / 2 / width,
        (y1 + y2) / 2 / height,
        (x2 - x1) / width,
        (y2 - y1) / height,
    ]
    return v


def _random_box(rng: np.random.Generator, width: int, height: int) -> list[float]:
    w, h = rng.uniform(10, width / 2), rng.uniform(10, height / 2)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [float(x), float(y), float(x + w), float(y + h)]


def placeholder_record(
    key: str,
    scene: dict,
    dim: int,
    seed: int,
    gt_boxes: list[list[float]] | None = None,
    gt_ids: list[int] | None = None,
) -> RegionRecord:
    """One image's placeholder record; the same image gets the same detections in every LMDB."""
    W, H = scene["width"], scene["height"]
    rng = np.random.default_rng([seed, zlib.crc32(scene["file"].encode())])
    by_id = {o["id"]: o for o in scene["objects"]}
    boxes, feats = [], []
    if gt_boxes is not None:
        for box, oid in zip(gt_boxes, gt_ids or [None] * len(gt_boxes), strict=True):
            obj = by_id.get(oid) if oid is not None else None
            boxes.append(box)
            feats.append(_object_vector(obj, W, H, dim, rng) if obj else rng.normal(0, NOISE, dim))
    else:
        objects = [scene["objects"][i] for i in rng.permutation(len(scene["objects"]))]
        for obj in objects:
            jitter = rng.uniform(-2, 2, 4)
            x1, y1, x2, y2 = (
                float(np.clip(v + j, 0, lim))
                for v, j, lim in zip(obj["box"], jitter, (W, H, W, H), strict=True)
            )
            boxes.append([x1, y1, x2, y2])
            feats.append(_object_vector(obj, W, H, dim, rng))
        for _ in range(int(rng.integers(1, 5))):
            boxes.append(_random_box(rng, W, H))
            feats.append(rng.normal(0, NOISE, dim))
    return RegionRecord(
        key,
        H,
        W,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(feats, np.float32).reshape(len(boxes), dim),
        len(boxes),
        extra={"source": "placeholder"},
    )


def load_feature_jobs(data: str | Path) -> list[dict]:
    """The world's `synthetic/feature_jobs.json` (see README.md): LMDBs, kinds, keys, images, GT boxes."""
    path = Path(data) / "synthetic" / "feature_jobs.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; generate the world first (python -m training.synthetic --out D)"
        )
    return json.loads(path.read_text())


def fill_feature_jobs(
    data: str | Path,
    record_for: Callable[[str, dict], RegionRecord],
    feature_dim: int | None = None,
    progress: bool = True,
    build_pools: bool = True,
    desc: str = "region features",
) -> dict[str, int]:
    """Write every LMDB of the feature jobs with `record_for(kind, item)`, then rebuild the pools.

    `kind` is "detections" (run the detector on `item["image"]`, relative to `data`) or "gt_boxes"
    (features at `item["gt_boxes"]`, in that order); the record must be keyed `item["key"]`.  Any
    extractor can fill the world this way; the placeholder writer below is one.
    """
    root = Path(data)
    jobs = load_feature_jobs(root)
    counts = {}
    with tqdm(total=sum(len(j["items"]) for j in jobs), desc=desc, unit="img", disable=not progress) as bar:
        for job in jobs:
            path = root / "datasets" / job["lmdb"]
            if path.exists():
                shutil.rmtree(path)  # records of an older world must not survive under new keys
            with FeatureStoreWriter(path, feature_dim=feature_dim) as writer:
                for item in job["items"]:
                    writer.put(record_for(job["kind"], item))
                    bar.update(1)
            counts[job["lmdb"]] = len(job["items"])
    if build_pools:
        from training.datasets.retrieval import write_pools

        write_pools(root)
    return counts


def write_placeholder_features(
    data: str | Path, dim: int = 64, seed: int = 0, progress: bool = True, build_pools: bool = True
) -> dict[str, int]:
    """Fill every LMDB of the world's feature jobs with placeholder records; returns records per LMDB."""
    if dim < ATTRIBUTE_DIMS:
        raise ValueError(f"placeholder features need at least {ATTRIBUTE_DIMS} dimensions, got {dim}")
    root = Path(data)
    scenes = {s["file"]: s for s in json.loads((root / "synthetic" / "scenes.json").read_text())}

    def record_for(kind: str, item: dict) -> RegionRecord:
        gt = item.get("gt_boxes") if kind == "gt_boxes" else None
        return placeholder_record(item["key"], scenes[item["image"]], dim, seed, gt, item.get("gt_ids"))

    return fill_feature_jobs(root, record_for, dim, progress, build_pools, desc="placeholder features")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write PLACEHOLDER region-feature LMDBs for the synthetic world."
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="the world's root (python -m training.synthetic --out)"
    )
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_placeholder_features(args.data, args.dim, args.seed)
    for lmdb, n in counts.items():
        print(f"{n:6d}  {lmdb}")
    print("placeholder features written (not detector output); hard-negative pools rebuilt")


if __name__ == "__main__":
    main()
