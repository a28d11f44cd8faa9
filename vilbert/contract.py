"""The wire contract, generated from the task table: graph names, tensor names, dtypes, shapes,
routes, and what each head reads.

Everything that names a tensor or a model in the exported repository comes from here: the ONNX
export (`export.graphs`, on the modules of `vilbert.graphs`), the Triton configs
(`export.triton_config`), the python-backend model, the parity gate, the repository's `tasks.json`,
the gateway and the clients that read it.  Nothing else spells ``"input_ids"`` or ``"head_region"``.
Standard library + the task table and config only (no torch), so config generation, the gateway and
the SDK can use it without a model.

Graphs (one Triton model each)::

    trunk              input_ids, attention_mask, task_ids, region_features, region_locations,
                       region_mask  ->  fused (B, H_bi), region_states (B, R, H_v)
    head_<head>        one per `Head` of the task table; reads what `HEAD_IO[head]` declares:
                         answer / answer_gqa / match / triple:  fused (B, H_bi)        -> logits (B, C)
                         region:  region_states (B, R, H_v), region_mask (B, R)        -> logits (B, R)
                         pair:    fused_pairs (B, I, H_bi), I = images_per_example     -> logits (B, 2)
    detector_backbone  images (N, 3, H, W) -> the FPN levels, and per level the RPN head's objectness
                       logits and box deltas                            (optional: needs detector weights)
    detector_box_head  box_inputs (K, C*7*7[+6]) -> region features, fc7, class logits, box deltas

Per-task routing (`Route`): the client runs `trunk` with the task's id in `task_ids`, then the
task's head graph on `head_feeds(head, trunk outputs, region_mask, images)`: for multi-image tasks
that regroups the trunk's `fused` rows into `fused_pairs`.

The trunk split in two, for retrieval (one caption against many images: the image-free text
prefix runs once per query, not once per image), beside `trunk`, which stays as it is::

    text_prefix        input_ids, attention_mask, task_ids -> text_states (B, K, H_t), text_mask (B, K)
                       (K = tokens after the task token is spliced in)
    joint              text_states, text_mask, region_features, region_locations, region_mask
                       -> fused, region_states  (the same outputs as `trunk`)

and, for a model with the retrieval pre-filter (config `prefilter_dim > 0`)::

    prefilter_text     text_states, text_mask -> caption_embedding (B, D)   (reads text_prefix's output)
    prefilter_image    region_features, region_locations, region_mask -> image_embedding (B, D)
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from vilbert.config import ViLBERTConfig
from vilbert.tasks import TASKS, Head, Task, tasks_with_head

SPEC_VERSION = 1

TRUNK = "trunk"
HEAD_PREFIX = "head_"
DETECTOR_BACKBONE = "detector_backbone"
DETECTOR_BOX_HEAD = "detector_box_head"
TEXT_PREFIX = "text_prefix"
JOINT = "joint"
PREFILTER_TEXT = "prefilter_text"
PREFILTER_IMAGE = "prefilter_image"

# Symbolic axes of the graphs (ONNX dim_param names; -1 in Triton configs).
BATCH = "batch"  # trunk rows: (text, image) pairs
TEXT = "text"  # text tokens incl. [CLS]/[SEP], before the model adds the task token
REGIONS = "regions"  # regions per image, global region included
TOKENS = "tokens"  # text positions after the model splices in the task token (text + 1)
BOXES = "boxes"  # detector boxes (proposals) of one call
HEIGHT, WIDTH = "height", "width"  # padded detector input

# torch.export specialises a text length of 2 (an empty question: [CLS] [SEP]) away from the general
# graph (`T - 1 != 1` guard of the task-token splice), so the graph is declared for T >= 3: a client
# pads an empty text with one masked token.
MIN_TEXT_TOKENS = 3
LOCATION_DIM = 5  # x1/W, y1/H, x2/W, y2/H, area fraction (regions/inputs.py)


class DType(enum.StrEnum):
    """Tensor element types, with their spelling in each consumer."""

    FP32 = "fp32"
    INT64 = "int64"

    @property
    def triton(self) -> str:
        return {DType.FP32: "TYPE_FP32", DType.INT64: "TYPE_INT64"}[self]

    @property
    def numpy(self) -> str:
        return {DType.FP32: "float32", DType.INT64: "int64"}[self]

    @property
    def wire(self) -> str:
        """The KServe v2 protocol datatype (tritonclient's InferInput)."""
        return {DType.FP32: "FP32", DType.INT64: "INT64"}[self]


Dim = int | str  # a fixed size, or the name of a symbolic axis


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output; `shape` includes the leading batch/box axis."""

    name: str
    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def triton_dims(self, batched: bool) -> list[int]:
        """Triton `dims`: the batch axis is implicit when the model batches; symbolic axes are -1."""
        dims = self.shape[1:] if batched else self.shape
        return [-1 if isinstance(d, str) else int(d) for d in dims]


class GraphKind(enum.StrEnum):
    TRUNK = "trunk"
    TRUNK_SPLIT = "trunk_split"  # text_prefix / joint: the trunk in two parts
    HEAD = "head"
    PREFILTER = "prefilter"  # the retrieval pre-filter's two encoders
    DETECTOR = "detector"


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph = one Triton model."""

    name: str
    kind: GraphKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Leading axis is a batch Triton may split and merge (max_batch_size > 0).  Detector graphs take
    # one padded image batch or one box list per call, so they are declared unbatched.
    batched: bool
    dynamic_batching: bool = False  # the trunk only: heads are too cheap to be worth a queue delay
    head: Head | None = None
    description: str = ""

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


@dataclass(frozen=True)
class DetectorDims:
    """What the detector graphs' shapes depend on (from a `regions.presets.DetectorPreset`)."""

    preset: str
    fpn_channels: int
    fpn_levels: tuple[str, ...]  # output names of the pyramid, finest first
    fc6_in_features: int  # pooled C x res x res (+ box geometry)
    feature_dim: int  # fc6/fc7 width = the region-feature size
    num_classes: int  # background included
    size_divisibility: int
    rpn_anchors: int  # anchors per location (the RPN head's objectness channels; deltas: 4x)


def detector_dims_from_preset(preset: object) -> DetectorDims:
    """`DetectorDims` of a `regions.presets.DetectorPreset` (read by attribute: no torch needed).

    The pyramid has one level per anchor stride (P2..P6; P6 is the max-pooled P5).
    """
    levels = len(preset.rpn.anchor_strides)  # type: ignore[attr-defined]
    return DetectorDims(
        preset=preset.name,  # type: ignore[attr-defined]
        fpn_channels=preset.backbone.fpn_channels,  # type: ignore[attr-defined]
        fpn_levels=tuple(f"p{i + 2}" for i in range(levels)),
        fc6_in_features=preset.fc6_in_features,  # type: ignore[attr-defined]
        feature_dim=preset.feature_dim,  # type: ignore[attr-defined]
        num_classes=preset.num_classes,  # type: ignore[attr-defined]
        size_divisibility=preset.preprocessing.size_divisibility,  # type: ignore[attr-defined]
        rpn_anchors=preset.rpn.num_anchors_per_location,  # type: ignore[attr-defined]
    )


# ---------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------

# Tensor names.  Trunk inputs in `ViLBERTTrunk.forward` order (token_type_ids is left at its default
# of zeros: no 12-in-1 task feeds a second segment).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TASK_IDS = "task_ids"
REGION_FEATURES = "region_features"
REGION_LOCATIONS = "region_locations"
REGION_MASK = "region_mask"
TEXT_INPUTS = (INPUT_IDS, ATTENTION_MASK, TASK_IDS)
REGION_INPUTS = (REGION_FEATURES, REGION_LOCATIONS, REGION_MASK)
TRUNK_INPUTS = (*TEXT_INPUTS, *REGION_INPUTS)
FUSED = "fused"
REGION_STATES = "region_states"
FUSED_PAIRS = "fused_pairs"
LOGITS = "logits"
TEXT_STATES = "text_states"
TEXT_MASK = "text_mask"
CAPTION_EMBEDDING = "caption_embedding"
IMAGE_EMBEDDING = "image_embedding"
# Detector graphs (with the triton backend the gateway runs them: server/remote_detector.py).
DETECTOR_IMAGES = "images"
BOX_INPUTS = "box_inputs"
FC7 = "fc7"
CLASS_LOGITS = "class_logits"
BOX_REGRESSION = "box_regression"


def fpn_output(level: str) -> str:
    """detector_backbone's pyramid level `level` ("p2".."p6")."""
    return f"fpn_{level}"


def rpn_logits_output(level: str) -> str:
    """detector_backbone's RPN objectness logits on pyramid level `level`: (N, A, H_l, W_l)."""
    return f"rpn_logits_{level}"


def rpn_deltas_output(level: str) -> str:
    """detector_backbone's RPN box deltas on pyramid level `level`: (N, 4A, H_l, W_l)."""
    return f"rpn_deltas_{level}"


def trunk_graph(cfg: ViLBERTConfig) -> GraphSpec:
    return GraphSpec(
        name=TRUNK,
        kind=GraphKind.TRUNK,
        inputs=(*_text_inputs(), *_region_inputs(cfg)),
        outputs=(
            TensorSpec(FUSED, DType.FP32, (BATCH, cfg.bi_hidden_size)),
            TensorSpec(REGION_STATES, DType.FP32, (BATCH, REGIONS, cfg.v_hidden_size)),
        ),
        batched=True,
        dynamic_batching=True,
        description="ViLBERT trunk shared by all twelve tasks (task token chosen by task_ids)",
    )


def _text_inputs() -> tuple[TensorSpec, ...]:
    text = (BATCH, TEXT)
    return (
        TensorSpec(INPUT_IDS, DType.INT64, text),
        TensorSpec(ATTENTION_MASK, DType.INT64, text),
        TensorSpec(TASK_IDS, DType.INT64, (BATCH,)),
    )


def _region_inputs(cfg: ViLBERTConfig) -> tuple[TensorSpec, ...]:
    regions = (BATCH, REGIONS)
    return (
        TensorSpec(REGION_FEATURES, DType.FP32, (*regions, cfg.v_feature_size)),
        TensorSpec(REGION_LOCATIONS, DType.FP32, (*regions, LOCATION_DIM)),
        TensorSpec(REGION_MASK, DType.INT64, regions),
    )


def _text_state_tensors(cfg: ViLBERTConfig) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec(TEXT_STATES, DType.FP32, (BATCH, TOKENS, cfg.hidden_size)),
        TensorSpec(TEXT_MASK, DType.FP32, (BATCH, TOKENS)),
    )


