"""From detections to the model's image input: global region first, 5-d locations.

This is the reference reader's processing (vilbert-multi-task ``ImageFeaturesH5Reader``), in
one place for the serving path and for anyone holding raw detections:

* the global feature is the plain mean of the N region features, prepended as row 0;
* each region's location is ``[x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W*H)]`` (area from pixel
  coordinates, no +1), and the global row's location is ``[0, 0, 1, 1, 1]``;
* rows are kept in detection order (confidence order) and cut to ``max_regions`` (global included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GLOBAL_LOCATION = np.array([0.0, 0.0, 1.0, 1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class RegionInputs:
    """One image's visual input: exactly what the ViLBERT trunk takes for one image."""

    features: np.ndarray  # (R, D) float32; row 0 is the global (mean) feature
    locations: np.ndarray  # (R, 5) float32; row 0 is [0, 0, 1, 1, 1]
    boxes: np.ndarray  # (R, 4) float32 pixel boxes x1y1x2y2; row 0 is the whole image [0, 0, W, H]

    @property
    def num_regions(self) -> int:
        return int(self.features.shape[0])

    def padded(self, max_regions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (R,D), locations (R,5), mask (R,) int64) zero-padded to max_regions rows."""
        n = min(self.num_regions, max_regions)
        feats = np.zeros((max_regions, self.features.shape[1]), dtype=np.float32)
        locs = np.zeros((max_regions, 5), dtype=np.float32)
        mask = np.zeros((max_regions,), dtype=np.int64)
        feats[:n], locs[:n], mask[:n] = self.features[:n], self.locations[:n], 1
        return feats, locs, mask


def box_locations(boxes: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
    """(N, 4) pixel boxes -> (N, 5) normalised locations, as the reference reader computes them."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = float(image_w), float(image_h)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (w * h)
    locs = np.stack([boxes[:, 0] / w, boxes[:, 1] / h, boxes[:, 2] / w, boxes[:, 3] / h, area], axis=1)
    return locs.astype(np.float32)


def region_inputs(
    boxes: np.ndarray, features: np.ndarray, image_w: int, image_h: int, max_regions: int | None = None
) -> RegionInputs:
    """Global-first features and 5-d locations for one image's detections."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
        raise ValueError(f"features {features.shape} do not match {boxes.shape[0]} boxes")
    if boxes.shape[0] == 0:
        # No detections: the reference would divide by zero; a zero global feature keeps shapes valid.
        global_feat = np.zeros((1, features.shape[1]), dtype=np.float32)
    else:
        global_feat = features.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    all_feats = np.concatenate([global_feat, features], axis=0)
    all_locs = np.concatenate([GLOBAL_LOCATION[None], box_locations(boxes, image_w, image_h)], axis=0)
    whole = np.array([[0.0, 0.0, float(image_w), float(image_h)]], dtype=np.float32)
    all_boxes = np.concatenate([whole, boxes], axis=0)
    if max_regions is not None:
        all_feats, all_locs, all_boxes = (
            all_feats[:max_regions],
            all_locs[:max_regions],
            all_boxes[:max_regions],
        )
    return RegionInputs(features=all_feats, locations=all_locs, boxes=all_boxes)
