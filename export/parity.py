"""The parity gate: exported graphs must compute what the PyTorch model computes.

Two checks per task, both run by `python -m export` before a repository is written:

1. Generated inputs: each task at its own table shape (`max_text_tokens`, `max_regions`, images per
   example; padded rows included), PyTorch trunk + head vs the onnxruntime route (trunk graph, then
   the head graph).  fp32 passes at max |diff| <= 1e-4 on every logit a request reads; the masked
   logits of padded regions (-10000 + x, where one float32 ulp is 0.000977) are compared relative to
   their magnitude (`logit_error`), and padded tokens' and regions' states are not compared.
2. The task metric on the test split of every dataset present under the data root
   (`training.evaluation.evaluate_task`, the very code training reports with), computed with PyTorch
   and with the onnxruntime graphs: unchanged in fp32, within 1 point in int8.  A dataset that is
   not there is skipped and named (`missing_dataset`; report: `metric_skipped` and a note per task).
   Where a test split has no labels (VQA's test-std answers are withheld) or no test split exists
   (VG QA), the validation split is used and the report says so.

Plus the detector graphs, when exported: backbone pyramid and box-head outputs vs PyTorch; and the
split trunk (`text_prefix` -> `joint`, one caption against several images as retrieval runs it) and
the pre-filter encoders, vs PyTorch at the same fp32 tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from export.graphs import sample_inputs
from export.runtime import OnnxGraphs
from vilbert.config import ViLBERTConfig
from vilbert.contract import (
    ATTENTION_MASK,
    BATCH,
    BOX_INPUTS,
    CAPTION_EMBEDDING,
    DETECTOR_BACKBONE,
    DETECTOR_BOX_HEAD,
    DETECTOR_IMAGES,
    FUSED,
    IMAGE_EMBEDDING,
    INPUT_IDS,
    JOINT,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGION_FEATURES,
    REGION_INPUTS,
    REGION_LOCATIONS,
    REGION_MASK,
    REGION_STATES,
    REGIONS,
    TASK_IDS,
    TEXT,
    TEXT_INPUTS,
    TEXT_MASK,
    TEXT_PREFIX,
    TEXT_STATES,
    ExportSpec,
)
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import TASKS, Head, Task

FP32_TOLERANCE = 1e-4  # max |PyTorch - onnxruntime| on generated inputs
FP32_METRIC_POINTS = 1e-6  # "unchanged": metric equal up to float formatting noise
INT8_METRIC_POINTS = 1.0  # int8 metric within this many points of PyTorch's


# ---------------------------------------------------------------------------------------------
# 1. Generated inputs
# ---------------------------------------------------------------------------------------------


def task_inputs(
    spec: ExportSpec, task: Task, rng: np.random.Generator, batch: int = 2
) -> dict[str, np.ndarray]:
    """Trunk inputs for `batch` examples of `task` at its table shape: N = batch x images rows."""
    cfg = spec.config
    sizes = {
        BATCH: batch * task.images_per_example,
        TEXT: min(task.max_text_tokens, cfg.max_position_embeddings),
        REGIONS: task.max_regions,
    }
    feeds = sample_inputs(spec.trunk, sizes, rng, vocab_size=cfg.vocab_size)
    feeds[TASK_IDS] = np.full(sizes[BATCH], task.task_id, dtype=np.int64)
    return feeds


@torch.no_grad()
def torch_task_logits(model: MultiTaskViLBERT, task: Task, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The PyTorch reference on the same flattened rows (as `MultiTaskViLBERT.forward` flattens them)."""
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    out = model.trunk(**inputs)
    logits = model.head_logits(task.head, out, inputs[REGION_MASK], task.images_per_example)
    return logits.numpy()