def split_graphs(cfg: ViLBERTConfig) -> tuple[GraphSpec, GraphSpec]:
    """`text_prefix` and `joint`: the trunk in two, so a caption's prefix is computed once per query."""
    prefix = GraphSpec(
        name=TEXT_PREFIX,
        kind=GraphKind.TRUNK_SPLIT,
        inputs=_text_inputs(),
        outputs=_text_state_tensors(cfg),
        batched=True,
        description="trunk part 1: embeddings + the image-free text layers (once per query)",
    )
    joint = GraphSpec(
        name=JOINT,
        kind=GraphKind.TRUNK_SPLIT,
        inputs=(*_text_state_tensors(cfg), *_region_inputs(cfg)),
        outputs=trunk_graph(cfg).outputs,
        batched=True,
        dynamic_batching=True,
        description="trunk part 2: co-attention and the rest, on text_prefix's states (rows: text, image)",
    )
    return prefix, joint


def prefilter_graphs(cfg: ViLBERTConfig) -> tuple[GraphSpec, GraphSpec]:
    """The retrieval pre-filter's caption and image encoders (models with `prefilter_dim > 0`)."""
    dim = cfg.prefilter_dim
    text = GraphSpec(
        name=PREFILTER_TEXT,
        kind=GraphKind.PREFILTER,
        inputs=_text_state_tensors(cfg),
        outputs=(TensorSpec(CAPTION_EMBEDDING, DType.FP32, (BATCH, dim)),),
        batched=True,
        description="retrieval pre-filter: caption embedding from text_prefix's states (unit vectors)",
    )
    image = GraphSpec(
        name=PREFILTER_IMAGE,
        kind=GraphKind.PREFILTER,
        inputs=_region_inputs(cfg),
        outputs=(TensorSpec(IMAGE_EMBEDDING, DType.FP32, (BATCH, dim)),),
        batched=True,
        description="retrieval pre-filter: image embedding from region features alone (unit vectors)",
    )
    return text, image


