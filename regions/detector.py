"""The region detector: torchvision's Faster R-CNN parts, composed from a preset.

Data flows top to bottom in this file:

1. `preprocess`: decoded RGB uint8 images -> one padded batch (`ImageList`), per the preset's channel
   order, means, resize rule and size divisibility; returns the resize factor of every image.
2. `RegionDetector`: ResNet/ResNeXt body + FPN (`BackboneWithFPN`), an RPN (`RegionProposalNetwork`
   with `RPNHead` and fixed-stride anchors), a RoIAlign pooler (`MultiScaleRoIAlign`), the two-layer
   box MLP (`TwoMLPHead`: fc6 is the region feature) and `FastRCNNPredictor`, plus the optional
   bottom-up-attention attribute head.  torchvision's `RoIHeads` holds the box parts and gives the
   training-time proposal sampling and Fast R-CNN loss.
3. `select_regions`: the reference box-selection rule — softmax over classes, per-class NMS over the
   *proposals*, each box's `max_conf` is its best surviving class score, keep the top N by `max_conf`
   unconditionally (vilbert-multi-task `script/extract_features.py`).
4. `RegionExtractor`: batched `torch.inference_mode()` extraction returning `ImageRegions` per image
   (boxes in original pixels, fc6 features, classes, attributes), and a GT-box mode that feeds given
   boxes as the proposals and keeps all of them in order (the reference `extract_features_from_gt.py`).

Weights: `save_detector` / `load_detector` (safetensors + the preset JSON beside it), or a
maskrcnn-benchmark checkpoint through `regions.maskrcnn_import`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from regions.decode import DecodedImage
from regions.inputs import RegionInputs, region_inputs
from regions.presets import (
    BackboneSpec,
    BlockKind,
    ChannelOrder,
    DetectorPreset,
    NormKind,
    Preprocessing,
    RPNSpec,
    SelectionSpec,
    get_preset,
    load_preset_json,
)
from regions.store import RegionRecord

FPN_LEVELS = ("0", "1", "2", "3")  # BackboneWithFPN's names for P2..P5 ("pool" is P6, RPN only)

# ---------------------------------------------------------------------------------------------------
# 1. Preprocessing
# ---------------------------------------------------------------------------------------------------


def as_rgb_array(image: np.ndarray | DecodedImage | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any of the accepted image holders (already decoded: see regions.decode)."""
    if isinstance(image, DecodedImage):
        return image.rgb
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