def padded_logits(task: Task, feeds: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    """Where `task`'s logits belong to padded regions (True), or None when no logit does.

    The region head adds the reference's -10000 (`MASK_VALUE`) to the logit of every padded region:
    there one float32 ulp is 0.000977, ten times the fp32 tolerance, so those logits are compared
    relative to their magnitude instead (a graph that forgets the mask is off by 10000: still caught).
    """
    if task.head is not Head.REGION:
        return None
    padded = np.asarray(feeds[REGION_MASK]) == 0
    return padded.reshape(shape) if padded.size == int(np.prod(shape)) else None


def logit_error(ref: np.ndarray, got: np.ndarray, padded: np.ndarray | None = None) -> float:
    """max |ref - got|, absolute where a logit is read and relative to |ref| (at least 1) where it
    is a padded region's masked logit.  NaN anywhere gives NaN (fails every `<=` check)."""
    err = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    if padded is not None:
        err = np.where(padded, err / np.maximum(np.abs(ref), 1.0), err)
    if np.isnan(err).any():
        return float("nan")
    return float(err.max()) if err.size else 0.0


def generated_diff(
    model: MultiTaskViLBERT, graphs: OnnxGraphs, task: Task, rng: np.random.Generator
) -> tuple[float, list[int]]:
    """The error of onnxruntime vs PyTorch over one generated batch of `task` (`logit_error`: absolute
    on the logits a request reads, relative on padded regions' masked logits), and the logits' shape."""
    feeds = task_inputs(graphs.spec, task, rng)
    ref = torch_task_logits(model, task, feeds)
    got = graphs.task_logits(task, feeds)
    if ref.shape != got.shape:
        raise AssertionError(f"{task.slug}: onnxruntime logits {got.shape} vs PyTorch {ref.shape}")
    return logit_error(ref, got, padded_logits(task, feeds, ref.shape)), list(ref.shape)


# ---------------------------------------------------------------------------------------------
# 2. Task metric through the graphs
# ---------------------------------------------------------------------------------------------


class OnnxModel:
    """Stands in for `MultiTaskViLBERT` where training code calls `model.trunk(...)` /
    `model.head_logits(...)`, so the metric is computed by exactly the code that evaluates the
    PyTorch model."""

    batch_size = 32  # examples per call when a metric is computed through it (`task_metric`)

    def __init__(self, graphs: OnnxGraphs) -> None:
        self.graphs = graphs
        self.training = False

    def trunk(self, **inputs: Tensor) -> SimpleNamespace:
        return _as_tensors(self.graphs.trunk({k: v.numpy() for k, v in inputs.items()}))

    def head_logits(
        self, head: Head, out: SimpleNamespace, region_mask: Tensor, images: int | None = None
    ) -> Tensor:
        """The head graph on `trunk`'s outputs, as `MultiTaskViLBERT.head_logits`."""
        trunk_out = {FUSED: out.fused.numpy(), REGION_STATES: out.region_states.numpy()}
        return torch.from_numpy(self.graphs.head_logits(head, trunk_out, region_mask.numpy(), images))

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise RuntimeError("exported graphs are inference-only")
        return self


class ServedShapesModel(OnnxModel):
    """`OnnxModel` called the way the gateway calls the graphs: one example per call (evaluate with
    batch size 1), text and regions cut to what the example uses instead of the task maximum the
    dataset pads to.  Dynamic int8 quantizes activations with one scale per tensor, so the padded rows
    and the other examples of a batch change its answers; fp32 does not care."""

    batch_size = 1

    def trunk(self, **inputs: Tensor) -> SimpleNamespace:
        text = int(inputs[ATTENTION_MASK].sum(1).max())
        regions = int(inputs[REGION_MASK].sum(1).max())
        width = inputs[REGION_MASK].shape[1]
        feeds = {}
        for name, value in inputs.items():
            keep = regions if name in REGION_INPUTS else text if value.ndim >= 2 else None
            feeds[name] = np.ascontiguousarray(value.numpy()[:, :keep] if keep is not None else value.numpy())
        out = self.graphs.trunk(feeds)
        states = out[REGION_STATES]  # back to the dataset's width: the heads read it with its mask
        out[REGION_STATES] = np.pad(states, [(0, 0), (0, width - states.shape[1]), (0, 0)])
        return _as_tensors(out)


def _as_tensors(outputs: Mapping[str, np.ndarray]) -> SimpleNamespace:
    """Trunk outputs as the attributes `MultiTaskViLBERT.trunk` returns."""
    return SimpleNamespace(**{k: torch.from_numpy(v) for k, v in outputs.items()})


@dataclass
class MetricData:
    """One task's evaluation data for the gate."""

    dataset: object
    split: str
    note: str = ""


def metric_dataset(
    task: Task, root: Path, max_examples: int, cfg: ViLBERTConfig, split: str | None = None
) -> MetricData:
    """The test split, or the validation split where the test split is missing or unlabelled
    (`split="val"`: the task's validation split, e.g. VQA's minval).

    Answer targets are as wide as the model's answer heads (a base model's 3129 / 1533 answers on a
    synthetic world with a few dozen), as training's loaders do for the model they feed.
    """
    from training.datasets import LoaderConfig, build_dataset, split_names
    from vilbert.tokenizer import load_tokenizer

    names = split_names(task)
    config = LoaderConfig.for_data_root(
        root,
        vqa_num_answers=cfg.num_answers,
        gqa_num_answers=cfg.num_answers_gqa,
    )
    tokenizer = load_tokenizer()

    def build(split: str):
        return build_dataset(task, root, split, config=config, tokenizer=tokenizer)

    if split is not None:
        return MetricData(build(names[split]), names[split])
    if not names["test"]:
        return MetricData(build(names["val"]), names["val"], "no test split: validation split used")
    try:
        test = build(names["test"])
    except FileNotFoundError as exc:  # a data root with no test files (one prepared by hand)
        return MetricData(build(names["val"]), names["val"], f"no test files ({exc}): validation split used")
    n = min(len(test), max_examples)
    if n and not any(np.asarray(test[i].target).any() for i in range(n)):
        return MetricData(build(names["val"]), names["val"], "test split unlabelled: validation split used")
    return MetricData(test, names["test"])


def missing_dataset(task: Task, root: Path) -> str | None:
    """Why `task`'s dataset is not under `root` (its folder or its features are absent), or None when
    it is there.  A dataset that is there but incomplete is not "missing": loading it then fails."""
    from training.datasets.layout import datasets_dir, get_layout

    datasets = datasets_dir(root)
    layout = get_layout(task)
    folder = layout.dir(datasets) / layout.refer_name if layout.refer_name else layout.dir(datasets)
    for path in (folder, datasets / layout.features):
        if not path.exists():
            return f"no {path.relative_to(datasets.parent)} under the data root"
    return None


def task_metric(
    model, task: Task, data: MetricData, max_examples: int, batch_size: int = OnnxModel.batch_size
) -> dict[str, float]:
    from training.evaluation import evaluate_task

    return evaluate_task(model, task, data.dataset, batch_size=batch_size, max_examples=max_examples)


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskParity:
    task: str
    task_id: int
    head: str
    logits_shape: list[int]
    max_abs_diff_fp32: float
    max_abs_diff_int8: float | None = None
    metric: str = ""
    split: str = ""
    split_note: str = ""
    examples: int = 0
    metric_torch: float | None = None
    metric_fp32: float | None = None
    metric_int8: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class DetectorParity:
    graph: str
    max_abs_diff: float
    max_abs_value: float
    failures: list[str] = field(default_factory=list)


@dataclass
class GraphParity:
    """One graph (or chain of graphs) vs PyTorch on generated inputs."""

    graph: str
    max_abs_diff: float
    max_abs_value: float
    failures: list[str] = field(default_factory=list)


@dataclass
class GateResult:
    tasks: list[TaskParity]
    detector: list[DetectorParity]
    gated_precision: str
    metric_measured: bool
    seconds: float
    split: list[GraphParity] = field(default_factory=list)  # text_prefix/joint and the pre-filter
    metric_skipped: list[str] = field(default_factory=list)  # tasks whose data is not under the root

    @property
    def passed(self) -> bool:
        checks = [*self.detector, *self.split]
        return all(t.passed for t in self.tasks) and all(not d.failures for d in checks)

    def failures(self) -> list[str]:
        out = [f"{t.task}: {f}" for t in self.tasks for f in t.failures]
        return out + [f"{d.graph}: {f}" for d in [*self.detector, *self.split] for f in d.failures]

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "gated_precision": self.gated_precision,
            "metric_measured": self.metric_measured,
            "metric_skipped": list(self.metric_skipped),
            "seconds": round(self.seconds, 2),
            "tasks": [asdict(t) | {"passed": t.passed} for t in self.tasks],
            "detector": [asdict(d) for d in self.detector],
            "split": [asdict(d) for d in self.split],
        }


