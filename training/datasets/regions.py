"""From stored detections to the region rows the trunk reads (the reference's `ImageFeaturesH5Reader`).

Per image: the plain mean of the region features is prepended as a global region with location
[0, 0, 1, 1, 1]; each box gets the 5-d location [x1/W, y1/H, x2/W, y2/H, area/(W·H)].  Grounding
tasks append GT-box rows from a second store after the detections and score every row by IoU with
the referent ("+1 pixel" convention of the reference).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regions.store import FeatureStore, RegionRecord


@dataclass(frozen=True)
class ImageRegions:
    """Processed rows of one image (read-only arrays; shared through the cache)."""

    features: np.ndarray  # (N, D) float32, row 0 = global mean feature
    locations: np.ndarray  # (N, 5) float32
    boxes: np.ndarray  # (N, 4) float32 pixel x1,y1,x2,y2; the global row is [0, 0, W, H]
    image_w: int
    image_h: int

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])


def locations_5d(boxes: np.ndarray, image_w: float, image_h: float) -> np.ndarray:
    """[x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W·H)] per box (area from pixels, no +1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (image_w * image_h)
    scale = np.array([image_w, image_h, image_w, image_h], dtype=np.float64)
    return np.concatenate([boxes / scale, area[:, None]], axis=1).astype(np.float32)


def process_record(record: RegionRecord, with_global: bool = True) -> ImageRegions:
    """Global row first (mean feature, location [0,0,1,1,1]), then the detections in stored order."""
    W, H = record.image_w, record.image_h
    feats = record.features.astype(np.float32, copy=False)
    locs = locations_5d(record.boxes, W, H)
    boxes = record.boxes.astype(np.float32, copy=False)
    if with_global:
        mean = feats.mean(axis=0, keepdims=True) if len(feats) else np.zeros((1, feats.shape[1]), np.float32)
        feats = np.concatenate([mean, feats], axis=0)
        locs = np.concatenate([np.array([[0, 0, 1, 1, 1]], np.float32), locs], axis=0)
        boxes = np.concatenate([np.array([[0, 0, W, H]], np.float32), boxes], axis=0)
    for a in (feats, locs, boxes):
        a.setflags(write=False)
    return ImageRegions(feats, locs, boxes, W, H)


class RegionSource:
    """A feature store plus a per-process cache of processed images (the reference's `in_memory`).

    The cache is bounded in bytes, not images: one reference image (101 x 2048 floats) is ~0.8 MB,
    and every DataLoader worker holds its own cache.
    """

    def __init__(self, path: str | Path, cache_mb: float = 256) -> None:
        self.store = FeatureStore(path)
        self.cache_bytes = int(cache_mb * 2**20)
        self._cached = 0
        self._cache: OrderedDict[tuple[str, bool], ImageRegions] = OrderedDict()

    @property
    def path(self) -> Path:
        return self.store.path

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.store

    def get(self, image_id: str | int, with_global: bool = True) -> ImageRegions:
        key = (str(image_id), with_global)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        regions = process_record(self.store.get(key[0]), with_global=with_global)
        size = regions.features.nbytes + regions.locations.nbytes + regions.boxes.nbytes
        if size <= self.cache_bytes:
            self._cache[key] = regions
            self._cached += size
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.features.nbytes + old.locations.nbytes + old.boxes.nbytes
        return regions

    def mean_feature(self, image_id: str | int) -> np.ndarray:
        """The image descriptor the hard-negative pool is built on (mean of its region features)."""
        return self.get(image_id).features[0]


def iou_plus_one(boxes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """IoU of each x1y1x2y2 box with `ref`, reference convention: widths and heights count +1 pixel."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ref = np.asarray(ref, dtype=np.float64).reshape(4)
    iw = np.clip(np.minimum(boxes[:, 2], ref[2]) - np.maximum(boxes[:, 0], ref[0]) + 1, 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], ref[3]) - np.maximum(boxes[:, 1], ref[1]) + 1, 0, None)
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    ref_area = (ref[2] - ref[0] + 1) * (ref[3] - ref[1] + 1)
    return (inter / (area + ref_area - inter)).astype(np.float32)


def xywh_to_xyxy(box: list[float] | np.ndarray) -> np.ndarray:
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h], dtype=np.float32)


@dataclass(frozen=True)
class RegionRows:
    """Rows for one (text, image) pair, truncated to the task's maximum."""

    features: np.ndarray  # (R, D)
    locations: np.ndarray  # (R, 5)
    boxes: np.ndarray  # (R, 4)
    mask: np.ndarray  # (R,) int64

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])


def plain_rows(image: ImageRegions, max_regions: int) -> RegionRows:
    """The first `max_regions` rows (global, then detections in confidence order)."""
    n = min(image.num_rows, max_regions)
    return RegionRows(image.features[:n], image.locations[:n], image.boxes[:n], np.ones(n, np.int64))


def merged_rows(
    detections: ImageRegions, gt: ImageRegions, max_regions: int, detection_rows: int | None
) -> tuple[RegionRows, int]:
    """Detections (global included) followed by the GT boxes (their own global row dropped).

    With `detection_rows` set, the detection block is padded (masked zero rows) or cut to exactly
    that many rows, so GT candidates start at that row as the reference's hard-coded 101 assumes.
    Returns the rows and the index of the first GT row.
    """
    if detections.features.shape[1] != gt.features.shape[1]:
        raise ValueError(
            f"detection features are {detections.features.shape[1]}-d but GT-box features are "
            f"{gt.features.shape[1]}-d; both LMDBs must come from the same extractor"
        )
    det_f, det_l, det_b = detections.features, detections.locations, detections.boxes
    det_m = np.ones(len(det_f), np.int64)
    if detection_rows is not None:
        n = min(len(det_f), detection_rows)
        pad = detection_rows - n
        D = det_f.shape[1]
        det_f = np.concatenate([det_f[:n], np.zeros((pad, D), np.float32)])
        det_l = np.concatenate([det_l[:n], np.zeros((pad, 5), np.float32)])
        det_b = np.concatenate([det_b[:n], np.zeros((pad, 4), np.float32)])
        det_m = np.concatenate([det_m[:n], np.zeros(pad, np.int64)])
    offset = len(det_f)
    feats = np.concatenate([det_f, gt.features[1:]])[:max_regions]
    locs = np.concatenate([det_l, gt.locations[1:]])[:max_regions]
    boxes = np.concatenate([det_b, gt.boxes[1:]])[:max_regions]
    mask = np.concatenate([det_m, np.ones(gt.num_rows - 1, np.int64)])[:max_regions]
    return RegionRows(feats, locs, boxes, mask), offset


def stack_pairs(rows: list[RegionRows]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(P, R, ·) arrays for P pairs, zero-padded to the most rows among them."""
    R = max(r.num_rows for r in rows)
    D = rows[0].features.shape[1]
    P = len(rows)
    feats = np.zeros((P, R, D), np.float32)
    locs = np.zeros((P, R, 5), np.float32)
    boxes = np.zeros((P, R, 4), np.float32)
    mask = np.zeros((P, R), np.int64)
    for i, r in enumerate(rows):
        n = r.num_rows
        feats[i, :n], locs[i, :n], boxes[i, :n], mask[i, :n] = r.features, r.locations, r.boxes, r.mask
    return feats, locs, boxes, mask
