"""Import maskrcnn-benchmark checkpoints: the format the 12-in-1 region extractor was released in.

The vilbert-multi-task extractor (``detectron_model.pth`` = ``model_final.pth`` of the
vqa-maskrcnn-benchmark fork) is a ``torch.save`` of ``{"model": state_dict, ...}`` (optimizer,
scheduler and iteration entries may sit beside "model"; DDP training may prefix keys with
``module.``).  Its module names come from facebookresearch/maskrcnn-benchmark:

=====================================================  =============================================
maskrcnn-benchmark                                     this package (`RegionDetector.state_dict()`)
=====================================================  =============================================
backbone.body.stem.conv1.weight                        backbone.body.conv1.weight
backbone.body.stem.bn1.{weight,bias,running_*}         backbone.body.bn1.*  (FrozenBatchNorm2d buffers)
backbone.body.layerS.B.conv{1,2,3}.weight              backbone.body.layerS.B.conv{1,2,3}.weight
backbone.body.layerS.B.bn{1,2,3}.*                     backbone.body.layerS.B.bn{1,2,3}.*
backbone.body.layerS.0.downsample.{0.weight,1.*}       backbone.body.layerS.0.downsample.{0.weight,1.*}
backbone.fpn.fpn_inner{i}.{weight,bias}                backbone.fpn.inner_blocks.{i-1}.0.*
backbone.fpn.fpn_layer{i}.{weight,bias}                backbone.fpn.layer_blocks.{i-1}.0.*
rpn.anchor_generator.cell_anchors.{l}                  rpn.anchor_generator.cell_anchors.{l}
rpn.head.conv.{weight,bias}                            rpn.head.conv.0.0.*
rpn.head.{cls_logits,bbox_pred}.{weight,bias}          rpn.head.{cls_logits,bbox_pred}.*
roi_heads.box.feature_extractor.fc{6,7}.*              roi_heads.box_head.fc{6,7}.*
roi_heads.box.predictor.{cls_score,bbox_pred}.*        roi_heads.box_predictor.{cls_score,bbox_pred}.*
roi_heads.box.predictor.cls_embed.weight               attribute_head.cls_embed.weight  (fork, ATTR)
roi_heads.box.predictor.attr_linear{1,2}.*             attribute_head.attr_linear{1,2}.*
=====================================================  =============================================

The map is generated from the preset (block counts, widths, FPN width, anchors, classes, attribute
head), with the shape every tensor must have.  Loading is strict: a checkpoint key the map does not
name, a mapped key the checkpoint lacks, or a shape that differs raises `CheckpointMismatchError`
naming the keys; nothing is skipped silently.  The only variant chosen from the checkpoint is whether
the fork's attribute head is present — all three of its tensors or none, and the report says which.
Pickles are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.

The weights arrive exactly; the runtime around them follows maskrcnn-benchmark where it matters for
the features (Caffe BGR means, the 800/1333 resize rule, FrozenBN without epsilon, the checkpoint's
own cell anchors at fixed strides, "+1" box decoding in the RPN and "+1" overlaps in the per-class
NMS, aligned=False RoIAlign with sampling ratio 2).  Remaining known differences, all at the
one-pixel level and unverified against the original (its weights are not available here):
torchvision clips proposals to [0, W] rather than [0, W-1], computes the RoI pyramid level and the
RPN's NMS overlaps without "+1", and its bilinear resize is not OpenCV's (same sampling grid,
float arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from regions.detector import RegionDetector, build_detector
from regions.presets import BlockKind, DetectorPreset
from vilbert.io import check_state_dict, load_state_dict_strict

BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
ATTRIBUTE_HEAD_SOURCES = (
    "roi_heads.box.predictor.cls_embed.weight",
    "roi_heads.box.predictor.attr_linear1.weight",
    "roi_heads.box.predictor.attr_linear1.bias",
    "roi_heads.box.predictor.attr_linear2.weight",
    "roi_heads.box.predictor.attr_linear2.bias",
)
_DDP_PREFIX = "module."


class CheckpointMismatchError(ValueError):
    """The checkpoint and the preset disagree; the message names every offending key."""


@dataclass(frozen=True)
class KeyMapping:
    source: str  # maskrcnn-benchmark state-dict name
    target: str  # RegionDetector state-dict name
    shape: tuple[int, ...]
    is_buffer: bool  # FrozenBatchNorm2d statistics/affine and cell anchors are buffers in both


@dataclass
class ImportReport:
    """What an import did, for logs and tests."""

    source: str
    loaded: list[KeyMapping] = field(default_factory=list)
    other_entries: list[str] = field(default_factory=list)  # top-level entries beside "model"
    notes: list[str] = field(default_factory=list)


def checkpoint_key_map(preset: DetectorPreset) -> list[KeyMapping]:
    """Every tensor of a maskrcnn-benchmark checkpoint for this preset, with our name and its shape."""
    bb, rp, bh = preset.backbone, preset.rpn, preset.box_head
    if bb.block is not BlockKind.BOTTLENECK:
        raise ValueError(f"preset {preset.name!r}: maskrcnn-benchmark checkpoints have Bottleneck bodies")
    out: list[KeyMapping] = []

    def add(src: str, dst: str, shape: tuple[int, ...], buffer: bool = False) -> None:
        out.append(KeyMapping(src, dst, tuple(int(s) for s in shape), buffer))

    def add_bn(src: str, dst: str, channels: int) -> None:
        for f in BN_FIELDS:
            add(f"{src}.{f}", f"{dst}.{f}", (channels,), buffer=True)

    # Stem: 7x7/2 conv + FrozenBN (maskrcnn-benchmark wraps it in a "stem" module).
    add("backbone.body.stem.conv1.weight", "backbone.body.conv1.weight", (bb.stem_channels, 3, 7, 7))
    add_bn("backbone.body.stem.bn1", "backbone.body.bn1", bb.stem_channels)
    # Stages res2..res5 = layer1..layer4; stride in the 3x3 conv (STRIDE_IN_1X1: False), as torchvision.
    in_ch = bb.stem_channels
    for s, (count, out_ch, width) in enumerate(
        zip(bb.block_counts, bb.stage_channels, bb.bottleneck_widths), start=1
    ):
        for b in range(count):
            src = dst = f"backbone.body.layer{s}.{b}"
            block_in = in_ch if b == 0 else out_ch
            add(f"{src}.conv1.weight", f"{dst}.conv1.weight", (width, block_in, 1, 1))
            add_bn(f"{src}.bn1", f"{dst}.bn1", width)
            add(f"{src}.conv2.weight", f"{dst}.conv2.weight", (width, width // bb.groups, 3, 3))
            add_bn(f"{src}.bn2", f"{dst}.bn2", width)
            add(f"{src}.conv3.weight", f"{dst}.conv3.weight", (out_ch, width, 1, 1))
            add_bn(f"{src}.bn3", f"{dst}.bn3", out_ch)
            if b == 0:  # in_channels != out_channels in every first block
                add(f"{src}.downsample.0.weight", f"{dst}.downsample.0.weight", (out_ch, block_in, 1, 1))
                add_bn(f"{src}.downsample.1", f"{dst}.downsample.1", out_ch)
        in_ch = out_ch
    # FPN: fpn_inner{i} (1x1 lateral) and fpn_layer{i} (3x3 output) on res2..res5; P6 is a max-pool.
    fpn = bb.fpn_channels
    for i, c in enumerate(bb.stage_channels, start=1):
        add(
            f"backbone.fpn.fpn_inner{i}.weight", f"backbone.fpn.inner_blocks.{i - 1}.0.weight", (fpn, c, 1, 1)
        )
        add(f"backbone.fpn.fpn_inner{i}.bias", f"backbone.fpn.inner_blocks.{i - 1}.0.bias", (fpn,))
        add(
            f"backbone.fpn.fpn_layer{i}.weight",
            f"backbone.fpn.layer_blocks.{i - 1}.0.weight",
            (fpn, fpn, 3, 3),
        )
        add(f"backbone.fpn.fpn_layer{i}.bias", f"backbone.fpn.layer_blocks.{i - 1}.0.bias", (fpn,))
    # RPN: the cell anchors are buffers in maskrcnn-benchmark's BufferList; we load them too.
    a = rp.num_anchors_per_location
    for level in range(len(rp.anchor_strides)):
        key = f"rpn.anchor_generator.cell_anchors.{level}"
        add(key, key, (a, 4), buffer=True)
    add("rpn.head.conv.weight", "rpn.head.conv.0.0.weight", (fpn, fpn, 3, 3))
    add("rpn.head.conv.bias", "rpn.head.conv.0.0.bias", (fpn,))
    for name, n_out in (("cls_logits", a), ("bbox_pred", 4 * a)):
        add(f"rpn.head.{name}.weight", f"rpn.head.{name}.weight", (n_out, fpn, 1, 1))
        add(f"rpn.head.{name}.bias", f"rpn.head.{name}.bias", (n_out,))
    # Box head (FPN2MLPFeatureExtractor) and predictor (FPNPredictor, class-specific regression).
    rep, c = bh.representation_size, preset.num_classes
    fe, pr = "roi_heads.box.feature_extractor", "roi_heads.box.predictor"
    add(f"{fe}.fc6.weight", "roi_heads.box_head.fc6.weight", (rep, preset.fc6_in_features))
    add(f"{fe}.fc6.bias", "roi_heads.box_head.fc6.bias", (rep,))
    add(f"{fe}.fc7.weight", "roi_heads.box_head.fc7.weight", (rep, rep))
    add(f"{fe}.fc7.bias", "roi_heads.box_head.fc7.bias", (rep,))
    add(f"{pr}.cls_score.weight", "roi_heads.box_predictor.cls_score.weight", (c, rep))
    add(f"{pr}.cls_score.bias", "roi_heads.box_predictor.cls_score.bias", (c,))
    add(f"{pr}.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.weight", (4 * c, rep))
    add(f"{pr}.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.bias", (4 * c,))
    at = preset.attributes
    if at is not None and at.groups:
        add(f"{pr}.cls_embed.weight", "attribute_head.cls_embed.weight", (c, at.class_embed_dim))
        add(
            f"{pr}.attr_linear1.weight",
            "attribute_head.attr_linear1.weight",
            (at.hidden_dim, rep + at.class_embed_dim),
        )
        add(f"{pr}.attr_linear1.bias", "attribute_head.attr_linear1.bias", (at.hidden_dim,))
        add(
            f"{pr}.attr_linear2.weight",
            "attribute_head.attr_linear2.weight",
            (at.total_values, at.hidden_dim),
        )
        add(f"{pr}.attr_linear2.bias", "attribute_head.attr_linear2.bias", (at.total_values,))
    return out


def expected_checkpoint_shapes(
    preset: DetectorPreset, include_buffers: bool = True
) -> dict[str, tuple[int, ...]]:
    """maskrcnn-benchmark key -> shape, for this preset."""
    return {m.source: m.shape for m in checkpoint_key_map(preset) if include_buffers or not m.is_buffer}


def count_checkpoint_parameters(preset: DetectorPreset) -> int:
    """Learnable parameters implied by the key map (FrozenBN tensors and anchors are buffers)."""
    return sum(math.prod(s) for s in expected_checkpoint_shapes(preset, include_buffers=False).values())


def read_maskrcnn_benchmark_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], list[str]]:
    """The model state dict of a maskrcnn-benchmark checkpoint, and the names of its other entries."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    other: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        other = sorted(str(k) for k in obj if k != "model")
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        raise CheckpointMismatchError(
            f"{path}: expected a dict with a 'model' state dict (maskrcnn-benchmark)"
        )
    non_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise CheckpointMismatchError(
            f"{path}: non-tensor entries in the model state dict: {non_tensors[:10]}"
        )
    keys = list(state)
    prefixed = [k for k in keys if k.startswith(_DDP_PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        raise CheckpointMismatchError(
            f"{path}: only some keys carry the DDP prefix {_DDP_PREFIX!r} (e.g. {prefixed[0]!r} but not "
            f"{next(k for k in keys if not k.startswith(_DDP_PREFIX))!r})"
        )
    if prefixed:
        state = {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state), other


def convert_state_dict(
    source: dict[str, Tensor], preset: DetectorPreset, origin: str = "checkpoint"
) -> tuple[dict[str, Tensor], list[KeyMapping]]:
    """maskrcnn-benchmark names -> ours, strictly (every key mapped, present and of the right shape)."""
    mapping = checkpoint_key_map(preset)
    check_state_dict(
        {m.source: m.shape for m in mapping},
        source,
        what=f"{origin} does not fit preset {preset.name!r}",
        error=CheckpointMismatchError,
    )
    converted = {}
    for m in mapping:
        t = source[m.source]
        converted[m.target] = t.to(torch.float32) if t.is_floating_point() else t.clone()
    return converted, mapping


def has_attribute_head(source: dict[str, Tensor], origin: str = "checkpoint") -> bool:
    """Whether the fork's attribute head is in the checkpoint: all of its tensors, or none."""
    present = [k for k in ATTRIBUTE_HEAD_SOURCES if k in source]
    if present and len(present) != len(ATTRIBUTE_HEAD_SOURCES):
        absent = [k for k in ATTRIBUTE_HEAD_SOURCES if k not in source]
        raise CheckpointMismatchError(
            f"{origin} has part of the attribute head: missing keys: {', '.join(absent)}"
        )
    return bool(present)


def load_maskrcnn_benchmark_detector(
    path: str | Path, preset: DetectorPreset
) -> tuple[RegionDetector, ImportReport]:
    """Build `preset`'s detector and load a maskrcnn-benchmark checkpoint into it, strictly."""
    source, other = read_maskrcnn_benchmark_checkpoint(path)
    report = ImportReport(source=str(path), other_entries=other)
    with_attrs = has_attribute_head(source, str(path))
    if preset.attributes is not None and preset.attributes.groups and not with_attrs:
        preset = preset.without_attributes()
        report.notes.append(
            "checkpoint has no attribute head (cls_embed/attr_linear1/attr_linear2): built without one"
        )
    converted, mapping = convert_state_dict(source, preset, str(path))
    # Build on the meta device and let the checkpoint's tensors become the module's: the X-152 is
    # ~190M parameters whose random initialisation would only be overwritten.
    with torch.device("meta"):
        detector = build_detector(preset)
    load_state_dict_strict(
        detector,
        converted,
        what=f"{path} does not match the detector",
        error=CheckpointMismatchError,
        assign=True,
    )
    leftover = [n for n, t in [*detector.named_parameters(), *detector.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointMismatchError(
            f"{path}: tensors not provided by the checkpoint: {', '.join(leftover)}"
        )
    report.loaded = mapping
    return detector, report


def export_maskrcnn_benchmark_state_dict(detector: RegionDetector) -> dict[str, Tensor]:
    """Our detector's tensors under maskrcnn-benchmark names (round-trip tests, sharing weights back)."""
    own = detector.state_dict()
    mapping = checkpoint_key_map(detector.preset)
    targets = {m.target for m in mapping}
    unmapped = sorted(k for k in own if k not in targets)
    if unmapped:
        raise CheckpointMismatchError(
            f"detector tensors with no maskrcnn-benchmark name: {', '.join(unmapped)}"
        )
    return {m.source: own[m.target].detach().clone() for m in mapping}