def run_gate(
    model: MultiTaskViLBERT,
    fp32: OnnxGraphs,
    int8: OnnxGraphs | None,
    *,
    gate_int8: bool,
    data_root: Path | None,
    max_examples: int = 64,
    tolerance: float = FP32_TOLERANCE,
    int8_points: float = INT8_METRIC_POINTS,
    detector: torch.nn.Module | None = None,
    seed: int = 0,
    log=print,
    max_captions: int | None = None,
) -> GateResult:
    """Run both checks for every task (and the detector graphs); nothing raises on a failed check."""
    started = time.perf_counter()
    model = model.eval()
    results: list[TaskParity] = []
    skipped: list[str] = []
    for task in TASKS:
        diff, shape = generated_diff(model, fp32, task, np.random.default_rng(seed + task.task_id))
        row = TaskParity(task.slug, task.task_id, task.head.value, shape, diff, metric=task.metric)
        if not diff <= tolerance:  # also catches NaN
            row.failures.append(f"fp32 max |diff| {diff:.3g} > {tolerance:g}")
        if int8 is not None:
            row.max_abs_diff_int8, _ = generated_diff(
                model, int8, task, np.random.default_rng(seed + task.task_id)
            )
        absent = missing_dataset(task, data_root) if data_root is not None else None
        if absent is not None:
            row.split_note = f"metric skipped: {absent}"
            skipped.append(task.slug)
        elif data_root is not None:
            # Retrieval ranks each caption against the whole test gallery (one trunk row per image):
            # `max_captions` caps its captions separately from the other tasks' examples.
            n = max_captions if max_captions is not None and task.head is Head.MATCH else max_examples
            data = metric_dataset(task, data_root, n, model.config)
            row.split, row.split_note = data.split, data.note
            ref = task_metric(model, task, data, n)
            row.examples = int(ref["examples"])
            row.metric_torch = ref["score"]
            row.metric_fp32 = task_metric(OnnxModel(fp32), task, data, n)["score"]
            if abs(row.metric_fp32 - row.metric_torch) > FP32_METRIC_POINTS:
                row.failures.append(f"fp32 metric {row.metric_fp32:.4f} != PyTorch {row.metric_torch:.4f}")
            if int8 is not None:
                row.metric_int8 = task_metric(OnnxModel(int8), task, data, n)["score"]
                if gate_int8 and abs(row.metric_int8 - row.metric_torch) > int8_points:
                    row.failures.append(
                        f"int8 metric {row.metric_int8:.2f} is {abs(row.metric_int8 - row.metric_torch):.2f} "
                        f"points from PyTorch {row.metric_torch:.2f} (allowed {int8_points:g})"
                    )
        log(
            f"  {task.slug:<20} max|diff| fp32 {diff:.2e}"
            + (f" int8 {row.max_abs_diff_int8:.2e}" if row.max_abs_diff_int8 is not None else "")
            + (
                f"  {task.metric} torch {row.metric_torch:.2f} fp32 {row.metric_fp32:.2f}"
                + (f" int8 {row.metric_int8:.2f}" if row.metric_int8 is not None else "")
                + f" ({row.split}, {row.examples} ex)"
                if row.metric_torch is not None
                else ""
            )
            + (f"  ({row.split_note})" if absent is not None else "")
            + ("" if row.passed else "  FAIL")
        )
        results.append(row)
    if skipped:
        log(f"  metric gate skipped for {len(skipped)} tasks whose data is not there: {', '.join(skipped)}")
    det = detector_parity(detector, fp32, tolerance, seed) if detector is not None else []
    split = split_parity(model, fp32, tolerance, seed)
    for row in split:
        log(f"  {row.graph:<20} max|diff| fp32 {row.max_abs_diff:.2e}" + ("  FAIL" if row.failures else ""))
    return GateResult(
        results,
        det,
        "int8" if gate_int8 else "fp32",
        data_root is not None,
        time.perf_counter() - started,
        split,
        skipped,
    )