# ---------------------------------------------------------------------------------------------
# Heads: what each one reads and what it returns, declared once
# ---------------------------------------------------------------------------------------------


class HeadInput(enum.StrEnum):
    """Which trunk output a head reads."""

    FUSED = "fused"  # fused (B, H_bi): the pooled text-image vector of each trunk row
    REGIONS = "regions"  # region_states (B, R, H_v) with the trunk's region_mask (B, R)
    FUSED_PAIRS = "fused_pairs"  # fused regrouped per example: (B, I, H_bi), I = images_per_example


# Graph input names of each kind of read, in the head graph's input order.
_READ_TENSORS: dict[HeadInput, tuple[str, ...]] = {
    HeadInput.FUSED: (FUSED,),
    HeadInput.REGIONS: (REGION_STATES, REGION_MASK),
    HeadInput.FUSED_PAIRS: (FUSED_PAIRS,),
}


@dataclass(frozen=True)
class HeadIO:
    """One head's I/O: what it reads from the trunk, and the width of its logits."""

    reads: HeadInput
    # Logits width: a class count; the name of the `ViLBERTConfig` field holding it (the answer
    # vocabularies); or the REGIONS axis (one logit per region).
    classes: int | str
    # Layers: Linear -> GELU -> LayerNorm -> Linear (hidden width classifier_hidden_mult x H_bi),
    # or a single Linear.
    mlp: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """The head graph's input tensor names, in order."""
        return _READ_TENSORS[self.reads]

    @property
    def per_region(self) -> bool:
        return self.classes == REGIONS

    @property
    def scalar(self) -> bool:
        """One score per row: the model's logits are (B,); the graph keeps (B, 1), because a batched
        Triton output needs a non-empty shape."""
        return self.classes == 1