def preprocess(images: Sequence[np.ndarray], spec: Preprocessing) -> tuple[ImageList, list[float]]:
    """Decoded RGB uint8 images -> a zero-padded normalised batch, and each image's resize factor.

    The order follows the reference extractor: channel order, mean/std, bilinear resize with the
    `Preprocessing.scale_for` rule (resizing is linear, so normalising first or last is the same),
    then padding to a multiple of `size_divisibility`.
    """
    mean = torch.tensor(spec.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.pixel_std, dtype=torch.float32).view(3, 1, 1)
    tensors: list[Tensor] = []
    scales: list[float] = []
    for img in images:
        h, w = int(img.shape[0]), int(img.shape[1])
        x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W), a copy
        if spec.channel_order is ChannelOrder.BGR:
            x = x.flip(0)
        scale = spec.scale_for(h, w)
        # As cv2.resize(fx=fy=scale) in the reference: the output size is the rounded (half-to-even)
        # product, while sampling positions use `scale` itself, not the ratio of the rounded sizes.
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            x = torch.ops.aten.upsample_bilinear2d(x[None], [nh, nw], False, scale, scale)[0]
        tensors.append((x - mean) / std)
        scales.append(scale)
    div = spec.size_divisibility
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    max_h, max_w = -(-max_h // div) * div, -(-max_w // div) * div
    batch = torch.zeros((len(tensors), 3, max_h, max_w), dtype=torch.float32)
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    return ImageList(batch, sizes), scales


# ---------------------------------------------------------------------------------------------------
# 2. The detector
# ---------------------------------------------------------------------------------------------------


class SmallResNet(nn.Module):
    """A narrow ResNet body from torchvision BasicBlocks (the synthetic preset's backbone).

    Children are registered in execution order with torchvision ResNet's names (conv1, bn1, relu,
    maxpool, layer1..4) so `BackboneWithFPN`'s IntermediateLayerGetter can run it unchanged.
    """

    def __init__(self, spec: BackboneSpec, norm_layer: Any) -> None:
        super().__init__()
        k = spec.stem_kernel
        self.conv1 = nn.Conv2d(3, spec.stem_channels, kernel_size=k, stride=2, padding=k // 2, bias=False)
        self.bn1 = norm_layer(spec.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = spec.stem_channels
        for i, (planes, count) in enumerate(zip(spec.stage_channels, spec.block_counts), start=1):
            stride = 1 if i == 1 else 2
            blocks: list[nn.Module] = []
            for b in range(count):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), norm_layer(planes)
                    )
                blocks.append(BasicBlock(inplanes, planes, s, downsample, norm_layer=norm_layer))
                inplanes = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_body(spec: BackboneSpec) -> nn.Module:
    """The ResNet-family body of a preset (before the FPN)."""
    if spec.norm is NormKind.FROZEN_BN:
        norm_layer: Any = partial(FrozenBatchNorm2d, eps=spec.frozen_bn_eps)
    else:
        norm_layer = nn.BatchNorm2d
    if spec.block is BlockKind.BOTTLENECK:
        # ResNeXt-152 32x8d is torchvision's ResNet class with Bottleneck blocks [3, 8, 36, 3],
        # groups=32, width_per_group=8 (torchvision ships 50/101 only).  Its avgpool/fc are dropped by
        # BackboneWithFPN's IntermediateLayerGetter, which stops after layer4.
        if spec.stem_channels != 64 or spec.stem_kernel != 7:
            raise ValueError("torchvision's ResNet class has a 64-channel 7x7 stem")
        return ResNet(
            Bottleneck,
            list(spec.block_counts),
            groups=spec.groups,
            width_per_group=spec.width_per_group,
            norm_layer=norm_layer,
        )
    return SmallResNet(spec, norm_layer)


def detectron_cell_anchors(stride: int, size: int, aspect_ratios: Sequence[float]) -> Tensor:
    """Cell anchors with Detectron's arithmetic (maskrcnn-benchmark `generate_anchors`).

    A (stride x stride) reference window whose corners are (0, 0) and (stride-1, stride-1) is
    reshaped to each aspect ratio with rounded widths, then scaled to `size`, keeping its centre at
    (stride-1)/2 and the "+1" width convention.  Written from the published formula.
    """
    ctr = 0.5 * (stride - 1)
    area = float(stride * stride)
    rows = []
    for ratio in aspect_ratios:
        ws = np.round(np.sqrt(area / ratio))
        hs = np.round(ws * ratio)
        ws, hs = ws * (size / stride), hs * (size / stride)
        rows.append([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)])
    return torch.tensor(rows, dtype=torch.float32)


class CellAnchors(nn.Module):
    """One (A, 4) buffer per pyramid level, named "0".."L-1" (as maskrcnn-benchmark's BufferList)."""

    def __init__(self, anchors: Sequence[Tensor]) -> None:
        super().__init__()
        for i, a in enumerate(anchors):
            self.register_buffer(str(i), a)

    def __getitem__(self, i: int) -> Tensor:
        return getattr(self, str(i))

    def __len__(self) -> int:
        return len(self._buffers)