@torch.no_grad()
def split_parity(
    model: MultiTaskViLBERT, graphs: OnnxGraphs, tolerance: float, seed: int = 0, images: int = 3
) -> list[GraphParity]:
    """The split trunk and the pre-filter graphs vs PyTorch, at the first match task's table shape.

    Retrieval's way: one caption (`text_prefix` once), its states repeated over `images` images
    (`joint`), then `head_match`, against `MultiTaskViLBERT`'s trunk + match head over the same rows.
    Graphs the export does not hold (a model without the pre-filter) are skipped.
    """
    spec = graphs.spec
    names = {g.name for g in spec.graphs}
    if not {TEXT_PREFIX, JOINT} <= names:
        return []
    task = next(t for t in TASKS if t.head is Head.MATCH)
    rng = np.random.default_rng(seed + 1000)
    feeds = task_inputs(spec, task, rng, batch=images)  # padded row 0: masks exercised
    feeds[INPUT_IDS] = np.repeat(feeds[INPUT_IDS][:1], images, 0)  # one caption, N images
    feeds[ATTENTION_MASK] = np.repeat(feeds[ATTENTION_MASK][:1], images, 0)
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    rows: list[GraphParity] = []

    def check(name: str, got: np.ndarray, ref: Tensor, valid: np.ndarray | Tensor | None = None) -> None:
        """`valid`: a (batch, positions) mask; padded tokens' or regions' states are not compared (no
        head reads them: attention and the region head mask them out)."""
        r = ref.numpy()
        if got.shape != r.shape:
            diff = float("inf")
        else:
            err = np.abs(got - r)
            if valid is not None:
                err = err[np.asarray(valid) > 0]
            diff = float(err.max()) if err.size else 0.0
        row = GraphParity(name, diff, float(np.abs(r).max()))
        if not diff <= tolerance:
            row.failures.append(f"max |diff| {diff:.3g} > {tolerance:g} (shape {got.shape} vs {r.shape})")
        rows.append(row)

    model = model.eval()
    prefix = model.trunk.encode_text_prefix(*(t[k][:1] for k in TEXT_INPUTS))
    got = graphs.run(TEXT_PREFIX, {k: feeds[k][:1] for k in TEXT_INPUTS})
    check(TEXT_PREFIX, got[TEXT_STATES], prefix.states, prefix.mask)
    check(f"{TEXT_PREFIX} ({TEXT_MASK})", got[TEXT_MASK], prefix.mask)
    region_feeds = {k: feeds[k] for k in REGION_INPUTS}
    joint = graphs.run(
        JOINT,
        {
            TEXT_STATES: np.repeat(got[TEXT_STATES], images, 0),
            TEXT_MASK: np.repeat(got[TEXT_MASK], images, 0),
            **region_feeds,
        },
    )
    ref = model.trunk(**t)
    check(f"{JOINT} ({FUSED})", joint[FUSED], ref.fused)
    check(f"{JOINT} ({REGION_STATES})", joint[REGION_STATES], ref.region_states, feeds[REGION_MASK])
    logits = graphs.head_logits(Head.MATCH, joint, feeds[REGION_MASK])
    check(
        f"{TEXT_PREFIX} -> {JOINT} -> head_match",
        logits,
        model.head_logits(Head.MATCH, ref, t[REGION_MASK]),
    )
    if {PREFILTER_TEXT, PREFILTER_IMAGE} <= names:
        head = model.require_prefilter()
        caption = graphs.run(PREFILTER_TEXT, {TEXT_STATES: got[TEXT_STATES], TEXT_MASK: got[TEXT_MASK]})
        check(PREFILTER_TEXT, caption[CAPTION_EMBEDDING], head.caption_embedding(prefix.states, prefix.mask))
        image = graphs.run(PREFILTER_IMAGE, region_feeds)
        ref_image = head.image_embedding(t[REGION_FEATURES], t[REGION_LOCATIONS], t[REGION_MASK])
        check(PREFILTER_IMAGE, image[IMAGE_EMBEDDING], ref_image)
    return rows


