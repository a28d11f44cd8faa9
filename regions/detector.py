"""The region detector: torchvision's Faster R-CNN parts, composed from a preset.

`RegionDetector` holds the parts it is given: the backbone (`regions.backbone`: ResNet/ResNeXt body
+ FPN), the RPN (`regions.rpn`: fixed-stride anchors, box coder, proposals), the RoI heads
(`regions.roi_heads`: RoIAlign pooler, the two-layer box MLP whose fc6 is the region feature, the
predictor) and the optional attribute head.  `build_detector(preset)` builds those parts from a
preset and composes them.  Around it: `regions.transform` (images -> batch), `regions.roi_heads`
(`select_regions`, the reference box selection), `regions.extractor` (`RegionExtractor`,
`ImageRegions`), `regions.weights` (save/load, including maskrcnn-benchmark checkpoints through
`regions.maskrcnn_import`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from regions.backbone import build_backbone
from regions.presets import DetectorPreset, get_preset
from regions.roi_heads import (
    AttributeHead,
    BoxHeadOutputs,
    box_geometry,
    box_head_mlp,
    build_attribute_head,
    build_roi_heads,
)
from regions.rpn import build_rpn


class RegionDetector(nn.Module):
    """Faster R-CNN with FPN whose fc6 box features are the region features (see module docstring)."""

    def __init__(
        self,
        preset: DetectorPreset,
        backbone: BackboneWithFPN,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        attribute_head: AttributeHead | None,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.attribute_head = attribute_head

    def box_head_outputs(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> BoxHeadOutputs:
        """Pool each box from the pyramid and run fc6 -> fc7 -> predictor."""
        head: TwoMLPHead = self.roi_heads.box_head  # type: ignore[assignment]
        pooled = self.roi_heads.box_roi_pool(features, boxes, image_sizes)  # (K, C_fpn, 7, 7)
        x = pooled.flatten(1)
        if self.preset.box_head.geometry_features:
            x = torch.cat([x, box_geometry(boxes, image_sizes)], dim=1)  # (K, C_fpn*49 + 6)
        return box_head_mlp(head, self.roi_heads.box_predictor, self.preset.box_head.fc6_relu, x)

    def attribute_logits(self, fc7: Tensor, class_ids: Tensor) -> Tensor | None:
        """Attribute logits conditioned on `class_ids` (with background = 0), or None without a head."""
        if self.attribute_head is None:
            return None
        return self.attribute_head(fc7, class_ids)

    def forward(self, images: ImageList, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses.  Targets: "boxes" (G, 4) in the resized frame, "labels" (G,), and
        "attributes" (G, n_groups) with -1 where unknown, when the preset has attribute heads."""
        features = self.backbone(images.tensors)
        proposals, rpn_losses = self.rpn(images, features, targets)
        proposals, matched_idxs, labels, regression_targets = self.roi_heads.select_training_samples(
            proposals, targets
        )
        out = self.box_head_outputs(features, proposals, images.image_sizes)
        loss_classifier, loss_box_reg = fastrcnn_loss(
            out.class_logits, out.box_regression, labels, regression_targets
        )
        losses = {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        spec = self.preset.attributes
        if self.attribute_head is not None and spec is not None and spec.groups:
            all_labels = torch.cat(labels)
            fg = all_labels > 0
            per_image = [
                # matched_idxs is 0 for every proposal of an image without objects: no targets there.
                t["attributes"][m] if len(t["attributes"]) else m.new_full((len(m), len(spec.groups)), -1)
                for t, m in zip(targets, matched_idxs)
            ]
            attr_targets = torch.cat(per_image)[fg]
            # As in bottom-up attention, the class embedding sees the ground-truth class in training.
            logits = self.attribute_head(out.fc7[fg], all_labels[fg])
            loss_attr = out.fc7.sum() * 0.0
            start = 0
            for g, group in enumerate(spec.groups):
                tgt = attr_targets[:, g]
                if (tgt >= 0).any():
                    loss_attr = loss_attr + F.cross_entropy(
                        logits[:, start : start + group.num_values], tgt, ignore_index=-1
                    )
                start += group.num_values
            losses["loss_attributes"] = loss_attr
        return losses


def build_detector(preset: DetectorPreset | str) -> RegionDetector:
    """A randomly initialised detector for `preset` (a preset object, name or JSON path)."""
    if not isinstance(preset, DetectorPreset):
        preset = get_preset(preset)
    preset.validate()
    return RegionDetector(
        preset,
        build_backbone(preset.backbone),
        build_rpn(preset.rpn, preset.backbone.fpn_channels),
        build_roi_heads(preset),
        build_attribute_head(preset),
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
