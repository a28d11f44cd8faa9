"""The region proposal network: anchors at fixed strides, Detectron's box coder, torchvision's RPN.

`build_rpn(spec, in_channels)` is torchvision's `RegionProposalNetwork` with an `RPNHead`, a
`FixedStrideAnchorGenerator` (the preset's strides; cell anchors as loadable buffers) and, for
maskrcnn-benchmark presets, `LegacyBoxCoder` ("+1" widths), which the box head uses too.
`rpn_proposals` is that RPN's inference pass split after its head, so the head's outputs may come
from elsewhere (the exported `detector_backbone` graph computes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from regions.presets import RPNSpec


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


def build_rpn(spec: RPNSpec, in_channels: int) -> RegionProposalNetwork:
    """torchvision's RPN over `in_channels`-wide pyramid levels, with the preset's anchors and coder."""
    rpn = RegionProposalNetwork(
        FixedStrideAnchorGenerator(spec),  # type: ignore[arg-type]  (duck-typed: torchvision only calls it)
        RPNHead(in_channels, spec.num_anchors_per_location),
        fg_iou_thresh=spec.fg_iou_thresh,
        bg_iou_thresh=spec.bg_iou_thresh,
        batch_size_per_image=spec.batch_size_per_image,
        positive_fraction=spec.positive_fraction,
        pre_nms_top_n={"training": spec.pre_nms_top_n_train, "testing": spec.pre_nms_top_n_test},
        post_nms_top_n={"training": spec.post_nms_top_n_train, "testing": spec.post_nms_top_n_test},
        nms_thresh=spec.nms_thresh,
    )
    if spec.legacy_plus_one:
        rpn.box_coder = LegacyBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    return rpn


def rpn_proposals(
    rpn: RegionProposalNetwork,
    images: ImageList,
    features: dict[str, Tensor],
    objectness: Sequence[Tensor] | None = None,
    deltas: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """Proposals per image, as `rpn(images, features)` gives them in eval mode.

    `objectness` / `deltas` are the RPN head's per-level outputs ((N, A, H_l, W_l) and
    (N, 4A, H_l, W_l), finest level first); without them the head runs here on `features`.  The
    rest (anchors, decoding, top-n, NMS) is torchvision's `RegionProposalNetwork.forward`.
    """
    levels = list(features.values())
    if objectness is None or deltas is None:
        objectness, deltas = rpn.head(levels)
    objectness, deltas = list(objectness), list(deltas)
    anchors = rpn.anchor_generator(images, levels)
    num_images = len(anchors)
    num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(flat_deltas.detach(), anchors).view(num_images, -1, 4)
    boxes, _ = rpn.filter_proposals(proposals, flat_objectness, images.image_sizes, num_anchors_per_level)
    return boxes
