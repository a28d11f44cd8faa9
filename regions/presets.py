"""Detector presets: one declared object per set of detector weights.

A preset says everything needed to rebuild a detector and use its outputs: the architecture
(backbone blocks, FPN width, anchors, box head), the preprocessing its weights expect, where its
class names come from, its attribute heads, the region-feature size and the box-selection rule.
`regions.detector.build_detector(preset)` turns one into a module; `regions.maskrcnn_import`
derives the checkpoint key map from the same object, so the two cannot drift apart.

Two presets ship:

* ``vg-x152-fpn``: the 12-in-1 feature extractor (vilbert-multi-task ``detectron_model.pth`` /
  ``model_final.pth`` with ``e2e_faster_rcnn_X-152-32x8d-FPN_1x_MLP_2048_FPN_512_train.yaml``,
  as vilbert-multi-task ``script/extract_features.py`` runs it): ResNeXt-152 32x8d + FPN(512)
  Faster R-CNN, 1601 Visual Genome classes, 2048-d fc6 features, Caffe BGR means, 800/1333 resize,
  per-class NMS 0.5, top 100.
* ``synthetic``: a small ResNet-style FPN detector trained on the synthetic world by
  ``python -m regions.train``; its class and attribute names come from the training annotations and
  are stored in the preset JSON written next to the weights.

Presets are frozen dataclasses; `to_dict` / `preset_from_dict` give the JSON form.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ChannelOrder(enum.StrEnum):
    RGB = "rgb"
    BGR = "bgr"  # Caffe / Detectron weights


class BlockKind(enum.StrEnum):
    BOTTLENECK = "bottleneck"  # torchvision ResNet/ResNeXt Bottleneck (stride in the 3x3, "v1.5")
    BASIC = "basic"  # torchvision BasicBlock (two 3x3 convs)


class NormKind(enum.StrEnum):
    FROZEN_BN = "frozen_bn"  # imported detectors: statistics and affine fixed
    BN = "bn"  # trained here from scratch


@dataclass(frozen=True)
class Preprocessing:
    """How decoded RGB uint8 pixels become the detector's input tensor."""

    channel_order: ChannelOrder
    pixel_mean: tuple[float, float, float]  # per channel, in `channel_order`, on the 0-255 scale
    pixel_std: tuple[float, float, float]  # (1, 1, 1) = Caffe style: mean subtraction only
    min_size: int | None  # target shorter side; None keeps the native resolution (up to max_size)
    max_size: int  # cap on the longer side after resizing
    size_divisibility: int  # batch H and W are zero-padded to a multiple (FPN strides need 32)

    def scale_for(self, height: int, width: int) -> float:
        """Resize factor, with the reference extractor's rule (vilbert-multi-task extract_features.py).

        Shorter side to `min_size`, unless the rounded longer side would then exceed `max_size`, in
        which case the longer side goes to `max_size`.
        """
        short, long = min(height, width), max(height, width)
        scale = 1.0 if self.min_size is None else self.min_size / short
        if round(scale * long) > self.max_size:
            scale = self.max_size / long
        return scale


@dataclass(frozen=True)
class BackboneSpec:
    """A ResNet-family body plus a feature pyramid on its four stages (P2-P5, and P6 by max-pool)."""

    block: BlockKind
    block_counts: tuple[int, int, int, int]  # blocks in res2..res5
    # Output channels of res2..res5.  torchvision's ResNet class fixes them to 256..2048 for
    # Bottleneck bodies; BASIC bodies are composed from BasicBlocks with these widths.
    stage_channels: tuple[int, int, int, int]
    groups: int = 1  # ResNeXt cardinality (Bottleneck only)
    width_per_group: int = 64  # ResNeXt width per group (Bottleneck only): 32x8d -> 32, 8
    stem_channels: int = 64
    stem_kernel: int = 7  # 7x7/2 conv + 3x3/2 max-pool (torchvision); 3 for the small body
    fpn_channels: int = 256
    norm: NormKind = NormKind.FROZEN_BN
    # maskrcnn-benchmark's FrozenBatchNorm2d computes weight * rsqrt(running_var) with no epsilon;
    # torchvision's adds 1e-5.  Imported weights need 0 to reproduce the original numbers.
    frozen_bn_eps: float = 0.0

    @property
    def bottleneck_widths(self) -> tuple[int, int, int, int]:
        """Inner (3x3) widths of res2..res5 for Bottleneck bodies, as torchvision computes them."""
        planes = (64, 128, 256, 512)
        return tuple(int(p * (self.width_per_group / 64.0)) * self.groups for p in planes)  # type: ignore[return-value]


