"""Analytic FLOPs of one ViLBERT forward (trunk + a head), counting a multiply-add as 2 FLOPs.

Only matrix products are counted (projections, FFNs, attention scores and mixing): LayerNorm, GELU,
softmax and the embedding gathers are a fraction of a percent at these sizes and are not what a
"fraction of the matmul ceiling" is about.  The text stream runs over T + 1 positions (the task token
is spliced in after [CLS]); the vision stream over R regions (global row included).

The region detector's FLOPs (`detector_flop_parts`) are counted rather than written out: PyTorch's
FlopCounterMode over its own modules (convolutions and linear layers) at the served resolution;
tests/bench/test_detector_flops.py checks them against a closed form.
"""

from __future__ import annotations

from typing import Any

from vilbert.config import ViLBERTConfig
from vilbert.contract import HEAD_IO, head_in_features, head_out_features
from vilbert.tasks import Head


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention_mix(queries: int, keys: int, width: int) -> int:
    """Scores (Q K^T) and mixing (P V) over all heads: 2 matmuls of queries x keys x width."""
    return 2 * 2 * queries * keys * width


def trunk_flop_parts(cfg: ViLBERTConfig, text_tokens: int, regions: int) -> dict[str, int]:
    """{"linear": weight matmuls, "attention": scores + mixing} of the trunk for one (text, image) row;
    `text_tokens` as fed ([CLS] ... [SEP], without the task token)."""
    lt = text_tokens + (1 if cfg.task_specific_tokens else 0)
    r = regions
    ht, hv, bi = cfg.hidden_size, cfg.v_hidden_size, cfg.bi_hidden_size
    linear = _linear(r, cfg.v_feature_size, hv) + _linear(r, 5, hv)  # region embedding
    linear += cfg.num_hidden_layers * (4 * _linear(lt, ht, ht) + 2 * _linear(lt, ht, cfg.intermediate_size))
    linear += cfg.v_num_hidden_layers * (4 * _linear(r, hv, hv) + 2 * _linear(r, hv, cfg.v_intermediate_size))
    linear += cfg.num_co_layers * (
        3 * _linear(lt, ht, bi)  # text query / key / value
        + 3 * _linear(r, hv, bi)  # image query / key / value
        + _linear(r, bi, hv)
        + _linear(lt, bi, ht)  # back to each stream's width
        + 2 * _linear(r, hv, cfg.v_intermediate_size)
        + 2 * _linear(lt, ht, cfg.intermediate_size)  # FFNs
    )
    linear += _linear(1, ht, bi) + _linear(1, hv, bi)  # poolers
    attention = cfg.num_hidden_layers * _attention_mix(lt, lt, ht)
    attention += cfg.v_num_hidden_layers * _attention_mix(r, r, hv)
    attention += cfg.num_co_layers * (_attention_mix(lt, r, bi) + _attention_mix(r, lt, bi))
    return {"linear": linear, "attention": attention}


def trunk_flops(cfg: ViLBERTConfig, text_tokens: int, regions: int) -> int:
    """FLOPs of the trunk for one (text, image) row."""
    return sum(trunk_flop_parts(cfg, text_tokens, regions).values())


def head_flops(cfg: ViLBERTConfig, head: Head, regions: int = 1) -> int:
    """FLOPs of one head for one row (pair: for one two-image example), from its declared I/O
    (`vilbert.contract.HEAD_IO`): input and output widths, one Linear or the two of an MLP."""
    io = HEAD_IO[head]
    rows = regions if io.per_region else 1
    width, out = head_in_features(head, cfg), head_out_features(head, cfg)
    if io.mlp:
        hidden = cfg.classifier_hidden_mult * cfg.bi_hidden_size
        return _linear(rows, width, hidden) + _linear(rows, hidden, out)
    return _linear(rows, width, out)


def forward_flops(cfg: ViLBERTConfig, head: Head, text_tokens: int, regions: int) -> int:
    return trunk_flops(cfg, text_tokens, regions) + head_flops(cfg, head, regions)


# ---------------------------------------------------------------------------------------------------
# The region detector
# ---------------------------------------------------------------------------------------------------

# The served resolution: a 4:3 image of 600 x 800 (H x W) pixels, which the 12-in-1 preset's rule
# (shorter side to 800, longer side at most 1333) resizes to 800 x 1067 and pads to 800 x 1088.
DETECTOR_IMAGE_HW = (600, 800)