class FixedStrideAnchorGenerator(nn.Module):
    """Anchors on every pyramid level at the preset's fixed strides.

    torchvision's AnchorGenerator derives each level's stride as padded_size // grid_size, which gives
    61 rather than 64 on P6 of an 800-px image; maskrcnn-benchmark uses the configured strides.  The
    cell anchors are buffers so an imported checkpoint's own anchors are used, exactly.
    """

    def __init__(self, spec: RPNSpec) -> None:
        super().__init__()
        self.strides = tuple(spec.anchor_strides)
        if spec.legacy_plus_one:
            cells = [
                detectron_cell_anchors(s, z, spec.aspect_ratios)
                for s, z in zip(spec.anchor_strides, spec.anchor_sizes)
            ]
        else:
            tv = AnchorGenerator()
            cells = [tv.generate_anchors((z,), tuple(spec.aspect_ratios)) for z in spec.anchor_sizes]
        self.cell_anchors = CellAnchors(cells)

    def num_anchors_per_location(self) -> list[int]:
        return [int(self.cell_anchors[i].shape[0]) for i in range(len(self.cell_anchors))]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        per_level = []
        for i, fmap in enumerate(feature_maps):
            h, w = fmap.shape[-2:]
            stride = self.strides[i]
            base = self.cell_anchors[i].to(fmap.device)
            shifts_x = torch.arange(w, dtype=torch.float32, device=fmap.device) * stride
            shifts_y = torch.arange(h, dtype=torch.float32, device=fmap.device) * stride
            sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
            # position-major, anchor-minor: the order RPNHead's outputs are flattened in
            per_level.append((shifts + base.view(1, -1, 4)).reshape(-1, 4))
        anchors = torch.cat(per_level)
        return [anchors for _ in image_list.image_sizes]