HEAD_IO: dict[Head, HeadIO] = {
    Head.ANSWER: HeadIO(HeadInput.FUSED, "num_answers", mlp=True),
    Head.ANSWER_GQA: HeadIO(HeadInput.FUSED, "num_answers_gqa", mlp=True),
    Head.MATCH: HeadIO(HeadInput.FUSED, 1),
    Head.REGION: HeadIO(HeadInput.REGIONS, REGIONS),
    Head.PAIR: HeadIO(HeadInput.FUSED_PAIRS, 2, mlp=True),
    Head.TRIPLE: HeadIO(HeadInput.FUSED, 3),
}


def head_graph_name(head: Head) -> str:
    return f"{HEAD_PREFIX}{head.value}"


def head_classes(head: Head, cfg: ViLBERTConfig) -> int | str:
    """Width of a head's logits: a class count, or the region axis for a per-region head."""
    classes = HEAD_IO[head].classes
    if isinstance(classes, int) or classes == REGIONS:
        return classes
    return int(getattr(cfg, classes))


def images_per_example(head: Head) -> int:
    """Images one example of this head's tasks carries (the table must agree across its tasks)."""
    counts = {t.images_per_example for t in tasks_with_head(head)}
    if len(counts) != 1:
        raise ValueError(f"tasks of head {head} disagree on images_per_example: {sorted(counts)}")
    return counts.pop()


def head_inputs(head: Head, cfg: ViLBERTConfig) -> tuple[TensorSpec, ...]:
    """The head graph's inputs: trunk outputs (and the trunk's region_mask), or fused_pairs."""
    available = {t.name: t for t in (*trunk_graph(cfg).outputs, *_region_inputs(cfg))}
    if HEAD_IO[head].reads is HeadInput.FUSED_PAIRS:
        pairs = (BATCH, images_per_example(head), cfg.bi_hidden_size)
        available[FUSED_PAIRS] = TensorSpec(FUSED_PAIRS, DType.FP32, pairs)
    return tuple(available[name] for name in HEAD_IO[head].inputs)


