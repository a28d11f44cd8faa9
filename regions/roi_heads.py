"""The RoI heads: pooling, the two-layer box MLP and predictor, the attribute head, box selection.

`build_roi_heads(preset)` is torchvision's `RoIHeads` holding a RoIAlign pooler
(`MultiScaleRoIAlign`), `TwoMLPHead` (fc6 is the region feature) and `FastRCNNPredictor`; it gives the
training-time proposal sampling, and `fastrcnn_loss` the Fast R-CNN loss.  `build_attribute_head`
is the optional bottom-up-attention attribute head.  `select_regions` is the reference box-selection
rule that replaces torchvision's post-processing: softmax over classes, per-class NMS over the
*proposals*, each box's `max_conf` its best surviving class score, the top N by `max_conf` kept
unconditionally (vilbert-multi-task `script/extract_features.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, nms

from regions.backbone import FPN_LEVELS
from regions.presets import DetectorPreset, SelectionSpec
from regions.rpn import LegacyBoxCoder


class AttributeHead(nn.Module):
    """Attribute logits from [fc7 ; class embedding] (bottom-up attention; the fork's names)."""

    def __init__(
        self,
        num_classes: int,
        in_dim: int,
        embed_dim: int,
        hidden_dim: int,
        num_values: int,
        hidden_relu: bool,
    ) -> None:
        super().__init__()
        self.cls_embed = nn.Embedding(num_classes, embed_dim)
        self.attr_linear1 = nn.Linear(in_dim + embed_dim, hidden_dim)
        self.attr_linear2 = nn.Linear(hidden_dim, num_values)
        self.hidden_relu = hidden_relu

    def forward(self, fc7: Tensor, class_ids: Tensor) -> Tensor:
        x = self.attr_linear1(torch.cat([fc7, self.cls_embed(class_ids)], dim=1))  # (K, hidden)
        if self.hidden_relu:
            x = F.relu(x)
        return self.attr_linear2(x)  # (K, sum of group sizes)


def box_geometry(boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
    """(K, 6) box geometry relative to its image: x1/W, y1/H, x2/W, y2/H, w/min(W,H), h/min(W,H).

    Ratios, so the resize factor cancels: the same object gives the same vector at any input scale.
    """
    rows = []
    for b, (h, w) in zip(boxes, image_sizes):
        side = float(min(h, w))
        rows.append(
            torch.stack(
                [
                    b[:, 0] / w,
                    b[:, 1] / h,
                    b[:, 2] / w,
                    b[:, 3] / h,
                    (b[:, 2] - b[:, 0]) / side,
                    (b[:, 3] - b[:, 1]) / side,
                ],
                dim=1,
            )
        )
    return torch.cat(rows) if rows else torch.zeros((0, 6))


@dataclass
class BoxHeadOutputs:
    features: Tensor  # (K, D) the region features (fc6)
    fc7: Tensor  # (K, D)
    class_logits: Tensor  # (K, C)
    box_regression: Tensor  # (K, 4C)


def box_head_mlp(
    box_head: TwoMLPHead, predictor: FastRCNNPredictor, fc6_relu: bool, box_inputs: Tensor
) -> BoxHeadOutputs:
    """RoI-pooled box inputs (K, C*r*r [+6]) -> fc6 -> fc7 -> predictor: the detector's box MLP.

    One definition for the detector (`RegionDetector.box_head_outputs`), the in-process compute
    (`LocalDetectorCompute.box_head`) and the exported `detector_box_head` graph.
    """
    fc6_pre = box_head.fc6(box_inputs)
    fc6 = F.relu(fc6_pre)
    fc7 = F.relu(box_head.fc7(fc6))
    class_logits, box_regression = predictor(fc7)
    return BoxHeadOutputs(
        features=fc6 if fc6_relu else fc6_pre,
        fc7=fc7,
        class_logits=class_logits,
        box_regression=box_regression,
    )


def build_roi_heads(preset: DetectorPreset) -> RoIHeads:
    """The box branch of `preset`: pooler, fc6/fc7 MLP, class and box predictor, sampling settings."""
    bh = preset.box_head
    res = bh.pooler_resolution
    roi_heads = RoIHeads(
        # aligned=False RoIAlign, canonical level 4 / scale 224: maskrcnn-benchmark's Pooler.
        box_roi_pool=MultiScaleRoIAlign(list(FPN_LEVELS), output_size=res, sampling_ratio=bh.sampling_ratio),
        box_head=TwoMLPHead(preset.fc6_in_features, bh.representation_size),
        box_predictor=FastRCNNPredictor(bh.representation_size, preset.num_classes),
        fg_iou_thresh=bh.fg_iou_thresh,
        bg_iou_thresh=bh.bg_iou_thresh,
        batch_size_per_image=bh.batch_size_per_image,
        positive_fraction=bh.positive_fraction,
        bbox_reg_weights=bh.bbox_reg_weights,
        # torchvision's own post-processing is not used: `select_regions` replaces it.
        score_thresh=0.0,
        nms_thresh=preset.selection.nms_thresh,
        detections_per_img=preset.selection.max_boxes,
    )
    if preset.rpn.legacy_plus_one:
        roi_heads.box_coder = LegacyBoxCoder(weights=bh.bbox_reg_weights)
    return roi_heads


def build_attribute_head(preset: DetectorPreset) -> AttributeHead | None:
    """The attribute head of `preset`, or None when it has no attribute groups."""
    at = preset.attributes
    if at is None or not at.groups:
        return None
    return AttributeHead(
        preset.num_classes,
        preset.box_head.representation_size,
        at.class_embed_dim,
        at.hidden_dim,
        at.total_values,
        at.hidden_relu,
    )


def select_regions(
    boxes: Tensor, scores: Tensor, spec: SelectionSpec, legacy_plus_one: bool = False
) -> tuple[Tensor, Tensor, int]:
    """The reference rule: (kept indices in max_conf order, their max_conf, count of non-zero max_conf).

    boxes: (N, 4) proposals in original pixels; scores: (N, C) softmax class probabilities.
    For every class (background excluded unless `include_background`), NMS at `nms_thresh` runs over
    all N proposals with that class's scores; a kept proposal's max_conf rises to its class score if
    that is higher and above `conf_thresh`.  The top `max_boxes` proposals by max_conf are kept even
    when their max_conf is 0.

    Exact, but faster than 1600 full NMS calls: greedy NMS decides a box using only higher-scored
    boxes, and a class can only raise max_conf where its score exceeds the current max_conf, so each
    class runs NMS over the prefix of boxes scoring at least its lowest such candidate, and classes
    with no candidate are skipped.  Classes that are some box's argmax go first to raise max_conf early.
    """
    n = scores.shape[0]
    start = 0 if spec.include_background else 1
    nms_boxes = boxes.to(torch.float32).clone()
    if legacy_plus_one:
        # IoU with (x2-x1+1)(y2-y1+1) areas equals plain IoU of boxes grown by one pixel.
        nms_boxes[:, 2:] += 1.0
    max_conf = torch.zeros(n, dtype=scores.dtype)
    if n == 0:
        return torch.zeros(0, dtype=torch.long), max_conf, 0
    fg = scores[:, start:]

    def raise_max_conf(k: int) -> None:
        s = fg[:, k]
        candidates = (s > max_conf) & (s > spec.conf_thresh)
        if not bool(candidates.any()):
            return
        prefix = (s >= s[candidates].min()).nonzero().flatten()
        kept = prefix[nms(nms_boxes[prefix], s[prefix], spec.nms_thresh)]
        raised = kept[(s[kept] > max_conf[kept]) & (s[kept] > spec.conf_thresh)]
        max_conf[raised] = s[raised]

    first = torch.unique(fg.argmax(dim=1))
    for k in first.tolist():
        raise_max_conf(k)
    # Only classes scoring above some box's current max_conf can still change anything.
    need = ((fg > max_conf[:, None]) & (fg > spec.conf_thresh)).any(dim=0)
    need[first] = False
    for k in need.nonzero().flatten().tolist():
        raise_max_conf(k)
    order = torch.sort(max_conf, descending=True, stable=True).indices[: spec.max_boxes]
    kept_conf = max_conf[order]
    return order, kept_conf, int((kept_conf != 0).sum())