class LegacyBoxCoder(BoxCoder):
    """torchvision's BoxCoder with Detectron's "+1" widths (x2 = x1 + w - 1)."""

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        pw = proposals[:, 2] - proposals[:, 0] + 1
        ph = proposals[:, 3] - proposals[:, 1] + 1
        px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
        gw = reference_boxes[:, 2] - reference_boxes[:, 0] + 1
        gh = reference_boxes[:, 3] - reference_boxes[:, 1] + 1
        gx, gy = reference_boxes[:, 0] + 0.5 * gw, reference_boxes[:, 1] + 0.5 * gh
        return torch.stack(
            (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)),
            dim=1,
        )

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        boxes = boxes.to(rel_codes.dtype)
        widths = boxes[:, 2] - boxes[:, 0] + 1
        heights = boxes[:, 3] - boxes[:, 1] + 1
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pcx, pcy = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
        out = torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1), dim=2)
        return out.flatten(1)


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
        fc6_pre = head.fc6(x)
        fc6 = F.relu(fc6_pre)
        fc7 = F.relu(head.fc7(fc6))
        class_logits, box_regression = self.roi_heads.box_predictor(fc7)
        feats = fc6 if self.preset.box_head.fc6_relu else fc6_pre
        return BoxHeadOutputs(
            features=feats, fc7=fc7, class_logits=class_logits, box_regression=box_regression
        )

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
    bb, rp, bh = preset.backbone, preset.rpn, preset.box_head
    backbone = BackboneWithFPN(
        build_body(bb),
        return_layers={f"layer{i + 1}": name for i, name in enumerate(FPN_LEVELS)},
        in_channels_list=list(bb.stage_channels),
        out_channels=bb.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchor_generator = FixedStrideAnchorGenerator(rp)
    rpn = RegionProposalNetwork(
        anchor_generator,  # type: ignore[arg-type]  (duck-typed: torchvision only calls it)
        RPNHead(bb.fpn_channels, rp.num_anchors_per_location),
        fg_iou_thresh=rp.fg_iou_thresh,
        bg_iou_thresh=rp.bg_iou_thresh,
        batch_size_per_image=rp.batch_size_per_image,
        positive_fraction=rp.positive_fraction,
        pre_nms_top_n={"training": rp.pre_nms_top_n_train, "testing": rp.pre_nms_top_n_test},
        post_nms_top_n={"training": rp.post_nms_top_n_train, "testing": rp.post_nms_top_n_test},
        nms_thresh=rp.nms_thresh,
    )
    if rp.legacy_plus_one:
        rpn.box_coder = LegacyBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
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
    if rp.legacy_plus_one:
        roi_heads.box_coder = LegacyBoxCoder(weights=bh.bbox_reg_weights)
    attribute_head = None
    at = preset.attributes
    if at is not None and at.groups:
        attribute_head = AttributeHead(
            preset.num_classes,
            bh.representation_size,
            at.class_embed_dim,
            at.hidden_dim,
            at.total_values,
            at.hidden_relu,
        )
    return RegionDetector(preset, backbone, rpn, roi_heads, attribute_head)


# ---------------------------------------------------------------------------------------------------
# 3. Box selection (the reference rule)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# 4. Extraction
# ---------------------------------------------------------------------------------------------------


@dataclass
class ImageRegions:
    """One image's regions: what `/images` returns and what the feature store records."""

    image_w: int
    image_h: int
    boxes: np.ndarray  # (N, 4) float32, x1y1x2y2 in original image pixels
    features: np.ndarray  # (N, D) float32, fc6
    objects: np.ndarray  # (N,) int64, argmax foreground class (0-based, background excluded)
    object_scores: np.ndarray  # (N,) float32, probability of that class
    max_conf: np.ndarray  # (N,) float32, selection confidence (GT-box mode: best foreground probability)
    cls_prob: np.ndarray  # (N, C) float32 class posteriors, background first
    class_names: tuple[str, ...] = ()
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (N,) int64 argmax
    attribute_scores: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (N,) float32
    attribute_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    num_confident: int = 0  # boxes with max_conf != 0 (the reference's unused "num_boxes")

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def labels(self) -> list[str]:
        names = self.class_names
        return [names[i] if 0 <= i < len(names) else f"class_{i}" for i in self.objects.tolist()]

    def attribute_labels(self, group: str) -> list[str]:
        names = self.attribute_names.get(group, ())
        return [names[i] if 0 <= i < len(names) else f"{group}_{i}" for i in self.attributes[group].tolist()]

    def inputs(self, max_regions: int | None = None) -> RegionInputs:
        """Global-first features and 5-d locations: the model's image input for this image."""
        return region_inputs(self.boxes, self.features, self.image_w, self.image_h, max_regions)

    def to_record(self, image_id: str, *, with_cls_prob: bool = False) -> RegionRecord:
        """A feature-store record (reference LMDB layout, plus the detector's labels as extras)."""
        extra: dict[str, Any] = {
            "objects": self.objects,
            "object_scores": self.object_scores,
            "max_conf": self.max_conf,
        }
        for group, values in self.attributes.items():
            extra[f"attr_{group}"] = values
        if with_cls_prob:
            extra["cls_prob"] = self.cls_prob
        return RegionRecord(
            image_id=image_id,
            image_h=self.image_h,
            image_w=self.image_w,
            boxes=self.boxes,
            features=self.features,
            num_boxes=self.num_boxes,
            extra=extra,
        )


def _clipped_boxes(boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A copy of x1y1x2y2 pixel boxes clipped to the image; non-finite or inverted boxes are refused."""
    b = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    h, w = image.shape[:2]
    if b.size and (not np.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any()):
        raise ValueError("boxes must be finite x1,y1,x2,y2 with x2 >= x1 and y2 >= y1")
    np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
    return b


class RegionExtractor:
    """Batched, inference-only region extraction for one detector."""

    def __init__(self, detector: RegionDetector, *, batch_size: int = 2) -> None:
        self.detector = detector.eval()
        self.preset = detector.preset
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_preset(
        cls, preset: DetectorPreset | str, weights: str | Path | None = None, **kwargs: Any
    ) -> RegionExtractor:
        if weights is None:
            detector = build_detector(preset)
        else:
            detector = load_detector(weights, preset)
        return cls(detector, **kwargs)

    def __call__(self, image: np.ndarray | DecodedImage | Image.Image) -> ImageRegions:
        return self.extract([image])[0]

    def extract(self, images: Sequence[np.ndarray | DecodedImage | Image.Image]) -> list[ImageRegions]:
        """Detected regions per image, by the reference selection rule."""
        arrays = [as_rgb_array(im) for im in images]
        out: list[ImageRegions] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run(arrays[i : i + self.batch_size], None))
        return out

    def extract_at_boxes(
        self, images: Sequence[np.ndarray | DecodedImage | Image.Image], boxes: Sequence[np.ndarray]
    ) -> list[ImageRegions]:
        """Features for given x1y1x2y2 pixel boxes: fed as proposals, all kept, in the given order."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        arrays = [as_rgb_array(im) for im in images]
        given = [_clipped_boxes(b, arr) for arr, b in zip(arrays, boxes)]
        out: list[ImageRegions] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run(arrays[i : i + self.batch_size], given[i : i + self.batch_size]))
        return out

    def extract_with_boxes(
        self,
        images: Sequence[np.ndarray | DecodedImage | Image.Image],
        box_sets: Sequence[Sequence[np.ndarray]],
    ) -> list[tuple[ImageRegions, list[ImageRegions]]]:
        """Per image: its detected regions and the features at each of its given box lists, from one
        backbone pass (the same numbers as `extract` and `extract_at_boxes` called separately)."""
        if len(images) != len(box_sets):
            raise ValueError(f"{len(images)} images but {len(box_sets)} box-list sets")
        arrays = [as_rgb_array(im) for im in images]
        sets = [[_clipped_boxes(b, arr) for b in bs] for arr, bs in zip(arrays, box_sets)]
        out: list[tuple[ImageRegions, list[ImageRegions]]] = []
        for i in range(0, len(arrays), self.batch_size):
            out.extend(self._run_with_boxes(arrays[i : i + self.batch_size], sets[i : i + self.batch_size]))
        return out

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], given: list[np.ndarray] | None) -> list[ImageRegions]:
        image_list, scales = preprocess(images, self.preset.preprocessing)
        features = self.detector.backbone(image_list.tensors)
        return self._regions(images, image_list, scales, features, given)

    @torch.inference_mode()
    def _run_with_boxes(
        self, images: list[np.ndarray], sets: list[list[np.ndarray]]
    ) -> list[tuple[ImageRegions, list[ImageRegions]]]:
        image_list, scales = preprocess(images, self.preset.preprocessing)
        features = self.detector.backbone(image_list.tensors)
        detected = self._regions(images, image_list, scales, features, None)
        at_boxes: list[list[ImageRegions]] = [[] for _ in images]
        for r in range(max((len(s) for s in sets), default=0)):  # round r: each image's r-th box list
            idx = [i for i, s in enumerate(sets) if len(s) > r]
            sub = ImageList(image_list.tensors[idx], [image_list.image_sizes[i] for i in idx])
            feats = {k: v[idx] for k, v in features.items()}
            regions = self._regions(
                [images[i] for i in idx], sub, [scales[i] for i in idx], feats, [sets[i][r] for i in idx]
            )
            for i, reg in zip(idx, regions):
                at_boxes[i].append(reg)
        return list(zip(detected, at_boxes))

    def _regions(
        self,
        images: list[np.ndarray],
        image_list: ImageList,
        scales: list[float],
        features: dict[str, Tensor],
        given: list[np.ndarray] | None,
    ) -> list[ImageRegions]:
        det, preset = self.detector, self.preset
        if given is None:
            proposals, _ = det.rpn(image_list, features)
        else:
            proposals = [torch.from_numpy(b) * s for b, s in zip(given, scales)]
        out = det.box_head_outputs(features, proposals, image_list.image_sizes)
        probs = F.softmax(out.class_logits, dim=-1)
        counts = [len(p) for p in proposals]
        start = 0 if preset.selection.include_background else 1
        results = []
        for i, (img, props, scale, p, f, f7) in enumerate(
            zip(
                images,
                proposals,
                scales,
                probs.split(counts),
                out.features.split(counts),
                out.fc7.split(counts),
            )
        ):
            if given is None:
                boxes = props / scale  # original-image pixels, as the reference divides by im_scale
            else:
                boxes = torch.from_numpy(given[i])  # exactly as given (after clipping to the image)
            if given is None:
                keep, max_conf, n_conf = select_regions(
                    boxes, p, preset.selection, preset.rpn.legacy_plus_one
                )
            else:
                keep = torch.arange(len(props))
                max_conf = p[:, start:].max(dim=1).values if len(props) else torch.zeros(0)
                n_conf = int((max_conf != 0).sum())
            kp = p[keep]
            fg_scores, objects = (
                kp[:, start:].max(dim=1) if len(keep) else (torch.zeros(0), torch.zeros(0).long())
            )
            attributes, attribute_scores, attribute_names = self._attributes(f7[keep], objects + start)
            results.append(
                ImageRegions(
                    image_w=int(img.shape[1]),
                    image_h=int(img.shape[0]),
                    boxes=boxes[keep].numpy().astype(np.float32),
                    features=f[keep].numpy().astype(np.float32),
                    objects=objects.numpy().astype(np.int64),
                    object_scores=fg_scores.numpy().astype(np.float32),
                    max_conf=max_conf.numpy().astype(np.float32),
                    cls_prob=kp.numpy().astype(np.float32),
                    class_names=preset.class_names,
                    attributes=attributes,
                    attribute_scores=attribute_scores,
                    attribute_names=attribute_names,
                    num_confident=n_conf,
                )
            )
        return results

    def _attributes(
        self, fc7: Tensor, class_ids: Tensor
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
        spec = self.preset.attributes
        logits = self.detector.attribute_logits(fc7, class_ids) if len(fc7) else None
        if spec is None or not spec.groups or self.detector.attribute_head is None:
            return {}, {}, {}
        values, scores, names = {}, {}, {}
        start = 0
        for group in spec.groups:
            if logits is None:
                values[group.name] = np.zeros(0, dtype=np.int64)
                scores[group.name] = np.zeros(0, dtype=np.float32)
            else:
                prob = F.softmax(logits[:, start : start + group.num_values], dim=-1)
                s, v = prob.max(dim=1)
                values[group.name], scores[group.name] = (
                    v.numpy().astype(np.int64),
                    s.numpy().astype(np.float32),
                )
            names[group.name] = group.value_names
            start += group.num_values
        return values, scores, names


# ---------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def preset_path_for(weights: str | Path) -> Path:
    """The preset JSON that travels with a safetensors weights file (same stem)."""
    return Path(weights).with_suffix(".json")


def save_detector(detector: RegionDetector, path: str | Path) -> tuple[Path, Path]:
    """Weights as safetensors plus the preset JSON beside them, each written atomically."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in detector.state_dict().items()}
    preset_json = preset_path_for(path)
    # The preset first: a weights file is only ever visible with the preset that explains it.
    atomic_write(preset_json, detector.preset.to_json().encode())
    atomic_write(
        path, save(state, metadata={"preset": detector.preset.name, "format": "twelve-in-one/regions"})
    )
    return path, preset_json


def load_state_strict(
    module: nn.Module, state: dict[str, Tensor], source: str, *, assign: bool = False
) -> None:
    """load_state_dict that names every missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"mis-shaped keys {shapes}")
    if problems:
        raise ValueError(f"{source} does not match the detector: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=assign)


def load_detector(weights: str | Path, preset: DetectorPreset | str | None = None) -> RegionDetector:
    """A detector with weights: our safetensors (+ preset JSON), or a maskrcnn-benchmark checkpoint."""
    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"detector weights not found: {weights}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sidecar = preset_path_for(weights)
        if sidecar.exists():
            resolved = load_preset_json(sidecar)
            if isinstance(preset, str) and preset not in (resolved.name, str(sidecar)):
                raise ValueError(f"{weights} holds a {resolved.name!r} detector, not {preset!r}")
            if isinstance(preset, DetectorPreset) and preset != resolved:
                raise ValueError(f"{weights} was saved with a different {resolved.name!r} preset ({sidecar})")
        elif preset is not None:
            resolved = preset if isinstance(preset, DetectorPreset) else get_preset(preset)
        else:
            raise FileNotFoundError(f"{sidecar} (the preset of {weights}) is missing; pass the preset")
        detector = build_detector(resolved)
        load_state_strict(detector, load_file(str(weights)), str(weights))
        return detector.eval()
    from regions.maskrcnn_import import load_maskrcnn_benchmark_detector

    resolved = get_preset(preset or "vg-x152-fpn") if not isinstance(preset, DetectorPreset) else preset
    detector, _report = load_maskrcnn_benchmark_detector(weights, resolved)
    return detector.eval()


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line) or JSON (list, or {"categories": [{"name"}]})."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict) and "categories" in data:
            data = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        return tuple(str(x) for x in data)
    return tuple(line.strip().split(",")[0] for line in text.splitlines() if line.strip())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