@torch.no_grad()
def detector_parity(
    detector: torch.nn.Module, graphs: OnnxGraphs, tolerance: float, seed: int = 0
) -> list[DetectorParity]:
    """Backbone pyramid on a padded random image; box head on boxes pooled from that pyramid,
    against `RegionDetector.box_head_outputs` (pool + MLP in PyTorch)."""
    from regions.roi_heads import box_geometry

    rng = np.random.default_rng(seed)
    detector = detector.eval()
    div = detector.preset.preprocessing.size_divisibility
    height, width = 5 * div, 7 * div
    image = rng.standard_normal((1, 3, height, width)).astype(np.float32)
    features = detector.backbone(torch.from_numpy(image))
    got = graphs.run(DETECTOR_BACKBONE, {DETECTOR_IMAGES: image})
    out: list[DetectorParity] = []
    ref_levels = [v.numpy() for v in features.values()]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got.values(), ref_levels))
    scale = max(float(np.abs(b).max()) for b in ref_levels)
    out.append(DetectorParity(DETECTOR_BACKBONE, diff, scale))

    x1y1 = rng.uniform(0, [width * 0.6, height * 0.6], size=(11, 2))
    wh = rng.uniform(8, [width * 0.4, height * 0.4], size=(11, 2))
    boxes = torch.from_numpy(np.concatenate([x1y1, x1y1 + wh], axis=1).astype(np.float32))
    sizes = [(height, width)]
    pooled = detector.roi_heads.box_roi_pool(features, [boxes], sizes).flatten(1)
    if detector.preset.box_head.geometry_features:
        pooled = torch.cat([pooled, box_geometry([boxes], sizes)], dim=1)
    ref = detector.box_head_outputs(features, [boxes], sizes)
    got = graphs.run(DETECTOR_BOX_HEAD, {BOX_INPUTS: pooled.numpy()})
    pairs = zip(got.values(), (ref.features, ref.fc7, ref.class_logits, ref.box_regression))
    diffs = [(float(np.abs(a - b.numpy()).max()), float(np.abs(b.numpy()).max())) for a, b in pairs]
    out.append(DetectorParity(DETECTOR_BOX_HEAD, max(d for d, _ in diffs), max(s for _, s in diffs)))
    for row in out:
        if not row.max_abs_diff <= tolerance:
            row.failures.append(f"max |diff| {row.max_abs_diff:.3g} > {tolerance:g}")
    return out