@dataclass(frozen=True)
class RPNSpec:
    """Anchors and region-proposal settings (one anchor size per pyramid level P2..P6)."""

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    pre_nms_top_n_train: int = 2000  # per level
    post_nms_top_n_train: int = 2000  # per image
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # Detectron box arithmetic: widths are x2 - x1 + 1 (anchors, RPN box decoding, NMS overlaps).
    # True for weights trained with maskrcnn-benchmark.
    legacy_plus_one: bool = False

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios)


@dataclass(frozen=True)
class BoxHeadSpec:
    """RoIAlign pooler plus the two-layer MLP whose fc6 output is the region feature."""

    pooler_resolution: int = 7
    sampling_ratio: int = 2
    representation_size: int = 1024  # width of fc6 and fc7 = the region-feature size
    # Whether the stored feature is fc6 after its ReLU.  The reference extractor reads "fc6" from
    # the vqa-maskrcnn-benchmark fork, whose box head returns it after the ReLU; not checked against
    # real released features.
    fc6_relu: bool = True
    # Append the box's geometry relative to the image (x1/W, y1/H, x2/W, y2/H, w/min(W,H), h/min(W,H))
    # to the pooled features entering fc6.  RoIAlign resamples every box to 7x7, so without it the
    # features cannot tell a small object from a large one; the synthetic world's "size" attribute
    # is relative to the image.  Off for imported maskrcnn-benchmark weights.
    geometry_features: bool = False
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25


TORCHVISION_BOTTLENECK_CHANNELS = (256, 512, 1024, 2048)  # res2..res5 outputs of torchvision's ResNet
GEOMETRY_DIM = 6  # size of the geometry vector BoxHeadSpec.geometry_features appends


@dataclass(frozen=True)
class AttributeGroup:
    """One attribute vocabulary predicted per region (e.g. colour), softmax over its values."""

    name: str
    num_values: int
    value_names: tuple[str, ...] = ()  # empty when the names are not shipped (VG's 400 attributes)

    def __post_init__(self) -> None:
        if self.value_names and len(self.value_names) != self.num_values:
            raise ValueError(
                f"attribute group {self.name!r}: {len(self.value_names)} names for {self.num_values} values"
            )


@dataclass(frozen=True)
class AttributeSpec:
    """Bottom-up-attention attribute head: [fc7 ; embed(class)] -> hidden -> attribute logits.

    The class embedding is fed the ground-truth class while training and the predicted class at
    inference, as in the vqa-maskrcnn-benchmark fork's FPNPredictor (``cls_embed``,
    ``attr_linear1``, ``attr_linear2``).  All groups share the hidden layer; their logits are
    concatenated in group order and each group gets its own softmax.
    """

    groups: tuple[AttributeGroup, ...]
    class_embed_dim: int = 256
    hidden_dim: int = 512
    hidden_relu: bool = True  # the fork has no nonlinearity between attr_linear1 and attr_linear2

    @property
    def total_values(self) -> int:
        return sum(g.num_values for g in self.groups)


@dataclass(frozen=True)
class SelectionSpec:
    """The reference box-selection rule (vilbert-multi-task ``script/extract_features.py``)."""

    max_boxes: int = 100  # keep this many proposals, by max class confidence, unconditionally
    nms_thresh: float = 0.5  # per-class NMS over the proposals
    conf_thresh: float = 0.0  # a class score must exceed this to raise a box's max_conf
    include_background: bool = False  # the reference's --background flag