def head_in_features(head: Head, cfg: ViLBERTConfig) -> int:
    """Width of the vector the head's first layer reads (per region for a per-region head)."""
    match HEAD_IO[head].reads:
        case HeadInput.FUSED:
            return cfg.bi_hidden_size
        case HeadInput.REGIONS:
            return cfg.v_hidden_size
        case HeadInput.FUSED_PAIRS:
            return images_per_example(head) * cfg.bi_hidden_size
    raise ValueError(f"no input width for head {head}")


def head_out_features(head: Head, cfg: ViLBERTConfig) -> int:
    """Width of the head's last layer (1 for a per-region head: one logit per region)."""
    classes = head_classes(head, cfg)
    return 1 if isinstance(classes, str) else classes


A = TypeVar("A")  # an array: numpy or torch, both have the `.reshape` and `.shape` used here


def head_feeds(
    head: Head, trunk_out: Mapping[str, A], region_mask: A | None = None, images: int | None = None
) -> dict[str, A]:
    """The head graph's inputs, by name, from the trunk's outputs over N = B x I rows.

    `region_mask`: the trunk's region_mask input (for heads reading regions).  `images`: trunk rows
    per example, for heads reading fused_pairs (default: the task table's images_per_example).
    """
    if HEAD_IO[head].reads is HeadInput.FUSED_PAIRS:
        fused = trunk_out[FUSED]
        rows = images_per_example(head) if images is None else images
        return {FUSED_PAIRS: fused.reshape(-1, rows, fused.shape[-1])}  # type: ignore[attr-defined]
    available = {**trunk_out}
    if region_mask is not None:
        available[REGION_MASK] = region_mask
    missing = [name for name in HEAD_IO[head].inputs if name not in available]
    if missing:
        raise KeyError(f"head {head} reads {', '.join(missing)}")
    return {name: available[name] for name in HEAD_IO[head].inputs}


def model_logits(head: Head, graph_logits: A) -> A:
    """A head graph's logits in the model's convention: a scalar head's (B, 1) become (B,)."""
    return graph_logits[:, 0] if HEAD_IO[head].scalar else graph_logits  # type: ignore[index]


def head_graph(head: Head, cfg: ViLBERTConfig) -> GraphSpec:
    tasks = ", ".join(t.slug for t in tasks_with_head(head))
    return GraphSpec(
        name=head_graph_name(head),
        kind=GraphKind.HEAD,
        inputs=head_inputs(head, cfg),
        outputs=(TensorSpec(LOGITS, DType.FP32, (BATCH, head_classes(head, cfg))),),
        batched=True,
        head=head,
        description=f"{head.value} head ({tasks})",
    )


def used_heads() -> tuple[Head, ...]:
    """Heads some task of the table uses, in `Head` declaration order."""
    return tuple(h for h in Head if tasks_with_head(h))


def detector_graphs(det: DetectorDims) -> tuple[GraphSpec, GraphSpec]:
    """detector_backbone outputs: every FPN level (finest first), then every level's RPN objectness
    logits, then every level's RPN box deltas (the RPN head runs in the graph; anchors, decoding and
    proposal selection stay with the caller)."""

    def level_out(name: str, level: str, channels: int) -> TensorSpec:
        return TensorSpec(name, DType.FP32, (BATCH, channels, f"{HEIGHT}_{level}", f"{WIDTH}_{level}"))

    levels = det.fpn_levels
    backbone = GraphSpec(
        name=DETECTOR_BACKBONE,
        kind=GraphKind.DETECTOR,
        inputs=(TensorSpec(DETECTOR_IMAGES, DType.FP32, (BATCH, 3, HEIGHT, WIDTH)),),
        outputs=(
            *(level_out(fpn_output(lv), lv, det.fpn_channels) for lv in levels),
            *(level_out(rpn_logits_output(lv), lv, det.rpn_anchors) for lv in levels),
            *(level_out(rpn_deltas_output(lv), lv, 4 * det.rpn_anchors) for lv in levels),
        ),
        batched=False,
        description=(
            f"{det.preset} detector: backbone + FPN + RPN head "
            "(normalised, padded images -> pyramid, objectness logits, box deltas)"
        ),
    )
    box_head = GraphSpec(
        name=DETECTOR_BOX_HEAD,
        kind=GraphKind.DETECTOR,
        inputs=(TensorSpec(BOX_INPUTS, DType.FP32, (BOXES, det.fc6_in_features)),),
        outputs=(
            TensorSpec(REGION_FEATURES, DType.FP32, (BOXES, det.feature_dim)),
            TensorSpec(FC7, DType.FP32, (BOXES, det.feature_dim)),
            TensorSpec(CLASS_LOGITS, DType.FP32, (BOXES, det.num_classes)),
            TensorSpec(BOX_REGRESSION, DType.FP32, (BOXES, 4 * det.num_classes)),
        ),
        batched=False,
        description=f"{det.preset} detector: box head fc6 -> fc7 -> class/box predictor on RoI-pooled inputs",
    )
    return backbone, box_head