DETECTOR_PARTS = ("backbone_body", "fpn", "rpn_head", "roi_box_head", "roi_predictor", "attribute_head")


def served_image_hw(preset: Any, image_hw: tuple[int, int] = DETECTOR_IMAGE_HW) -> dict[str, tuple[int, int]]:
    """{"input", "resized", "padded"} (H, W) of one image as `regions.transform.preprocess` sizes it."""
    spec = preset.preprocessing
    h, w = image_hw
    scale = spec.scale_for(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    div = spec.size_divisibility
    return {"input": (h, w), "resized": (nh, nw), "padded": (-(-nh // div) * div, -(-nw // div) * div)}


def detector_flop_parts(
    detector_or_preset: Any,
    image_hw: tuple[int, int] = DETECTOR_IMAGE_HW,
    proposals: int | None = None,
    device: str = "meta",
) -> dict[str, int]:
    """FLOPs of one new-image forward of a region detector, per part, multiply-add = 2 FLOPs.

    Counted by PyTorch's `FlopCounterMode` over the detector's own modules, each part run on its own:
    convolutions and linear layers (grouped convolutions at their real cost).  The image is
    `image_hw` (H, W) before preprocessing; the convolutions run on the padded batch the preset's
    resize rule gives (`served_image_hw`: 600 x 800 -> 800 x 1067, padded to 800 x 1088 for
    vg-x152-fpn).  Parts:

    * backbone_body: the ResNet/ResNeXt body (its frozen batch norms are elementwise, not counted);
    * fpn: lateral 1x1 and output 3x3 convolutions (the nearest upsampling and P6 max-pool are not);
    * rpn_head: the RPN's 3x3 convolution and its objectness / box-delta 1x1s on P2..P6;
    * roi_box_head: fc6 and fc7 over `proposals` boxes (default: the preset's post-NMS top-n at test,
      1000 for vg-x152-fpn: what the RPN keeps for an image with that many candidates);
    * roi_predictor: the class scores and box deltas over the same boxes;
    * attribute_head: over the kept boxes (`selection.max_boxes`), when the preset has one.

    Not counted, because they are not matrix products: resize / normalise / pad, anchor generation,
    box decoding, top-n and NMS (RPN and per-class box selection), RoIAlign's bilinear sampling,
    softmax, ReLU, max-pool.  `device="meta"` counts from shapes alone (no arithmetic is done); a
    real device gives the same counts.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from regions.detector import RegionDetector, build_detector

    if isinstance(detector_or_preset, RegionDetector):
        det = detector_or_preset
        preset = det.preset
        device = str(next(det.parameters()).device)
    else:
        with torch.device(device):
            det = build_detector(detector_or_preset)
        preset = det.preset
    det = det.eval()
    h, w = served_image_hw(preset, image_hw)["padded"]
    k = preset.rpn.post_nms_top_n_test if proposals is None else proposals
    out: dict[str, int] = {}

    def count(name: str, fn: Any) -> Any:
        with FlopCounterMode(display=False) as counter:
            result = fn()
        out[name] = int(counter.get_total_flops())
        return result

    with torch.inference_mode():
        x = torch.zeros(1, 3, h, w, device=device)
        body = count("backbone_body", lambda: det.backbone.body(x))
        levels = count("fpn", lambda: det.backbone.fpn(body))
        count("rpn_head", lambda: det.rpn.head(list(levels.values())))
        boxes = torch.zeros(k, preset.fc6_in_features, device=device)
        fc7 = count("roi_box_head", lambda: det.roi_heads.box_head(boxes))
        count("roi_predictor", lambda: det.roi_heads.box_predictor(fc7))
        if det.attribute_head is not None:
            kept = fc7[: preset.selection.max_boxes]
            ids = torch.zeros(len(kept), dtype=torch.long, device=device)
            count("attribute_head", lambda: det.attribute_head(kept, ids))
    return out


def detector_flops(
    detector_or_preset: Any, image_hw: tuple[int, int] = DETECTOR_IMAGE_HW, proposals: int | None = None
) -> int:
    """Total of `detector_flop_parts`: one new image's matrix-product FLOPs."""
    return sum(detector_flop_parts(detector_or_preset, image_hw, proposals).values())