@dataclass(frozen=True)
class DetectorPreset:
    """Everything that defines one detector and the regions it produces."""

    name: str
    description: str
    preprocessing: Preprocessing
    backbone: BackboneSpec
    rpn: RPNSpec
    box_head: BoxHeadSpec
    num_classes: int  # including background (index 0)
    class_names: tuple[str, ...] = ()  # foreground names, index i -> class i + 1; may be empty
    class_names_source: str = ""  # where the names come from, for users who must supply them
    attributes: AttributeSpec | None = None
    selection: SelectionSpec = field(default_factory=SelectionSpec)

    @property
    def feature_dim(self) -> int:
        return self.box_head.representation_size

    @property
    def fc6_in_features(self) -> int:
        res = self.box_head.pooler_resolution
        geometry = GEOMETRY_DIM if self.box_head.geometry_features else 0
        return self.backbone.fpn_channels * res * res + geometry

    def validate(self) -> None:
        """Raise ValueError on an inconsistent preset (before building anything)."""
        if self.num_classes < 2:
            raise ValueError(
                f"preset {self.name!r}: num_classes={self.num_classes}; a detector needs "
                "background + at least one class (train the synthetic preset first)"
            )
        if self.class_names and len(self.class_names) != self.num_classes - 1:
            raise ValueError(
                f"preset {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes - 1} foreground classes"
            )
        n_levels = len(self.rpn.anchor_strides)
        if len(self.rpn.anchor_sizes) != n_levels or n_levels != 5:
            raise ValueError(f"preset {self.name!r}: need one anchor size per level P2..P6")
        bottleneck = self.backbone.block is BlockKind.BOTTLENECK
        if bottleneck and self.backbone.stage_channels != TORCHVISION_BOTTLENECK_CHANNELS:
            raise ValueError("Bottleneck bodies use torchvision's ResNet class: stage channels 256..2048")
        if self.preprocessing.size_divisibility % self.rpn.anchor_strides[3] != 0:
            raise ValueError("size_divisibility must be a multiple of the P5 stride")

    def for_dataset(
        self,
        class_names: list[str] | tuple[str, ...],
        attribute_groups: list[AttributeGroup] | tuple[AttributeGroup, ...],
    ) -> DetectorPreset:
        """This preset with the class and attribute vocabularies of a training set filled in."""
        attributes = self.attributes
        if attributes is not None or attribute_groups:
            base = attributes or AttributeSpec(groups=())
            attributes = (
                dataclasses.replace(base, groups=tuple(attribute_groups)) if attribute_groups else None
            )
        return dataclasses.replace(
            self, class_names=tuple(class_names), num_classes=len(class_names) + 1, attributes=attributes
        )

    def without_attributes(self) -> DetectorPreset:
        return dataclasses.replace(self, attributes=None)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [_to_jsonable(x) for x in obj]
    return obj


def _tuple(x: Any) -> tuple:
    return tuple(x) if x is not None else ()


def preset_from_dict(d: dict[str, Any]) -> DetectorPreset:
    """Inverse of `DetectorPreset.to_dict` (unknown keys are an error, so typos do not pass)."""

    def build(cls: type, values: dict[str, Any], **converted: Any) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kwargs = {k: v for k, v in values.items() if k not in converted}
        kwargs.update({k: v for k, v in converted.items() if k in values})
        return cls(**kwargs)

    pre = d["preprocessing"]
    preprocessing = build(
        Preprocessing,
        pre,
        channel_order=ChannelOrder(pre["channel_order"]),
        pixel_mean=_tuple(pre["pixel_mean"]),
        pixel_std=_tuple(pre["pixel_std"]),
    )
    bb = d["backbone"]
    backbone = build(
        BackboneSpec,
        bb,
        block=BlockKind(bb["block"]),
        block_counts=_tuple(bb["block_counts"]),
        stage_channels=_tuple(bb["stage_channels"]),
        norm=NormKind(bb.get("norm", NormKind.FROZEN_BN.value)),
    )
    rp = d["rpn"]
    rpn = build(
        RPNSpec,
        rp,
        anchor_sizes=_tuple(rp.get("anchor_sizes")),
        aspect_ratios=_tuple(rp.get("aspect_ratios")),
        anchor_strides=_tuple(rp.get("anchor_strides")),
    )
    bh = d["box_head"]
    box_head = build(BoxHeadSpec, bh, bbox_reg_weights=_tuple(bh.get("bbox_reg_weights")))
    attributes = None
    if d.get("attributes") is not None:
        at = d["attributes"]
        groups = tuple(
            build(AttributeGroup, g, value_names=_tuple(g.get("value_names"))) for g in at["groups"]
        )
        attributes = build(AttributeSpec, at, groups=groups)
    selection = build(SelectionSpec, d.get("selection", {}))
    return build(
        DetectorPreset,
        d,
        preprocessing=preprocessing,
        backbone=backbone,
        rpn=rpn,
        box_head=box_head,
        class_names=_tuple(d.get("class_names")),
        attributes=attributes,
        selection=selection,
    )