# ---------------------------------------------------------------------------------------------
# Routes and the whole spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """How a client runs one task: `trunk` with `task_id`, then `head_model` on the trunk outputs."""

    task: str
    task_id: int
    head: Head
    head_model: str
    images_per_example: int  # > 1: trunk rows b*I .. b*I+I-1 are regrouped into fused_pairs[b]
    max_text_tokens: int
    max_regions: int

    def as_dict(self) -> dict[str, object]:
        return {
            "task": self.task,
            "task_id": self.task_id,
            "head": self.head.value,
            "models": [TRUNK, self.head_model],
            "images_per_example": self.images_per_example,
            "max_text_tokens": self.max_text_tokens,
            "max_regions": self.max_regions,
        }


def route(task: Task) -> Route:
    return Route(
        task=task.slug,
        task_id=task.task_id,
        head=task.head,
        head_model=head_graph_name(task.head),
        images_per_example=task.images_per_example,
        max_text_tokens=task.max_text_tokens,
        max_regions=task.max_regions,
    )


@dataclass(frozen=True)
class AxisRange:
    """min / typical / max of a symbolic axis over the task table (TensorRT profiles, warm-up, docs)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class ExportSpec:
    """Every graph and route of one exported model."""

    config: ViLBERTConfig
    graphs: tuple[GraphSpec, ...]
    routes: tuple[Route, ...]
    axes: dict[str, AxisRange] = field(default_factory=dict)
    detector: DetectorDims | None = None

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(f"no graph {name!r}; graphs: {', '.join(g.name for g in self.graphs)}")

    def route_for(self, task: Task | str) -> Route:
        slug = task if isinstance(task, str) else task.slug
        return next(r for r in self.routes if r.task == slug)

    @property
    def trunk(self) -> GraphSpec:
        return self.graph(TRUNK)

    def head(self, head: Head) -> GraphSpec:
        return self.graph(head_graph_name(head))


def axis_ranges(cfg: ViLBERTConfig) -> dict[str, AxisRange]:
    """Text and region axes over the table: tasks range from 20 to 256 tokens and 101 to 306 regions."""
    text = [t.max_text_tokens for t in TASKS]
    regions = [t.max_regions for t in TASKS]
    max_text = min(max(text), cfg.max_position_embeddings)
    return {
        BATCH: AxisRange(1, 1, max(t.batch_size for t in TASKS)),
        TEXT: AxisRange(MIN_TEXT_TOKENS, int(statistics.median(text)), max_text),
        TOKENS: AxisRange(MIN_TEXT_TOKENS + 1, int(statistics.median(text)) + 1, max_text + 1),
        REGIONS: AxisRange(1, int(statistics.median(regions)), max(regions)),
    }


def build_spec(cfg: ViLBERTConfig, detector: DetectorDims | None = None) -> ExportSpec:
    """The export spec of a model config (and, optionally, of a detector)."""
    graphs = [trunk_graph(cfg), *(head_graph(h, cfg) for h in used_heads()), *split_graphs(cfg)]
    if cfg.has_prefilter:
        graphs += prefilter_graphs(cfg)
    if detector is not None:
        graphs += detector_graphs(detector)
    return ExportSpec(cfg, tuple(graphs), tuple(route(t) for t in TASKS), axis_ranges(cfg), detector)


def wire_shape(t: TensorSpec, shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    """The shape a Triton client sends for an array of graph shape `shape` (per-row scalars get ,1)."""
    return (*shape, 1) if batched and len(t.shape) == 1 else shape