def load_preset_json(path: str | Path) -> DetectorPreset:
    return preset_from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------------
# The shipped presets
# ---------------------------------------------------------------------------------------------------

VG_X152_FPN = DetectorPreset(
    name="vg-x152-fpn",
    description="12-in-1 region extractor: ResNeXt-152 32x8d FPN Faster R-CNN trained on Visual Genome "
    "(vqa-maskrcnn-benchmark, detectron_model.pth); 2048-d fc6 features, 100 boxes",
    preprocessing=Preprocessing(
        channel_order=ChannelOrder.BGR,
        pixel_mean=(102.9801, 115.9465, 122.7717),
        pixel_std=(1.0, 1.0, 1.0),
        min_size=800,
        max_size=1333,
        size_divisibility=32,
    ),
    backbone=BackboneSpec(
        block=BlockKind.BOTTLENECK,
        block_counts=(3, 8, 36, 3),  # maskrcnn-benchmark "R-152-FPN" stage specs
        stage_channels=(256, 512, 1024, 2048),
        groups=32,
        width_per_group=8,
        fpn_channels=512,  # the "FPN_512" of the config name (BACKBONE.OUT_CHANNELS)
        norm=NormKind.FROZEN_BN,
        frozen_bn_eps=0.0,
    ),
    rpn=RPNSpec(legacy_plus_one=True),
    box_head=BoxHeadSpec(representation_size=2048),  # "MLP_2048"
    num_classes=1601,
    class_names_source="Visual Genome 1600 object vocabulary (bottom-up-attention objects_vocab.txt, "
    "in the order of visual_genome_categories.json) + background; not shipped, pass a names file",
    attributes=AttributeSpec(
        groups=(AttributeGroup("attribute", 400),),
        class_embed_dim=256,
        hidden_dim=512,
        hidden_relu=False,
    ),
    selection=SelectionSpec(max_boxes=100, nms_thresh=0.5, conf_thresh=0.0),
)

SYNTHETIC = DetectorPreset(
    name="synthetic",
    description="small ResNet-FPN Faster R-CNN with object + colour/size attribute heads, trained on the "
    "synthetic world by `python -m regions.train`",
    preprocessing=Preprocessing(
        channel_order=ChannelOrder.RGB,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        # Native resolution: the scenes are 160-320 px, so upscaling buys no detail and costs CPU
        # time; relative size reaches the features through BoxHeadSpec.geometry_features.
        min_size=None,
        max_size=640,
        size_divisibility=32,
    ),
    backbone=BackboneSpec(
        block=BlockKind.BASIC,
        block_counts=(1, 1, 1, 1),
        stage_channels=(32, 64, 128, 256),
        stem_channels=32,
        stem_kernel=3,
        fpn_channels=64,
        norm=NormKind.BN,
    ),
    rpn=RPNSpec(
        anchor_sizes=(16, 32, 64, 128, 256),
        # 2-6 objects per scene: a few hundred proposals suffice, and RPN NMS over 1000 boxes per
        # level was a quarter of the training step on CPU.
        pre_nms_top_n_train=400,
        post_nms_top_n_train=200,
        pre_nms_top_n_test=300,
        post_nms_top_n_test=150,
        batch_size_per_image=128,
    ),
    box_head=BoxHeadSpec(representation_size=256, batch_size_per_image=128, geometry_features=True),
    num_classes=0,  # filled in from the training annotations by `DetectorPreset.for_dataset`
    class_names_source="categories of the training annotations (D/detector/instances_train.json)",
    attributes=AttributeSpec(groups=(), class_embed_dim=32, hidden_dim=128, hidden_relu=True),
    selection=SelectionSpec(max_boxes=36, nms_thresh=0.5, conf_thresh=0.0),
)

PRESETS: dict[str, DetectorPreset] = {p.name: p for p in (VG_X152_FPN, SYNTHETIC)}


def get_preset(name_or_path: str | Path) -> DetectorPreset:
    """A shipped preset by name, or a preset JSON file (as written by `regions.train`)."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix == ".json" and path.exists():
        return load_preset_json(path)
    raise KeyError(f"unknown detector preset {key!r}; known: {', '.join(PRESETS)} (or a preset .json file)")
